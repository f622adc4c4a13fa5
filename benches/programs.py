#!/usr/bin/env python3
"""Whole-program benchmarks: pcpalloc against jemalloc, mimalloc and the system allocator.

Builds the `bench-programs` crate once per allocator (a cargo feature picks the
#[global_allocator]; each build has its own target directory, target/bench-<allocator>),
runs every program as its own process N times per allocator, interleaving the allocators
(and rotating their order from one round to the next) to spread the machine's noise, and
measures each run's wall time and peak RSS (`os.wait4`'s ru_maxrss in KiB, or, tighter, the
VmHWM the program prints as it exits: see `checked_run`). Prints Markdown
tables of medians with the ratios pcpalloc/jemalloc and pcpalloc/mimalloc, and saves them
to benches/results/programs-<YYYY-MM-DD>.md under a header naming the date and the CPU.

Four parts, each selectable with --only:
  whole programs   larson xmalloc cache_scratch mstress glibc_simple json syn_parse pipeline
                   (group name: programs); targets: pcpalloc's median time <= jemalloc's,
                   peak RSS <= 1.1 x jemalloc's
  fastpath         instructions for 1,000,000 alloc+free pairs of 64 B under
                   `valgrind --tool=callgrind`, minus a run with 0 pairs; and the page
                   API's alloc_page+free_page pairs with the trace feature off and
                   compiled in (target/bench-pcpalloc-trace)
  page_threads     64 threads on 2 CPUs allocating and freeing pages: time, peak RSS, and
                   the memory held in caches with all 64 threads alive and after they exit
                   (jemalloc's figure comes from a build with its statistics compiled in,
                   target/bench-jemalloc-stats; its time and RSS from the default build)
  micro            the criterion benchmarks, every allocator side by side in one process
                   through GlobalAlloc: `cargo bench --bench global` and `--bench pages`
                   (about 8 minutes), tabled by benches/table.py (criterion's medians);
                   target: pcpalloc's median at or below jemalloc's and mimalloc's

Usage: python3 benches/programs.py [--runs N] [--only NAME[,NAME...]] [--scale F]
                                   [--no-build] [--out FILE | --no-save]
A run with --only or --scale is saved as programs-<date>-<what>.md, so that it never
overwrites the day's full comparison.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
ALLOCATORS = ["pcpalloc", "jemalloc", "mimalloc", "system"]
PROGRAMS = ["larson", "xmalloc", "cache_scratch", "mstress", "glibc_simple", "json", "syn_parse", "pipeline"]
WHAT = {
    "larson": "server simulation, threads free each other's objects (larsonN-sized)",
    "xmalloc": "producers allocate 64 B, consumers free (xmalloc-testN)",
    "cache_scratch": "small objects handed between threads, false sharing (cache-scratchN)",
    "mstress": "mixed lifetimes and sizes, threads recreated (mstressN)",
    "glibc_simple": "tight alloc/free loop, 16-64 B (glibc-simple)",
    "json": "serde_json: parse, walk, index, serialize a 15 MB document",
    "syn_parse": "syn: parse 1 MB of generated Rust source",
    "pipeline": "crossbeam-channel pipeline of heap messages",
}
FASTPATH_PAIRS = 1_000_000
TIME_TARGET = 1.0
RSS_TARGET = 1.1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def target_dir(build):
    return os.path.join(ROOT, "target", f"bench-{build}")


def exe(build, name):
    return os.path.join(target_dir(build), "release", name)


def build(builds):
    for b in builds:
        cmd = ["cargo", "build", "--release", "-p", "bench-programs", "--no-default-features",
               "--features", b, "--target-dir", target_dir(b)]
        log("$ " + " ".join(cmd))
        subprocess.run(cmd, cwd=ROOT, check=True)


def run(argv, env=None):
    """Runs `argv` to completion: (wall seconds, peak RSS KiB, exit code, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return wall, usage.ru_maxrss, proc.returncode, out.read().decode(errors="replace"), err.read().decode(
            errors="replace")


def checked_run(argv, label):
    """Runs a benchmark program: (wall seconds, peak RSS KiB, stdout).

    The peak RSS is the `peak_rss_kib` (the kernel's VmHWM) that the program prints as it
    finishes, when it does: `ru_maxrss` from `wait4` is the larger of the program's peak and
    the high-water mark of the address space it was exec'd from, which Linux carries across
    `exec`, here this Python process's own RSS (~16 MiB, flooring every small program). The
    two agree, up to the kernel's per-CPU counter slack, whenever the program's peak is above
    Python's.
    """
    wall, maxrss, code, out, err = run(argv)
    if code != 0:
        raise SystemExit(f"{label}: exit code {code}\n{out}\n{err}")
    m = re.search(r"peak_rss_kib=(\d+)", out)
    hwm = int(m.group(1)) if m else None
    if hwm is not None and hwm > maxrss + 1024:
        # The kernel's RSS counters are per-CPU and summed approximately in places; a small
        # excess is expected, a large one means the program's figure is wrong.
        log(f"warning: {label}: VmHWM {hwm} KiB exceeds wait4's ru_maxrss {maxrss} KiB")
    return wall, (hwm if hwm is not None else maxrss), out


def checksum(out):
    m = re.search(r"checksum=([0-9a-f]+)", out)
    return m.group(1) if m else None


def rotated(items, k):
    k %= len(items)
    return items[k:] + items[:k]


# ---- formatting ---------------------------------------------------------------------------------------------------

def fmt_s(v):
    return "—" if v is None else (f"{v:.3f} s" if v < 10 else f"{v:.2f} s")


def fmt_mib(kib):
    return "—" if kib is None else (f"{kib / 1024:.1f} MiB" if kib < 100 * 1024 else f"{kib / 1024:.0f} MiB")


def fmt_ratio(a, b):
    return "—" if a is None or b in (None, 0) else f"{a / b:.2f}"


def geomean(xs):
    xs = [x for x in xs if x]
    if not xs:
        return None
    p = 1.0
    for x in xs:
        p *= x
    return p ** (1 / len(xs))


def table(header, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ---- machine ------------------------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def command_output(argv):
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_lines(runs, scale):
    commit = command_output(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = command_output(["git", "status", "--porcelain", "--", "src", "Cargo.toml"])
    rustc = command_output(["rustc", "--version"])
    load = os.getloadavg()
    return [
        f"pcpalloc {commit}{' with uncommitted changes in src/' if dirty else ''}; {rustc}; "
        f"Linux {platform.release()}; {os.cpu_count()} CPUs; load average at start {load[0]:.2f}.",
        f"Medians of {runs} runs per allocator, allocators interleaved (order rotated each round)"
        + (f", scale {scale}" if scale != 1 else "") + ". Peak RSS is the process's own high-water mark (VmHWM as it exits, checked against "
        "wait4's ru_maxrss, which also counts the Python parent's).",
    ]


# ---- the four parts -----------------------------------------------------------------------------------------------

def whole_programs(programs, runs, scale):
    times = {(p, a): [] for p in programs for a in ALLOCATORS}
    rss = {(p, a): [] for p in programs for a in ALLOCATORS}
    sums = {p: set() for p in programs}
    for r in range(runs):
        for i, p in enumerate(programs):
            for a in rotated(ALLOCATORS, r + i):
                wall, kib, out = checked_run([exe(a, p), "--scale", str(scale)], f"{p} ({a})")
                times[p, a].append(wall)
                rss[p, a].append(kib)
                sums[p].add(checksum(out))
                log(f"  round {r + 1}/{runs}  {p:13} {a:9} {wall:7.3f} s {kib / 1024:8.1f} MiB")
    med_t = {k: statistics.median(v) for k, v in times.items()}
    med_r = {k: statistics.median(v) for k, v in rss.items()}

    header = ["program"] + [f"time {a}" for a in ALLOCATORS] + ["time p/je", "time p/mi"] + \
             [f"RSS {a}" for a in ALLOCATORS] + ["RSS p/je", "RSS p/mi", "targets"]
    rows, misses = [], []
    ratios = {"tje": [], "tmi": [], "rje": [], "rmi": []}
    for p in programs:
        t = [med_t[p, a] for a in ALLOCATORS]
        m = [med_r[p, a] for a in ALLOCATORS]
        tje, tmi, rje, rmi = t[0] / t[1], t[0] / t[2], m[0] / m[1], m[0] / m[2]
        for k, v in zip(ratios, (tje, tmi, rje, rmi)):
            ratios[k].append(v)
        miss = []
        if tje > TIME_TARGET:
            miss.append("time")
        if rje > RSS_TARGET:
            miss.append("RSS")
        if miss:
            misses.append((p, miss, tje, rje))
        rows.append([p] + [fmt_s(x) for x in t] + [f"{tje:.2f}", f"{tmi:.2f}"] + [fmt_mib(x) for x in m] +
                    [f"{rje:.2f}", f"{rmi:.2f}", "ok" if not miss else "**miss: " + ", ".join(miss) + "**"])
    g = {k: geomean(v) for k, v in ratios.items()}
    rows.append(["geomean"] + [""] * 4 + [f"{g['tje']:.2f}", f"{g['tmi']:.2f}"] + [""] * 4 +
                [f"{g['rje']:.2f}", f"{g['rmi']:.2f}", ""])

    spread_rows = []
    for p in programs:
        cells = []
        for a in ALLOCATORS:
            v = times[p, a]
            cells.append(f"{min(v):.3f}–{max(v):.3f}")
        spread_rows.append([p] + cells)

    lines = ["## Whole programs", "",
             "Time is wall-clock seconds of the whole process, peak RSS the process's maximum resident set; "
             "ratios below 1 mean pcpalloc is faster or smaller. Targets: time p/je <= 1.00, RSS p/je <= 1.10.", "",
             table(header, rows), ""]
    if misses:
        lines.append("Targets missed: " + "; ".join(
            f"{p} ({', '.join(m)}: time ×{tje:.2f}, RSS ×{rje:.2f} of jemalloc)" for p, m, tje, rje in misses) + ".")
    else:
        lines.append("Every target met.")
    bad = [p for p in programs if len(sums[p]) > 1]
    if bad:
        lines.append("")
        lines.append("**Checksums differ between runs of: " + ", ".join(bad) + "** (the work was not identical).")
    lines += ["", "What each program does: " + "; ".join(f"`{p}`: {WHAT[p]}" for p in programs) + ".", "",
              "<details><summary>Fastest–slowest time of each cell (s)</summary>", "",
              table(["program"] + ALLOCATORS, spread_rows), "", "</details>", ""]
    return "\n".join(lines), misses


def fastpath():
    """Callgrind instruction counts; deterministic, so one run each."""
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        return "## Fast path (callgrind)\n\nvalgrind not found; skipped.\n"

    def count(a, pairs, program="fastpath"):
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", exe(a, program), str(pairs)]
        _, _, code, out, err = run(argv)
        m = re.search(r"Collected\s*:\s*(\d+)", err)
        if code != 0 or not m:
            raise SystemExit(f"callgrind of {program} ({a}) failed:\n{out}\n{err}")
        return int(m.group(1))

    rows, per = [], {}
    for a in ALLOCATORS:
        full, base = count(a, FASTPATH_PAIRS), count(a, 0)
        per[a] = (full - base) / FASTPATH_PAIRS
        log(f"  fastpath {a:9} {full} - {base} instructions = {per[a]:.2f} per pair")
        rows.append([a, f"{full:,}", f"{base:,}", f"{per[a]:.2f}"])
    for r in rows:
        r.append(fmt_ratio(per["pcpalloc"], per[r[0]]))

    # The page API's fast path, with the trace feature off and compiled in.
    page_rows = []
    for build_name, label in [("pcpalloc", "off (default)"), ("pcpalloc-trace", "compiled in, not recording")]:
        full, base = count(build_name, FASTPATH_PAIRS, "pagepath"), count(build_name, 0, "pagepath")
        p = (full - base) / FASTPATH_PAIRS
        log(f"  pagepath {label:27} {full} - {base} instructions = {p:.2f} per pair")
        nm = subprocess.run(["nm", "-C", exe(build_name, "pagepath")], capture_output=True, text=True).stdout
        hooks = sum(1 for line in nm.splitlines() if "pcpalloc::trace::" in line)
        page_rows.append([label, f"{full:,}", f"{base:,}", f"{p:.2f}", str(hooks)])
    return "\n".join([
        "## Fast path: instructions per alloc+free pair (callgrind)", "",
        f"`valgrind --tool=callgrind` of `fastpath`: {FASTPATH_PAIRS:,} pairs of `alloc` + `dealloc` of 64 B "
        "(align 8) through the global allocator, minus a run with 0 pairs (both do one warm-up pair). "
        "Instruction counts, so no timing noise; the loop's own work (a write, a read, the counter) is included.", "",
        table(["allocator", f"instructions, {FASTPATH_PAIRS:,} pairs", "instructions, 0 pairs", "per pair",
               "pcpalloc / this"], rows), "",
        f"The page allocator's own fast path, `pagepath`: {FASTPATH_PAIRS:,} pairs of `alloc_page` + `free_page` "
        "(the thread's page cache: a pop and a push; the PCP's `rmqueue_pcplist` and "
        "`free_unref_page_commit` once per half bin), built with pcpalloc's `trace` "
        "feature off and with it compiled in but not recording; `trace symbols` counts the functions of "
        "`pcpalloc::trace` left in the binary (`nm`). With the feature off the hooks are gone, so the first "
        "row is the fast path's cost with no tracing at all. (Under valgrind glibc registers no rseq area, so "
        "the current CPU comes from `sched_getcpu`, about 37 instructions each way; natively it is two loads.)", "",
        table(["trace feature", f"instructions, {FASTPATH_PAIRS:,} pairs", "instructions, 0 pairs", "per pair",
               "trace symbols"], page_rows), ""])


def micro():
    """The criterion benchmarks, run afresh (criterion's previous results are moved aside, so
    that no stale group shows up in the table), then tabled."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import table as criterion_table  # benches/table.py

    root = criterion_table.default_dir()
    if os.path.isdir(root):
        old = root + ".prev"
        subprocess.run(["rm", "-rf", old], check=True)
        os.rename(root, old)
    for bench in ["global", "pages"]:
        log(f"  cargo bench --bench {bench}")
        proc = subprocess.run(["cargo", "bench", "--bench", bench], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"cargo bench --bench {bench} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    lines, behind = criterion_table.markdown(root)
    bulk = {}
    group_dir = os.path.join(root, "64 pages")
    for name in sorted(os.listdir(group_dir)) if os.path.isdir(group_dir) else []:
        est = os.path.join(group_dir, name, "new", "estimates.json")
        if os.path.exists(est):
            with open(est) as f:
                bulk[name] = json.load(f)["median"]["point_estimate"]  # ns per 64 pages
    text = ["## Micro-benchmarks (criterion)", "",
            "`cargo bench --bench global` and `cargo bench --bench pages`: median time per operation, all four "
            "allocators called through `GlobalAlloc` side by side in the same process (blocks of a page or more "
            "are written once per page); the last two rows are the page API against the others' size-aligned "
            "page allocations (the order row is order 1). Ratios below 1: pcpalloc faster.", "", *lines, ""]
    if bulk:
        # The "64 pages" group's functions are named "<allocator> <how>" (table.py skips them).
        cells = [f"{name} {criterion_table.fmt_time(ns)}" for name, ns in bulk.items()]
        text += ["Taking and freeing 64 pages: " + "; ".join(cells) + ".", ""]
    if behind:
        text += ["Rows above 1 (re-run them alone, `cargo bench --bench global -- <case>`, before reading "
                 "anything into them: on a shared machine a single cell can move by 20%): "
                 + "; ".join(f"{g} ({je:.2f} of jemalloc, {mi:.2f} of mimalloc)" for g, je, mi in behind) + ".", ""]
    else:
        text += ["Every row is at or below both jemalloc and mimalloc.", ""]
    return "\n".join(text)


def parse_page_threads(out):
    """{phase: {key: value}} from the `before:`/`barrier:`/`exit:`/`work:` lines."""
    phases = {}
    for line in out.splitlines():
        m = re.match(r"(before|barrier|exit|work): (.*)", line)
        if not m:
            continue
        rest, detail = m.group(2), None
        if " detail=" in rest:
            rest, detail = rest.split(" detail=", 1)
        d = dict(kv.split("=", 1) for kv in rest.split())
        if detail is not None:
            d["detail"] = detail
        phases[m.group(1)] = d
    return phases


def page_threads(runs, scale):
    # The timed jemalloc build has no statistics; its cache figures come from runs of the
    # jemalloc-stats build, interleaved like the others.
    builds = ALLOCATORS + ["jemalloc-stats"]
    results = {b: [] for b in builds}
    for r in range(runs):
        for b in rotated(builds, r):
            wall, kib, out = checked_run([exe(b, "page_threads"), "--scale", str(scale)], f"page_threads ({b})")
            ph = parse_page_threads(out)
            results[b].append((wall, kib, ph))
            log(f"  round {r + 1}/{runs}  page_threads  {b:14} {wall:7.3f} s {kib / 1024:8.1f} MiB")

    def med(b, f):
        vals = [f(x) for x in results[b]]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def num(s):
        return None if s in (None, "-") else int(s)

    rows, details = [], []
    for a in ALLOCATORS:
        held_from = "jemalloc-stats" if a == "jemalloc" else a
        row = [a,
               fmt_s(med(a, lambda x: x[0])),
               fmt_s(med(a, lambda x: float(x[2].get("work", {}).get("seconds", "nan")))),
               fmt_mib(med(a, lambda x: x[1])),
               fmt_mib(med(a, lambda x: num(x[2]["barrier"]["rss_kib"]) - num(x[2]["before"]["rss_kib"]))),
               fmt_mib(med(held_from, lambda x: num(x[2]["barrier"]["cached_kib"]))),
               fmt_mib(med(a, lambda x: num(x[2]["exit"]["rss_kib"]) - num(x[2]["before"]["rss_kib"]))),
               fmt_mib(med(held_from, lambda x: num(x[2]["exit"]["cached_kib"])))]
        if row[5] == "—":
            row[5] = "not reported"
            row[7] = "not reported"
        rows.append(row)
        last = results[held_from][-1][2]
        details.append(f"* {a}{' (statistics build)' if held_from != a else ''}, with 64 threads alive: "
                       f"{last['barrier'].get('detail', '')}; after they exit: {last['exit'].get('detail', '')}")
    return "\n".join([
        "## 64 threads on 2 CPUs: memory held in caches", "",
        "`page_threads`: the process pins itself to 2 CPUs and runs 64 threads, each allocating and freeing "
        "page-aligned blocks of 4, 8, 16 and 32 KiB (8 held at a time, every page touched). Then all 64 wait at a "
        "barrier holding nothing while the allocator's caches are read, and again after they have exited. "
        "Caches per thread grow with the number of threads, caches per CPU with the number of CPUs. "
        "RSS growth is measured from just before the threads start. \"Held in caches\" is the allocator's own "
        "figure: pcpalloc `zoneinfo().pcp_pages` + `stats().page_cache` (threads' page caches) + the pages of all slabs in `slabinfo()`; jemalloc "
        "`stats.arenas.<all>.tcache_bytes` + (`stats.active` − `stats.allocated`); mimalloc and glibc report no "
        "such figure (see RSS).", "",
        table(["allocator", "time", "of which threads working", "peak RSS", "RSS growth, 64 threads alive",
               "held in caches, 64 threads alive", "RSS growth after exit", "held in caches after exit"], rows),
        "", "What the allocators report (last run):", ""] + details + [""])


# ---- main ---------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per program and allocator (default 5)")
    ap.add_argument("--only", action="append", default=[],
                    help="a program, or programs / fastpath / page_threads / micro; repeatable or comma-separated")
    ap.add_argument("--scale", type=float, default=1.0, help="work multiplier passed to the programs (default 1)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--out", help="where to save the tables (default benches/results/programs-<date>.md)")
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args()

    only = [n for o in args.only for n in o.split(",") if n]
    known = PROGRAMS + ["programs", "fastpath", "page_threads", "micro"]
    for n in only:
        if n not in known:
            ap.error(f"unknown name {n!r}; one of: {', '.join(known)}")
    if not only:
        only = ["programs", "fastpath", "page_threads", "micro"]
    programs = PROGRAMS if "programs" in only else [p for p in PROGRAMS if p in only]

    builds = list(ALLOCATORS)
    if "page_threads" in only:
        builds.append("jemalloc-stats")
    if "fastpath" in only:
        builds.append("pcpalloc-trace")
    if not args.no_build:
        build(builds)

    today = datetime.date.today().isoformat()
    sections = [f"# Benchmarks, {today}, {cpu_model()}", "",
                *machine_lines(args.runs, args.scale), ""]
    misses = []
    started = time.time()
    if programs:
        text, misses = whole_programs(programs, args.runs, args.scale)
        sections.append(text)
    if "fastpath" in only:
        sections.append(fastpath())
    if "page_threads" in only:
        sections.append(page_threads(args.runs, args.scale))
    if "micro" in only:
        sections.append(micro())
    sections.append(f"Took {(time.time() - started) / 60:.1f} minutes; load average at the end "
                    f"{os.getloadavg()[0]:.2f}. Command: `python3 benches/programs.py "
                    + " ".join(sys.argv[1:]) + "`.")
    report = "\n".join(sections).rstrip() + "\n"
    print(report)

    if not args.no_save:
        out = args.out
        if not out:
            suffix = ""
            if args.only or args.scale != 1:
                suffix = "-" + "-".join(only) + (f"-scale{args.scale:g}" if args.scale != 1 else "")
            out = os.path.join(ROOT, "benches", "results", f"programs-{today}{suffix}.md")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(report)
        log(f"saved {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
