"""cider's 4/8-bit prompt matmul (core/cpp/gpu_qmm_src.h) against MLX's, per shape.

Runs the same CUDA text the shim compiles, through mx.fast.cuda_kernel, for
each tile configuration (MT, NT, WN, KS) that divides the shape, checks it
against mx.quantized_matmul (max |diff| relative to the output's max), and
times both per call (N calls in one graph, then wait, as bench/qmm_prompt.py:
host time included, which is what a prompt pass pays).

    python bench/gpu_qmm.py [--m 128] [--dtype bfloat16] [--group 64] [--configs 2,4,1,8:4,4,1,4]

That per-call time is throughput: the calls of one graph are independent,
so MLX's CUDA graph runs them side by side. A prompt pass runs its
projections one after another, so what counts there is each kernel's own
device time. For that, run the kernels once each under Nsight Compute and
tabulate its log (same --m/--shapes/--configs):

    ncu --csv --print-units base --metrics gpu__time_duration.sum \
        --cache-control none --clock-control none \
        python bench/gpu_qmm.py --once --m 128 > LOG.csv
    python bench/gpu_qmm.py --from-ncu LOG.csv --m 128
"""
import argparse
import os
import re
import statistics

import mlx.core as mx

from ncu_sum import rows  # an ncu log's kernels and device times
from qmm_prompt import SHAPES, timed  # the same shapes and per-call timer

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = open(os.path.join(HERE, "..", "core", "cpp", "gpu_qmm_src.h")).read()
HEADER, BODY = re.findall(r'R"CUDA\((.*?)\)CUDA"', SRC, re.S)

# (MT, NT, WN, KS): warp tile 16 MT x 8 NT, WN warps along N, KS along K.
CONFIGS = [
    (4, 4, 1, 4), (4, 4, 2, 2), (4, 4, 4, 1), (4, 4, 1, 2), (4, 4, 2, 1),
    (2, 8, 1, 4), (2, 8, 2, 2), (2, 8, 4, 1), (2, 4, 2, 4), (2, 4, 4, 2),
    (4, 2, 2, 4), (4, 2, 4, 2), (8, 2, 2, 2), (2, 4, 1, 8), (4, 2, 1, 8),
]

_KERNEL = []


def kernel():
    if not _KERNEL:  # made at first use: --from-ncu needs no GPU
        _KERNEL.append(mx.fast.cuda_kernel(
            name="cider_qmm", input_names=["x", "w", "scales", "biases"], output_names=["y"],
            source=BODY, header=HEADER, ensure_row_contiguous=True))
    return _KERNEL[0]


