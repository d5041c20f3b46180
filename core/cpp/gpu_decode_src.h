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
// up projection); attn_o does a position's attention and o projection, and
// gemv the down projection, so a layer is 4 kernels. greedy samples a token
// in one kernel where MLX's ops take three.
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
// 8 values of T (one 16-byte word) as floats.
template <typename T>
__device__ __forceinline__ void widen8(const uint4 v, float4& x0, float4& x1) {
  const T* e = reinterpret_cast<const T*>(&v);
  x0 = make_float4(static_cast<float>(e[0]), static_cast<float>(e[1]), static_cast<float>(e[2]), static_cast<float>(e[3]));
  x1 = make_float4(static_cast<float>(e[4]), static_cast<float>(e[5]), static_cast<float>(e[6]), static_cast<float>(e[7]));
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Programmatic dependent launch (sm_90+; gpu_graph.cc launches the decode
// graph's kernels so): a kernel may start while the one before it still
// runs, so its first weight loads (constant data) overlap that kernel's
// last blocks instead of following its end and the launch. Each kernel
// issues them, then pdl_wait() -- until the kernel before it has finished
// and its writes are visible -- before reading anything a kernel writes
// (activations, the position, the KV cache, scratch), and only then lets
// the next kernel start (pdl_launch()), so at most two kernels overlap.
// Both are no-ops in a launch without the attribute (MLX's own launches).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Lines [0, lines) of the 128-byte lines from p, spread over the grid's
// warps (line l to warp l mod warps): this warp asks L2 for its lines. Used
// for the next kernel's weights (any dtype: only bytes are asked for),
// asked for by each warp of this one once its own loads are in: between two kernels DRAM idles (the last blocks' tail, the
// launch, the next kernel's first loads; 2-4 us a kernel, bench/RESULTS.md),
// and these requests fill it, so the next kernel reads its first bytes from
// L2. Prefetches hold no registers and nothing waits for them.
__device__ __forceinline__ void l2_share(const void* p, int lines, int warp, int lane) {
  if (lines <= 0) return;
  const int nw = int(gridDim.x) * int(blockDim.x >> 5);
  for (int l = int(blockIdx.x) * int(blockDim.x >> 5) + warp + lane * nw; l < lines; l += 32 * nw)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(p) + size_t(l) * 128));
}

// A row pair's dot products with an input row, given the warp's first CB
// chunks of both rows in flight in a and b: each chunk's registers are
// refilled with the chunk CB ahead as soon as they are used (the loop is
// unrolled, so a[i % CB] is a register), which keeps CB loads in flight
// until the warp's last chunk. xin(k, x0, x1) gives the input's 8 values
// from k. With S > 1 warps a pair, the pair's first warp adds the S partial
// sums, always in one order, and the others return false (every warp of
// the block must call this: it has a barrier).
template <typename T, int K, int S, int CW, int CB, typename X>
__device__ __forceinline__ bool pair_dot(uint4 (&a)[CB], uint4 (&b)[CB], const T* w0, const T* w1, int c0, int lane,
                                         int warp, int part, bool live, X xin, float (*part_sum)[2], float& acc0,
                                         float& acc1, const void* nxt = nullptr, int nxt_lines = 0) {
  acc0 = 0.f;
  acc1 = 0.f;
#pragma unroll
  for (int i = 0; i < CW; i++) {
    const int k = (c0 + i) * 256 + lane * 8;
    if (live && k < K) {
      float4 x0, x1;
      xin(k, x0, x1);
      acc0 = dot8<T>(acc0, a[i % CB], x0, x1);
      acc1 = dot8<T>(acc1, b[i % CB], x0, x1);
    }
    if (i + CB < CW) ld2<T, K>(a[i % CB], b[i % CB], w0, w1, c0 + i + CB, lane, live);
  }
  acc0 = warp_sum(acc0);
  acc1 = warp_sum(acc1);
  if (S > 1) {
    if (lane == 0) {
      part_sum[warp][0] = acc0;
      part_sum[warp][1] = acc1;
    }
    __syncthreads();
    if (part != 0) {
      l2_share(nxt, nxt_lines, warp, lane);
      return false;
    }
    acc0 = 0.f;
    acc1 = 0.f;
#pragma unroll
    for (int i = 0; i < S; i++) {
      acc0 += part_sum[warp + i][0];
      acc1 += part_sum[warp + i][1];
    }
  }
  l2_share(nxt, nxt_lines, warp, lane);
  return true;
}
// A warp's share of the adjacent rows r0 = 2i, r0 + 1 of w [N, K] (S warps
// a pair, PB = 8 / S pairs a block, each warp CW 256-wide chunks of K from
// c0), with its first CB chunks of both rows in flight in a and b (for
// pair_dot); store() then writes the pair's two sums (+ bias), rounded to
// T, from lane 0 of its first warp.
template <typename T, int K, int N, int S, int CW, int CB>
struct RowPair {
  int part, c0, r0;
  bool live;
  const T* w0;
  const T* w1;
  uint4 a[CB], b[CB];
  __device__ __forceinline__ explicit RowPair(const T* w) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int pair = blockIdx.x * (8 / S) + warp / S;
    part = warp % S;
    c0 = part * CW;
    live = pair < N / 2;
    r0 = 2 * pair;
    w0 = w + size_t(live ? r0 : 0) * K;
    w1 = w + size_t(live ? r0 + 1 : 0) * K;
#pragma unroll
    for (int i = 0; i < CB; i++) ld2<T, K>(a[i], b[i], w0, w1, c0 + i, lane, live);
  }
  template <bool BIAS>
  __device__ __forceinline__ void store(float acc0, float acc1, const T* bias, T* y) const {
    if (!live || (threadIdx.x & 31) != 0) return;
    if (BIAS) {
      acc0 += static_cast<float>(bias[r0]);
      acc1 += static_cast<float>(bias[r0 + 1]);
    }
    y[r0] = static_cast<T>(acc0);
    y[r0 + 1] = static_cast<T>(acc1);
  }
};

