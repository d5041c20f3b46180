"""What a prompt's embedding lookup costs on the GPU when its token ids were
just written by the host (as every prompt's are), against ids already in
device memory, and against ids first copied by a one-block kernel.

MLX puts arrays made from host data in CUDA managed memory; the first GPU
kernel to read them faults their page over. Under ncu, the gather of a
128-token prompt's rows took 166 us in cider's prompt pass (4.8 us in a
decode step, whose one id sits in MLX's small pool that the GPU maps).

    python bench/prompt_ids.py [--tokens 128] [--vocab 128256] [--hidden 2048]
"""
import argparse
import random
import statistics
import time

import mlx.core as mx


def timed(f, n):
    ts = []
    for i in range(n):
        rng = random.Random(i)
        ids = [rng.randrange(VOCAB) for _ in range(TOKENS)]
        mx.synchronize()
        t = time.perf_counter()
        mx.eval(f(ids))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def main():
    global TOKENS, VOCAB
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--n", type=int, default=50)
    a = ap.parse_args()
    TOKENS, VOCAB = a.tokens, a.vocab
    emb = (mx.random.normal((a.vocab, a.hidden)) * 0.02).astype(mx.bfloat16)
    dev = mx.arange(a.tokens, dtype=mx.int32)  # made on the device
    mx.eval(emb, dev)
    rows = {
        "host ids -> gather": lambda ids: mx.take(emb, mx.array(ids, mx.int32), axis=0),
        "host ids -> copy (+0) -> gather": lambda ids: mx.take(emb, mx.array(ids, mx.int32) + 0, axis=0),
        "host ids -> copy only": lambda ids: mx.array(ids, mx.int32) + 0,
        "device ids -> gather": lambda ids: mx.take(emb, dev, axis=0),
    }
    print(f"mlx {mx.__version__} {mx.default_device()}: {a.tokens} ids, table {a.vocab} x {a.hidden} bf16; "
          f"median wall us per call (eval + wait), {a.n} calls")
    for name, f in rows.items():
        timed(f, 3)
        print(f"{name:34} {timed(f, a.n):8.1f}")


if __name__ == "__main__":
    main()
