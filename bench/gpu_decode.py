"""cider's decode kernels (core/cpp/gpu_decode_src.h) against MLX's, per shape
and per split S (warps per row pair), by device time under Nsight Compute.

Runs the same CUDA text the shim compiles, through mx.fast.cuda_kernel, on
Llama-3.2-1B's decode shapes: the norm kernel (q/k/v with RoPE, gate/up
with SwiGLU), the attention + o projection kernel (checked against MLX's
sdpa + matmul at 1 to 1024 positions, printed; --attn-only runs just it),
the down projection (gemv) and greedy sampling (--parts picks some); MLX's
reference is its one-row matmul (without the norm and epilogue the kernel
also does), its sdpa + matmul and, for sampling, logsumexp + subtract +
argmax.
Each variant runs 3 times between marker kernels (sine, cosine) that the table
uses to tell the groups apart; --cache-control all makes every call read
its weights from DRAM, as a decode step does (a layer's weights are read
once per token).

    ncu --csv --print-units base --metrics gpu__time_duration.sum \\
        --cache-control all --clock-control none \\
        python bench/gpu_decode.py --once > LOG.csv
    python bench/gpu_decode.py --from-ncu LOG.csv

CIDER_DEC_SRC=FILE runs another copy of the kernel source (a variant under
test); ATTN_S=2 (a comma list) limits the attention kernel's splits.
"""
import argparse
import json
import os
import statistics

from dec_src import fbits, parse, text
from ncu_sum import rows

HEADER, CALLS = parse(text())
LABELS = os.path.join("/tmp", "gpu_decode_labels.json")

