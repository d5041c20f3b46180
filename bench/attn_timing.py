# Phase timing inside the attention kernel (instrumented variant: stamps in scratch words 60000+).
import os, re, struct, sys, statistics
import numpy as np
import mlx.core as mx
SRC = open(sys.argv[1]).read()
(HEADER,) = re.findall(r'R"CUDA\((.*?)\)CUDA"', SRC, re.S)
CALLS = {k: "".join(re.findall(r'"([^"]*)"', v)) for k, v in re.findall(r'(kCider\w+Call) =\s*((?:"[^"]*"\s*)+);', SRC)}
fb = lambda f: struct.unpack("<i", struct.pack("<f", f))[0]
dt = mx.bfloat16
HQ, HK, D, N = 32, 8, 64, 2048
K = HQ * D
kern = mx.fast.cuda_kernel("cider_attn_o_t", ["q", "cache", "pos", "w", "bias", "scratch"], ["y", "att"], CALLS["kCiderAttnOCall"], header=HEADER)
cache = mx.random.normal((1, 2 * HK, 1280, D)).astype(dt)
w = (mx.random.normal((N, K)) * 0.02).astype(dt)
big = mx.ones((64 << 20,), mx.float32)
mx.eval(cache, w, big)
names = {0: "entry", 1: "claim known", 2: "q loaded", 3: "scores done", 4: "softmax done", 5: "values done",
         8: "unit counted", 9: "wait over", 10: "after wait", 11: "exit count", 12: "o proj stored"}
for n in (128, 384):
    for cold in (True, False):
        rows = []
        for it in range(25):
            scratch = mx.zeros((67202,), mx.uint32)
            q = mx.random.normal((1, HQ, 1, D)).astype(dt)
            pos = mx.arange(n - 1, n + 3, dtype=mx.int32)
            mx.eval(scratch, q, pos)
            if cold:
                mx.eval(big.sum())
            y, att = kern(inputs=[q, cache, pos, w, w, scratch], output_shapes=[(1, N), (1, K)], output_dtypes=[dt, dt],
                          grid=(256 * 256, 1, 1), threadgroup=(256, 1, 1),
                          template=[("T", dt), ("K", K), ("N", N), ("S", 2), ("BIAS", False), ("D", D), ("HQ", HQ), ("HK", HK),
                                    ("TMAX", 2048), ("SCALE_LOG2", fb(D ** -0.5 * 1.4426950408889634)), ("IF", 4),
                                    ("MAXH", 128), ("MS", 4)])
            mx.eval(y, att)
            s = np.array(scratch).astype(np.uint64)
            gt = s[60100::2][:32] | (s[60101::2][:32] << np.uint64(32))
            if it >= 5:
                rows.append(gt.astype(np.int64))
        r = np.array(rows)
        base = r[:, 0:1]
        med = np.median(r - base, axis=0)
        print(f"n={n} {'cold (L2 flushed)' if cold else 'warm'}: block 0 (head 0), ns from its entry (globaltimer, median of 20):")
        print("   " + ", ".join(f"{names[i]} {med[i]:.0f}" for i in sorted(names)))
        print(f"   block 200 (waits): entry {np.median(r[:, 19] - r[:, 0]):.0f}, wait over {np.median(r[:, 20] - r[:, 0]):.0f}, stored {np.median(r[:, 21] - r[:, 0]):.0f}")
