"""Ways to run a prompt pass's quantized projection (M rows) on a GPU, timed.

On the H100 a 4-bit model's prompt pass is bound by the device, and most of
it is MLX's M-row quantized matmul (`qmm_sm80`, 64 x 128 tiles: a 128-row
product of a 2048-wide output fills only 32 of 132 SMs). This times, per
projection shape of the benchmark models, and both per call with the host's
time included (N calls in one graph, then wait) and the result checked:

- qmm:      mx.quantized_matmul as mlx-lm and cider call it;
- deq:      mx.dequantize to the activation dtype, then a dense matmul (cuBLAS);
- splitK s: the weight's K axis cut into s batches (laid out once, as a load
            would), one batched quantized_matmul, then a sum over the batches.

    python bench/qmm_prompt.py [--m 128] [--n 40] [--reps 5]
"""
import argparse
import statistics
import time

import mlx.core as mx

# (model, projection, out N, in K)
SHAPES = [
    ("qwen2.5-0.5b", "qkv", 1152, 896), ("qwen2.5-0.5b", "o", 896, 896),
    ("qwen2.5-0.5b", "gate_up", 9728, 896), ("qwen2.5-0.5b", "down", 896, 4864),
    ("llama-3.2-1b", "qkv", 3072, 2048), ("llama-3.2-1b", "o", 2048, 2048),
    ("llama-3.2-1b", "gate_up", 16384, 2048), ("llama-3.2-1b", "down", 2048, 8192),
    ("qwen3-1.7b", "qkv", 4096, 2048), ("qwen3-1.7b", "o", 2048, 2048),
    ("qwen3-1.7b", "gate_up", 12288, 2048), ("qwen3-1.7b", "down", 2048, 6144),
]


def timed(fn, x, n, reps):
    """Median seconds per call over reps graphs of n independent calls."""
    outs = [fn(x + i) for i in range(2)]
    mx.eval(outs)
    ts = []
    for _ in range(reps):
        xs = [x + (i % 7) for i in range(n)]
        mx.eval(xs)
        t = time.perf_counter()
        mx.eval([fn(xi) for xi in xs])
        ts.append((time.perf_counter() - t) / n)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    a = ap.parse_args()
    print(f"mlx {mx.__version__} device {mx.default_device()} M={a.m} bits={a.bits} group={a.group}")
    print(f"{'model':14} {'proj':8} {'N':>6} {'K':>6}  us/call: qmm   deq  " + "  ".join(f"splitK{s}" for s in (2, 4, 8)) + "   max|diff| vs qmm")
    for model, proj, N, K in SHAPES:
        mx.random.seed(0)
        w = (mx.random.normal((N, K)) * 0.02).astype(mx.bfloat16)
        wq, sc, bi = mx.quantize(w, group_size=a.group, bits=a.bits)
        x = mx.random.normal((a.m, K)).astype(mx.bfloat16)
        mx.eval(wq, sc, bi, x)
        qmm = lambda y: mx.quantized_matmul(y, wq, sc, bi, transpose=True, group_size=a.group, bits=a.bits)
        deq = lambda y: y @ mx.dequantize(wq, sc, bi, group_size=a.group, bits=a.bits).T
        ref = qmm(x).astype(mx.float32)
        row = [timed(qmm, x, a.n, a.reps), timed(deq, x, a.n, a.reps)]
        diffs = [mx.abs(deq(x).astype(mx.float32) - ref).max().item()]
        for s in (2, 4, 8):
            if (K // s) % max(64, a.group) != 0:
                row.append(float("nan")); diffs.append(float("nan")); continue
            per = 32 // a.bits
            ws = mx.contiguous(wq.reshape(N, s, K // per // s).transpose(1, 0, 2))
            ss = mx.contiguous(sc.reshape(N, s, -1).transpose(1, 0, 2))
            bs = mx.contiguous(bi.reshape(N, s, -1).transpose(1, 0, 2))
            mx.eval(ws, ss, bs)

            def split(y, ws=ws, ss=ss, bs=bs, s=s):
                ys = y.reshape(a.m, s, K // s).transpose(1, 0, 2)
                p = mx.quantized_matmul(ys, ws, ss, bs, transpose=True, group_size=a.group, bits=a.bits)
                return p.sum(axis=0)
            row.append(timed(split, x, a.n, a.reps))
            diffs.append(mx.abs(split(x).astype(mx.float32) - ref).max().item())
        print(f"{model:14} {proj:8} {N:6} {K:6}  " + "  ".join(f"{t * 1e6:6.1f}" for t in row)
              + "   " + " ".join(f"{d:.3g}" for d in diffs), flush=True)


if __name__ == "__main__":
    main()
