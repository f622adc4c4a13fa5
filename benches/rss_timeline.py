#!/usr/bin/env python3
"""RSS over time through a 1 GiB burst and an idle phase, per allocator.

Builds bench-programs' `rss_timeline` once per allocator (the same target
directories as benches/programs.py), runs each as its own process, saves
each run's samples as CSV and draws them in one SVG chart with `plot_rss`
(plotters), under benches/results/. Standard library only.

    python3 benches/rss_timeline.py [--scale F]
"""
import argparse
import datetime
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOCATORS = ["pcpalloc", "jemalloc", "mimalloc"]


def build(alloc):
    target = os.path.join(ROOT, "target", f"bench-{alloc}")
    cmd = ["cargo", "build", "--release", "-p", "bench-programs", "--no-default-features", "--features", alloc,
           "--target-dir", target, "--bin", "rss_timeline", "--bin", "plot_rss"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return os.path.join(target, "release")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="1")
    args = ap.parse_args()
    out_dir = os.path.join(ROOT, "benches", "results")
    os.makedirs(out_dir, exist_ok=True)
    day = datetime.date.today().isoformat()
    csvs = []
    for alloc in ALLOCATORS:
        bindir = build(alloc)
        path = os.path.join(out_dir, f"rss-timeline-{day}-{alloc}.csv")
        res = subprocess.run([os.path.join(bindir, "rss_timeline"), "--scale", args.scale],
                             cwd=ROOT, check=True, capture_output=True, text=True)
        lines = [l for l in res.stdout.splitlines() if "," in l]
        closing = [l for l in res.stdout.splitlines() if "," not in l]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        csvs.append(f"{alloc}={path}")
        # Where RSS ended, and how long after the burst it first came within
        # 10% of that.
        samples = [(int(t), int(r), p) for t, r, p in (l.split(",") for l in lines[1:])]
        idle = [s for s in samples if s[2] == "idle"]
        end = idle[0][0] if idle else 0
        final = samples[-1][1]
        settled = next((t - end for t, r, p in idle if r <= final * 1.1), None)
        print(f"{alloc:9} peak {max(r for _, r, _ in samples) / 1024:7.0f} MiB, "
              f"end {final / 1024:6.0f} MiB, within 10% of the end {settled} ms after the burst  "
              f"({' '.join(closing)})")
    chart = os.path.join(out_dir, "rss-timeline.svg")
    subprocess.run([os.path.join(ROOT, "target", "bench-pcpalloc", "release", "plot_rss"), chart] + csvs,
                   cwd=ROOT, check=True)
    print(f"chart: {os.path.relpath(chart, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
