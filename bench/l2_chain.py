"""Device time of a whole decode step's layer kernels (Llama-3.2-1B bf16:
16 layers of q/k/v + RoPE, attention + o projection, gate/up + SwiGLU, down)
chained as cider's decode step chains them, under several settings of the
next-weights L2 prefetch (l2_share in core/cpp/gpu_decode_src.h; megabytes
per boundary as CIDER_GPU_PF takes them: one number, or four for q/k/v, o,
gate/up, down).

Why not `cider bench`: on a lent host whose MLX host time per step (graph
build + encode, about 1.07 ms on a slow one) covers the device's, tok/s shows
the host, not the kernels. Here all 64 kernels go into one CUDA graph (MLX's
per-graph limits raised, so nothing runs until all is encoded), between two
one-thread kernels that read the GPU's clock (%globaltimer): their
difference is the device's time for the chain, without host gaps.

    python3 bench/l2_chain.py [--pos 128] [--rounds 15] [--settings "0;8;16;12,8,0,0"]

Settings alternate round by round (noise hits all alike); printed: median
and spread of ms per chain, and the ratio to the first setting.
"""
import argparse
import os
import sys
import statistics

from dec_src import fbits, parse, text

HEADER, CALLS = parse(text())

# Llama-3.2-1B
LAYERS, HID, HQ, HK, D, FF = 16, 2048, 32, 8, 64, 8192
QKV = (HQ + 2 * HK) * D


def parse(setting):
    v = [float(x) for x in setting.split(",")]
    return v * 4 if len(v) == 1 else v


