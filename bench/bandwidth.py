"""Device memory bandwidth for the decode roofline: a large device-to-device
copy (bytes read + bytes written) through PyTorch and through MLX, median of
20 after warm-up. Usage: python bench/bandwidth.py [GB]"""

import statistics
import sys
import time

gb = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
n = int(gb * 1e9 // 4)
out = {}
try:
    import torch

    a = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    out["torch copy"] = 2 * 4 * n / statistics.median(ts) / 1e12
    del a, b
    torch.cuda.empty_cache()
except Exception as e:  # no torch or no CUDA
    out["torch copy"] = f"n/a ({e})"

import mlx.core as mx

a = mx.random.uniform(shape=(n,))
mx.eval(a)
ts = []
for i in range(23):
    t = time.perf_counter()
    b = a + 0  # one read, one write
    mx.eval(b)
    dt = time.perf_counter() - t
    if i >= 3:
        ts.append(dt)
    del b
out["mlx a+0"] = 2 * 4 * n / statistics.median(ts) / 1e12
for k, v in out.items():
    print(f"{k}: {v if isinstance(v, str) else f'{v:.2f} TB/s'}")
