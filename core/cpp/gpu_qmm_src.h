// CUDA source of cider's 4/8-bit prompt-pass matmul, compiled at first use by
// MLX's JIT (mx::fast::cuda_kernel). Kept as strings in one place so the C++
// shim (gpu_qmm.cc) and the prototype timer (bench/gpu_qmm.py) run the same
// text.
//
// Why it exists: on an H100 MLX's M-row quantized matmul (qmm_sm80, 64 x 128
// tiles, 4 warps) leaves most SMs idle for a 2048-wide projection of a
// 128-token prompt (32 blocks on 132 SMs), so a quantized model's first
// token is bound by it: 5.1 of the 6.2 ms of device time in Llama-3.2-1B
// 4-bit's prompt pass (bench/RESULTS.md, fifth pass).
//
// How: y[M, N] = x[M, K] . dequant(w)[N, K]^T with mma.sync m16n8k16 (fp32
// accumulators). Each warp owns a (16 MT) x (8 NT) output tile; a block has
// WN warps side by side along N (they read the same x rows, so L1 serves
// them) and KS warps splitting K (interleaved 32-wide chunks), summed through
// shared memory at the end. No shared-memory staging: each thread loads its
// fragments straight from global memory, one chunk ahead.
//
// The k order inside a 32-wide chunk is permuted (the sum does not depend on
// it): thread t of a quad takes k = 8t .. 8t+7 for both m16n8k16 steps, so
// its B fragments are exactly one packed 32-bit word of 8 nibbles (4-bit) or
// two words of 4 bytes (8-bit), and its A fragments one 16-byte load per
// row. Nibble pairs become 16-bit floats with the exponent trick (0x4300 | q
// is 128 + q in bf16, 0x6400 | q is 1024 + q in f16), then
// w = (p - magic) * scale + bias in one rounding (hfma2); bytes go through
// fp32 the same way (dequant_pair8).
#pragma once