def main():
    # One CUDA graph for the whole chain (MLX reads these when it starts).
    if "MLX_MAX_OPS_PER_BUFFER" not in os.environ:
        os.environ.update(MLX_MAX_OPS_PER_BUFFER="10000", MLX_MAX_MB_PER_BUFFER="1000000")
        os.execv(sys.executable, [sys.executable] + sys.argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("--pos", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--settings", default="0;8;16;12,8,0,0;0,0,8,8")
    ap.add_argument("--head", action="store_true", help="add the final norm and output head (MLX's ops), as a step has")
    ap.add_argument("--head-prefetch", action="store_true",
                    help="the last down kernel asks L2 for the head's first megabytes (cider does not; the "
                         "thirteenth pass's recorded --head runs did)")
    a = ap.parse_args()
    import mlx.core as mx

    dt = mx.bfloat16
    norm_kv = mx.fast.cuda_kernel("cider_dec_kv", ["h", "dl", "g", "w", "bias", "pos", "freqs", "cache", "prev", "nxt"],
                                  ["hout", "q"], CALLS["kCiderNormKvCall"], header=HEADER)
    norm = mx.fast.cuda_kernel("cider_dec", ["h", "dl", "g", "w", "bias", "pos", "freqs", "nxt"], ["hout", "y"],
                               CALLS["kCiderNormCall"], header=HEADER)
    attn = mx.fast.cuda_kernel("cider_attn_o", ["q", "cache", "pos", "w", "bias", "scratch", "nxt"], ["y", "att"],
                               CALLS["kCiderAttnOCall"], header=HEADER)
    gemv = mx.fast.cuda_kernel("cider_gemv", ["x", "w", "bias", "nxt"], ["y"], CALLS["kCiderGemvCall"], header=HEADER)
    clock = mx.fast.cuda_kernel("cider_clock", ["after"], ["t"], """
  unsigned long long g;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
  t[0] = g;""")
    stamp = lambda after: clock(inputs=[after], output_shapes=[(1,)], output_dtypes=[mx.uint64], grid=(1, 1, 1),
                                threadgroup=(1, 1, 1))[0]

    mx.random.seed(0)
    layers = []
    for _ in range(LAYERS):
        ws = [(mx.random.normal(s) * 0.02).astype(dt) for s in ((QKV, HID), (HID, HQ * D), (2 * FF, HID), (HID, FF))]
        cache = mx.random.normal((1, 2 * HK, 512, D)).astype(dt)
        mx.eval(*ws, cache)
        layers.append((ws, cache))
    g = mx.ones((HID,), dt)
    freqs = mx.ones((D // 2,), mx.float32)
    pos = mx.arange(a.pos, a.pos + 4, dtype=mx.int32)
    scratch = mx.zeros((2 + 128 + 128 * 4 * (1 + 128 + 2),), mx.uint32)  # attn_o's layout (gpu_decode.cc)
    h0 = mx.random.normal((1, HID)).astype(dt)
    whead = (mx.random.normal((128256, HID)) * 0.02).astype(dt)  # Llama-3.2-1B's vocabulary
    mx.eval(g, freqs, pos, scratch, h0, whead)
    common = [("EPS", fbits(1e-5)), ("SCALE", fbits(1.0)), ("IF", 4)]

    def lines(mb, w):
        return int(min(w.nbytes, mb * (1 << 20)) // 128)

    def chain(pf):
        h, delta = h0, None
        t0 = stamp(h0)
        for i, ((wqkv, wo, wgu, wdown), cache) in enumerate(layers):
            nq = layers[i + 1][0][0] if i + 1 < LAYERS else None
            hout, q = norm_kv(
                inputs=[h, delta if delta is not None else h, g, wqkv, g, pos, freqs, cache, t0 if i == 0 else cache, wo],
                output_shapes=[(1, HID), (1, HQ, 1, D)], output_dtypes=[dt, dt], grid=(256 * 192, 1, 1),
                threadgroup=(256, 1, 1),
                template=[("T", dt), ("K", HID), ("N", QKV), ("S", 1), ("ADD", delta is not None), ("BIAS", False),
                          ("MODE", 1), ("D", D), ("ROT", (HQ + HK) * D), ("FREQS", True), ("LOG2B", 0)] + common
                + [("PFL", lines(pf[1], wo)), ("QN", HQ * D)])
            r = attn(inputs=[q, cache, pos, wo, wo, scratch, wgu], output_shapes=[(1, HID), (1, HQ * D)],
                     output_dtypes=[dt, dt], grid=(256 * 256, 1, 1), threadgroup=(256, 1, 1),
                     template=[("T", dt), ("K", HQ * D), ("N", HID), ("S", 2), ("BIAS", False), ("D", D), ("HQ", HQ),
                               ("HK", HK), ("TMAX", 2048), ("SCALE_LOG2", fbits(D ** -0.5 * 1.4426950408889634)),
                               ("IF", 4), ("MAXH", 128), ("MS", 4), ("PFL", lines(pf[2], wgu))])[0]
            h, act = norm(inputs=[hout, r, g, wgu, g, pos, freqs, wdown], output_shapes=[(1, HID), (1, FF)],
                          output_dtypes=[dt, dt], grid=(256 * 1024, 1, 1), threadgroup=(256, 1, 1),
                          template=[("T", dt), ("K", HID), ("N", 2 * FF), ("S", 1), ("ADD", True), ("BIAS", False),
                                    ("MODE", 2), ("D", 2), ("ROT", 0), ("FREQS", False), ("LOG2B", 0)] + common
                          + [("PFL", lines(pf[3], wdown))])
            if nq is None and a.head and a.head_prefetch:
                nq = whead  # (cider's last down kernel names no next weights)
            delta = gemv(inputs=[act, wdown, wdown, nq if nq is not None else wdown], output_shapes=[(1, HID)],
                         output_dtypes=[dt], grid=(256 * 512, 1, 1), threadgroup=(256, 1, 1),
                         template=[("T", dt), ("K", FF), ("N", HID), ("S", 4), ("BIAS", False), ("IF", 2),
                                   ("PFL", lines(pf[0], nq) if nq is not None else 0)])[0]
        out = h + delta
        if a.head:
            out = mx.argmax(mx.matmul(mx.fast.rms_norm(out, g, 1e-5), whead.T), axis=-1)
        return out, t0, stamp(out)

    settings = a.settings.split(";")
    ref = None
    times = {s: [] for s in settings}
    for s in settings:  # compile, and every setting gives the same output
        out, _, _ = chain(parse(s))
        mx.eval(out)
        ref = out if ref is None else ref
        same = mx.array_equal(out, ref).item()
        print(f"setting {s}: output {'identical' if same else 'DIFFERS'} to the first", flush=True)
    for r in range(a.rounds):
        for s in settings:
            out, t0, t1 = chain(parse(s))
            mx.eval(out, t1)
            times[s].append((t1.item() - t0.item()) / 1e6)
    base = statistics.median(times[settings[0]][2:])
    print(f"16 layers' kernels{' + norm, head, argmax' if a.head else ''} at position {a.pos}, device ms per chain (median [min-max] of {a.rounds - 2}, first 2 dropped)")
    for s in settings:
        t = times[s][2:]
        m = statistics.median(t)
        print(f"  PF {s:>12}: {m:.3f} [{min(t):.3f}-{max(t):.3f}]  x{m / base:.3f}", flush=True)


if __name__ == "__main__":
    main()
