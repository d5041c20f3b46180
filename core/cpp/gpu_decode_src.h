// CUDA source of cider's GPU decode kernels, compiled at first use through
// mx::fast::cuda_kernel (gpu_decode.cc). Kept in its own file so
// bench/gpu_decode.py can run the very same text.
//
// Why: one-token decode of a bf16/f16 model on an H100 is bound by MLX's host
// time per graph node (about 4-6 us each to build and encode, against about
// 1 us of device time for a small kernel; bench/RESULTS.md). A llama-family
// layer was 12 kernels. norm_gemv does in one what took up to five:
//   [residual add] -> RMSNorm -> matrix-vector product -> [bias] -> epilogue
// with epilogue RoPE on q and k (the attention's input projection, keys and
// values written straight into the KV cache) or SwiGLU (the MLP's gate and
// up projection), so a layer is 5 kernels. greedy samples a token in one
// kernel where MLX's ops take three.
//
// Every rounding step of MLX's separate ops is kept: the residual sum, the
// normalised row and its product with the norm weight are rounded to T as
// MLX's add and rms_norm round them; each product is rounded to T (bias
// added before, as cuBLAS's epilogue does) before RoPE or SwiGLU, which
// compute in float from the rounded values as MLX's kernels do. Only the
// order in which a dot product sums its terms differs from cuBLAS's.
//
// Layout: each warp (or S warps, each over a slice of K) computes a pair of
// output rows. A block of 8 warps first normalises the input row into
// shared memory (every block does: it is 2K-8K elements read from L2, one
// 16-byte load per thread and array, against 8 rows of weights from DRAM),
// while its warps' first weight loads are already in flight. Pairs are the
// rows RoPE rotates together (j and j + D/2 of one head), or SwiGLU's gate
// row i and up row i, so the epilogue needs no exchange between warps.
//
// MLX rebuilds and hashes a custom kernel's whole text on every call, so
// the text given per call is one line calling into kCiderDecodeSource, which
// gpu_decode.cc hands to the compiler as an included file.
#pragma once