static const char* kCiderQmmHeader = R"CUDA(
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace cider_qmm {

// Spelled out: no <cstdint> is needed under NVRTC.
using u32 = unsigned int;

template <typename T> struct Kind;
template <> struct Kind<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr u32 magic = 0x43004300u;  // (128, 128)
  __device__ static T2 pack(float a, float b) { return __floats2bfloat162_rn(a, b); }
  __device__ static void mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Kind<__half> {
  using T2 = __half2;
  static constexpr u32 magic = 0x64006400u;  // (1024, 1024)
  __device__ static T2 pack(float a, float b) { return __floats2half2_rn(a, b); }
  __device__ static void mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <typename T2> __device__ __forceinline__ u32 bits(T2 v) {
  return *reinterpret_cast<u32*>(&v);
}
template <typename T2> __device__ __forceinline__ T2 from_bits(u32 v) {
  return *reinterpret_cast<T2*>(&v);
}

// Nibbles 2k and 2k+1 of `word`, dequantized: (lo16, hi16) of the result.
template <typename T, int PAIR>
__device__ __forceinline__ u32 dequant_pair(u32 lo, u32 hi,
    typename Kind<T>::T2 s2, typename Kind<T>::T2 b2) {
  using T2 = typename Kind<T>::T2;
  // Byte PAIR of lo (nibble 2 PAIR) to bits 0-7, byte PAIR of hi to 16-23.
  u32 p = __byte_perm(lo, hi, PAIR | ((4 + PAIR) << 8));
  p = (p & 0x00FF00FFu) | Kind<T>::magic;
  T2 q = __hsub2(from_bits<T2>(p), from_bits<T2>(Kind<T>::magic));
  return bits(__hfma2(q, s2, b2));
}

// Bytes 2k and 2k+1 of the 8-bit word pair's `word`, dequantized. bf16
// cannot hold 128 + q exactly for q >= 128, so this goes through fp32:
// 0x4B000000 | q is 2^23 + q.
template <typename T, int PAIR>
__device__ __forceinline__ u32 dequant_pair8(u32 word, float s, float b) {
  constexpr u32 lo_sel = 0x7540u | (2 * PAIR), hi_sel = 0x7540u | (2 * PAIR + 1);
  const float q0 = __uint_as_float(__byte_perm(word, 0x4B000000u, lo_sel)) - 8388608.f;
  const float q1 = __uint_as_float(__byte_perm(word, 0x4B000000u, hi_sel)) - 8388608.f;
  return bits(Kind<T>::pack(fmaf(q0, s, b), fmaf(q1, s, b)));
}

// BITS 4: a thread's 8 weights of a chunk are one word; BITS 8: two.
template <typename T, int BITS, int MT, int NT, int WN, int KS, int G>
__device__ __forceinline__ void qmm(const T* x, const u32* w,
    const T* scales, const T* biases, T* y, int M, int N, int K) {
  using K_ = Kind<T>;
  using T2 = typename K_::T2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wn = warp % WN, ks = warp / WN;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.y * (16 * MT);
  const int col0 = (blockIdx.x * WN + wn) * (8 * NT);
  const int chunks = K / 32;
  const int kw = K / 8;   // per weight row: 4-bit words, or 8-bit word pairs
  const int gpr = K / G;  // groups per weight row

  // This thread's rows (rows past M read row M - 1; never stored) and
  // weight rows, as offsets in 16-byte / 4-byte / element units.
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  int xo[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      xo[i][h] = min(row0 + 16 * i + 8 * h + g, M - 1) * (K / 8) + t;
  int wo[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) wo[j] = (col0 + 8 * j + g);

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  uint4 a[MT][2];
  uint2 b[NT];  // 4-bit: .x only
  T sc[NT], bi[NT];
  auto load = [&](int c, uint4 (&a_)[MT][2], uint2 (&b_)[NT], T (&s_)[NT], T (&bb_)[NT]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) a_[i][h] = __ldg(xv + xo[i][h] + 4 * c);
    const int gi = (32 * c) / G;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      if constexpr (BITS == 8)
        b_[j] = __ldg(reinterpret_cast<const uint2*>(w) + (size_t)wo[j] * kw + 4 * c + t);
      else
        b_[j].x = __ldg(w + (size_t)wo[j] * kw + 4 * c + t);
      s_[j] = scales[(size_t)wo[j] * gpr + gi];
      bb_[j] = biases[(size_t)wo[j] * gpr + gi];
    }
  };
  int c = ks;
  if (c < chunks) load(c, a, b, sc, bi);
#pragma unroll 1
  for (; c < chunks; c += KS) {
    uint4 an[MT][2];
    uint2 bn[NT];
    T sn[NT], bin[NT];
    if (c + KS < chunks) load(c + KS, an, bn, sn, bin);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      u32 p0, p1, p2, p3;
      if constexpr (BITS == 8) {
        const float s1 = float(sc[j]), b1 = float(bi[j]);
        p0 = dequant_pair8<T, 0>(b[j].x, s1, b1);
        p1 = dequant_pair8<T, 1>(b[j].x, s1, b1);
        p2 = dequant_pair8<T, 0>(b[j].y, s1, b1);
        p3 = dequant_pair8<T, 1>(b[j].y, s1, b1);
      } else {
        T2 s2 = T2(sc[j], sc[j]), b2 = T2(bi[j], bi[j]);
        u32 lo = b[j].x & 0x0F0F0F0Fu, hi = (b[j].x >> 4) & 0x0F0F0F0Fu;
        p0 = dequant_pair<T, 0>(lo, hi, s2, b2);
        p1 = dequant_pair<T, 1>(lo, hi, s2, b2);
        p2 = dequant_pair<T, 2>(lo, hi, s2, b2);
        p3 = dequant_pair<T, 3>(lo, hi, s2, b2);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        u32 f0[4] = {a[i][0].x, a[i][1].x, a[i][0].y, a[i][1].y};
        u32 f1[4] = {a[i][0].z, a[i][1].z, a[i][0].w, a[i][1].w};
        K_::mma(acc[i][j], f0, p0, p1);
        K_::mma(acc[i][j], f1, p2, p3);
      }
    }
#pragma unroll
    for (int i = 0; i < MT; ++i) { a[i][0] = an[i][0]; a[i][1] = an[i][1]; }
#pragma unroll
    for (int j = 0; j < NT; ++j) { b[j] = bn[j]; sc[j] = sn[j]; bi[j] = bin[j]; }
  }

  if constexpr (KS > 1) {
    // Warps ks > 0 hand their sums to warp ks = 0 of the same column tile;
    // [element][lane] order keeps the 32 lanes on distinct banks.
    constexpr int E = MT * NT * 4;
    __shared__ float red[(KS - 1) * WN * E * 32];
    float* flat = &acc[0][0][0];
    if (ks > 0) {
      float* dst = red + ((ks - 1) * WN + wn) * E * 32 + lane;
#pragma unroll
      for (int e = 0; e < E; ++e) dst[e * 32] = flat[e];
    }
    __syncthreads();
    if (ks > 0) return;
#pragma unroll 1
    for (int k2 = 0; k2 < KS - 1; ++k2) {
      const float* src = red + (k2 * WN + wn) * E * 32 + lane;
#pragma unroll
      for (int e = 0; e < E; ++e) flat[e] += src[e * 32];
    }
  }
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + 16 * i + 8 * h + g;
      if (r >= M) continue;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int col = col0 + 8 * j + 2 * t;
        *reinterpret_cast<T2*>(y + (size_t)r * N + col) =
            K_::pack(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
      }
    }
}

}  // namespace cider_qmm
)CUDA";

// The kernel body MLX wraps in its generated signature: inputs x, w, scales,
// biases; output y; template constants T, BITS, MT, NT, WN, KS, G. M is every axis
// of x but the last.
static const char* kCiderQmmBody = R"CUDA(
  int M = 1;
  for (int d = 0; d < x_ndim - 1; ++d) M *= x_shape[d];
  const int K = x_shape[x_ndim - 1];
  const int N = w_shape[0];
  cider_qmm::qmm<T, BITS, MT, NT, WN, KS, G>(x, w, scales, biases, y, M, N, K);
)CUDA";
