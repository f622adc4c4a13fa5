#!/usr/bin/env python3
"""Markdown table of the `global` benchmark's results (benches/global.rs).

Reads criterion's output, target/criterion/<group>/<function>/new/{benchmark,estimates}.json,
and prints one row per case (criterion group): the median time per operation of pcpalloc,
jemalloc, mimalloc and the system allocator, and the ratios pcpalloc/jemalloc and
pcpalloc/mimalloc (below 1: pcpalloc is faster).

The median is criterion's `median.point_estimate` (ns per iteration), divided by the group's
`Throughput::Elements` when there is one, so that it is per element (per alloc+free pair, per
object, per operation); groups without a throughput are reported per iteration.

Usage: python3 benches/table.py [--dir TARGET_CRITERION] [GROUP_PREFIX ...]
Only groups whose name starts with one of the prefixes are shown (all of them without any).
"""

import argparse
import json
import os
import re
import sys

ALLOCATORS = ["pcpalloc", "jemalloc", "mimalloc", "system"]
CASE_ORDER = ["pair", "batch1000x64", "n_then_free", "realloc_doubling", "realloc_doubling_64m", "realloc_step_1k",
              "producer_consumer", "mixed_random", "threads"]
UNITS = {
    "pair": "alloc+free pair",
    "batch1000x64": "alloc+free (of 1000 held)",
    "n_then_free": "alloc+free (of N held)",
    "realloc_doubling": "whole chain 8 B -> 1 MiB",
    "realloc_doubling_64m": "whole chain 8 B -> 64 MiB",
    "realloc_step_1k": "whole chain 8 B -> 64 MiB, +1 KiB steps",
    "producer_consumer": "object, alloc -> other thread -> free",
    "mixed_random": "alloc or free",
    "threads": "alloc or free, all threads",
}


def default_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, os.pardir, "target"))
    return os.path.normpath(os.path.join(target, "criterion"))


def load(root):
    """{group_id: {function_id: ns per operation}} and {group_id: elements per iteration}."""
    results, elements = {}, {}
    for dirpath, _dirnames, filenames in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in filenames:
            continue
        bench_file = os.path.join(dirpath, "benchmark.json")
        if not os.path.exists(bench_file):
            continue
        with open(bench_file) as f:
            bench = json.load(f)
        function = bench.get("function_id")
        if function not in ALLOCATORS:
            continue
        group = bench["group_id"]
        with open(os.path.join(dirpath, "estimates.json")) as f:
            median = json.load(f)["median"]["point_estimate"]
        per = 1
        throughput = bench.get("throughput")
        if isinstance(throughput, dict) and throughput.get("Elements"):
            per = throughput["Elements"]
        results.setdefault(group, {})[function] = median / per
        elements[group] = per
    return results, elements


def sort_key(group):
    head, _, tail = group.partition("/")
    rank = CASE_ORDER.index(head) if head in CASE_ORDER else len(CASE_ORDER)
    m = re.match(r"\d+", tail)
    num = int(m.group(0)) if m else -1
    return (rank, head, num, tail)


def fmt_time(ns):
    if ns is None:
        return "—"
    if ns < 1e3:
        return f"{ns:.1f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def markdown(root, prefixes=()):
    """The table as Markdown lines, and the rows where pcpalloc is slower than jemalloc or
    mimalloc, as (group, ratio to jemalloc, ratio to mimalloc)."""
    results, elements = load(root)
    groups = sorted((g for g in results if not prefixes or any(g.startswith(p) for p in prefixes)),
                    key=sort_key)
    header = ["case", "per"] + ALLOCATORS + ["pcpalloc/jemalloc", "pcpalloc/mimalloc"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    behind = []
    for group in groups:
        row = results[group]
        head = group.partition("/")[0]
        unit = UNITS.get(head, "element" if elements[group] > 1 else "iteration")
        pcp = row.get("pcpalloc")
        cells = [group, unit] + [fmt_time(row.get(a)) for a in ALLOCATORS]
        cells += [fmt_ratio(pcp, row.get("jemalloc")), fmt_ratio(pcp, row.get("mimalloc"))]
        lines.append("| " + " | ".join(cells) + " |")
        je, mi = row.get("jemalloc"), row.get("mimalloc")
        if pcp is not None and ((je and pcp > je) or (mi and pcp > mi)):
            behind.append((group, pcp / je if je else None, pcp / mi if mi else None))
    return lines, behind


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="group-name prefixes to include (default: all)")
    parser.add_argument("--dir", default=default_dir(), help="criterion's output directory")
    args = parser.parse_args()

    if not os.path.isdir(args.dir):
        sys.exit(f"no criterion results under {args.dir}: run `cargo bench --bench global` first")
    lines, _behind = markdown(args.dir, args.prefixes)
    if len(lines) == 2:
        sys.exit(f"no matching results under {args.dir}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
