"""Where the attention + o projection kernel's time goes, phase by phase:
runs an instrumented copy of the kernel (globaltimer stamps, see
instrument()) on Llama-3.2-1B's shapes at 128 and 384 positions, with L2
flushed and warm, and prints each phase's median time from block 0's entry.

    python bench/attn_timing.py [SOURCE]    # default core/cpp/gpu_decode_src.h
"""
import sys

import numpy as np
import mlx.core as mx

import dec_src
from dec_src import fbits, parse, text


def instrument(text):
    """The kernel source with globaltimer stamps (thread 0 of block 0, which
    runs head 0, and of block 200, which only waits) written to scratch words
    60100 + 2i (low, high); each stamp adds a little latency of its own."""
    s = text

    def sub(old, new, req=True):
        nonlocal s
        if s.count(old) != 1:
            assert not req, old
            return False
        s = s.replace(old, new, 1)
        return True
    sub('''__device__ __forceinline__ unsigned ld_acquire(''', '''__device__ unsigned* g_dbg;
__device__ __forceinline__ void stamp(unsigned* sc, int i) {
  unsigned long long gt;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
  sc[60100 + 2 * i] = unsigned(gt);
  sc[60100 + 2 * i + 1] = unsigned(gt >> 32);
}
#define STAMP(cond, i) do { if ((cond) && threadIdx.x == 0) stamp(g_dbg, i); } while (0)
__device__ __forceinline__ unsigned ld_acquire(''')
    if not sub('''      run(u, tid == 0 && s_won);  // (whether this block's claim won: thread 0 knows)''', '''      STAMP(blockIdx.x == 0, 1);
      run(u, tid == 0 && s_won);  // (whether this block's claim won: thread 0 knows)
      STAMP(blockIdx.x == 0, 8);''', False):
        sub('''      run(u, old);''', '''      STAMP(blockIdx.x == 0, 1);
      run(u, old);
      STAMP(blockIdx.x == 0, 8);''')
    sub('''      s_done = c >= unsigned(units);''', '''      s_done = c >= unsigned(units);
      if (s_done) { STAMP(blockIdx.x == 0, 9); STAMP(blockIdx.x == 200, 20); }''')
    sub('''  float m = -3.402823466e38f;
  // (Rounds are block-uniform, so every lane reaches the shuffles.)''', '''  STAMP(blockIdx.x == 0 && hd == 0 && qv[0] != 12345.f, 2);
  float m = -3.402823466e38f;
  // (Rounds are block-uniform, so every lane reaches the shuffles.)''')
    sub('''  __syncthreads();  // every score is in shared memory''', '''  __syncthreads();  // every score is in shared memory
  STAMP(blockIdx.x == 0 && hd == 0, 3);''')
    sub('''  // Values: warp w takes positions w, w + 8, ...; lane l dims l * VPL...''', '''  STAMP(blockIdx.x == 0 && hd == 0, 4);
  // Values: warp w takes positions w, w + 8, ...; lane l dims l * VPL...''')
    sub('''  for (int j = 0; j < VPL; j++) red[warp * D + lane * VPL + j] = o[j];
  __syncthreads();''', '''  for (int j = 0; j < VPL; j++) red[warp * D + lane * VPL + j] = o[j];
  __syncthreads();
  STAMP(blockIdx.x == 0 && hd == 0, 5);''')
    # entry: right after the tid line inside attn_o (the second occurrence of this line pattern is in attn_o)
    i = s.index('__device__ __forceinline__ void attn_o(')
    j = s.index('  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;\n', i) + len('  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;\n')
    s = s[:j] + '''  if ((blockIdx.x == 0 || blockIdx.x == 200) && threadIdx.x == 0) { g_dbg = const_cast<unsigned*>(scratch_in); __threadfence_block(); }
  STAMP(blockIdx.x == 0, 0);
  STAMP(blockIdx.x == 200, 19);
''' + s[j:]
    if not sub('''  exit_reset(scratch, exits, 2 + MAXH + units, false);
''', '''  STAMP(blockIdx.x == 0, 10);
  exit_reset(scratch, exits, 2 + MAXH + units, false);
  STAMP(blockIdx.x == 0, 11);
''', False):
        sub('''  const unsigned exit_old = exit_count(exits, false);
''', '''  STAMP(blockIdx.x == 0, 10);
  const unsigned exit_old = exit_count(exits, false);
  STAMP(blockIdx.x == 0, 11);
''')
    sub('''                                acc1, nxt, PFL))
    rp.store<BIAS>(acc0, acc1, bias, y);
''', '''                                acc1, nxt, PFL))
    rp.store<BIAS>(acc0, acc1, bias, y);
  STAMP(blockIdx.x == 0, 12);
  STAMP(blockIdx.x == 200, 21);
''')
    return s


HEADER, CALLS = parse(instrument(text(sys.argv[1] if len(sys.argv) > 1 else dec_src.DEFAULT)))
fb = fbits
dt = mx.bfloat16
HQ, HK, D, N = 32, 8, 64, 2048
K = HQ * D
kern = mx.fast.cuda_kernel("cider_attn_o_t", ["q", "cache", "pos", "w", "bias", "scratch", "nxt"], ["y", "att"], CALLS["kCiderAttnOCall"], header=HEADER)
cache = mx.random.normal((1, 2 * HK, 1280, D)).astype(dt)
w = (mx.random.normal((N, K)) * 0.02).astype(dt)
big = mx.ones((64 << 20,), mx.float32)
mx.eval(cache, w, big)
names = {0: "entry", 1: "head starts", 2: "q loaded", 3: "scores done", 4: "softmax done", 5: "values done",
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
            y, att = kern(inputs=[q, cache, pos, w, w, scratch, w], output_shapes=[(1, N), (1, K)], output_dtypes=[dt, dt],
                          grid=(256 * 256, 1, 1), threadgroup=(256, 1, 1),
                          template=[("T", dt), ("K", K), ("N", N), ("S", 2), ("BIAS", False), ("D", D), ("HQ", HQ), ("HK", HK),
                                    ("TMAX", 2048), ("SCALE_LOG2", fb(D ** -0.5 * 1.4426950408889634)), ("IF", 4),
                                    ("MAXH", 128), ("MS", 4), ("PFL", 0)])
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