// Inputs: h [K] (residual row), dl [K] (added to h when ADD), g [K] (norm
// weight), w [N, K] (row-major), bias [N] (when BIAS), pos [1] int32 (RoPE
// position), freqs [D/2] float32 (RoPE frequencies when FREQS).
// Outputs: hout [K] (h + dl, rounded; h when not ADD), y.
// MODE 0: y [N], no epilogue (D 2: pairs are adjacent rows; the head's
// logits). MODE 1: y [N] with rows < ROT rotated (head dim D, position
// SCALE * pos, frequencies freqs or base 2^LOG2B); 2: y [N/2] =
// silu(rows < N/2) * (rows >= N/2). EPS, SCALE, LOG2B: float bits.
// QN > 0 (the KV variant): y is q [1, QN / D, 1, D], rows < QN; the rest,
// keys then values, are written in place at position pos of the KV cache
// buffer [1, heads, cap, D] (the cache's only owner passes it; see
// gpu_decode.cc for why that is sound).
// S (1, 2, 4 or 8) warps share a row pair, each summing a slice of K: few
// rows (a 1B model's q/k/v: 1536 pairs) then still fill the GPU. IF: 256-wide
// chunks of both rows a warp keeps in flight (4; on an H100, 8 was slower:
// 95-162 registers a thread against 64; bench/RESULTS.md, eighth pass).
template <typename T, int K, int N, int S, bool ADD, bool BIAS, int MODE, int D, int ROT, int QN, bool FREQS,
          int EPS, int SCALE, int LOG2B, int IF, int PFL>
