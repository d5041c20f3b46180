// CUDA source of cider's fused decode kernel, compiled at first use through
// mx::fast::cuda_kernel (gpu_decode.cc). Kept in its own file so
// bench/gpu_decode.py can run the very same text.
//
// Why: one-token decode of a bf16/f16 model on an H100 is bound by MLX's host
// time per graph node (about 4-6 us each to build and encode, against about
// 1 us of device time for a small kernel; bench/RESULTS.md). A llama-family
// layer was 12 kernels. This kernel does in one what took up to five:
//   [residual add] -> RMSNorm -> matrix-vector product -> [bias] -> epilogue
// with epilogue RoPE on q and k (the attention's input projection) or SwiGLU
// (the MLP's gate and up projection), so a layer is 6 kernels.
//
// Every rounding step of MLX's separate ops is kept: the residual sum, the
// normalised row and its product with the norm weight are rounded to T as
// MLX's add and rms_norm round them; each product is rounded to T (bias
// added before, as cuBLAS's epilogue does) before RoPE or SwiGLU, which
// compute in float from the rounded values as MLX's kernels do. Only the
// order in which a dot product sums its terms differs from cuBLAS's.
//
// Layout: each warp (or S warps, each over a slice of K) computes a pair of
// output rows; a block of 8 warps first
// normalises the input row into shared memory (every block does: it is 2K-8K
// elements read from L2, against 8 rows of weights from DRAM), while its
// warps' first weight loads are already in flight. Pairs are the rows RoPE
// rotates together (j and j + D/2 of one head), or SwiGLU's gate row i and up
// row i, so the epilogue needs no exchange between warps.
//
// Two more kernels share the header: the plain one-row projection that
// follows attention and SwiGLU (o and down: no norm, so no shared row), and
// greedy sampling (logsumexp, subtract, argmax in one node).
#pragma once

namespace cider {

inline constexpr const char* kCiderDecodeHeader = R"CUDA(
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
// The same with the 8 inputs given as one 16-byte load of T.
template <typename T>
__device__ __forceinline__ float dot8x(float acc, const uint4 w, const uint4 x) {
  const T* e = reinterpret_cast<const T*>(&x);
  const float4 x0 = make_float4(static_cast<float>(e[0]), static_cast<float>(e[1]), static_cast<float>(e[2]),
                                static_cast<float>(e[3]));
  const float4 x1 = make_float4(static_cast<float>(e[4]), static_cast<float>(e[5]), static_cast<float>(e[6]),
                                static_cast<float>(e[7]));
  return dot8<T>(acc, w, x0, x1);
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
}  // namespace cider_dec
)CUDA";

// Inputs: h [K] (residual row), dl [K] (added to h when ADD), g [K] (norm
// weight), w [N, K] (row-major), bias [N] (when BIAS), pos [1] int32 (RoPE
// position), freqs [D/2] float32 (RoPE frequencies when FREQS).
// Outputs: hout [K] (h + dl, rounded; h when not ADD), y (or q, see
// kCiderStoreKv; the KV variant also takes cache).
// MODE 0: y [N]; 1: y [N] with rows < ROT rotated (head dim D, position
// SCALE * pos, frequencies freqs or base 2^LOG2B); 2: y [N/2] =
// silu(rows < N/2) * (rows >= N/2). EPS, SCALE, LOG2B: float bits.
// S (1, 2, 4 or 8) warps share a row pair, each summing a slice of K: few
// rows (a 1B model's q/k/v: 1536 pairs) then still fill the GPU.
inline constexpr const char* kCiderDecodeBody = R"CUDA(
  constexpr int WARPS = 8, TH = 32 * WARPS;
  constexpr int C = (K + 255) / 256;    // 256-wide chunks of a row: 8 elements per lane
  constexpr int CW = (C + S - 1) / S;   // chunks per warp: S warps share a row pair
  constexpr int CB = CW < 4 ? CW : 4;   // chunks of both rows in flight per warp
  constexpr int PB = WARPS / S;         // row pairs per block
  constexpr int P = N / 2;              // row pairs
  constexpr int DH = D > 1 ? D / 2 : 1;
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
  } else if (MODE == 1) {
    r0 = (pair / DH) * D + pair % DH;
    r1 = r0 + DH;
  } else {
    r0 = 2 * pair;
    r1 = r0 + 1;
  }
  const T* w0 = w + size_t(live ? r0 : 0) * K;
  const T* w1 = w + size_t(live ? r1 : 0) * K;

  // The first weights are on their way while the block normalises.
  uint4 a[CB], b[CB];
