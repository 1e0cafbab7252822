#!/usr/bin/env python3
"""Sums an ncu CSV of `gpu__time_duration.sum` by kernel (and, for the matmul kernels, by grid).

Usage: scripts/ncu-kernel-times.py NCU.csv

The CSV is what `ncu --csv --metrics gpu__time_duration.sum ...` prints (scripts/gpu-kernel-times.sh
makes one). Prints the launches, the total time, and a line per kernel: launches, time, time a
launch and share of the total, largest first.
"""
import collections
import csv
import sys

SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def main(path):
    rows = [r for r in csv.reader(open(path)) if len(r) > 10]
    if not rows:
        sys.exit(f"{path}: no ncu rows")
    head, rows = rows[0], rows[1:]
    name, value, unit = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
    grid = head.index("Grid Size") if "Grid Size" in head else None
    agg = collections.defaultdict(lambda: [0, 0.0])
    for r in rows:
        us = float(r[value].replace(",", "")) * SCALE.get(r[unit], 1.0)
        k = r[name].split("(")[0]
        if grid is not None and k.startswith(("mmvq", "mmq", "matvec")):
            k += " grid " + r[grid]
        agg[k][0] += 1
        agg[k][1] += us
    total = sum(t for _, t in agg.values())
    print(f"{len(rows)} kernels, {total:.1f} us in all")
    for k, (n, t) in sorted(agg.items(), key=lambda x: -x[1][1]):
        print(f"{k:50s} {n:5d} {t:10.1f} us {t / n:8.2f} us each {100 * t / total:5.1f}%")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