__device__ __forceinline__ void norm_gemv(const T* h, const T* dl, const T* g, const T* w, const T* bias,
                                          const int* pos, const float* freqs, T* cache, int cap, T* hout, T* y,
                                          const void* nxt) {
  constexpr int WARPS = 8, TH = 32 * WARPS;
  constexpr int C = (K + 255) / 256;    // 256-wide chunks of a row: 8 elements per lane
  constexpr int CW = (C + S - 1) / S;   // chunks per warp
  constexpr int CB = CW < IF ? CW : IF; // chunks of both rows in flight per warp
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
  pdl_wait();
  pdl_launch();

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
  // The KV variant also asks L2 for the cache's earlier positions (keys and
  // values of every KV head), which the next kernel, the attention, reads
  // first: there, read from DRAM, they queued behind the o projection's
  // weight loads on the heads' critical path (bench/RESULTS.md, eleventh
  // pass). Only up to KVPF positions, the most cider's attention kernel
  // takes (gpu_decode.cc: ATTN_TMAX): 0.5-4 MB for a 1B model against its
  // 12.6 MB of weights here; a longer context (MLX's attention) would
  // stream more than L2 holds.
  if (QN > 0) {
    constexpr int HR = (N - QN) / (D > 1 ? D : 1);                 // key heads, then value heads
    constexpr int LPR = (D * int(sizeof(T)) + 127) / 128;          // 128-byte lines a position
    constexpr int KVPF = 2048;
    const int n = pos[0] <= KVPF ? pos[0] : 0, lines = HR * n * LPR;  // positions before this one
    const int nt = int(gridDim.x) * TH;
    for (int i = int(blockIdx.x) * TH + tid; i < lines; i += nt) {
      const int r = i / LPR, hd = r / n, p = r % n;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(cache + (size_t(hd) * cap + p) * D) +
                                                   (i % LPR) * 128));
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

  float acc0, acc1;
  auto from_shared = [&](int k, float4& x0, float4& x1) {
    x0 = *reinterpret_cast<const float4*>(xs + k);
    x1 = *reinterpret_cast<const float4*>(xs + k + 4);
  };
  if (!pair_dot<T, K, S, CW, CB>(a, b, w0, w1, c0, lane, warp, part, live, from_shared, part_sum, acc0, acc1, nxt,
                                 PFL))
    return;
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
// y [N] = w [N, K] . x [K] (+ bias), each output rounded to T as MLX's
// gemv rounds it: the MLP's down projection, where MLX's gemv reads its
// 33.5 MB (Llama-3.2-1B) at about 2.1 TB/s on an H100 against 2.7 for the
// gate/up kernel (bench/gpu_decode.py: 14.8-15.0 against 16.1-16.3 us).
// Row pairs (2i, 2i + 1) by warps as in norm_gemv; x goes to shared memory
// once per block, behind the first weight loads.
template <typename T, int K, int N, int S, bool BIAS, int IF, int PFL>
__device__ __forceinline__ void gemv(const T* x, const T* w, const T* bias, T* y, const void* nxt) {
  constexpr int WARPS = 8, TH = 32 * WARPS;
  constexpr int C = (K + 255) / 256;
  constexpr int CW = (C + S - 1) / S;
  constexpr int CB = CW < IF ? CW : IF;
  static_assert(K % 8 == 0 && N % 2 == 0, "gemv shapes");
  __shared__ __align__(16) T xs[K];
  __shared__ float part_sum[WARPS][2];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  RowPair<T, K, N, S, CW, CB> rp(w);
  pdl_wait();
  pdl_launch();
  // (x is a kernel's fresh output in decode steps, so 16-byte aligned; a
  // view that is not is read element by element.)
  if ((reinterpret_cast<size_t>(x) & 15) == 0) {
    for (int i = tid; i < K / 8; i += TH) reinterpret_cast<uint4*>(xs)[i] = reinterpret_cast<const uint4*>(x)[i];
  } else {
    for (int i = tid; i < K; i += TH) xs[i] = x[i];
  }
  __syncthreads();
  float acc0, acc1;
  auto from_shared = [&](int k, float4& x0, float4& x1) {
    widen8<T>(*reinterpret_cast<const uint4*>(xs + k), x0, x1);
  };
  if (pair_dot<T, K, S, CW, CB>(rp.a, rp.b, rp.w0, rp.w1, rp.c0, lane, warp, rp.part, rp.live, from_shared, part_sum,
                                acc0, acc1, nxt, PFL))
    rp.template store<BIAS>(acc0, acc1, bias, y);
}
// Greedy sampling of one row of logits x [V] -> y [1] (uint32): the first
// index of the largest T(x - T(logsumexp(x))), what MLX's logsumexp,
// subtract and argmax give (mlx-lm samples from log-probabilities, and
// rounding them can tie logits that differ).
// NB blocks of 256 threads each take a contiguous slice of the row and
// write its running max and sum of exponentials (kept as MLX's logsumexp
// keeps them, same fast exp) to `scratch`; the last block to finish (a
// counter in scratch[2 NB], reset to 0 at the end) combines them into the
// logsumexp. Rounding x - lse to T is monotonic, so the largest value is
// T(M - lse) for the row's max M, and the first block whose own max
// reaches it holds the answer: only that slice is read again. (One block
// doing all of it was about 18 us on an H100, compute-bound in one SM.)
// scratch: 2 * 64 + 1 words (slices, then the counter at a fixed word, so
// calls with another NB can share it), zero the first time; one kernel at
// a time may use it (callers chain the calls: gpu_decode.cc).
__device__ __forceinline__ void lse_step(float& m, float& n, const float v) {
  const float mm = fmaxf(m, v);
  n = n * __expf(m - mm) + __expf(v - mm);
  m = mm;
}
__device__ __forceinline__ void lse_join(float& m, float& n, const float m2, const float n2) {
  const float mm = fmaxf(m, m2);
  n = n * __expf(m - mm) + n2 * __expf(m2 - mm);
  m = mm;
}
template <typename T, int V, int NB>
__device__ __forceinline__ void greedy(const T* x, const unsigned* scratch_in, unsigned* y) {
  constexpr int TH = 256, WARPS = TH / 32, COUNT = 2 * 64;
  static_assert(NB >= 1 && NB <= 64, "the last block combines at most 64 slices, two a lane");
  unsigned* scratch = const_cast<unsigned*>(scratch_in);
  __shared__ float sm[WARPS], sn[WARPS];
  __shared__ float s_lse, s_target;
  __shared__ int s_last, s_blk, s_idx;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, b = blockIdx.x;
  pdl_wait();
  pdl_launch();
  // x may start inside a 16-byte word (the last row of a prompt's logits is
  // a view at (L - 1) * V elements): the elements before the first whole
  // word belong to block 0, those after the last to block NB - 1, each read
  // singly, so the slices stay in index order.
  const int lead0 = int(((16 - (reinterpret_cast<size_t>(x) & 15)) & 15) / sizeof(T));
  const int lead = lead0 < V ? lead0 : V, nv = (V - lead) / 8, tail = lead + nv * 8;
  const uint4* xv = reinterpret_cast<const uint4*>(x + lead);
  const int per = (nv + NB - 1) / NB;
  auto words = [&](int blk, int& w0, int& w1) {
    w0 = min(blk * per, nv);
    w1 = min(w0 + per, nv);
  };
  // Singles of block blk: k-th for k < count.
  auto singles = [&](int blk) { return (blk == 0 ? lead : 0) + (blk == NB - 1 ? V - tail : 0); };
  auto single = [&](int blk, int k) { return blk == 0 && k < lead ? k : tail + (k - (blk == 0 ? lead : 0)); };

  int w0, w1;
  words(b, w0, w1);
  float m = -3.402823466e38f, n = 0.f;
  for (int i = w0 + tid; i < w1; i += TH) {
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
  for (int k = tid; k < singles(b); k += TH) lse_step(m, n, static_cast<float>(x[single(b, k)]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    lse_join(m, n, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, n, o));
  if (lane == 0) {
    sm[warp] = m;
    sn[warp] = n;
  }
  __syncthreads();
  if (tid == 0) {
    for (int i = 1; i < WARPS; i++) lse_join(m, n, sm[i], sn[i]);
    // An empty slice can hold no answer.
    if (w0 == w1 && singles(b) == 0) m = __int_as_float(0xff800000);
    scratch[2 * b] = __float_as_uint(m);
    scratch[2 * b + 1] = __float_as_uint(n);
    __threadfence();
    s_last = atomicAdd(scratch + COUNT, 1u) == NB - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  // The last block: every slice's (max, sum) in slice order, two a lane of
  // warp 0 and a fixed tree, so the sum's order never changes.
  float bm = -3.402823466e38f;
  if (tid < NB) bm = __uint_as_float(__ldcg(scratch + 2 * tid));
  if (warp == 0) {
    float m2 = -3.402823466e38f, n2 = 0.f, m1 = m2, n1 = 0.f;
    if (lane < NB) {
      m1 = __uint_as_float(__ldcg(scratch + 2 * lane));
      n1 = __uint_as_float(__ldcg(scratch + 2 * lane + 1));
      if (isinf(m1) && m1 < 0) m1 = -3.402823466e38f;  // empty slice
    }
    if (lane + 32 < NB) {
      m2 = __uint_as_float(__ldcg(scratch + 2 * (lane + 32)));
      n2 = __uint_as_float(__ldcg(scratch + 2 * (lane + 32) + 1));
      if (isinf(m2) && m2 < 0) m2 = -3.402823466e38f;
    }
    lse_join(m1, n1, m2, n2);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      lse_join(m1, n1, __shfl_xor_sync(0xffffffffu, m1, o), __shfl_xor_sync(0xffffffffu, n1, o));
    if (lane == 0) {
      const float lse = static_cast<float>(static_cast<T>(isinf(m1) ? m1 : logf(n1) + m1));
      s_lse = lse;
      s_target = static_cast<float>(static_cast<T>(m1 - lse));
      scratch[COUNT] = 0u;  // for the next call
    }
  }
  __syncthreads();
  const float lse = s_lse, target = s_target;
  // No finite largest value (a NaN or +inf logit makes lse NaN or +inf, so
  // every x - lse is NaN or -inf; an all -inf row makes lse -inf, so every
  // x - lse is NaN): index 0, as MLX's argmax leaves it.
  unsigned at = 0;
  if (isfinite(target)) {
    for (int from = 0; from < NB;) {
      __syncthreads();  // everyone has read s_idx of the last round
      if (tid == 0) {
        s_blk = NB;
        s_idx = 0x7fffffff;
      }
      __syncthreads();
      if (tid >= from && tid < NB && static_cast<float>(static_cast<T>(bm - lse)) == target) atomicMin(&s_blk, tid);
      __syncthreads();
      const int blk = s_blk;
      if (blk == NB) break;
      int v0, v1, first = 0x7fffffff;
      words(blk, v0, v1);
      for (int i = v0 + tid; i < v1 && first == 0x7fffffff; i += TH) {
        const uint4 u = xv[i];
        const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
        for (int j = 0; j < 8; j++) {
          if (first == 0x7fffffff && static_cast<float>(static_cast<T>(static_cast<float>(e[j]) - lse)) == target)
            first = lead + i * 8 + j;
        }
      }
      for (int k = tid; k < singles(blk); k += TH) {
        const int i = single(blk, k);
        if (i < first && static_cast<float>(static_cast<T>(static_cast<float>(x[i]) - lse)) == target) first = i;
      }
      if (first != 0x7fffffff) atomicMin(&s_idx, first);
      __syncthreads();
      if (s_idx != 0x7fffffff) {
        at = unsigned(s_idx);
        break;
      }
      from = blk + 1;
    }
  }
  if (tid == 0) y[0] = at;
}
// One query's attention over the KV cache, then the o projection, in one
// kernel (what MLX runs as its one-query attention and a gemv: two graph
// nodes, 5 + 6.3 us on an H100 for a 1B model, most of it ramp and launch).
// y [N] = w [N, K] . attn + bias, attn [HQ, D] (K = HQ * D) =
// softmax(scale * q . keys) . values over positions 0..pos of the joint
// cache buffer [1, 2 HK, cap, D] (keys' heads, then values'), computed as
// MLX's one-query kernel does (float, base-2 exponent, q scaled by
// scale * log2 e, output times the reciprocal of the sum, rounded to T), and
// also written to att [HQ * D].
// Blocks of 8 warps: each warp takes a row pair (S warps, each a slice of
// K, as norm_gemv), and a whole block takes one head's attention, or a
// slice of its positions in long contexts (heads are few: 32 for a 1B
// model). Block b claims unit b at its start, after its first weight loads
// are in flight; blocks wait for every unit and take unclaimed ones
// (run_wait_steal), then read the heads' outputs through L2. The last block
// out resets the scratch's counters and claims, so `scratch` (zero before
// the first call; layout in attn_o) serves the next call; calls must not
// overlap (gpu_decode.cc).
// n = pos + 1 <= TMAX positions (scores live in shared memory).
template <int VPL>
struct VWord;  // the word holding VPL values of 2 bytes
template <>
struct VWord<2> {
  using type = unsigned;
};
template <>
struct VWord<4> {
  using type = uint2;
};
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Units of work that other blocks of the kernel wait for (the attention
// kernel's heads) are claimed (claim[u] 0 -> 1) and counted when done. A block given a first unit starts it at
// once and learns whether its claim won only when done: a unit is computed
// the same way by whichever block runs it (the same instructions on the
// same inputs), so a block that lost the claim wrote the same bytes, and
// only the winner counts the unit. Counting: a barrier (run() ends with
// one), then one thread's fence and atomic add, as cooperative groups' grid
// sync publishes a block's writes; the waiters' acquire loads pair with it.
// With `wait`, the block then waits until all `units` are counted; one that
// has waited a while (64 polls by one thread) runs a unit nobody has
// claimed (from `start` on, so waiting blocks spread out), so no block
// waits on one that may not have started: the kernel finishes whatever
// order or number of blocks the GPU runs at once. run() has one call site
// (two inlined copies of a unit's code cost registers: 64 -> 99 in a trial).
// Every thread of the block calls this.
template <typename R>
__device__ __forceinline__ void run_wait_steal(unsigned* claim, unsigned* count, int units, int first, bool wait,
                                               int start, R run) {
  __shared__ int s_done, s_free, s_won;
  const int tid = threadIdx.x;
  int u = first;
  if (u >= 0 && tid == 0) s_won = atomicCAS(claim + u, 0u, 1u) == 0u;
  for (;;) {
    if (u >= 0) {
      run(u, tid == 0 && s_won);  // (whether this block's claim won: thread 0 knows)
      if (tid == 0 && s_won) {
        __threadfence();
        atomicAdd(count, 1u);
      }
      u = -1;
    }
    if (!wait) return;
    if (tid == 0) {
      unsigned c = ld_acquire(count);
      // (Sleeps longer while many units remain: hundreds of blocks polling
      // one word slow the atomic adds on it.)
      for (int i = 0; c < unsigned(units) && i < 64; i++) {
        __nanosleep(min(1024u, 16u * (unsigned(units) - c)));
        c = ld_acquire(count);
      }
      s_done = c >= unsigned(units);
      s_free = units;
    }
    __syncthreads();
    if (s_done) return;
    for (int i = tid; i < units; i += blockDim.x)
      if (ld_acquire(claim + i) == 0u) atomicMin(&s_free, (i - start % units + units) % units);
    __syncthreads();
    if (s_free < units) {
      u = (s_free + start) % units;
      if (tid == 0) s_won = atomicCAS(claim + u, 0u, 1u) == 0u;
      __syncthreads();
      if (!s_won) u = -1;
    }
    __syncthreads();
  }
}
// The last block out zeroes the scratch's first `words` words for the next
// call, after every block's scratch operations: a block's exit count comes
// after them (its acquire loads order a waiting block's; `fence` orders a
// block that only counted its unit). Warp 0 only, so no barrier holds the
// rest of the block.
__device__ __forceinline__ void exit_reset(unsigned* scratch, unsigned* exits, int words, bool fence) {
  if (threadIdx.x >= 32) return;
  unsigned last = 0;
  if (threadIdx.x == 0) {
    if (fence) __threadfence();
    last = atomicAdd(exits, 1u) == gridDim.x - 1;
  }
  if (__shfl_sync(0xffffffffu, last, 0)) {
    __threadfence();
    for (int i = threadIdx.x; i < words; i += 32) scratch[i] = 0u;
  }
}
template <typename T, int D, int HQ, int HK, int TMAX>
__device__ __forceinline__ void head_attention(int hd, const T* q, const T* cache, int cap, int t0, int t1,
                                               float scale_log2, T* att, float* part, float* sc, float* red,
                                               float* red2) {
  constexpr int TH = 256, WARPS = 8, VPL = D / 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kv = hd / (HQ / HK);
  // Positions t0..t1-1 (of the whole cache) as 0..n-1 here.
  const int n = t1 - t0;
  const T* kb = cache + (size_t(kv) * cap + t0) * D;
  const T* vb = cache + (size_t(HK + kv) * cap + t0) * D;
  // Every key and value row is on its way to L2 first (prefetches hold no
  // registers).
  for (int t = tid; t < n; t += TH) {
#pragma unroll
    for (int l = 0; l < D * int(sizeof(T)); l += 128) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(kb + size_t(t) * D) + l));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(vb + size_t(t) * D) + l));
    }
  }
  // Scores: G = D / 8 lanes a position, each with 8 of q's values (times
  // scale * log2 e) in registers and one 16-byte load of the key a round,
  // summed across the G lanes (whole q per thread: D more registers).
  constexpr int G = D / 8, PR = TH / G;
  const int sub = tid % G, slot = tid / G;
  float qv[8];
  {
    const uint4 u = *reinterpret_cast<const uint4*>(q + hd * D + sub * 8);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < 8; j++) qv[j] = scale_log2 * static_cast<float>(e[j]);
  }
  float m = -3.402823466e38f;
  // (Rounds are block-uniform, so every lane reaches the shuffles.)
