// cider's own CPU kernels for the projections of bf16, f16 and f32 models:
// x @ W.T, bias + x @ W.T, and (bf16, f16) affine-quantized x @ W.T (2, 3,
// 4, 5, 6 and 8 bits).
//
// Why: on Linux x86-64, MLX's CPU kernels for bf16 and f16 run one
// multiply-add at a time (its SIMD width there is 1), and its quantized kernel
// emulates the 16-bit type in software for every operation. These kernels do
// exactly the same floating-point operations per output element, in the same
// order, with the same roundings, but compute 8 output elements at once with
// AVX2 (one per SIMD lane). Results are therefore bit-identical to MLX's (and
// to mlx-lm's). That is not assumed: the first use runs a self-check per type
// against MLX's own ops on shapes that exercise every edge (row and depth
// remainders, bias, every bit width, group sizes 32/64/128) and turns the
// kernels off for that type if one bit differs.
//
// The per-element arithmetic being reproduced (mlx/backend/cpu), T = bf16 or
// f16:
// - dense (simd_gemm<T, float> with SIMD width 1): acc = 0.f; for k in
//   order: acc += float(x[k]) * float(w[k]); out = T(acc), or with a bias
//   T(acc + float(c)). A product of two bf16 or two f16 values is exact in
//   float, so fused or separate multiply-add give the same result.
// - quantized (_qmm_t<T>): every operation is a T operation, i.e. computed
//   in float and rounded to T (nearest even; MLX's NaNs: bf16 0x7FC0, f16
//   sign | 0x7D00): sum = T(sum + T(x * T(T(scale * q) + bias))).
#include "cider-core/cpp/shim.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "mlx/random.h"
#include "mlx/utils.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CIDER_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace mx = mlx::core;

namespace cider {
namespace {

// Scalar bf16 helpers, for the remainders of the vector loops: the same
// conversions as MLX's _MLX_BFloat16.
inline float bf2f(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f2bf(float f) {
  if (f != f) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += ((u >> 16) & 1) + 0x7FFFu;
  return uint16_t(u >> 16);
}

#ifdef CIDER_X86_KERNELS
// F16C gives exact f16 <-> f32 conversions (every AVX2 CPU has it; checked).
#define AVX2 __attribute__((target("avx2,f16c")))

// Rounds each lane to the nearest bf16 value (ties to even). A NaN stays a
// NaN: every NaN here has a zero low half (loaded bf16 values, rounded
// values and x86's default NaN all do), so the carry never reaches the high
// half; its sign and payload may differ from MLX's, which is why stores
// canonicalise (mul and add keep a NaN a NaN, so only stored bits show it).
AVX2 inline __m256 round_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(int32_t(0xFFFF0000u))));
}

// The two 16-bit float types: how 8 of them load to floats, how a float
// vector is rounded to values of the type (computed in float, rounded after
// every operation, as MLX's software types do), and how rounded values store.
struct BF16 {
  using T = uint16_t;
  static float to_f(uint16_t b) { return bf2f(b); }
  static uint16_t from_f(float f) { return f2bf(f); }
  AVX2 static __m256 load8(const uint16_t* p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  AVX2 static __m256 round(__m256 v) { return round_bf16(v); }
  // v already rounded: the high halves are the bf16 values; a NaN stores as
  // MLX's (0x7FC0).
  AVX2 static void store8(uint16_t* p, __m256 v) {
    v = _mm256_blendv_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i u = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
    __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(lo, hi));
  }
};

