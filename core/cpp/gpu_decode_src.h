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
// Layout: each warp computes a pair of output rows; a block of 8 warps first
// normalises the input row into shared memory (every block does: it is 2K-8K
// elements read from L2, against 8 rows of weights from DRAM), while its
// warps' first weight loads are already in flight. Pairs are the rows RoPE
// rotates together (j and j + D/2 of one head), or SwiGLU's gate row i and up
// row i, so the epilogue needs no exchange between warps.
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
inline constexpr const char* kCiderDecodeBody = R"CUDA(
  constexpr int WARPS = 8, TH = 32 * WARPS;
  constexpr int C = (K + 255) / 256;    // 256-wide chunks of a row: 8 elements per lane
  constexpr int CB = C < 4 ? C : 4;     // chunks of both rows loaded ahead at a time
  constexpr int P = N / 2;              // row pairs
  constexpr int DH = D > 1 ? D / 2 : 1;
  __shared__ __align__(16) float xs[K];
  __shared__ float red[WARPS];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int pair = blockIdx.x * WARPS + warp;
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
  for (int c = 0; c < CB; c++) {
    const int k = c * 256 + lane * 8;
    if (live && k < K) {
      a[c] = __ldcs(reinterpret_cast<const uint4*>(w0 + k));
      b[c] = __ldcs(reinterpret_cast<const uint4*>(w1 + k));
    }
  }

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

  float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
  for (int c0 = 0; c0 < C; c0 += CB) {
    if (c0 > 0) {
#pragma unroll
      for (int c = 0; c < CB; c++) {
        const int k = (c0 + c) * 256 + lane * 8;
        if (live && k < K) {
          a[c] = __ldcs(reinterpret_cast<const uint4*>(w0 + k));
          b[c] = __ldcs(reinterpret_cast<const uint4*>(w1 + k));
        }
      }
    }
#pragma unroll
    for (int c = 0; c < CB; c++) {
      const int k = (c0 + c) * 256 + lane * 8;
      if (live && k < K) {
        const float4 x0 = *reinterpret_cast<const float4*>(xs + k);
        const float4 x1 = *reinterpret_cast<const float4*>(xs + k + 4);
        acc0 = cider_dec::dot8<T>(acc0, a[c], x0, x1);
        acc1 = cider_dec::dot8<T>(acc1, b[c], x0, x1);
      }
    }
  }
  acc0 = cider_dec::warp_sum(acc0);
  acc1 = cider_dec::warp_sum(acc1);
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

}  // namespace cider