#pragma unroll 4
  for (int t0 = 0; t0 < n; t0 += PR) {
    const int t = t0 + slot;
    uint4 u = make_uint4(0u, 0u, 0u, 0u);
    if (t < n) u = reinterpret_cast<const uint4*>(kb + size_t(t) * D)[sub];
    const T* e = reinterpret_cast<const T*>(&u);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++) s = fmaf(qv[j], static_cast<float>(e[j]), s);
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (t < n) {
      if (sub == 0) sc[t] = s;
      m = fmaxf(m, s);
    }
  }
  __syncthreads();  // every score is in shared memory
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) red2[warp] = m;
  __syncthreads();
  m = red2[0];
#pragma unroll
  for (int i = 1; i < WARPS; i++) m = fmaxf(m, red2[i]);
  float sum = 0.f;
  for (int t = tid; t < n; t += TH) {
    const float p = exp2f(sc[t] - m);
    sc[t] = p;
    sum += p;
  }
  sum = warp_sum(sum);
  __syncthreads();  // everyone has read red2's maxima
  if (lane == 0) red2[warp] = sum;
  __syncthreads();
  float tot = 0.f;
#pragma unroll
  for (int i = 0; i < WARPS; i++) tot += red2[i];
  // Values: warp w takes positions w, w + 8, ...; lane l dims l * VPL...
  // (8 loads in flight a warp: 20.5 against 23.0 us for the kernel at 1024
  // positions on an H100, 9.1 against 9.3 at 128.)
  float o[VPL];