# (name, kind, N, K) for Llama-3.2-1B: hidden 2048, 32 + 2 x 8 heads of 64, MLP 8192.
SHAPES = [("qkv", "rope", 3072, 2048), ("gate_up", "swiglu", 16384, 2048)]
# (S, chunks in flight per warp)
SPLITS = [(1, 4), (1, 8), (2, 4), (1, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--from-ncu", default="")
    ap.add_argument("--attn-only", action="store_true", help="only the attention + o projection kernel")
    ap.add_argument("--parts", default="qkv,gate_up,down,attn,greedy", help="which kernels (comma list)")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if a.attn_only:
        parts = {"attn"}
    if a.from_ncu:
        return table(a.from_ncu)
    import mlx.core as mx

    dt = mx.bfloat16
    norm_k = mx.fast.cuda_kernel("cider_dec", ["h", "dl", "g", "w", "bias", "pos", "freqs", "nxt"], ["hout", "y"],
                                 CALLS["kCiderNormCall"], header=HEADER)
    greedy_k = mx.fast.cuda_kernel("cider_greedy", ["x", "scratch", "prev"], ["y"], CALLS["kCiderGreedyCall"],
                                   header=HEADER)
    marker = mx.zeros((4,))
    labels = []

    def group(label, f):
        mx.eval(mx.sin(marker))
        for _ in range(3):
            mx.eval(f())
        mx.eval(mx.cos(marker))
        labels.append(label)

    mx.random.seed(0)
    h = mx.random.normal((1, 2048)).astype(dt)
    dl = mx.random.normal((1, 2048)).astype(dt)
    g = mx.ones((2048,), dt)
    pos = mx.arange(100, 104, dtype=mx.int32)
    freqs = mx.ones((32,), mx.float32)
    for name, kind, N, K in [sh for sh in SHAPES if sh[0] in parts]:
        w = (mx.random.normal((N, K)) * 0.02).astype(dt)
        x = mx.random.normal((1, K)).astype(dt)
        mx.eval(w, x, h, dl, g, pos, freqs)
        group(f"{name} MLX matmul", lambda: mx.matmul(x, w.T))
        for S, IF in SPLITS:
            if 2 * S > 2 * ((K + 255) // 256):
                continue
            blocks = (N // 2 + 8 // S - 1) // (8 // S)
            mode = {"rope": 1, "swiglu": 2}[kind]
            yshape = (1, N // 2) if mode == 2 else (1, N)
            f = lambda S=S, IF=IF, blocks=blocks, mode=mode, yshape=yshape: norm_k(
                inputs=[h, dl, g, w, g, pos, freqs, w], output_shapes=[(1, K), yshape], output_dtypes=[dt, dt],
                grid=(256 * blocks, 1, 1), threadgroup=(256, 1, 1),
                template=[("T", dt), ("K", K), ("N", N), ("S", S), ("ADD", True), ("BIAS", False),
                          ("MODE", mode), ("D", 64 if mode == 1 else 2), ("ROT", 2560 if mode == 1 else 0),
                          ("FREQS", True), ("EPS", fbits(1e-5)), ("SCALE", fbits(1.0)), ("LOG2B", 0),
                          ("IF", IF), ("PFL", 0)])[1]
            mx.eval(f())
            group(f"{name} cider S={S} in-flight={IF} blocks={blocks}", f)
    if "down" in parts:
        down(mx, dt, HEADER, CALLS, group)
    if "attn" in parts:
        attn_o(mx, dt, HEADER, CALLS, group)
    if "greedy" not in parts:
        json.dump(labels, open(LABELS, "w"))
        return
    logits = (mx.random.normal((1, 128256)) * 4).astype(dt)
    mx.eval(logits)
    mlx_greedy = lambda: mx.argmax(logits - mx.logsumexp(logits, axis=-1, keepdims=True), axis=-1)
    scratch = mx.zeros((129,), mx.uint32)
    mx.eval(scratch)
    nb = min(64, 128256 // 2048)
    ours = lambda: greedy_k(inputs=[logits, scratch, scratch], output_shapes=[(1,)], output_dtypes=[mx.uint32],
                            grid=(256 * nb, 1, 1), threadgroup=(256, 1, 1),
                            template=[("T", dt), ("V", 128256), ("NB", nb)])[0]
    same = mlx_greedy().item() == ours().item()
    group("greedy MLX logsumexp+subtract+argmax", mlx_greedy)
    group(f"greedy cider same={same}", ours)
    json.dump(labels, open(LABELS, "w"))
    print(f"{len(labels)} groups; labels in {LABELS}", flush=True)


def down(mx, dt, header, calls, group):
    """The MLP's down projection (Llama-3.2-1B: 2048 x 8192), cider's gemv
    per split against MLX's one-row matmul; largest difference printed."""
    N, K = 2048, 8192
    kern = mx.fast.cuda_kernel("cider_gemv", ["x", "w", "bias", "nxt"], ["y"], calls["kCiderGemvCall"], header=header)
    w = (mx.random.normal((N, K)) * 0.02).astype(dt)
    x = mx.random.normal((1, K)).astype(dt)
    mx.eval(w, x)
    ref = mx.matmul(x, w.T)
    group("down MLX matmul", lambda: mx.matmul(x, w.T))
    for S, IF in [(2, 4), (4, 4), (8, 4), (4, 2), (8, 2), (2, 2)]:
        blocks = (N // 2 + 8 // S - 1) // (8 // S)
        f = lambda S=S, IF=IF, blocks=blocks: kern(
            inputs=[x, w, w, w], output_shapes=[(1, N)], output_dtypes=[dt], grid=(256 * blocks, 1, 1),
            threadgroup=(256, 1, 1), template=[("T", dt), ("K", K), ("N", N), ("S", S), ("BIAS", False), ("IF", IF), ("PFL", 0)])[0]
        e = mx.abs(f().astype(mx.float32) - ref.astype(mx.float32)).max().item()
        print(f"down S={S} IF={IF}: |diff| {e:.3g} of {mx.abs(ref).max().item():.3g}", flush=True)
        group(f"down cider S={S} in-flight={IF} blocks={blocks}", f)


def attn_o(mx, dt, header, calls, group):
    """One query's attention + o projection (Llama-3.2-1B: 32 q heads, 8 kv
    heads of 64, hidden 2048) against MLX's sdpa + matmul, at n positions."""
    HQ, HK, D, N = 32, 8, 64, 2048
    K = HQ * D
    kern = mx.fast.cuda_kernel("cider_attn_o", ["q", "cache", "pos", "w", "bias", "scratch", "nxt"], ["y", "att"],
                               calls["kCiderAttnOCall"], header=header)
    scale = D ** -0.5
    cap = 1280
    cache = (mx.random.normal((1, 2 * HK, cap, D))).astype(dt)
    w = (mx.random.normal((N, K)) * 0.02).astype(dt)
    MAXH, MS = 128, 4  # the scratch's room: heads of up to 128, slices a head
    scratch = mx.zeros((2 + MAXH + MAXH * MS * (1 + 128 + 2),), mx.uint32)  # attn_o's layout
    mx.eval(cache, w, scratch)
    worst = 0.0
    for n in (1, 2, 37, 128, 384, 1024, 384, 1):
        q = mx.random.normal((1, HQ, 1, D)).astype(dt)
        pos = mx.arange(n - 1, n + 3, dtype=mx.int32)
        mx.eval(q, pos)
        ref_att = mx.fast.scaled_dot_product_attention(q, cache[:, :HK, :n], cache[:, HK:, :n], scale=scale)
        ref = lambda ref_att=ref_att: mx.matmul(ref_att.reshape(1, K), w.T)
        for S in [int(x) for x in os.environ.get("ATTN_S", "1,2,4,8").split(",")]:
            blocks = (N // 2 + 8 // S - 1) // (8 // S)
            f = lambda S=S, blocks=blocks, q=q, pos=pos: kern(
                inputs=[q, cache, pos, w, w, scratch, w], output_shapes=[(1, N), (1, K)], output_dtypes=[dt, dt],
                grid=(256 * blocks, 1, 1), threadgroup=(256, 1, 1),
                template=[("T", dt), ("K", K), ("N", N), ("S", S), ("BIAS", False), ("D", D), ("HQ", HQ), ("HK", HK),
                          ("TMAX", 2048), ("SCALE_LOG2", fbits(scale * 1.4426950408889634)), ("IF", 4),
                          ("MAXH", MAXH), ("MS", MS), ("PFL", 0)])
            for rep in range(3):
                y, att = f()
                ea = mx.abs(att.astype(mx.float32) - ref_att.reshape(1, K).astype(mx.float32)).max().item()
                ta = mx.abs(ref_att.astype(mx.float32)).max().item()
                ey = mx.abs(y.astype(mx.float32) - ref().astype(mx.float32)).max().item()
                ty = mx.abs(ref().astype(mx.float32)).max().item()
                worst = max(worst, ea / ta, ey / ty)
            print(f"attn_o n={n} S={S}: att |diff| {ea:.3g} of {ta:.3g}, y |diff| {ey:.3g} of {ty:.3g}", flush=True)
            if n in (128, 384, 1024) and rep == 2:
                group(f"attn_o cider n={n} S={S} blocks={blocks}", lambda f=f: f()[0])
        if n in (128, 384, 1024):
            group(f"attn_o MLX sdpa+matmul n={n}", lambda q=q, n=n: mx.matmul(
                mx.fast.scaled_dot_product_attention(q, cache[:, :HK, :n], cache[:, HK:, :n], scale=scale).reshape(1, K), w.T))
            group(f"attn_o MLX sdpa alone n={n}", lambda q=q, n=n: mx.fast.scaled_dot_product_attention(
                q, cache[:, :HK, :n], cache[:, HK:, :n], scale=scale))
    print(f"attn_o worst relative difference {worst:.3g}", flush=True)


def table(log):
    labels = json.load(open(LABELS))
    groups, cur = [], None
    for name, grid, block, us in rows(log):
        if "Sin" in name:
            cur = []
            groups.append(cur)
        elif "Cos" in name:
            cur = None
        elif cur is not None:
            cur.append((name, us))
    groups = groups[:len(labels)]
    print("device us per call (sum of a call's kernels, mean of 3; ncu, caches flushed before each kernel)")
    for label, g in zip(labels, groups):
        print(f"{sum(us for _, us in g) / 3:9.1f} us  {label}   [{len(g) // 3} kernel(s): {g[0][0][:60] if g else '-'}]")


if __name__ == "__main__":
    main()