struct F16 {
  using T = uint16_t;
  // MLX's _MLX_Float16 rounds to nearest even with subnormals and overflow
  // to infinity, as F16C does; only its NaN differs (sign | 0x7D00).
  AVX2 static float to_f(uint16_t h) { return _cvtsh_ss(h); }
  AVX2 static uint16_t from_f(float f) {
    if (f != f) return uint16_t((std::signbit(f) ? 0x8000 : 0) | 0x7D00);
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  AVX2 static __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // A NaN stays a NaN; its bits are settled by store8.
  AVX2 static __m256 round(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  AVX2 static void store8(uint16_t* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (int nan = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
      alignas(32) float f[8];
      _mm256_store_ps(f, v);
      for (int i = 0; i < 8; i++)
        if (nan >> i & 1) p[i] = from_f(f[i]);
    }
  }
};

// float32: MLX's CPU matmul calls BLAS sgemm, and the wheels' reference BLAS
// computes each output as a sequential float sum of separately rounded
// products (mulss then addss: no FMA), then adds the bias once (addmm:
// 1 * sum + 1 * c). dense() below does exactly that per lane; the kernels are
// compiled for avx2 without fma (and with -ffp-contract=off), so no multiply
// and add are fused into one rounding.
struct F32 {
  using T = float;
  static float to_f(float f) { return f; }
  static float from_f(float f) { return f; }
  AVX2 static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  AVX2 static __m256 round(__m256 v) { return v; }
  AVX2 static void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
};

template <class H>
AVX2 inline float round1(float f) { return H::to_f(H::from_f(f)); }

// In-register transpose of an 8x8 float tile: r[i] holds row i on entry and
// column i on exit.
AVX2 inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Rows of x processed together: each loaded (and transposed) weight tile is
// used for this many rows. Keeps 8 tile + 4 accumulator registers live.
constexpr int MB = 4;

// Loads w[0 .. 8, k .. k + 8] (rows K apart) as t[kk] = w[0 .. 8, k + kk].
template <class H>
AVX2 inline void load_tile(const typename H::T* w, size_t K, int k, __m256 t[8]) {
  for (int i = 0; i < 8; i++) t[i] = H::load8(w + i * K + k);
  transpose8(t);
}

// w[0 .. 8, k] as one vector (the depth remainder, k past the last tile).
template <class H>
AVX2 inline __m256 load_column(const typename H::T* w, size_t K, int k) {
  alignas(32) float col[8];
  for (int i = 0; i < 8; i++) col[i] = H::to_f(w[i * K + k]);
  return _mm256_load_ps(col);
}

// Rounds, adds the bias first if any, and stores 8 outputs.
template <class H>
AVX2 inline void finish8(__m256 acc, const typename H::T* c, typename H::T* out) {
  if (c) acc = _mm256_add_ps(acc, H::load8(c));
  H::store8(out, H::round(acc));
}

// Outputs n0 .. n0 + 8 * NB (wb = w's row n0) of `mb` (<= R) rows of x
// (floats, rows K apart). Each loaded tile serves every row, and every
// output's sum is its own chain: several rows (prompt passes, R = MB) or
// several column blocks (decode steps, NB = 4) give independent chains, so
// one's adds overlap another's (a single chain waits on the add latency).
template <class H, int NB, int R>
AVX2 void dense_cols(const float* xf, int mb, const typename H::T* wb, const typename H::T* c, typename H::T* out, int N,
                     int K) {
  const int K8 = K - K % 8;
  const int rows = R == 1 ? 1 : mb;
  __m256 acc[NB][R];
  for (int b = 0; b < NB; b++)
    for (int r = 0; r < R; r++) acc[b][r] = _mm256_setzero_ps();
  for (int k = 0; k < K8; k += 8) {
    for (int b = 0; b < NB; b++) {
      __m256 t[8];
      load_tile<H>(wb + size_t(b) * 8 * K, K, k, t);
      for (int r = 0; r < rows; r++) {
        const float* xr = xf + size_t(r) * K + k;
        __m256 a = acc[b][r];
        for (int kk = 0; kk < 8; kk++) a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_broadcast_ss(xr + kk), t[kk]));
        acc[b][r] = a;
      }
    }
  }
  for (int k = K8; k < K; k++)
    for (int b = 0; b < NB; b++) {
      __m256 tv = load_column<H>(wb + size_t(b) * 8 * K, K, k);
      for (int r = 0; r < rows; r++)
        acc[b][r] = _mm256_add_ps(acc[b][r], _mm256_mul_ps(_mm256_broadcast_ss(xf + size_t(r) * K + k), tv));
    }
  for (int b = 0; b < NB; b++)
    for (int r = 0; r < mb; r++) finish8<H>(acc[b][r], c ? c + 8 * b : nullptr, out + size_t(r) * N + 8 * b);
}