namespace cider {

inline constexpr const char* kCiderDecodeSource = R"CUDA(
namespace cider_dec {
// 8 weights (one 16-byte load) times 8 normalised inputs, into acc.
template <typename T>
__device__ __forceinline__ float dot8(float acc, const uint4 w, const float4 x0, const float4 x1) {
  const T* e = reinterpret_cast<const T*>(&w);
  acc = fmaf(static_cast<float>(e[0]), x0.x, acc);
  acc = fmaf(static_cast<float>(e[1]), x0.y, acc);
  acc = fmaf(static_cast<float>(e[2]), x0.z, acc);
  acc = fmaf(static_cast<float>(e[3]), x0.w, acc);
  acc = fmaf(static_cast<float>(e[4]), x1.x, acc);
  acc = fmaf(static_cast<float>(e[5]), x1.y, acc);
  acc = fmaf(static_cast<float>(e[6]), x1.z, acc);
  acc = fmaf(static_cast<float>(e[7]), x1.w, acc);
  return acc;
}
// Chunk c (256 wide: 8 elements a lane) of rows w0 and w1, streamed (read once).
template <typename T, int K>
__device__ __forceinline__ void ld2(uint4& a, uint4& b, const T* w0, const T* w1, int c, int lane, bool live) {
  const int k = c * 256 + lane * 8;
  if (live && k < K) {
    a = __ldcs(reinterpret_cast<const uint4*>(w0 + k));
    b = __ldcs(reinterpret_cast<const uint4*>(w1 + k));
  }
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Inputs: h [K] (residual row), dl [K] (added to h when ADD), g [K] (norm
// weight), w [N, K] (row-major), bias [N] (when BIAS), pos [1] int32 (RoPE
// position), freqs [D/2] float32 (RoPE frequencies when FREQS).
// Outputs: hout [K] (h + dl, rounded; h when not ADD), y.
// MODE 1: y [N] with rows < ROT rotated (head dim D, position SCALE * pos,
// frequencies freqs or base 2^LOG2B); 2: y [N/2] = silu(rows < N/2) *
// (rows >= N/2). EPS, SCALE, LOG2B: float bits.
// QN > 0 (the KV variant): y is q [1, QN / D, 1, D], rows < QN; the rest,
// keys then values, are written in place at position pos of the KV cache
// buffer [1, heads, cap, D] (the cache's only owner passes it; see
// gpu_decode.cc for why that is sound).
// S (1, 2, 4 or 8) warps share a row pair, each summing a slice of K: few
// rows (a 1B model's q/k/v: 1536 pairs) then still fill the GPU.
template <typename T, int K, int N, int S, bool ADD, bool BIAS, int MODE, int D, int ROT, int QN, bool FREQS,
          int EPS, int SCALE, int LOG2B>
__device__ __forceinline__ void norm_gemv(const T* h, const T* dl, const T* g, const T* w, const T* bias,
                                          const int* pos, const float* freqs, T* cache, int cap, T* hout, T* y) {
  constexpr int WARPS = 8, TH = 32 * WARPS;
  constexpr int C = (K + 255) / 256;    // 256-wide chunks of a row: 8 elements per lane
  constexpr int CW = (C + S - 1) / S;   // chunks per warp
  constexpr int CB = CW < 4 ? CW : 4;   // chunks of both rows in flight per warp
  constexpr int PB = WARPS / S;         // row pairs per block
  constexpr int P = N / 2;              // row pairs
  constexpr int DH = D > 1 ? D / 2 : 1;
  constexpr int V8 = K / 8, VT = (V8 + TH - 1) / TH;  // 8-element pieces of the row, per thread
  __shared__ __align__(16) float xs[K];
  __shared__ float red[WARPS];
  __shared__ float part_sum[WARPS][2];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int pair = blockIdx.x * PB + warp / S, part = warp % S, c0 = part * CW;
  const bool live = pair < P;
  int r0, r1;
  if (MODE == 2) {
    r0 = pair;
    r1 = pair + P;
  } else {
    r0 = (pair / DH) * D + pair % DH;
    r1 = r0 + DH;
  }
  const T* w0 = w + size_t(live ? r0 : 0) * K;
  const T* w1 = w + size_t(live ? r1 : 0) * K;

  // The first weights are on their way while the block normalises.
  uint4 a[CB], b[CB];
#pragma unroll
  for (int i = 0; i < CB; i++) ld2<T, K>(a[i], b[i], w0, w1, c0 + i, lane, live);

  // The row, h, dl and g: every 16-byte load issued before any is used.
  uint4 hv[VT], dv[VT], gv[VT];
#pragma unroll
  for (int j = 0; j < VT; j++) {
    const int i = tid + j * TH;
    if (i < V8) {
      hv[j] = reinterpret_cast<const uint4*>(h)[i];
      if (ADD) dv[j] = reinterpret_cast<const uint4*>(dl)[i];
      gv[j] = reinterpret_cast<const uint4*>(g)[i];
    }
  }
  float v[VT][8];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < VT; j++) {
    const int i = tid + j * TH;
    if (i < V8) {
      const T* he = reinterpret_cast<const T*>(&hv[j]);
      const T* de = reinterpret_cast<const T*>(&dv[j]);
      uint4 ov;
      T* o = reinterpret_cast<T*>(&ov);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        float x = static_cast<float>(he[e]);
        if (ADD) x = static_cast<float>(static_cast<T>(x + static_cast<float>(de[e])));
        v[j][e] = x;
        ss += x * x;
        o[e] = static_cast<T>(x);
      }
      if (blockIdx.x == 0) reinterpret_cast<uint4*>(hout)[i] = ov;
    }
  }
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float tot = 0.f;
#pragma unroll
  for (int i = 0; i < WARPS; i++) tot += red[i];
  const float r = rsqrtf(tot / K + __int_as_float(EPS));
#pragma unroll
  for (int j = 0; j < VT; j++) {
    const int i = tid + j * TH;
    if (i < V8) {
      const T* ge = reinterpret_cast<const T*>(&gv[j]);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const T n = static_cast<T>(v[j][e] * r);
        xs[i * 8 + e] = static_cast<float>(static_cast<T>(static_cast<float>(ge[e]) * static_cast<float>(n)));
      }
    }
  }
  __syncthreads();