#pragma unroll
  for (int j = 0; j < VPL; j++) o[j] = 0.f;
#pragma unroll 8
  for (int t = warp; t < n; t += WARPS) {
    const float p = sc[t];
    const T* vr = vb + size_t(t) * D + lane * VPL;
    // One 4- or 8-byte load of this lane's values, read as T in registers.
    const typename VWord<VPL>::type u = *reinterpret_cast<const typename VWord<VPL>::type*>(vr);
    const T* ve = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < VPL; j++) o[j] = fmaf(p, static_cast<float>(ve[j]), o[j]);
  }
#pragma unroll
  for (int j = 0; j < VPL; j++) red[warp * D + lane * VPL + j] = o[j];
  __syncthreads();
  if (tid < D) {
    float a = 0.f;
#pragma unroll
    for (int i = 0; i < WARPS; i++) a += red[i * D + tid];
    if (part) {
      // A slice of the positions: its max, sum and unnormalised output.
      if (tid == 0) {
        part[0] = m;
        part[1] = tot;
      }
      part[2 + tid] = a;
    } else {
      const float r = tot == 0.f ? 0.f : __frcp_rn(tot);
      att[hd * D + tid] = static_cast<T>(a * r);
    }
  }
  // (Published by the caller: this barrier, then one thread's fence and
  // atomic add, as cooperative groups' grid sync publishes a block's writes.)
  __syncthreads();
}