#pragma unroll
  for (int i = 0; i < CB; i++) cider_dec::ld2<T, K>(a[i], b[i], w0, w1, c0 + i, lane, live);

  float ss = 0.f;
  for (int k = tid; k < K; k += TH) {
    float v = static_cast<float>(h[k]);
    if (ADD) v = static_cast<float>(static_cast<T>(v + static_cast<float>(dl[k])));
    xs[k] = v;
    ss += v * v;
    if (blockIdx.x == 0) hout[k] = static_cast<T>(v);
  }
  ss = cider_dec::warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float tot = 0.f;
#pragma unroll
  for (int i = 0; i < WARPS; i++) tot += red[i];
  const float r = rsqrtf(tot / K + __int_as_float(EPS));
  for (int k = tid; k < K; k += TH) {
    const T n = static_cast<T>(xs[k] * r);
    xs[k] = static_cast<float>(static_cast<T>(static_cast<float>(g[k]) * static_cast<float>(n)));
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
      acc0 = cider_dec::dot8<T>(acc0, a[i % CB], x0, x1);
      acc1 = cider_dec::dot8<T>(acc1, b[i % CB], x0, x1);
    }
    if (i + CB < CW) cider_dec::ld2<T, K>(a[i % CB], b[i % CB], w0, w1, c0 + i + CB, lane, live);
  }
  acc0 = cider_dec::warp_sum(acc0);
  acc1 = cider_dec::warp_sum(acc1);
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
    CIDER_STORE(pair, static_cast<T>(static_cast<float>(sg) * static_cast<float>(t1)));
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
  CIDER_STORE(r0, t0);
  CIDER_STORE(r1, t1);
)CUDA";

// Where an output row goes: y, or (the KV variant) q [1, QN / D, 1, D] for
// rows < QN and the rest, keys then values, written in place at position
// pos of the KV cache buffer [1, heads, capacity, D] (the cache's only
// owner passes it; see gpu_decode.cc for why that is sound).
inline constexpr const char* kCiderStoreY = "#define CIDER_STORE(r, v) y[r] = (v)\n";
inline constexpr const char* kCiderStoreKv =
    "#define CIDER_STORE(r, v) do { const int r_ = (r); if (r_ < QN) q[r_] = (v); else { "
    "const int i_ = r_ - QN; const_cast<T*>(cache)[(size_t(i_ / D) * cache_shape[2] + pos[0]) * D + i_ % D] = (v); "
    "} } while (0)\n";