  // Each chunk's registers are refilled with the chunk CB ahead as soon as
  // they are used (the loop is unrolled, so a[i % CB] is a register), which
  // keeps CB loads in flight until the warp's last chunk.
  float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
  for (int i = 0; i < CW; i++) {
    const int k = (c0 + i) * 256 + lane * 8;
    if (live && k < K) {
      const float4 x0 = *reinterpret_cast<const float4*>(xs + k);
      const float4 x1 = *reinterpret_cast<const float4*>(xs + k + 4);
      acc0 = dot8<T>(acc0, a[i % CB], x0, x1);
      acc1 = dot8<T>(acc1, b[i % CB], x0, x1);
    }
    if (i + CB < CW) ld2<T, K>(a[i % CB], b[i % CB], w0, w1, c0 + i + CB, lane, live);
  }
  acc0 = warp_sum(acc0);
  acc1 = warp_sum(acc1);
  if (S > 1) {
    // The pair's first warp adds the S partial sums, always in one order.
    if (lane == 0) {
      part_sum[warp][0] = acc0;
      part_sum[warp][1] = acc1;
    }
    __syncthreads();
    if (part != 0) return;
    acc0 = 0.f;
    acc1 = 0.f;
#pragma unroll
    for (int i = 0; i < S; i++) {
      acc0 += part_sum[warp + i][0];
      acc1 += part_sum[warp + i][1];
    }
  }
  auto store = [&](int r, T val) {
    if (QN == 0 || r < QN) {
      y[r] = val;
    } else {
      const int i = r - QN;
      cache[(size_t(i / D) * cap + pos[0]) * D + i % D] = val;
    }
  };
  if (!live || lane != 0) return;

  if (BIAS) {
    acc0 += static_cast<float>(bias[r0]);
    acc1 += static_cast<float>(bias[r1]);
  }
  T t0 = static_cast<T>(acc0), t1 = static_cast<T>(acc1);
  if (MODE == 2) {
    // silu(gate) * up, rounded after each op as MLX's compiled graph does.
    const float gt = static_cast<float>(t0);
    const T s = static_cast<T>(1.0f / (1.0f + expf(-gt)));
    const T sg = static_cast<T>(gt * static_cast<float>(s));
    store(pair, static_cast<T>(static_cast<float>(sg) * static_cast<float>(t1)));
    return;
  }
  if (MODE == 1 && r0 < ROT) {
    const int j = pair % DH;
    float inv;
    if (FREQS) {
      inv = 1.0 / static_cast<double>(freqs[j]);
    } else {
      inv = exp2f(-(static_cast<float>(j) / static_cast<float>(DH)) * __int_as_float(LOG2B));
    }
    const float th = __int_as_float(SCALE) * static_cast<float>(pos[0]) * inv;
    const float cs = cosf(th), sn = sinf(th);
    const float x1 = static_cast<float>(t0), x2 = static_cast<float>(t1);
    t0 = static_cast<T>(x1 * cs - x2 * sn);
    t1 = static_cast<T>(x1 * sn + x2 * cs);
  }
  store(r0, t0);
  store(r1, t1);
}

// Greedy sampling of one row of logits x [V] -> y [1] (uint32): the first
// index of the largest T(x - T(logsumexp(x))), what MLX's logsumexp,
// subtract and argmax give (mlx-lm samples from log-probabilities, and
// rounding them can tie logits that differ). One block of 1024 threads, two
// passes over the row (in L2): the running max and sum of exponentials as
// MLX's logsumexp keeps them (same fast exp), then the argmax.
template <typename T, int V>
__device__ __forceinline__ void greedy(const T* x, unsigned* y) {
  constexpr int TH = 1024, U = 4;  // U 16-byte loads in flight per thread
  __shared__ float sm[32], sn[32], bv[32];
  __shared__ unsigned bi[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // x may start inside a 16-byte word (the last row of a prompt's logits is
  // a view at (L - 1) * V elements): the elements before the first whole
  // word, and after the last, are read one at a time.
  const int lead0 = int(((16 - (reinterpret_cast<size_t>(x) & 15)) & 15) / sizeof(T));
  const int lead = lead0 < V ? lead0 : V, nv = (V - lead) / 8, tail = lead + nv * 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x + lead);
  auto single = [&](int k) { return k < lead ? k : tail + (k - lead); };  // k-th element read singly
  const int ns = V - nv * 8;

  float m = -3.402823466e38f, n = 0.f;
  for (int i0 = tid; i0 < nv; i0 += U * TH) {
    uint4 u[U];
#pragma unroll
    for (int k = 0; k < U; k++)
      if (i0 + k * TH < nv) u[k] = xv[i0 + k * TH];
#pragma unroll
    for (int k = 0; k < U; k++) {
      if (i0 + k * TH >= nv) break;
      const T* e = reinterpret_cast<const T*>(&u[k]);
      float mm = m;
#pragma unroll
      for (int j = 0; j < 8; j++) mm = fmaxf(mm, static_cast<float>(e[j]));
      n *= __expf(m - mm);
#pragma unroll
      for (int j = 0; j < 8; j++) n += __expf(static_cast<float>(e[j]) - mm);
      m = mm;
    }
  }
  for (int k = tid; k < ns; k += TH) {
    const float v = static_cast<float>(x[single(k)]), mm = fmaxf(m, v);
    n = n * __expf(m - mm) + __expf(v - mm);
    m = mm;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), n2 = __shfl_xor_sync(0xffffffffu, n, o);
    const float mm = fmaxf(m, m2);
    n = n * __expf(m - mm) + n2 * __expf(m2 - mm);
    m = mm;
  }
  if (lane == 0) {
    sm[warp] = m;
    sn[warp] = n;
  }
  __syncthreads();
  float M = sm[0];
  for (int i = 1; i < 32; i++) M = fmaxf(M, sm[i]);
  float Z = 0.f;
  for (int i = 0; i < 32; i++) Z += sn[i] * __expf(sm[i] - M);
  const float lse = static_cast<float>(static_cast<T>(isinf(M) ? M : logf(Z) + M));

