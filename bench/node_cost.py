"""Host time MLX spends per graph node in `async_eval`, by kind of node.

Decode on a GPU is host-bound (bench/RESULTS.md, "where the time goes"), so
what a node costs MLX to walk, encode and launch decides which graph changes
pay. Each case builds a chain of N nodes of one kind on a [1, 2048] bf16 row
(the shape of a decode step's hidden state), then times `mx.async_eval` alone
(building the chain in Python is not timed) and the wait that follows.

    python bench/node_cost.py [--n 200] [--reps 20]
"""
import argparse
import statistics
import time

import mlx.core as mx


def cases(d):
    w = mx.random.normal((d, d)).astype(mx.bfloat16)
    wt = w.T
    nw = mx.ones((d,), dtype=mx.bfloat16)
    cache = mx.zeros((1, 8, 256, 64), dtype=mx.bfloat16)
    upd = mx.ones((1, 8, 1, 64), dtype=mx.bfloat16)
    mx.eval(w, wt, nw, cache, upd)

    def add(y, i):
        return y + 1

    def reshape(y, i):
        return y.reshape(1, 32, 64) if i % 2 == 0 else y.reshape(1, d)

    def slice_(y, i):
        # a view of the whole row, alternating shapes so no slice is a no-op
        return y[:, : d - 64] if i % 2 == 0 else mx.pad(y, [(0, 0), (0, 64)])

    def matmul(y, i):
        return y @ wt

    def rms(y, i):
        return mx.fast.rms_norm(y, nw, 1e-5)

    def rope(y, i):
        return mx.fast.rope(y.reshape(1, 32, 1, 64), 64, traditional=False, base=10000.0, scale=1.0, offset=i).reshape(1, d)

    def astype_noop(y, i):
        return y.astype(mx.bfloat16)

    def sdpa_view(S, T):
        # one decode attention: q from the row, k/v views of the first T
        # positions of an S-position cache (MLX picks its kernel by these)
        kc = mx.random.normal((1, 8, S, 64)).astype(mx.bfloat16)
        vc = mx.random.normal((1, 8, S, 64)).astype(mx.bfloat16)
        mx.eval(kc, vc)
        k, v = kc[:, :, :T, :], vc[:, :, :T, :]

        def f(y, i):
            o = mx.fast.scaled_dot_product_attention(y.reshape(1, 32, 1, 64), k, v, scale=0.125)
            return o.reshape(1, d)
        return f

    rows = mx.random.normal((128, d)).astype(mx.bfloat16)
    kp = mx.random.normal((1, 8, 128, 64)).astype(mx.bfloat16)
    mx.eval(rows, kp)

    def gemm128(y, i):
        # a prompt projection: 128 rows (cuBLASLt on CUDA); y only orders the chain
        return (rows + y[:, :1]) @ wt

    def sdpa_causal128(y, i):
        q = (kp.reshape(1, 32, 32, 64) + y[:, :1].reshape(1, 1, 1, 1)).reshape(1, 32, 128, 16)
        q = mx.concatenate([q, q, q, q], axis=-1)
        o = mx.fast.scaled_dot_product_attention(q, kp, kp, scale=0.125, mask="causal")
        return o[:, :, :1, :].reshape(1, 2048)

    return {"sdpa 1 query, T=200 of S=256": sdpa_view(256, 200), "sdpa 1 query, T=300 of S=512": sdpa_view(512, 300),
            "sdpa 1 query, T=300 of S=520": sdpa_view(520, 300), "sdpa 1 query, T=512 of S=512": sdpa_view(512, 512),
            "sdpa 1 query, T=4000 of S=4096": sdpa_view(4096, 4000), "sdpa 1 query, T=4000 of S=4080": sdpa_view(4080, 4000),
            "gemm 128x2048x2048 (+add)": gemm128, "sdpa causal 128 (+add, concat, slice)": sdpa_causal128,
            "add (kernel)": add, "reshape (view)": reshape, "slice+pad (view+kernel)": slice_,
            "matmul 1x2048x2048": matmul, "fast.rms_norm": rms, "fast.rope": rope, "astype same dtype": astype_noop}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    d = 2048
    print(f"mlx {mx.__version__}, device {mx.default_device()}, chains of {a.n} nodes, {a.reps} reps (medians)")
    print("(a unit is one call of the case's function: one node, or the few nodes its name lists)")
    print("(total: async_eval + wait, per unit; when the device is the slower side it is the device's time)")
    print(f"| unit | async_eval us/unit | wait us/unit | total us/unit |")
    print("|---|---|---|---|")
    x = mx.random.normal((1, d)).astype(mx.bfloat16)
    mx.eval(x)
    for name, f in cases(d).items():
        sub, wait, tot = [], [], []
        for r in range(a.reps + 2):
            y = x
            for i in range(a.n):
                y = f(y, i)
            t0 = time.perf_counter()
            mx.async_eval(y)
            t1 = time.perf_counter()
            mx.eval(y)
            t2 = time.perf_counter()
            if r >= 2:
                sub.append((t1 - t0) / a.n * 1e6)
                wait.append((t2 - t1) / a.n * 1e6)
                tot.append((t2 - t0) / a.n * 1e6)
        print(f"| {name} | {statistics.median(sub):.2f} | {statistics.median(wait):.2f} | {statistics.median(tot):.2f} |")


if __name__ == "__main__":
    main()
