"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log per kernel (name + grid).

    python bench/ncu_sum.py LOG.csv [--from I] [--to J]   # kernel index range
"""
import argparse
import collections
import csv
import re


def rows(path):
    lines = open(path).read().splitlines()
    start = next(k for k, l in enumerate(lines) if l.startswith('"ID"'))
    out = []
    for r in csv.DictReader(lines[start:]):
        name = re.sub(r"\(.*", "", r["Kernel Name"]).replace("void ", "").replace("mlx::", "")
        out.append((name[:90], r["Grid Size"], r["Block Size"], float(r["Metric Value"].replace(",", "")) / 1e3))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--from", dest="lo", type=int, default=0)
    ap.add_argument("--to", dest="hi", type=int, default=None)
    a = ap.parse_args()
    seq = rows(a.log)[a.lo:a.hi]
    agg = collections.defaultdict(lambda: [0, 0.0])
    for name, grid, block, us in seq:
        agg[(name, grid, block)][0] += 1
        agg[(name, grid, block)][1] += us
    print(f"{len(seq)} kernels, {sum(s[3] for s in seq):.1f} us")
    for (name, grid, block), (n, us) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"{n:5} {us:9.1f} us  {us / n:7.1f} us each  grid {grid:14} block {block:12} {name}")


if __name__ == "__main__":
    main()