  // The lower index wins a tie. As in MLX's argmax, index 0 stands until a
  // value is above -inf (all -inf or NaN, e.g. after a +inf logit: 0).
  float best = __int_as_float(0xff800000);  // -inf
  unsigned at = 0;
  auto visit = [&](float xf, int i) {
    const float v = static_cast<float>(static_cast<T>(xf - lse));
    if (v > best || (v == best && v != __int_as_float(0xff800000) && unsigned(i) < at)) {
      best = v;
      at = unsigned(i);
    }
  };
  // The same loads as the first pass, written out again: sharing them
  // through a generic lambda took the kernel from 47 to 63 registers a
  // thread, at the edge of the 64 that a 1024-thread block can have.
  for (int i0 = tid; i0 < nv; i0 += U * TH) {
    uint4 u[U];
#pragma unroll
    for (int k = 0; k < U; k++)
      if (i0 + k * TH < nv) u[k] = xv[i0 + k * TH];
#pragma unroll
    for (int k = 0; k < U; k++) {
      if (i0 + k * TH >= nv) break;
      const T* e = reinterpret_cast<const T*>(&u[k]);
#pragma unroll
      for (int j = 0; j < 8; j++) visit(static_cast<float>(e[j]), lead + (i0 + k * TH) * 8 + j);
    }
  }
  for (int k = tid; k < ns; k += TH) visit(static_cast<float>(x[single(k)]), single(k));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float b2 = __shfl_xor_sync(0xffffffffu, best, o);
    const unsigned a2 = __shfl_xor_sync(0xffffffffu, at, o);
    if (b2 > best || (b2 == best && a2 < at)) {
      best = b2;
      at = a2;
    }
  }
  if (lane == 0) {
    bv[warp] = best;
    bi[warp] = at;
  }
  __syncthreads();
  if (tid != 0) return;
  for (int i = 1; i < 32; i++) {
    if (bv[i] > best || (bv[i] == best && bi[i] < at)) {
      best = bv[i];
      at = bi[i];
    }
  }
  y[0] = at;
}
}  // namespace cider_dec
)CUDA";

// What each call compiles (the template arguments come from MLX's
// constexpr lines; the KV variant's cache is an input MLX passes as const,
// with its shape because the text names cache_shape). pos and freqs are
// cast: SwiGLU's caller passes h in their place (never read).
inline constexpr const char* kCiderNormCall =
    "cider_dec::norm_gemv<T, K, N, S, ADD, BIAS, MODE, D, ROT, 0, FREQS, EPS, SCALE, LOG2B>"
    "(h, dl, g, w, bias, reinterpret_cast<const int*>(pos), reinterpret_cast<const float*>(freqs), "
    "static_cast<T*>(nullptr), 0, hout, y);";
inline constexpr const char* kCiderNormKvCall =
    "cider_dec::norm_gemv<T, K, N, S, ADD, BIAS, MODE, D, ROT, QN, FREQS, EPS, SCALE, LOG2B>"
    "(h, dl, g, w, bias, reinterpret_cast<const int*>(pos), reinterpret_cast<const float*>(freqs), "
    "const_cast<T*>(cache), cache_shape[2], hout, q);";
inline constexpr const char* kCiderGreedyCall = "cider_dec::greedy<T, V>(x, y);";

}  // namespace cider