// x [K] times w [N, K] (+ bias [N]) -> y [1, N]: the projections whose input
// needs no norm (attention's output, SwiGLU's). Same layout as above, rows
// 2p and 2p + 1 per pair, x read alongside the weights (L2, not DRAM).
inline constexpr const char* kCiderGemvBody = R"CUDA(
  constexpr int WARPS = 8;
  constexpr int C = (K + 255) / 256;
  constexpr int CW = (C + S - 1) / S;
  constexpr int CB = CW < 4 ? CW : 4;
  constexpr int PB = WARPS / S;
  constexpr int P = N / 2;
  __shared__ float part_sum[WARPS][2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int pair = blockIdx.x * PB + warp / S, part = warp % S, c0 = part * CW;
  const bool live = pair < P;
  const int r0 = 2 * pair, r1 = r0 + 1;
  const T* w0 = w + size_t(live ? r0 : 0) * K;
  const T* w1 = w + size_t(live ? r1 : 0) * K;
  uint4 a[CB], b[CB], xv[CB];
#pragma unroll
  for (int i = 0; i < CB; i++) {
    cider_dec::ld2<T, K>(a[i], b[i], w0, w1, c0 + i, lane, live);
    const int k = (c0 + i) * 256 + lane * 8;
    if (live && k < K) xv[i] = *reinterpret_cast<const uint4*>(x + k);
  }
  float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
  for (int i = 0; i < CW; i++) {
    const int k = (c0 + i) * 256 + lane * 8;
    if (live && k < K) {
      acc0 = cider_dec::dot8x<T>(acc0, a[i % CB], xv[i % CB]);
      acc1 = cider_dec::dot8x<T>(acc1, b[i % CB], xv[i % CB]);
    }
    if (i + CB < CW) {
      cider_dec::ld2<T, K>(a[i % CB], b[i % CB], w0, w1, c0 + i + CB, lane, live);
      if (live && k + CB * 256 < K) xv[i % CB] = *reinterpret_cast<const uint4*>(x + k + CB * 256);
    }
  }
  acc0 = cider_dec::warp_sum(acc0);
  acc1 = cider_dec::warp_sum(acc1);
  if (S > 1) {
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
  if (!live || lane != 0) return;
  if (BIAS) {
    acc0 += static_cast<float>(bias[r0]);
    acc1 += static_cast<float>(bias[r1]);
  }
  y[r0] = static_cast<T>(acc0);
  y[r1] = static_cast<T>(acc1);
)CUDA";

// Greedy sampling of one row of logits x [V] -> y [1] (uint32): the first
// index of the largest T(x - T(logsumexp(x))), what MLX's logsumexp,
// subtract and argmax give (mlx-lm samples from log-probabilities, and
// rounding them can tie logits that differ). One block of 1024 threads, two
// passes over the row (in L2): the running max and sum of exponentials as
// MLX's logsumexp keeps them (same fast exp), then the argmax.
inline constexpr const char* kCiderGreedyBody = R"CUDA(
  constexpr int TH = 1024, NV = V / 8;
  __shared__ float sm[32], sn[32], bv[32];
  __shared__ unsigned bi[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float m = -3.402823466e38f, n = 0.f;
#pragma unroll 4
  for (int i = tid; i < NV; i += TH) {
    const uint4 u = xv[i];
    const T* e = reinterpret_cast<const T*>(&u);
    float mm = m;
#pragma unroll
    for (int j = 0; j < 8; j++) mm = fmaxf(mm, static_cast<float>(e[j]));
    n *= __expf(m - mm);
#pragma unroll
    for (int j = 0; j < 8; j++) n += __expf(static_cast<float>(e[j]) - mm);
    m = mm;
  }
  for (int i = NV * 8 + tid; i < V; i += TH) {
    const float v = static_cast<float>(x[i]), mm = fmaxf(m, v);
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

  float best = __int_as_float(0xff800000);  // -inf
  unsigned at = 0xffffffffu;
#pragma unroll 4
  for (int i = tid; i < NV; i += TH) {
    const uint4 u = xv[i];
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const float v = static_cast<float>(static_cast<T>(static_cast<float>(e[j]) - lse));
      if (v > best) {
        best = v;
        at = unsigned(i * 8 + j);
      }
    }
  }
  for (int i = NV * 8 + tid; i < V; i += TH) {
    const float v = static_cast<float>(static_cast<T>(static_cast<float>(x[i]) - lse));
    if (v > best) {
      best = v;
      at = unsigned(i);
    }
  }
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
  y[0] = at == 0xffffffffu ? 0u : at;
)CUDA";

}  // namespace cider
