#!/usr/bin/env bash
# Model-checks pcpalloc's concurrent paths with loom (README: "Model checking
# with loom"), then proves that each model catches the bug it is there for.
#
# 1. Every model, on the real code: RUSTFLAGS="--cfg loom", release mode.
# 2. Every deliberately broken variant (`--cfg loom_broken="<name>"`, the
#    list declared in the root Cargo.toml's check-cfg), all compiled into a
#    second build; each `broken_*` test switches one on, runs its model and
#    passes only if loom reports the failure it expects. The script also
#    checks that every declared variant was caught by some test.
#
# Two builds of pcpalloc + loom in all (about a minute each on a 2-core
# machine); the models themselves take seconds. LOOM_MAX_PREEMPTIONS (default
# 5 here) bounds the preemptions loom explores per interleaving.
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-5}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

mapfile -t variants < <(grep -o 'loom_broken, values([^)]*)' Cargo.toml | grep -o '"[a-z_]*"' | tr -d '"')
if [ "${#variants[@]}" -eq 0 ]; then
    echo "loom-tests/run.sh: no loom_broken variants declared in Cargo.toml" >&2
    exit 1
fi

echo "== loom models (RUSTFLAGS=\"--cfg loom\", LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$target/loom" \
    cargo test --release -p loom-tests -- --nocapture 2>&1 | tee "$log" | grep -E '^loom model|^test |panicked|^error' | grep -v ' 0 passed; 0 failed' || true
if ! grep -q '^test result: ok' "$log" || grep -q '^test result: FAILED\|^error' "$log"; then
    cat "$log"
    echo "loom-tests/run.sh: a loom model failed" >&2
    exit 1
fi

flags="--cfg loom"
for v in "${variants[@]}"; do
    flags+=" --cfg loom_broken=\"$v\""
done
echo "== broken variants: each must be caught (${variants[*]})"
RUSTFLAGS="$flags" CARGO_TARGET_DIR="$target/loom-broken" \
    cargo test --release -p loom-tests broken_ -- --nocapture 2>&1 | tee "$log" | grep -E '^loom model|^test |panicked|^error' | grep -v ' 0 passed; 0 failed' || true
if grep -q '^test result: FAILED\|^error' "$log"; then
    cat "$log"
    echo "loom-tests/run.sh: a broken variant was not caught as expected" >&2
    exit 1
fi
for v in "${variants[@]}"; do
    if ! grep -q "caught \`$v\`" "$log"; then
        echo "loom-tests/run.sh: no test caught the broken variant \`$v\`" >&2
        exit 1
    fi
done
echo "== loom: every model passed and caught its broken variants"