// Calls f(xf, m0, mb) for each block of up to MB rows of x (m0 .. m0 + mb),
// those rows converted to floats, K apart, in xf.
template <class H, class F>
AVX2 void for_row_blocks(const typename H::T* x, int M, int K, F f) {
  std::vector<float> xf(size_t(MB) * K);
  for (int m0 = 0; m0 < M; m0 += MB) {
    const int mb = std::min(MB, M - m0);
    for (int r = 0; r < mb; r++)
      for (int k = 0; k < K; k++) xf[size_t(r) * K + k] = H::to_f(x[size_t(m0 + r) * K + k]);
    f(xf.data(), m0, mb);
  }
}

// out[M, N] = x[M, K] @ w[N, K].T (+ c[N]) in H, 8 rows of w per lane group.
template <class H>
AVX2 void dense(const typename H::T* x, const typename H::T* w, const typename H::T* c, typename H::T* out, int M, int N,
                int K) {
  const int N8 = N - N % 8;
  for_row_blocks<H>(x, M, K, [=](const float* xf, int m0, int mb) AVX2 {
    typename H::T* o = out + size_t(m0) * N;
    int n0 = 0;
    if (mb == 1)
      for (; n0 + 32 <= N8; n0 += 32) dense_cols<H, 4, 1>(xf, 1, w + size_t(n0) * K, c ? c + n0 : nullptr, o + n0, N, K);
    for (; n0 < N8; n0 += 8) dense_cols<H, 1, MB>(xf, mb, w + size_t(n0) * K, c ? c + n0 : nullptr, o + n0, N, K);
    for (int n = N8; n < N; n++) {
      for (int r = 0; r < mb; r++) {
        float acc = 0.f;
        for (int k = 0; k < K; k++) acc += xf[size_t(r) * K + k] * H::to_f(w[size_t(n) * K + k]);
        if (c) acc += H::to_f(c[n]);
        o[size_t(r) * N + n] = H::from_f(acc);
      }
    }
  });
}

// MLX packs every bit width as one little-endian bit stream per row of w:
// value k sits at bits k * BITS .. k * BITS + BITS of the row, the row being
// K * BITS / 32 uint32 words. 2, 4 and 8-bit values fill whole words; 3, 5
// and 6-bit ones may straddle two. Value k of a row, for the remainders:
template <int BITS>
inline uint32_t qvalue(const uint32_t* row, int k) {
  const int lo = k * BITS, i = lo / 32, sh = lo % 32;
  uint32_t v = row[i] >> sh;
  if (sh + BITS > 32) v |= row[i + 1] << (32 - sh);
  return v & ((1u << BITS) - 1);
}

// One step of 8 * NB sums for value k of x: q holds the quantized values of
// the 8 rows of w of block b. H(H(scale * q) + bias) is the same for every
// row of x; then sum = H(sum + H(x * wq)), as MLX's _qmm_t does in H.
template <class H, int NB, int R>
AVX2 inline void qstep(__m256 (&sum)[NB][R], const __m256 (&scv)[NB], const __m256 (&biv)[NB], int b, __m256i qi,
                       const float* xf, int rows, int K, int k) {
  __m256 q = _mm256_cvtepi32_ps(qi);
  __m256 wq = H::round(_mm256_add_ps(H::round(_mm256_mul_ps(scv[b], q)), biv[b]));
  for (int r = 0; r < rows; r++) {
    __m256 t = H::round(_mm256_mul_ps(_mm256_broadcast_ss(xf + size_t(r) * K + k), wq));
    sum[b][r] = H::round(_mm256_add_ps(sum[b][r], t));
  }
}

