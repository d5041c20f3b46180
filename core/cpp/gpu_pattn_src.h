// CUDA source of cider's causal attention for short prompt passes, compiled
// at first use by MLX's JIT (mx::fast::cuda_kernel); kept as strings so the
// shim (gpu_pattn.cc) and bench/nvrtc_check.py compile the same text.
//
// Why it exists: a bf16 model's prompt pass on an H100 is bound by host time
// (Llama-3.2-1B, 128 tokens: 2.95 ms submitting, the device done 0.3 ms
// later), and MLX's attention there is cuDNN's, captured into the CUDA graph
// at 21-26 us of host time a layer (bench/nvtx_host.c), against 3-5 us for a
// custom kernel's node. The attention itself is small work at these lengths
// (the shim takes up to 512 keys), so plain FMAs do.
//
// How: a block takes one query head and QT query rows (4 warps, QT/4 rows
// each), and walks the keys the tile sees in chunks of 32, staged in shared
// memory (K rows padded to an odd number of words: lane j reads row j
// without bank conflicts). Per row and chunk, lane j scores key j, the warp
// keeps an online softmax (base 2: q is pre-scaled by scale * log2 e), and
// each lane accumulates D / 32 output dims over the chunk's 32 values. fp32
// throughout; one rounding at the end. The output is [L, HQ * D] (rows of
// the o projection's input), so no transpose follows.
//
// With ROPE, q arrives unrotated and the kernel rotates it while staging it
// (MLX's non-traditional RoPE over all D dims at positions TK - L + i, as
// the decode kernel computes it, rounded to T as MLX's rope op rounds):
// MLX's rope kernel for a prompt's q takes 10 us on an H100 for Llama-3.2-1B
// (32 blocks), a tenth of a layer's device time in a pass now near the
// device's pace.
#pragma once