def cider_qmm(x, wq, sc, bi, group, cfg, bits=4):
    mt, nt, wn, ks = cfg
    m, n = x.shape[0], wq.shape[0]
    bn, bm = 8 * nt * wn, 16 * mt
    threads = 32 * wn * ks
    return kernel()(
        inputs=[x, wq, sc, bi], output_shapes=[(m, n)], output_dtypes=[x.dtype],
        grid=(threads * (n // bn), (m + bm - 1) // bm, 1), threadgroup=(threads, 1, 1),
        template=[("T", x.dtype), ("BITS", bits), ("MT", mt), ("NT", nt), ("WN", wn), ("KS", ks), ("G", group)])[0]


def from_ncu(a):
    """Median device us per kernel, per (M, shape): MLX's, then each config."""
    seq = [(name, us) for name, _, _, us in rows(a.from_ncu)
           if "cider_qmm" in name or "qmm_sm80" in name or "qmv" in name or "qmm_naive" in name]
    # A shape's kernels: MLX's (the reference call, then 3), then 3 per config.
    groups, cur = [], None
    for name, us in seq:
        ours = "cider_qmm" in name
        if not ours and (cur is None or any("cider_qmm" in n for n, _ in cur)):
            cur = []
            groups.append(cur)
        cur.append((name, us))
    shapes = [s for s in SHAPES if not a.shapes or s[0] in a.shapes.split(",")]
    cfgs = ["_".join(map(str, c)) for c in CONFIGS]
    print(f"device us per call (median of 3), ncu; {a.bits}-bit group {a.group}")
    print(f"{'M':>5} {'model':13} {'proj':8} {'N':>6} {'K':>5} {'MLX':>7} " + " ".join(f"{c:>8}" for c in cfgs))
    it = iter(groups)
    for m in a.m:
        for model, proj, N, K in shapes:
            g = next(it)
            mlx = statistics.median(us for n, us in g if "cider_qmm" not in n)
            by = {}
            for n, us in g:
                mt = re.search(r"cider_qmm4?_\w+?_(\d+_\d+_\d+_\d+)_\d+$", n.split("::")[-1])
                if mt:
                    by.setdefault(mt.group(1), []).append(us)
            print(f"{m:5} {model:13} {proj:8} {N:6} {K:5} {mlx:7.1f} "
                  + " ".join(f"{statistics.median(by[c]):8.1f}" if c in by else f"{'-':>8}" for c in cfgs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[128])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--configs", default="", help="only these, e.g. 2,4,1,8:4,4,1,4")
    ap.add_argument("--from-ncu", default="", help="tabulate an ncu log of a --once run")
    ap.add_argument("--once", action="store_true",
                    help="each kernel 3 times, no timing: for `ncu`, which gives device times")
    a = ap.parse_args()
    dt = getattr(mx, a.dtype)
    if a.configs:
        CONFIGS[:] = [tuple(int(v) for v in c.split(",")) for c in a.configs.split(":")]
    if a.from_ncu:
        return from_ncu(a)
    print(f"mlx {mx.__version__} {mx.default_device()} bits={a.bits} group={a.group} dtype={a.dtype}", flush=True)
    for m in a.m:
        for model, proj, N, K in SHAPES:
            if a.shapes and model not in a.shapes.split(","):
                continue
            mx.random.seed(0)
            w = (mx.random.normal((N, K)) * 0.02).astype(dt)
            wq, sc, bi = mx.quantize(w, group_size=a.group, bits=a.bits)
            x = mx.random.normal((m, K)).astype(dt)
            mx.eval(wq, sc, bi, x)
            qmm = lambda y: mx.quantized_matmul(y, wq, sc, bi, transpose=True, group_size=a.group, bits=a.bits)
            ref = qmm(x).astype(mx.float32)
            if a.once:
                print(f"M={m} {model} {proj} {N} {K}", flush=True)
                for f in [qmm] + [lambda y, cfg=cfg: cider_qmm(y, wq, sc, bi, a.group, cfg, a.bits)
                                  for cfg in CONFIGS if N % (8 * cfg[1] * cfg[2]) == 0]:
                    for _ in range(3):
                        mx.eval(f(x))
                continue
            scale = mx.abs(ref).max().item()
            t_qmm = timed(qmm, x, a.n, a.reps)
            res = []
            for cfg in CONFIGS:
                if N % (8 * cfg[1] * cfg[2]) != 0:
                    continue
                f = lambda y, cfg=cfg: cider_qmm(y, wq, sc, bi, a.group, cfg, a.bits)
                try:
                    d = mx.abs(f(x).astype(mx.float32) - ref).max().item() / scale
                    t = timed(f, x, a.n, a.reps)
                except Exception as e:  # a config the compiler refuses: say so, go on
                    print(f"  {cfg}: {str(e)[:300]}", flush=True)
                    continue
                res.append((t, cfg, d))
            res.sort()
            best = "  ".join(f"{c}:{t * 1e6:.1f}us/{d:.1e}" for t, c, d in res[:4])
            worst_d = max(d for _, _, d in res)
            print(f"M={m:4} {model:13} {proj:8} {N:6} {K:5} qmm {t_qmm * 1e6:6.1f}us  best {res[0][0] * 1e6:6.1f}us "
                  f"({t_qmm / res[0][0]:.2f}x)  max rel diff {worst_d:.1e} | {best}", flush=True)


if __name__ == "__main__":
    main()