// Outputs n0 .. n0 + 8 * NB of `mb` (<= R) rows of x (floats, rows K apart)
// for affine-quantized w ([N, K * BITS / 32] uint32 words, see qvalue;
// scales and biases [N, K / gs]), in H arithmetic as MLX's CPU kernel does
// it. Every step of a sum is rounded, so each sum is a chain whose latency
// sets the pace: several rows (prompt passes, R = MB) or several column
// blocks (decode steps, NB = 4) give independent chains to overlap.
template <class H, int BITS, int NB, int R>
AVX2 void quant_cols(const float* xf, int mb, const uint32_t* w, const uint16_t* scales, const uint16_t* biases,
                     uint16_t* out, int n0, int N, int K, int gs) {
  constexpr uint32_t MASK = (1u << BITS) - 1;
  const int KW = K * BITS / 32, G = K / gs;
  const int rows = R == 1 ? 1 : mb;
  // Offsets of 8 rows' packed words, for gathering one word per row.
  const __m256i widx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(KW));
  auto gather = [&](int b, int word) AVX2 {
    return _mm256_i32gather_epi32(reinterpret_cast<const int*>(w + size_t(n0 + 8 * b) * KW + word), widx, 4);
  };
  __m256 sum[NB][R];
  for (int b = 0; b < NB; b++)
    for (int r = 0; r < R; r++) sum[b][r] = _mm256_setzero_ps();
  for (int g = 0; g < G; g++) {
    // Scales and biases of this group for the 8 * NB rows of w.
    __m256 scv[NB], biv[NB];
    for (int b = 0; b < NB; b++) {
      alignas(32) float sc[8], bi[8];
      for (int i = 0; i < 8; i++) {
        sc[i] = H::to_f(scales[size_t(n0 + 8 * b + i) * G + g]);
        bi[i] = H::to_f(biases[size_t(n0 + 8 * b + i) * G + g]);
      }
      scv[b] = _mm256_load_ps(sc), biv[b] = _mm256_load_ps(bi);
    }
    if constexpr (32 % BITS == 0) {
      // Whole words: shift each word's values out one at a time.
      constexpr int PF = 32 / BITS;
      for (int j = 0; j < gs / PF; j++) {
        const int word = g * (gs / PF) + j;
        __m256i wv[NB];
        for (int b = 0; b < NB; b++) wv[b] = gather(b, word);
        for (int p = 0; p < PF; p++) {
          for (int b = 0; b < NB; b++) {
            qstep<H, NB, R>(sum, scv, biv, b, _mm256_and_si256(wv[b], _mm256_set1_epi32(int(MASK))), xf, rows, K,
                            word * PF + p);
            wv[b] = _mm256_srli_epi32(wv[b], BITS);
          }
        }
      }
    } else {
      // 32 values fill exactly BITS words (group sizes are multiples of 32):
      // gather a chunk's words, then take value p from word p * BITS / 32,
      // joined with the next word's low bits. A shift by 32 or more gives 0
      // (srl/sll with a register count), so the join needs no branch: where
      // p does not straddle, the next word's bits land above the mask, and
      // a zero word stands after the chunk's last. The loops are kept
      // rolled: unrolled, their straight runs of gathers exhausted
      // valgrind's translation storage (the C tests run under memcheck).
      for (int k0 = g * gs; k0 < (g + 1) * gs; k0 += 32) {
        __m256i wv[NB][BITS + 1];
        for (int b = 0; b < NB; b++) {
#pragma GCC unroll 1
          for (int i = 0; i < BITS; i++) wv[b][i] = gather(b, k0 / 32 * BITS + i);
          wv[b][BITS] = _mm256_setzero_si256();
        }
#pragma GCC unroll 1
        for (int p = 0; p < 32; p++) {
          const int i = p * BITS / 32, sh = p * BITS % 32;
          const __m128i right = _mm_cvtsi32_si128(sh), left = _mm_cvtsi32_si128(32 - sh);
          for (int b = 0; b < NB; b++) {
            __m256i v = _mm256_or_si256(_mm256_srl_epi32(wv[b][i], right), _mm256_sll_epi32(wv[b][i + 1], left));
            qstep<H, NB, R>(sum, scv, biv, b, _mm256_and_si256(v, _mm256_set1_epi32(int(MASK))), xf, rows, K, k0 + p);
          }
        }
      }
    }
  }
  for (int b = 0; b < NB; b++)
    for (int r = 0; r < mb; r++) H::store8(out + size_t(r) * N + n0 + 8 * b, sum[b][r]);
}