static const char* kCiderPattnHeader = R"CUDA(
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace cider_pattn {

using u32 = unsigned int;
// -inf (no INFINITY under NVRTC without <cmath>).
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// q [1, HQ, L, D], k and v [1, HK, TK, D] by their head, position and dim
// strides (elements), TK >= L: query i sees keys up to
// i + TK - L (MLX's causal mask, aligned at the bottom right). ROPE 0: q is
// rotated already; 1: rotate it with base 2^LOG2B; 2: with `freqs` [D / 2]
// (float32); positions scaled by PSCALE (LOG2B, PSCALE: float bits).
template <typename T, int D, int QT, int HQ, int HK, int ROPE, int LOG2B, int PSCALE>
__device__ __forceinline__ void attn(const T* q, const T* k, const T* v, const float* freqs, T* o,
    long long qh, long long qp, long long qd, long long kh_s, long long kp, long long kd,
    long long vh, long long vp, long long vd, int L, int TK, float scale_log2) {
  constexpr int DL = D / 32;   // output dims per lane
  constexpr int KC = 32;       // keys per chunk: one per lane
  constexpr int KP = D + 2;    // padded K row: (D + 2) / 2 words, odd
  constexpr int NW = 4, RW = QT / NW;
  __shared__ float qs[QT][D];
  __shared__ __align__(16) T ks[KC][KP];
  __shared__ __align__(16) T vs[KC][D];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = blockIdx.y, kvh = h / (HQ / HK);
  const int row0 = blockIdx.x * QT;
  const int off = TK - L;
  const T* qb = q + h * qh;
  const T* kb = k + kvh * kh_s;
  const T* vb = v + kvh * vh;

  if constexpr (ROPE == 0) {
    for (int e = threadIdx.x; e < QT * D; e += NW * 32) {
      const int r = e / D, d = e % D;
      const int i = min(row0 + r, L - 1);
      qs[r][d] = float(qb[i * qp + d * qd]) * scale_log2;
    }
  } else {
    constexpr int DH = D / 2;
    for (int e = threadIdx.x; e < QT * DH; e += NW * 32) {
      const int r = e / DH, j = e % DH;
      const int i = min(row0 + r, L - 1);
      float inv;
      if constexpr (ROPE == 2) {
        inv = 1.0 / static_cast<double>(freqs[j]);
      } else {
        inv = exp2f(-(static_cast<float>(j) / static_cast<float>(DH)) * __int_as_float(LOG2B));
      }
      const float th = __int_as_float(PSCALE) * static_cast<float>(off + i) * inv;
      const float cs = cosf(th), sn = sinf(th);
      const float x1 = float(qb[i * qp + j * qd]), x2 = float(qb[i * qp + (j + DH) * qd]);
      qs[r][j] = float(T(x1 * cs - x2 * sn)) * scale_log2;
      qs[r][j + DH] = float(T(x1 * sn + x2 * cs)) * scale_log2;
    }
  }
  float m[RW], lsum[RW], acc[RW][DL];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    m[r] = neg_inf();
    lsum[r] = 0.f;
#pragma unroll
    for (int d = 0; d < DL; ++d) acc[r][d] = 0.f;
  }
  // Keys the tile's last row sees (block-uniform: every thread runs every
  // chunk, so the barriers below are reached by all).
  const int kend = off + min(row0 + QT, L);
  // Keys and values go 4 bytes at a time where their rows allow it (a
  // prompt's cache: contiguous rows from an even offset), else by element.
  const bool pairs = kd == 1 && vd == 1 && ((kp | vp) & 1) == 0 &&
      ((reinterpret_cast<unsigned long long>(kb) | reinterpret_cast<unsigned long long>(vb)) & 3) == 0;
#pragma unroll 1
  for (int c0 = 0; c0 < kend; c0 += KC) {
    __syncthreads();  // the previous chunk is consumed (and q is staged)
    for (int e = threadIdx.x; e < KC * D / 2; e += NW * 32) {
      const int j = e / (D / 2), d = 2 * (e % (D / 2));
      const int kj = min(c0 + j, TK - 1);
      if (pairs) {
        *reinterpret_cast<u32*>(&ks[j][d]) = *reinterpret_cast<const u32*>(kb + kj * kp + d);
        *reinterpret_cast<u32*>(&vs[j][d]) = *reinterpret_cast<const u32*>(vb + kj * vp + d);
      } else {
        ks[j][d] = kb[kj * kp + d * kd];
        ks[j][d + 1] = kb[kj * kp + (d + 1) * kd];
        vs[j][d] = vb[kj * vp + d * vd];
        vs[j][d + 1] = vb[kj * vp + (d + 1) * vd];
      }
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < RW; ++rr) {
      const int r = warp * RW + rr, i = row0 + r;
      const int lim = off + i;  // the last key row i sees
      if (i >= L || c0 > lim) continue;  // warp-uniform
      float s = 0.f;
#pragma unroll
      for (int d = 0; d < D; d += 2) {
        const float k0 = float(ks[lane][d]), k1 = float(ks[lane][d + 1]);
        s = fmaf(qs[r][d], k0, s);
        s = fmaf(qs[r][d + 1], k1, s);
      }
      if (c0 + lane > lim) s = neg_inf();
      float mx = s;
#pragma unroll
      for (int o2 = 16; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));
      const float mn = fmaxf(m[rr], mx);  // finite: key c0 <= lim is seen
      const float corr = exp2f(m[rr] - mn);
      const float p = exp2f(s - mn);
      m[rr] = mn;
      lsum[rr] = lsum[rr] * corr + p;  // this lane's share; summed at the end
#pragma unroll
      for (int d = 0; d < DL; ++d) acc[rr][d] *= corr;
#pragma unroll 8
      for (int j = 0; j < KC; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int d = 0; d < DL; ++d) acc[rr][d] = fmaf(pj, float(vs[j][lane * DL + d]), acc[rr][d]);
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < RW; ++rr) {
    const int i = row0 + warp * RW + rr;
    float l = lsum[rr];
#pragma unroll
    for (int o2 = 16; o2 > 0; o2 >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o2);
    if (i >= L) continue;
    const float inv = 1.f / l;
    T* out = o + (long long)i * (HQ * D) + h * D + lane * DL;
#pragma unroll
    for (int d = 0; d < DL; ++d) out[d] = T(acc[rr][d] * inv);
  }
}

}  // namespace cider_pattn
)CUDA";

// The body MLX wraps in its generated signature: inputs q, k, v, freqs;
// output o; template constants T, D, QT, HQ, HK, ROPE, LOG2B, PSCALE, SCALE
// (the softmax's scale times log2 e; floats as bits).
[[maybe_unused]] static const char* kCiderPattnBody = R"CUDA(
  const int L = q_shape[2];
  const int TK = k_shape[2];
  cider_pattn::attn<T, D, QT, HQ, HK, ROPE, LOG2B, PSCALE>(q, k, v, freqs, o, q_strides[1], q_strides[2],
      q_strides[3], k_strides[1], k_strides[2], k_strides[3], v_strides[1], v_strides[2], v_strides[3], L, TK,
      __int_as_float(SCALE));
)CUDA";