template <typename T, int K, int N, int S, bool BIAS, int D, int HQ, int HK, int TMAX, int SCALE_LOG2, int IF,
          int MAXH, int MS, int PFL>
__device__ __forceinline__ void attn_o(const T* q, const T* cache, int cap, const int* pos, const T* w,
                                       const T* bias, const unsigned* scratch_in, T* y, T* att, const void* nxt) {
  constexpr int WARPS = 8;
  constexpr int C = K / 256;            // 256-wide chunks of a row (K % 256 == 0)
  constexpr int CW = (C + S - 1) / S;   // chunks per warp
  constexpr int CB = CW < IF ? CW : IF; // chunks of both rows in flight per warp
  static_assert(K == HQ * D && K % 256 == 0 && (D == 64 || D == 128) && HQ % HK == 0, "attn_o shapes");
  __shared__ __align__(16) float sc[TMAX];
  __shared__ float red[WARPS * D];
  __shared__ float red2[WARPS];
  __shared__ float part_sum[WARPS][2];
  // Long contexts split each head's positions over up to MS blocks (one
  // block reads a head's keys and values at a few hundred GB/s: on an H100
  // the kernel took 23.6 us at 1024 positions, 15.5 in 4 slices), each
  // slice written as its max, sum and unnormalised output; the last slice
  // of a head to finish (counted in head_done) combines them. Combining
  // costs about 2 us (13.2 against 11.1 at 128 positions in 2 slices), so
  // slices hold at least PER positions.
  // The scratch's layout is the same for every shape (one scratch serves
  // every model a thread runs; what a call counts in it, it zeroes): room
  // for MAXH heads of at most 128 in at most MS slices (gpu_decode.cc).
  constexpr int PER = 160;  // positions a slice holds at least
  static_assert(HQ <= MAXH && D <= 128, "attn_o heads");
  unsigned* scratch = const_cast<unsigned*>(scratch_in);
  unsigned* count = scratch;          // units done
  unsigned* exits = scratch + 1;
  unsigned* head_done = scratch + 2;  // [MAXH]: slices done
  unsigned* claim = head_done + MAXH; // [MAXH * MS]: units (head, slice)
  float* parts = reinterpret_cast<float*>(claim + MAXH * MS);  // [MAXH * MS][D + 2]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  RowPair<T, K, N, S, CW, CB> rp(w);
  pdl_wait();
  pdl_launch();

  const int n = min(pos[0] + 1, min(TMAX, cap));
  const int slices = max(1, min(MS, n / PER)), per = (n + slices - 1) / slices;
  const int units = HQ * slices;  // unit u: head u % HQ, slice u / HQ
  const float scale_log2 = __int_as_float(SCALE_LOG2);
  __shared__ int s_last;
  // The units other blocks wait for (run_wait_steal).
  run_wait_steal(claim, count, units, int(blockIdx.x) < units ? int(blockIdx.x) : -1, true, blockIdx.x,
                 [&](int u, bool won) {
    const int hd = u % HQ, sl = u / HQ;
    float* part = slices > 1 ? parts + size_t(hd * MS + sl) * (D + 2) : nullptr;
    head_attention<T, D, HQ, HK, TMAX>(hd, q, cache, cap, sl * per, min(n, sl * per + per), scale_log2, att, part,
                                       sc, red, red2);
    if (slices == 1) return;
    if (tid == 0) {
      s_last = 0;
      if (won) {
        __threadfence();  // this slice's writes before its count
        s_last = atomicAdd(head_done + hd, 1u) == unsigned(slices - 1);
        if (s_last) __threadfence();
      }
    }
    __syncthreads();
    if (s_last && tid < D) {
      // softmax over all positions = each slice's scaled by 2^(m_s - M).
      const float* ph = parts + size_t(hd * MS) * (D + 2);
      float M = -3.402823466e38f, L = 0.f, O = 0.f;
      for (int i = 0; i < slices; i++) M = fmaxf(M, __ldcg(ph + i * (D + 2)));
      for (int i = 0; i < slices; i++) {
        const float f = exp2f(__ldcg(ph + i * (D + 2)) - M);
        L += __ldcg(ph + i * (D + 2) + 1) * f;
        O += __ldcg(ph + i * (D + 2) + 2 + tid) * f;
      }
      att[hd * D + tid] = static_cast<T>(O * (L == 0.f ? 0.f : __frcp_rn(L)));
    }
    __syncthreads();
  });
  exit_reset(scratch, exits, 2 + MAXH + units, false);

  // The heads' outputs (written by other blocks of this kernel) through L2
  // into shared memory, once per block: read by every warp from L2, the
  // whole grid reading the same few KB at once took about 2 us on an H100
  // (its lines sit in a few L2 slices), 4x the bytes of one read a block.
  __shared__ __align__(16) T atts[K];
#pragma unroll 1
  for (int i = tid; i < K / 8; i += 32 * WARPS)
    reinterpret_cast<uint4*>(atts)[i] = __ldcg(reinterpret_cast<const uint4*>(att) + i);
  __syncthreads();
  float acc0, acc1;
  auto from_att = [&](int k, float4& x0, float4& x1) {
    widen8<T>(*reinterpret_cast<const uint4*>(atts + k), x0, x1);
  };
  if (pair_dot<T, K, S, CW, CB>(rp.a, rp.b, rp.w0, rp.w1, rp.c0, lane, warp, rp.part, rp.live, from_att, part_sum, acc0,
                                acc1, nxt, PFL))
    rp.template store<BIAS>(acc0, acc1, bias, y);
}

}  // namespace cider_dec
)CUDA";