// out[M, N] = x[M, K] @ dequant(w).T for affine-quantized w (see quant_cols).
template <class H, int BITS>
AVX2 void quant(const uint16_t* x, const uint32_t* w, const uint16_t* scales, const uint16_t* biases, uint16_t* out,
                int M, int N, int K, int gs) {
  const int KW = K * BITS / 32, G = K / gs, N8 = N - N % 8;
  for_row_blocks<H>(x, M, K, [=](const float* xf, int m0, int mb) AVX2 {
    uint16_t* o = out + size_t(m0) * N;
    int n0 = 0;
    if (mb == 1)
      for (; n0 + 32 <= N8; n0 += 32) quant_cols<H, BITS, 4, 1>(xf, 1, w, scales, biases, o, n0, N, K, gs);
    for (; n0 < N8; n0 += 8) quant_cols<H, BITS, 1, MB>(xf, mb, w, scales, biases, o, n0, N, K, gs);
    for (int n = N8; n < N; n++) {
      for (int r = 0; r < mb; r++) {
        float sum = 0.f;
        for (int k = 0; k < K; k++) {
          float q = float(qvalue<BITS>(w + size_t(n) * KW, k));
          float sc = H::to_f(scales[size_t(n) * G + k / gs]), bi = H::to_f(biases[size_t(n) * G + k / gs]);
          float wq = round1<H>(round1<H>(sc * q) + bi);
          sum = round1<H>(sum + round1<H>(xf[size_t(r) * K + k] * wq));
        }
        o[size_t(r) * N + n] = H::from_f(sum);
      }
    }
  });
}

// One projection's kernel, picked by element type and bit width (float32:
// dense only; make_linear is never asked for more).
template <class H>
void run_kernel(int bits, const void* xv, const void* w, const void* av, const void* bv, void* ov, int M, int N, int K,
                int gs) {
  using T = typename H::T;
  auto* x = static_cast<const T*>(xv);
  auto* a = static_cast<const T*>(av);
  auto* o = static_cast<T*>(ov);
  if (bits == 0) return dense<H>(x, static_cast<const T*>(w), a, o, M, N, K);
  if constexpr (sizeof(T) == 2) {
    auto* wq = static_cast<const uint32_t*>(w);
    auto* b = static_cast<const T*>(bv);
    switch (bits) {
      case 2: return quant<H, 2>(x, wq, a, b, o, M, N, K, gs);
      case 3: return quant<H, 3>(x, wq, a, b, o, M, N, K, gs);
      case 4: return quant<H, 4>(x, wq, a, b, o, M, N, K, gs);
      case 5: return quant<H, 5>(x, wq, a, b, o, M, N, K, gs);
      case 6: return quant<H, 6>(x, wq, a, b, o, M, N, K, gs);
      default: return quant<H, 8>(x, wq, a, b, o, M, N, K, gs);
    }
  }
  throw std::runtime_error("cider's CPU kernels have no quantized float32 product");
}
#endif  // CIDER_X86_KERNELS

// One projection: inputs {x, w} (dense; w is the [K, N] transposed view of a
// row-major [N, K] weight), {x, w, c} (dense with bias row c), or
// {x, w, scales, biases} (quantized, bits_ > 0; bf16 or f16 only). Output
// dtype: x's (bf16, f16 or f32, as are the weight, bias, scales and biases).
class CpuLinear : public mx::UnaryPrimitive {
 public:
  CpuLinear(mx::Stream s, int bits, int group_size) : mx::UnaryPrimitive(s), bits_(bits), gs_(group_size) {}

