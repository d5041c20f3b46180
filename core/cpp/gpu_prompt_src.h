// CUDA source of the kernels of cider's prompt-pass graph (gpu_prompt.cc says
// why), compiled by NVRTC together with the prompt attention
// (gpu_pattn_src.h). Each rounds where MLX's op for the same step rounds, so
// the pass computes what the op-for-op pass computes (matrix products are
// cuBLAS's in both).
//
// Rows: LP per pass (the prompt padded to a bucket); the per-launch values
// (ids, each layer's KV buffer and its capacity, the last real row) are in
// a small device block the graph's first node copies from host memory.
#pragma once

static const char* kCiderPromptSrc = R"CUDA(
namespace cider_prompt {

// Row blockIdx.x of the embedding table, by the prompt's id, into h.
template <typename T, int K>
__device__ __forceinline__ void embed(const T* table, const unsigned* ids, T* h) {
  const uint4* row = reinterpret_cast<const uint4*>(table + (unsigned long long)ids[blockIdx.x] * K);
  uint4* out = reinterpret_cast<uint4*>(h + (unsigned long long)blockIdx.x * K);
  for (int i = threadIdx.x; i < K / 8; i += blockDim.x) out[i] = row[i];
}

__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < int(blockDim.x >> 5); i++) t += red[i];
  return t;
}

// Row blockIdx.x (256 threads, 8 elements a 16-byte load): with ADD,
// h += delta (rounded to T, as MLX's add), written back; then
// n = w * (h / rms(h)), rounded after the normalisation and after the
// weight as MLX's RMSNorm kernel rounds. K: a multiple of 8.
template <typename T, int K, bool ADD>
__device__ __forceinline__ void add_norm(T* h, const T* delta, const T* w, T* n, float eps) {
  constexpr int V = K / 8, PER = (V + 255) / 256;
  __shared__ float red[8];
  const unsigned long long r = (unsigned long long)blockIdx.x * K;
  uint4* hv = reinterpret_cast<uint4*>(h + r);
  const uint4* dv = reinterpret_cast<const uint4*>(delta + r);
  float v[PER][8];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < PER; j++) {
    const int i = threadIdx.x + j * 256;
    if (i < V) {
      uint4 a = hv[i];
      T* ae = reinterpret_cast<T*>(&a);
      if (ADD) {
        const uint4 b = dv[i];
        const T* be = reinterpret_cast<const T*>(&b);
#pragma unroll
        for (int e = 0; e < 8; e++) ae[e] = T(float(ae[e]) + float(be[e]));
        hv[i] = a;
      }
#pragma unroll
      for (int e = 0; e < 8; e++) {
        v[j][e] = float(ae[e]);
        ss += v[j][e] * v[j][e];
      }
    }
  }
  const float inv = rsqrtf(block_sum(ss, red) / K + eps);
#pragma unroll
  for (int j = 0; j < PER; j++) {
    const int i = threadIdx.x + j * 256;
    if (i < V) {
      const uint4 wv = reinterpret_cast<const uint4*>(w)[i];
      const T* we = reinterpret_cast<const T*>(&wv);
      uint4 o;
      T* oe = reinterpret_cast<T*>(&o);
#pragma unroll
      for (int e = 0; e < 8; e++) oe[e] = T(float(we[e]) * float(T(v[j][e] * inv)));
      reinterpret_cast<uint4*>(n + r)[i] = o;
    }
  }
}

// Keys (rotated) and values of row blockIdx.x, kv head blockIdx.y, from the
// q/k/v projection's output rows into the layer's cache buffer
// [1, 2 * HK, cap, D] (keys first) at that position. The rotation is MLX's
// non-traditional RoPE over the whole head, as the prompt attention rotates q
// (ROPE 1: base 2^LOG2B; 2: `freqs`), rounded to T as MLX's rope op rounds.
template <typename T, int D, int HQ, int HK, int ROPE, int LOG2B, int PSCALE>
__device__ __forceinline__ void rope_kv(const T* qkv, const unsigned long long* kv_ptrs, const int* caps, int layer,
                                        const float* freqs) {
  constexpr int DH = D / 2, N = (HQ + 2 * HK) * D;
  const int i = blockIdx.x, j = blockIdx.y;
  T* kv = reinterpret_cast<T*>(kv_ptrs[layer]);
  const long long cap = caps[layer];
  const T* kr = qkv + (long long)i * N + (HQ + j) * D;
  const T* vr = qkv + (long long)i * N + (HQ + HK + j) * D;
  T* kd = kv + ((long long)j * cap + i) * D;
  T* vd = kv + ((long long)(HK + j) * cap + i) * D;
  for (int t = threadIdx.x; t < DH; t += blockDim.x) {
    float inv;
    if constexpr (ROPE == 2) {
      inv = 1.0 / static_cast<double>(freqs[t]);
    } else {
      inv = exp2f(-(static_cast<float>(t) / static_cast<float>(DH)) * __int_as_float(LOG2B));
    }
    const float th = __int_as_float(PSCALE) * static_cast<float>(i) * inv;
    const float cs = cosf(th), sn = sinf(th);
    const float x1 = float(kr[t]), x2 = float(kr[t + DH]);
    kd[t] = T(x1 * cs - x2 * sn);
    kd[t + DH] = T(x1 * sn + x2 * cs);
    vd[t] = vr[t];
    vd[t + DH] = vr[t + DH];
  }
}

// Causal attention of the lp rows over the layer's cache (positions 0..lp-1
// just written), q read from the projection's rows and rotated inside:
// cider_pattn::attn, grid (lp / QT, HQ), 128 threads.
template <typename T, int D, int HQ, int HK, int ROPE, int LOG2B, int PSCALE, int QT>
__device__ __forceinline__ void attend(const T* qkv, const unsigned long long* kv_ptrs, const int* caps, int layer,
                                       const float* freqs, T* o, int lp, float scale_log2) {
  const T* kv = reinterpret_cast<const T*>(kv_ptrs[layer]);
  const long long cap = caps[layer];
  cider_pattn::attn<T, D, QT, HQ, HK, ROPE, LOG2B, PSCALE>(qkv, kv, kv + HK * cap * D, freqs, o, D,
                                                           (HQ + 2 * HK) * D, 1, cap * D, D, 1, cap * D, D, 1, lp, lp,
                                                           scale_log2);
}

// silu(gate) * up over [LP, 2 I] -> [LP, I], rounded after each op as
// MLX's compiled silu(gate) * up.
template <typename T, int I>
__device__ __forceinline__ void swiglu(const T* gu, T* act, int total) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int row = e / I, c = e % I;
  const float g = float(gu[(long long)row * 2 * I + c]);
  const T s = T(1.0f / (1.0f + expf(-g)));
  const T sg = T(g * float(s));
  act[e] = T(float(sg) * float(gu[(long long)row * 2 * I + I + c]));
}

// Every row of y [total / n, n] set to b [n] (a bias cuBLAS then adds to).
template <typename T>
__device__ __forceinline__ void fill(const T* b, T* y, int n, int total) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e < total) y[e] = b[e % n];
}

// The last real row's residual stream after the last layer: h + delta at
// row last[0], into out [K].
template <typename T, int K>
__device__ __forceinline__ void last_row(const T* h, const T* delta, const int* last, T* out) {
  const long long r = (long long)last[0] * K;
  for (int i = threadIdx.x; i < K; i += blockDim.x) out[i] = T(float(h[r + i]) + float(delta[r + i]));
}

}  // namespace cider_prompt
)CUDA";