// What each call compiles (the template arguments come from MLX's
// constexpr lines; the KV variant's cache is an input MLX passes as const,
// with its shape because the text names cache_shape). pos and freqs are
// cast: SwiGLU's caller passes h in their place (never read).
inline constexpr const char* kCiderNormCall =
    "cider_dec::norm_gemv<T, K, N, S, ADD, BIAS, MODE, D, ROT, 0, FREQS, EPS, SCALE, LOG2B, IF, PFL>"
    "(h, dl, g, w, bias, reinterpret_cast<const int*>(pos), reinterpret_cast<const float*>(freqs), "
    "static_cast<T*>(nullptr), 0, hout, y, nxt);";
inline constexpr const char* kCiderNormKvCall =
    "cider_dec::norm_gemv<T, K, N, S, ADD, BIAS, MODE, D, ROT, QN, FREQS, EPS, SCALE, LOG2B, IF, PFL>"
    "(h, dl, g, w, bias, reinterpret_cast<const int*>(pos), reinterpret_cast<const float*>(freqs), "
    "const_cast<T*>(cache), cache_shape[2], hout, q, nxt);";
inline constexpr const char* kCiderGemvCall = "cider_dec::gemv<T, K, N, S, BIAS, IF, PFL>(x, w, bias, y, nxt);";
inline constexpr const char* kCiderGreedyCall = "cider_dec::greedy<T, V, NB>(x, scratch, y);";
inline constexpr const char* kCiderAttnOCall =
    "cider_dec::attn_o<T, K, N, S, BIAS, D, HQ, HK, TMAX, SCALE_LOG2, IF, MAXH, MS, PFL>"
    "(q, cache, cache_shape[2], reinterpret_cast<const int*>(pos), w, bias, scratch, y, att, nxt);";

}  // namespace cider