  void eval_cpu(const std::vector<mx::array>& in, mx::array& out) override {
    const mx::array& x = in[0];
    const mx::array& w = in[1];
    for (size_t i = 0; i < in.size(); i++) {
      // w (dense) is a transposed view; every other input must be row-major.
      bool ok = (i == 1 && bits_ == 0) ? in[i].flags().col_contiguous : in[i].flags().row_contiguous;
      if (!ok) throw std::runtime_error(std::string(name()) + ": input " + std::to_string(i) + " has an unexpected layout");
    }
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : in) enc.set_input_array(a);
    enc.set_output_array(out);
    const int K = x.shape(-1), N = out.shape(-1);
    const int M = K ? int(x.size() / K) : 0;
    void* o = out.data<void>();
    const void* xp = x.data<void>();
    const void* wp = w.data<void>();
    // dense: a = bias row (or none); quantized: a = scales, b = biases
    const void* ap = in.size() > 2 ? in[2].data<void>() : nullptr;
    const void* bp = in.size() > 3 ? in[3].data<void>() : nullptr;
#ifdef CIDER_X86_KERNELS
    const int bits = bits_, gs = gs_;
    if (x.dtype() == mx::float16)
      enc.dispatch([=]() { run_kernel<F16>(bits, xp, wp, ap, bp, o, M, N, K, gs); });
    else if (x.dtype() == mx::float32)
      enc.dispatch([=]() { run_kernel<F32>(bits, xp, wp, ap, bp, o, M, N, K, gs); });
    else
      enc.dispatch([=]() { run_kernel<BF16>(bits, xp, wp, ap, bp, o, M, N, K, gs); });
#else
    (void)o, (void)xp, (void)wp, (void)ap, (void)bp, (void)M, (void)N;
    throw std::runtime_error("cider's CPU kernels are not built for this machine");
#endif
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string(name()) + " runs on the CPU only");
  }
  const char* name() const override { return bits_ ? "CiderQuantizedLinear" : "CiderLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const CpuLinear*>(&other);
    return o && o->bits_ == bits_ && o->gs_ == gs_;
  }

 private:
  int bits_, gs_;
};

mx::array make_linear(const mx::array& x, std::vector<mx::array> rest, int N, int bits, int gs, mx::Stream s) {
  mx::Shape shape = x.shape();
  shape.back() = N;
  std::vector<mx::array> inputs{mx::contiguous(x, false, s)};
  for (auto& a : rest) inputs.push_back(std::move(a));
  return mx::array(std::move(shape), x.dtype(), std::make_shared<CpuLinear>(s, bits, gs), std::move(inputs));
}

