"""Device time of one prompt pass, per kernel name, from an ncu CSV.

    ncu --csv --print-units base --metrics gpu__time_duration.sum --cache-control none \
        --clock-control none .whl/b/cider bench --model M --prompt-tokens 128 --gen-tokens 2 \
        --repeat 1 --warmup 2 > pass.csv
    python3 bench/ncu_pass.py pass.csv                 # the last prompt graph's pass (cp_embed .. cp_last)
    python3 bench/ncu_pass.py pass.csv --from I --to J  # kernels I..J (ncu's order), e.g. an MLX pass

Prints, per kernel name, launches and total microseconds, and the sum.
"""
import argparse
import csv
from collections import defaultdict


def load(path):
    hdr, rows = None, []
    for r in csv.reader(open(path)):
        if r and r[0] == "ID":
            hdr = r
        elif hdr and len(r) == len(hdr):
            rows.append(dict(zip(hdr, r)))
    return rows


def us(row):
    return float(row["Metric Value"].replace(",", "")) / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--from", dest="lo", type=int)
    ap.add_argument("--to", dest="hi", type=int)
    a = ap.parse_args()
    rows = load(a.csv)
    if a.lo is None:
        names = [r["Kernel Name"] for r in rows]
        a.lo = max(i for i, n in enumerate(names) if n.startswith("cp_embed"))
        a.hi = min(i for i, n in enumerate(names) if n.startswith("cp_last") and i > a.lo)
    agg = defaultdict(lambda: [0, 0.0])
    for r in rows[a.lo:a.hi + 1]:
        k = agg[r["Kernel Name"][:70]]
        k[0] += 1
        k[1] += us(r)
    total = sum(t for _, t in agg.values())
    print(f"kernels {a.lo}..{a.hi}: {a.hi - a.lo + 1} launches, {total:.1f} us")
    for name, (n, t) in sorted(agg.items(), key=lambda x: -x[1][1]):
        print(f"{n:5d} {t:9.1f} us  {name}")


if __name__ == "__main__":
    main()