// Compares the kernels with MLX's ops on shapes covering every code path, in
// one element type. Returns "" when all results are bit-identical, else what
// differed.
std::string self_check(mx::Dtype dt) {
  auto s = mx::default_stream(mx::Device::cpu);
  // Own keys: MLX's global random state (a user's seed) is left alone.
  uint64_t seed = 20261122;
  auto rnd = [&](mx::Shape shape) {
    return mx::astype(mx::random::normal(shape, mx::float32, 0.f, 1.f, mx::random::key(++seed), s), dt, s);
  };
  // Bit for bit, NaNs included (array_equal would let NaN bits differ).
  auto same = [&](const mx::array& a, const mx::array& b) {
    return mx::array_equal(mx::view(a, mx::uint16, s), mx::view(b, mx::uint16, s), false, s).item<bool>();
  };
  // x with one NaN (row 0, column 1), so NaN outputs are compared too; a
  // negative one, as x86 makes them (0 * inf), whose sign MLX's bf16
  // rounding drops and its f16 rounding keeps.
  auto with_nan = [&](const mx::array& x) {
    auto bits = x.dtype() == mx::float32 ? mx::array(0xFFC00000u, mx::uint32)
                                         : mx::array(x.dtype() == mx::float16 ? 0xFE00 : 0xFFC0, mx::uint16);
    auto nan = mx::view(mx::full({1, 1}, bits, s), x.dtype(), s);
    return mx::slice_update(x, nan, mx::Shape{0, 1}, mx::Shape{1, 2}, s);
  };
  // (M, N, K): remainders in M (rows of 4), N (8) and K (8) and none.
  const int dims[][3] = {{1, 40, 64}, {3, 19, 203}, {6, 64, 128}, {1, 8, 13}, {9, 33, 96}};
  for (auto& d : dims) {
    const int M = d[0], N = d[1], K = d[2];
    auto x = M > 2 ? with_nan(rnd({M, K})) : rnd({M, K});
    auto w = rnd({N, K});
    auto c = rnd({1, N});
    auto wt = mx::transpose(w, {1, 0}, s);
    mx::eval({x, w, c, wt});
    if (!same(make_linear(x, {wt}, N, 0, 0, s), mx::matmul(x, wt, s)))
      return "dense " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
    if (!same(make_linear(x, {wt, c}, N, 0, 0, s), mx::addmm(c, x, wt, 1.f, 1.f, s)))
      return "dense with bias " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
  }
  if (dt == mx::float32) return "";  // dense only (MLX's f32 quantized kernel is SIMD already)
  // (M, N, K, bits, group): one-row products of N >= 32 take the 4-block path.
  const int qdims[][5] = {{1, 24, 256, 4, 64}, {5, 19, 128, 4, 32}, {2, 16, 256, 8, 128}, {4, 9, 64, 8, 32},
                          {1, 8, 384, 4, 128}, {1, 75, 256, 4, 64}, {1, 40, 128, 8, 32},
                          // 3, 5 and 6-bit values straddle words; 2-bit fill them
                          {1, 41, 256, 3, 64}, {5, 19, 128, 3, 32}, {1, 32, 384, 5, 128}, {6, 11, 64, 5, 32},
                          {1, 72, 128, 6, 64}, {3, 17, 256, 6, 128}, {1, 40, 128, 2, 32}, {4, 9, 256, 2, 64}};
  for (auto& d : qdims) {
    const int M = d[0], N = d[1], K = d[2], bits = d[3], gs = d[4];
    auto x = M > 2 ? with_nan(rnd({M, K})) : rnd({M, K});
    auto q = mx::quantize(rnd({N, K}), gs, bits, "affine", std::nullopt, s);
    mx::eval({x, q[0], q[1], q[2]});
    auto ref = mx::quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine", s);
    if (!same(make_linear(x, {q[0], q[1], q[2]}, N, bits, gs, s), ref))
      return std::to_string(bits) + "-bit " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
             " group " + std::to_string(gs);
  }
  return "";
}

// "" when the kernels are in use for this element type (bf16, f16 or f32),
// else why not. Decided once per process and type.
std::string check_type(mx::Dtype dt) {
  if (env_off("CIDER_CPU_KERNELS")) return "turned off by CIDER_CPU_KERNELS=0";
#ifdef CIDER_X86_KERNELS
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c")) return "this CPU has no AVX2 and F16C";
  try {
    std::string diff = self_check(dt);
    if (!diff.empty()) return "results differ from MLX's (" + diff + "); this MLX build computes differently";
  } catch (const std::exception& e) {
    return std::string("self-check failed: ") + e.what();
  }
  return "";
#else
  (void)dt;
  return "not built for this CPU architecture";
#endif
}

const std::string& kernels_off_reason(mx::Dtype dt) {
  static const std::string bf16 = check_type(mx::bfloat16);
  static const std::string f16 = check_type(mx::float16);
  static const std::string f32 = check_type(mx::float32);
  return dt == mx::float16 ? f16 : dt == mx::float32 ? f32 : bf16;
}

// Cleared by cpu_kernels_enable(false): MLX's own ops are used instead
// (for comparisons; results are the same bits either way).
std::atomic<bool> kernels_wanted{true};

bool on_cpu(const mx::StreamOrDevice& sd) {
  return mx::to_stream(sd).device == mx::Device::cpu;
}

bool half_type(mx::Dtype dt) { return dt == mx::bfloat16 || dt == mx::float16; }
bool dense_type(mx::Dtype dt) { return half_type(dt) || dt == mx::float32; }

}  // namespace

void cpu_kernels_enable(bool on) { kernels_wanted = on; }

rust::String cpu_kernels_status() {
  const std::pair<const char*, mx::Dtype> types[] = {
      {"bfloat16", mx::bfloat16}, {"float16", mx::float16}, {"float32", mx::float32}};
  const std::string& first = kernels_off_reason(types[0].second);
  bool same = true;
  std::string on, off;
  for (auto& [name, dt] : types) {
    const std::string& why = kernels_off_reason(dt);
    same = same && why == first;
    if (why.empty()) on += (on.empty() ? "" : ", ") + std::string(name);
    else off += (off.empty() ? "" : "; ") + std::string(name) + ": " + why;
  }
  if (same) return rust::String(first.empty() ? "on" : "off: " + first);
  return rust::String(on.empty() ? "off: " + off : "on for " + on + "; off for " + off);
}

rust::String cpu_kernels_off_reason(uint8_t dtype) {
  const mx::Dtype dt = to_dtype(dtype);
  return rust::String(dense_type(dt) ? kernels_off_reason(dt) : std::string("no kernels for this type"));
}

std::optional<mx::array> try_cpu_linear(const mx::array& x, const mx::array& wt, const std::optional<mx::array>& c,
                                        mx::StreamOrDevice sd) {
  // wt: an evaluated [K, N] transposed view of a row-major [N, K] weight of
  // x's type.
  const mx::Dtype dt = x.dtype();
  if (!dense_type(dt) || wt.dtype() != dt || wt.ndim() != 2 || x.ndim() < 1 || x.size() == 0 ||
      x.shape(-1) != wt.shape(0) || !wt.is_available() || !wt.flags().col_contiguous || !on_cpu(sd))
    return std::nullopt;
  const int N = wt.shape(1);
  if (c && !(c->dtype() == dt && c->is_available() && c->flags().row_contiguous && int(c->size()) == N &&
             (c->ndim() == 1 || (c->ndim() == 2 && c->shape(0) == 1))))
    return std::nullopt;
  if (!kernels_wanted || !kernels_off_reason(dt).empty()) return std::nullopt;
  std::vector<mx::array> rest{wt};
  if (c) rest.push_back(*c);
  return make_linear(x, rest, N, 0, 0, mx::to_stream(sd));
}

std::optional<mx::array> try_cpu_qlinear(const mx::array& x, const mx::array& w, const mx::array& scales,
                                         const mx::array& biases, int group_size, int bits, mx::StreamOrDevice sd) {
  const mx::Dtype dt = x.dtype();
  if (!half_type(dt) || scales.dtype() != dt || biases.dtype() != dt || w.dtype() != mx::uint32 ||
      !(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8) ||
      // MLX's group sizes; anything else goes to MLX's op, which names the error.
      !(group_size == 32 || group_size == 64 || group_size == 128) ||
      w.ndim() != 2 || scales.ndim() != 2 ||
      x.ndim() < 1 || x.size() == 0 || !on_cpu(sd))
    return std::nullopt;
  const int K = x.shape(-1), N = w.shape(0);
  if (K % group_size != 0 || w.shape(1) != K * bits / 32 || scales.shape(0) != N || scales.shape(1) != K / group_size ||
      biases.shape() != scales.shape())
    return std::nullopt;
  for (auto* a : {&w, &scales, &biases})
    if (!a->is_available() || !a->flags().row_contiguous) return std::nullopt;
  if (!kernels_wanted || !kernels_off_reason(dt).empty()) return std::nullopt;
  return make_linear(x, {w, scales, biases}, N, bits, group_size, mx::to_stream(sd));
}

}  // namespace cider
