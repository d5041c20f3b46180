// cider's decode kernels on NVIDIA GPUs (source and why: gpu_decode_src.h):
// [residual add] -> RMSNorm -> one-row projection -> [bias] -> RoPE or
// SwiGLU in one graph node, a position's attention + o projection in one,
// the down projection's gemv, and greedy sampling in one. The model decides
// where they apply (hidden_fused in core/src/models/transformer.rs, the
// generator's Stepper); this file checks the arguments, runs a self-check
// against MLX's own ops once per activation type, and launches.
// CIDER_GPU_KERNELS=0 (or gpu_kernels_enable(false)) turns them off.
#include <stdlib.h>  // mkdtemp
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "gpu_decode_src.h"
#include "gpu_trace.h"
#include "mlx/backend/cuda/cuda.h"
#include "mlx/fast.h"
#include "shim.h"

namespace mx = mlx::core;

namespace cider {
namespace dec {
const KindSpec& spec(Kind kind) {
  static const KindSpec specs[] = {
      {"cider_dec", {"h", "dl", "g", "w", "bias", "pos", "freqs", "nxt"}, {"hout", "y"}, kCiderNormCall},
      {"cider_dec_kv", {"h", "dl", "g", "w", "bias", "pos", "freqs", "cache", "prev", "nxt"}, {"hout", "q"},
       kCiderNormKvCall},
      {"cider_greedy", {"x", "scratch", "prev"}, {"y"}, kCiderGreedyCall},
      {"cider_attn_o", {"q", "cache", "pos", "w", "bias", "scratch", "nxt"}, {"y", "att"}, kCiderAttnOCall},
      {"cider_gemv", {"x", "w", "bias", "nxt"}, {"y"}, kCiderGemvCall}};
  return specs[int(kind)];
}
}  // namespace dec

namespace {

constexpr int WARPS = 8;
// The normalised row lives in static shared memory (4 bytes an element).
constexpr int MAX_K = 8192;

// MLX copies and hashes a custom kernel's whole source on every call (host
// time per decode step, the cost this kernel is for), so comments and
// indentation are dropped once here.
std::string minified(const std::string& text) {
  std::string out, line;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find('\n', i);
    if (j == std::string::npos) j = text.size();
    line = text.substr(i, j - i);
    i = j + 1;
    if (line.find('"') == std::string::npos) {
      const size_t c = line.find("//");
      if (c != std::string::npos) line.resize(c);
    }
    const size_t a = line.find_first_not_of(" \t"), b = line.find_last_not_of(" \t");
    if (a == std::string::npos) continue;
    out += line.substr(a, b - a + 1);
    out += '\n';
  }
  return out;
}

// The device code as the compiler sees it: one #include line naming a file
// written once per process into a private temporary directory (removed at
// exit), so the text MLX rebuilds and hashes on every call is a few lines
// (with the whole text inline, 32 custom-kernel calls per step in place of
// MLX matmuls cost about 8 us more host time each: bench/RESULTS.md,
// seventh pass). Where no file can be written, the whole text goes inline:
// same kernels, slower host.
struct DeviceHeader {
  std::string text;             // the device code
  std::filesystem::path dir;    // empty: inline
  std::string header;           // what MLX gets: the #include line, or text
};

// Writes the file into `dir`, which must be a directory this process's user
// owns and no one else may write to (it was made by mkdtemp, or remade by
// mkdir, so its path cannot have been taken over by another user).
bool write_header(const std::filesystem::path& dir, const std::string& text) {
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022))
    return false;
  std::ofstream f(dir / "decode.cuh", std::ios::trunc);
  f << text;
  f.close();
  return bool(f);
}

const DeviceHeader& device_header() {
  static const DeviceHeader h = [] {
    DeviceHeader d;
    d.text = minified(kCiderDecodeSource);
    d.header = d.text;
    std::string tmpl;
    try {
      tmpl = (std::filesystem::temp_directory_path() / "cider-gpu-XXXXXX").string();
    } catch (const std::exception&) {
      return d;
    }
    if (!mkdtemp(tmpl.data())) return d;
    static const std::filesystem::path dir = tmpl;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    });
    if (!write_header(dir, d.text)) return d;
    d.dir = dir;
    d.header = "#include \"" + (dir / "decode.cuh").string() + "\"\n";
    return d;
  }();
  return h;
}

// A temporary-file cleaner may delete the file while a long-running
// process still compiles kernels for new shapes (a model loaded later), so
// each launch checks it, at most every 10 s, and writes it again.
void keep_header_file() {
  static std::atomic<int64_t> next{0};
  const auto& h = device_header();
  if (h.dir.empty()) return;
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  if (now < next.load(std::memory_order_relaxed)) return;
  next.store(now + 10, std::memory_order_relaxed);
  std::error_code ec;
  if (std::filesystem::exists(h.dir / "decode.cuh", ec)) return;
  mkdir(h.dir.c_str(), 0700);  // gone with its file: remade (then owned by us), or there
  write_header(h.dir, h.text);
}

using dec::Kind;
using dec::KindSpec;
using dec::spec;
using dec::TArgs;

// The launches being traced on this thread (dec::set_trace), if any.
thread_local std::vector<dec::Traced>* tracing = nullptr;

// The kernel of `kind` with template arguments `targs`, as MLX runs it.
// MLX's cuda_kernel formats every template argument into the kernel's name
// and source on every call (a dozen fmt::format calls and a fresh 8 KB
// string per launch, 49 launches a Llama-3.2-1B step), so each
// configuration gets its own kernel function once, with the arguments
// written into its source as the constexpr lines MLX would write, and is
// then called without template arguments. Same source for the compiler.
const mx::fast::CustomKernelFunction& kernel(Kind kind, const TArgs& targs) {
  static std::mutex m;
  static std::map<std::vector<int>, std::unique_ptr<mx::fast::CustomKernelFunction>> made;
  std::vector<int> key{int(kind)};
  key.reserve(targs.size() + 1);
  for (const auto& [name, arg] : targs) {
    if (std::holds_alternative<int>(arg)) key.push_back(std::get<int>(arg));
    else if (std::holds_alternative<bool>(arg)) key.push_back(std::get<bool>(arg));
    else key.push_back(int(std::get<mx::Dtype>(arg).val()));
  }
  std::lock_guard<std::mutex> lock(m);
  auto it = made.find(key);
  if (it != made.end()) return *it->second;
  const KindSpec& k = spec(kind);
  const std::string src = dec::targ_lines(targs);
  auto f = std::make_unique<mx::fast::CustomKernelFunction>(
      mx::fast::cuda_kernel(k.name + ("_" + std::to_string(made.size())), k.inputs, k.outputs, src + k.call,
                            device_header().header, /*ensure_row_contiguous=*/true, /*shared_memory=*/0));
  return *made.emplace(std::move(key), std::move(f)).first->second;
}

// Runs the kernel of `kind` through MLX: `threads` in blocks of 8 warps,
// outputs of these shapes and types. A traced launch is also recorded.
std::vector<mx::array> run(Kind kind, const TArgs& targs, std::vector<mx::array> inputs,
                           std::vector<mx::Shape> shapes, std::vector<mx::Dtype> dtypes, int threads,
                           const mx::Stream& s) {
  constexpr int TB = 32 * WARPS;
  auto out = kernel(kind, targs)(inputs, std::move(shapes), std::move(dtypes), {threads, 1, 1}, {TB, 1, 1}, {},
                                 std::nullopt, false, s);
  if (tracing) tracing->push_back({kind, targs, std::move(inputs), out, threads / TB, TB});
  return out;
}

// Blocks of 8 warps for `pairs` row pairs, S warps a pair.
int blocks_for(int pairs, int S) {
  return (pairs + WARPS / S - 1) / (WARPS / S);
}

// How many warps share a row pair (S): the fewest that give at least
// min_blocks blocks of 8 warps, and no more than a row has 256-wide chunks.
// On an H100 (bench/gpu_decode.py, ncu) S = 1 was fastest for a 1B model's
// q/k/v (192 blocks: 8.4 us, against 9.0-9.3 for S = 2-8) and gate/up
// (1024 blocks: 24.7 us, against 25.9-37.2), so S > 1 is kept for smaller
// models (Qwen2.5-0.5B's q/k/v: 72 blocks). CIDER_DEC_BLOCKS overrides the
// 128 (for tuning).
int split_for(int pairs, int K, int times = 1) {
  static const int base_blocks = [] {
    const char* e = std::getenv("CIDER_DEC_BLOCKS");
    const int v = e ? std::atoi(e) : 0;
    return v > 0 ? v : 128;
  }();
  const int min_blocks = base_blocks * times;
  const int chunks = (K + 255) / 256;
  int S = 1;
  while (S < WARPS && 2 * S <= chunks && blocks_for(pairs, S) < min_blocks) S *= 2;
  return S;
}

// 256-wide chunks of both rows a warp keeps in flight (the kernel's IF).
constexpr int IN_FLIGHT = 4;

// The next kernel's weights a decode kernel asks L2 for once its own loads
// are in (l2_share in gpu_decode_src.h), by whose weights they are: q/k/v
// (asked by the down projection of the layer before), o (by q/k/v), gate/up
// (by the attention + o projection), down (by gate/up).
enum class Next { Qkv, O, GateUp, Down };

// The most megabytes asked for: CIDER_GPU_PF, one number for all four or
// four in Next's order (0: none), each finite and >= 0; anything else
// leaves the default, and the status says so (prefetch_status). What the
// default is, and why, is in bench/RESULTS.md (thirteenth pass).
struct PrefetchSetting {
  std::array<double, 4> mb{4, 4, 4, 4};
  std::string rejected;  // the variable's text where it was not understood
};
const PrefetchSetting& prefetch_setting() {
  static const PrefetchSetting v = [] {
    PrefetchSetting d;
    const char* e = std::getenv("CIDER_GPU_PF");
    if (!e || !*e) return d;
    std::vector<double> got;
    const std::string text = e;
    size_t i = 0;
    while (i <= text.size()) {
      const size_t j = std::min(text.find(',', i), text.size());
      const std::string item = text.substr(i, j - i);
      char* end = nullptr;
      const double x = item.empty() ? -1 : std::strtod(item.c_str(), &end);
      if (item.empty() || *end || !std::isfinite(x) || x < 0) {
        d.rejected = text;
        return d;
      }
      got.push_back(x);
      i = j + 1;
    }
    if (got.size() == 1) d.mb.fill(got[0]);
    else if (got.size() == 4) std::copy(got.begin(), got.end(), d.mb.begin());
    else d.rejected = text;
    return d;
  }();
  return v;
}

// "L2 prefetch 4/4/4/4 MB" (q/k/v, o, gate/up, down), and what was not
// understood.
std::string prefetch_status() {
  const auto& p = prefetch_setting();
  char b[128];
  std::snprintf(b, sizeof b, "L2 prefetch %g/%g/%g/%g MB", p.mb[0], p.mb[1], p.mb[2], p.mb[3]);
  std::string r = b;
  if (!p.rejected.empty())
    r += " (CIDER_GPU_PF=" + p.rejected + " not understood: one or four megabyte counts; default kept)";
  return r;
}

// 128-byte lines of `next` to ask for (the kernel's PFL): none where there
// is no next array, it is not evaluated, or MLX would copy it (a view that
// is not row-contiguous: the copy, not the weights, would be read), else up
// to the setting's megabytes.
int prefetch_lines(Next which, const mx::array* next) {
  if (!next || !next->is_available() || !next->flags().row_contiguous) return 0;
  const double cap = prefetch_setting().mb[int(which)] * double(1 << 20);
  return int(std::min(double(next->nbytes()), cap) / 128);
}

struct Rope {
  int rot = 0, head_dim = 2;
  const mx::array* freqs = nullptr;  // else base 2^log2_base
  float log2_base = 0.f, scale = 1.f;
};

// Shapes and types were checked by the caller (gpu_norm_gemv). With
// `cache`, rows from qn on are keys and values written into it.
std::vector<mx::array> launch(const mx::array& h, const mx::array* dl, const mx::array& g, float eps,
                              const mx::array& w, const mx::array* bias, int mode, const Rope& rope,
                              const mx::array& pos, const mx::array* cache, int qn, const mx::Stream& s,
                              const mx::array* prev = nullptr, int S = 0, const mx::array* next = nullptr,
                              int pf = 0) {
  static const mx::array no_freqs = mx::array({0.0f});
  const int K = w.shape(1), N = w.shape(0), pairs = N / 2;
  if (S == 0) S = split_for(pairs, K);
  const int threads = 32 * WARPS * blocks_for(pairs, S);
  keep_header_file();
  TArgs targs{
      {"T", h.dtype()}, {"K", K}, {"N", N}, {"S", S}, {"ADD", dl != nullptr}, {"BIAS", bias != nullptr},
      {"MODE", mode}, {"D", rope.head_dim}, {"ROT", rope.rot}, {"FREQS", rope.freqs != nullptr},
      {"EPS", float_bits(eps)}, {"SCALE", float_bits(rope.scale)}, {"LOG2B", float_bits(rope.log2_base)},
      {"IF", IN_FLIGHT}, {"PFL", next ? pf : 0}};
  // (MLX counts every bound input's bytes toward its limit per CUDA graph,
  // 1000 MB on an H100, so binding the next weights, or w again where there
  // is nothing to ask for, also makes it commit graphs more often: by those
  // bytes, every 3-4 Llama-3.2-1B layers against every 6. The gain measured
  // in bench/RESULTS.md, thirteenth pass, is of the two together.)
  const mx::array& nxt = next && pf > 0 ? *next : w;
  const mx::array& freqs = rope.freqs ? *rope.freqs : no_freqs;
  if (cache) {
    targs.emplace_back("QN", qn);
    return run(Kind::NormKv, targs, {h, dl ? *dl : h, g, w, bias ? *bias : g, pos, freqs, *cache, prev ? *prev : *cache, nxt},
               {h.shape(), {1, qn / rope.head_dim, 1, rope.head_dim}}, {h.dtype(), h.dtype()}, threads, s);
  }
  // RoPE's output comes in the attention layout [1, heads, 1, head_dim]:
  // q, k and v are then views, with no reshape node between.
  // Mode 0 (no epilogue; the head's logits) is one row [1, N].
  const mx::Shape yshape = mode == 2   ? mx::Shape{1, N / 2}
                           : mode == 0 ? mx::Shape{1, N}
                                       : mx::Shape{1, N / rope.head_dim, 1, rope.head_dim};
  return run(Kind::Norm, targs, {h, dl ? *dl : h, g, w, bias ? *bias : g, pos, freqs, nxt}, {h.shape(), yshape},
             {h.dtype(), h.dtype()}, threads, s);
}

// The attention + o projection kernel (attn_o in gpu_decode_src.h): at
// most ATTN_TMAX positions (its scores live in shared memory; KVPF in
// norm_gemv, the positions the q/k/v kernel prefetches, must match), heads of 64
// or 128, at most ATTN_MAX_HEADS query heads (the kernel's MAXH), each in
// at most ATTN_SLICES slices of its positions (MS). Its scratch (layout in
// attn_o): the count of units done, the exit counter, slices done per head,
// a claim per unit (a head's slice), then each slice's max, sum and output.
constexpr int ATTN_TMAX = 2048;
constexpr int ATTN_MAX_HEADS = 128;
constexpr int ATTN_SLICES = 4;
constexpr int ATTN_SCRATCH_WORDS = 2 + ATTN_MAX_HEADS + ATTN_MAX_HEADS * ATTN_SLICES * (1 + 128 + 2);

// One scratch per stream, zero between calls (the last block out resets
// it). Calls on one scratch must not overlap: MLX gives each thread its own
// default stream, and streams run at once, so each gets its own; on one
// stream, a model's calls are ordered by data (each layer's q comes from
// the previous layer's output, a step's from the last step's token; every
// generation step is its own evaluation).
const mx::array& attn_scratch(const mx::Stream& s) {
  static std::mutex m;
  static std::map<int, mx::array> by_stream;
  std::lock_guard<std::mutex> lock(m);
  auto it = by_stream.find(s.index);
  if (it != by_stream.end()) return it->second;
  auto z = mx::zeros({ATTN_SCRATCH_WORDS}, mx::uint32, s);
  mx::eval(z);
  return by_stream.emplace(s.index, z).first->second;
}

// How many warps share an o-projection row pair: the fewest giving at
// least 256 blocks. On an H100 (bench/gpu_decode.py, ncu, caches flushed,
// Llama-3.2-1B at 384 positions) S = 1 / 2 / 4 / 8 took 16.1 / 15.7 /
// 17.5 / 17.3 us, against 21.0 for MLX's attention and gemv.
int attn_split(int pairs, int K) {
  return split_for(pairs, K, 2);
}

// q [1, HQ, 1, D], the joint cache [1, 2 HK, cap, D] (positions 0..n-1
// read, n = pos[0] + 1), w [N, HQ * D] -> {y [1, N], attention [1, HQ * D]}.
// Shapes were checked by the caller (gpu_attn_o, attn_rows).
std::vector<mx::array> launch_attn(const mx::array& q, const mx::array& cache, const mx::array& pos,
                                   const mx::array& w, const mx::array* bias, float scale, const mx::Stream& s,
                                   int S = 0, const mx::array* next = nullptr, int pf = 0) {
  const int HQ = q.shape(1), D = q.shape(3), HK = cache.shape(1) / 2, K = HQ * D, N = w.shape(0);
  if (S == 0) S = attn_split(N / 2, K);
  keep_header_file();
  const float scale_log2 = float(double(scale) * 1.4426950408889634);  // as MLX's kernel forms it
  const TArgs targs{{"T", q.dtype()}, {"K", K}, {"N", N}, {"S", S}, {"BIAS", bias != nullptr}, {"D", D}, {"HQ", HQ},
                    {"HK", HK}, {"TMAX", ATTN_TMAX}, {"SCALE_LOG2", float_bits(scale_log2)}, {"IF", IN_FLIGHT},
                    {"MAXH", ATTN_MAX_HEADS}, {"MS", ATTN_SLICES}, {"PFL", next ? pf : 0}};
  return run(Kind::AttnO, targs, {q, cache, pos, w, bias ? *bias : w, attn_scratch(s), next && pf > 0 ? *next : w},
             {{1, N}, {1, K}}, {q.dtype(), q.dtype()}, 32 * WARPS * blocks_for(N / 2, S), s);
}

// What the kernel takes ("" or what is wrong).
std::string attn_shape_error(int HQ, int HK, int D, int N) {
  if (D != 64 && D != 128) return "head dim must be 64 or 128";
  if (HQ < 1 || HQ > ATTN_MAX_HEADS || HK < 1 || HQ % HK) return "query heads must be a multiple of the KV heads, at most 128";
  if (HQ * D % 256 || HQ * D > MAX_K) return "query heads x head dim must be a multiple of 256, at most " + std::to_string(MAX_K);
  if (N < 2 || N % 2) return "the o projection's rows must be even";
  return "";
}

// The kernel against MLX's attention and matmul (outputs within 2 % of
// the largest magnitude: sums run in another order; a wrong head, position
// or row is off by its size), at each of `ns` positions in turn over one
// cache and the one scratch (so its reset is checked too).
std::string attn_rows(mx::Dtype dt, int HQ, int HK, int D, int N, bool bias, float scale, std::vector<int> ns,
                      int S, const mx::Stream& s) {
  int cap = 0;
  for (int n : ns) cap = std::max(cap, n + 3);
  auto rnd = [&](mx::Shape shape, float sd, int seed) {
    return mx::random::normal(shape, dt, 0.0f, sd, mx::random::key(seed), s);
  };
  auto cache = rnd({1, 2 * HK, cap, D}, 1.0f, 31), w = rnd({N, HQ * D}, 0.05f, 32), b = rnd({1, N}, 0.5f, 33);
  int seed = 40;
  for (int n : ns) {
    auto q = rnd({1, HQ, 1, D}, 1.0f, seed++);
    auto pos = mx::arange(n - 1, n + 3, mx::int32, s);
    mx::eval({q, cache, w, b, pos});
    auto got = launch_attn(q, cache, pos, w, bias ? &b : nullptr, scale, s, S);
    auto k = mx::slice(cache, {0, 0, 0, 0}, {1, HK, n, D}, s), v = mx::slice(cache, {0, HK, 0, 0}, {1, 2 * HK, n, D}, s);
    auto att = mx::reshape(mx::fast::scaled_dot_product_attention(q, k, v, scale, "", {}, std::nullopt, false, s), {1, HQ * D}, s);
    auto wt = mx::transpose(w, {1, 0}, s);
    auto y = bias ? mx::addmm(b, att, wt, 1.0f, 1.0f, s) : mx::matmul(att, wt, s);
    const std::string what = "heads " + std::to_string(HQ) + "/" + std::to_string(HK) + " D " + std::to_string(D) +
                             " N " + std::to_string(N) + (bias ? " +bias" : "") + " S " + std::to_string(S) +
                             " positions " + std::to_string(n);
    if (std::string diff = max_diff_within(got[1], att, 0.02f, s); !diff.empty())
      return "attention differs from MLX's (" + what + ": " + diff + ")";
    if (std::string diff = max_diff_within(got[0], y, 0.02f, s); !diff.empty())
      return "o projection differs from MLX's (" + what + ": " + diff + ")";
  }
  return "";
}

// The down projection's gemv: x [1, K] (x lives in static shared memory,
// 2 bytes an element), w [N, K]. Warps a row pair: the fewest giving at
// least 512 blocks, with 2 chunks in flight a warp; on an H100
// (bench/gpu_decode.py, ncu, caches flushed, Llama-3.2-1B's 2048 x 8192)
// S = 4 with 2 in flight took 14.8-15.3 us against 16.7-17.0 with 4 in
// flight (S = 8: 15.0 with 2, 15.5-17.8 with 4) and 16.1-16.3 for MLX's
// gemv (bench/results/h100-2026-11-23s-kernels-attn-variants.txt).
constexpr int GEMV_MAX_K = 16384;
constexpr int GEMV_IN_FLIGHT = 2;
int gemv_split(int pairs, int K) {
  return split_for(pairs, K, 4);
}

std::string gemv_shape_error(int K, int N) {
  if (K < 8 || K % 8 || K > GEMV_MAX_K) return "K must be a multiple of 8, at most " + std::to_string(GEMV_MAX_K);
  if (N < 2 || N % 2) return "N must be even";
  return "";
}

// Shapes were checked by the caller (gpu_gemv, gemv_rows).
mx::array launch_gemv(const mx::array& x, const mx::array& w, const mx::array* bias, const mx::Stream& s, int S = 0,
                      const mx::array* next = nullptr, int pf = 0) {
  const int K = w.shape(1), N = w.shape(0);
  if (S == 0) S = gemv_split(N / 2, K);
  keep_header_file();
  const TArgs targs{{"T", x.dtype()}, {"K", K}, {"N", N}, {"S", S}, {"BIAS", bias != nullptr}, {"IF", GEMV_IN_FLIGHT},
                    {"PFL", next ? pf : 0}};
  return run(Kind::Gemv, targs, {x, w, bias ? *bias : w, next && pf > 0 ? *next : w}, {{1, N}}, {x.dtype()},
             32 * WARPS * blocks_for(N / 2, S), s)[0];
}

// The gemv against MLX's matmul (addmm with a bias) on random rows: within
// 2 % of the largest output (sums run in another order; a wrong row or
// chunk is off by its size). `offset` > 0 reads x from inside a buffer
// (not 16-byte aligned: the kernel's element-wise path).
std::string gemv_rows(mx::Dtype dt, int K, int N, bool bias, int S, int offset, const mx::Stream& s) {
  auto rnd = [&](mx::Shape shape, float sd, int seed) {
    return mx::random::normal(shape, dt, 0.0f, sd, mx::random::key(seed), s);
  };
  auto xs = rnd({1, K + offset}, 1.0f, 71), w = rnd({N, K}, 0.05f, 72), b = rnd({1, N}, 0.5f, 73);
  auto x = mx::slice(xs, {0, offset}, {1, K + offset}, s);
  mx::eval({xs, w, b});
  auto got = launch_gemv(x, w, bias ? &b : nullptr, s, S);
  auto wt = mx::transpose(w, {1, 0}, s);
  auto want = bias ? mx::addmm(b, x, wt, 1.0f, 1.0f, s) : mx::matmul(x, wt, s);
  if (std::string diff = max_diff_within(got, want, 0.02f, s); !diff.empty())
    return "gemv differs from MLX's matmul (K " + std::to_string(K) + " N " + std::to_string(N) +
           (bias ? " +bias" : "") + " S " + std::to_string(S) + " x offset " + std::to_string(offset) + ": " + diff + ")";
  return "";
}

// Blocks of the greedy kernel: a slice of at least 2048 logits each (one
// 16-byte load a thread), at most 64 (the last block combines the slices in
// one warp, two a lane).
constexpr int GREEDY_MAX_BLOCKS = 64;
int greedy_blocks(int V) {
  return std::max(1, std::min(GREEDY_MAX_BLOCKS, V / 2048));
}

// The greedy kernel's scratch: each block's (max, sum) and the counter
// that finds the last block, zero between calls (the last block resets it).
mx::array greedy_scratch(const mx::Stream& s) {
  auto a = mx::zeros({2 * GREEDY_MAX_BLOCKS + 1}, mx::uint32, s);
  mx::eval(a);
  return a;
}

// logits [1, V] -> the greedy token [1] (uint32, as MLX's argmax). The
// kernel writes `scratch` though MLX sees it as an input, so two calls on
// one scratch must not run at once: MLX's CUDA graphs run nodes with no
// data dependency concurrently, so each call also takes the previous call's
// output `prev` (not read), which orders it after that call.
mx::array launch_greedy(const mx::array& x, const mx::array& scratch, const mx::array& prev, const mx::Stream& s) {
  keep_header_file();
  const int V = int(x.size()), nb = greedy_blocks(V);
  static_assert(32 * WARPS == 256, "the greedy kernel's blocks are 256 threads");
  return run(Kind::Greedy, {{"T", x.dtype()}, {"V", V}, {"NB", nb}}, {x, scratch, prev}, {{1}}, {mx::uint32}, 256 * nb,
             s)[0];
}

// Greedy sampling of rows of V logits against MLX's logsumexp, subtract and
// argmax: seed 57 all values equal (index 0), 58 ties after rounding, 61 a
// spread of 4. The token must be the same (it is unless MLX's logsumexp,
// summed in another order, rounds differently: it did not on these rows).
// Rows start at element 0, 1 (inside a 16-byte word, as a prompt's last row
// of logits can) and V of one buffer. Calls go through `scratch`, each
// after `prev`, which is updated.
std::string greedy_rows(mx::Dtype dt, int V, int seed, const mx::array& scratch, mx::array& prev,
                        const mx::Stream& s) {
  auto flat = mx::astype(mx::multiply(mx::random::normal({2 * V}, mx::float32, 0.0f, 1.0f, mx::random::key(seed), s),
                                      mx::array(float(seed - 57)), s),
                         dt, s);
  mx::eval(flat);
  for (int start : {0, 1, V}) {
    auto x = mx::reshape(mx::slice(flat, {start}, {start + V}, s), {1, V}, s);
    auto got = launch_greedy(x, scratch, prev, s);
    prev = got;
    auto want = mx::argmax(mx::subtract(x, mx::logsumexp(x, -1, true, s), s), -1, false, s);
    mx::eval({got, want});
    if (got.item<uint32_t>() != want.item<uint32_t>())
      return "greedy token differs from MLX's (V " + std::to_string(V) + ", seed " + std::to_string(seed) +
             ", row from " + std::to_string(start) + ": " + std::to_string(got.item<uint32_t>()) + " against " +
             std::to_string(want.item<uint32_t>()) + ")";
  }
  return "";
}

// MLX's ops for the same step, each rounding as it does in a model.
std::vector<mx::array> reference(const mx::array& h, const mx::array* dl, const mx::array& g, float eps,
                                 const mx::array& w, const mx::array* bias, int mode, const Rope& rope,
                                 int offset, const mx::Stream& s) {
  auto hh = dl ? mx::add(h, *dl, s) : h;
  auto n = mx::fast::rms_norm(hh, g, eps, s);
  auto wt = mx::transpose(w, {1, 0}, s);
  auto y = bias ? mx::addmm(*bias, n, wt, 1.0f, 1.0f, s) : mx::matmul(n, wt, s);
  const int N = w.shape(0);
  if (mode == 2) {
    auto gate = mx::slice(y, {0, 0}, {1, N / 2}, s), up = mx::slice(y, {0, N / 2}, {1, N}, s);
    y = mx::multiply(mx::multiply(gate, mx::sigmoid(gate, s), s), up, s);
  } else if (mode == 1) {
    const int D = rope.head_dim, hr = rope.rot / D;
    auto heads = mx::reshape(y, {1, N / D, 1, D}, s);
    auto qk = mx::slice(heads, {0, 0, 0, 0}, {1, hr, 1, D}, s);
    qk = rope.freqs ? mx::fast::rope(qk, D, false, std::nullopt, rope.scale, offset, *rope.freqs, s)
                    : mx::fast::rope(qk, D, false, std::exp2(rope.log2_base), rope.scale, offset, std::nullopt, s);
    auto rest = mx::slice(heads, {0, hr, 0, 0}, {1, N / D, 1, D}, s);
    y = mx::reshape(mx::concatenate({qk, rest}, 1, s), {1, N}, s);
  }
  return {hh, y};
}

// Each mode, with and without the residual add and a bias, against MLX's
// ops, on rows with a partial 256-wide chunk: K = 640 (3 chunks; S = 4
// leaves a warp with none) and K = 2176 (9 chunks: the prefetch ring is
// refilled; 272 16-byte pieces of the row for 256 threads; S = 8). The dot
// products sum in another order than cuBLAS, so outputs agree to rounding:
// allowed 2 % of the largest magnitude (a wrong row, pair or rotation is
// off by its size). The residual sum must agree exactly.
std::string self_test(mx::Dtype dt, const mx::Stream& s) {
  const int D = 64;
  auto rnd = [&](mx::Shape shape, float sd, int seed) {
    return mx::astype(mx::random::normal(shape, mx::float32, 0.0f, sd, mx::random::key(seed), s), dt, s);
  };
  auto freqs = mx::astype(mx::exp(mx::multiply(mx::arange(0, D / 2, mx::float32, s), mx::array(0.3f), s), s),
                          mx::float32, s);
  const int offset = 37;
  auto pos = mx::array({offset});
  struct Case {
    int K, mode, n;
    bool add, bias, use_freqs;
    int S;
  };
  const Case cases[] = {{640, 1, 8 * D, true, false, true, 1},   {640, 1, 8 * D, false, true, false, 2},
                        {640, 2, 768, true, false, false, 4},    {640, 2, 768, true, true, false, 1},
                        {2176, 2, 768, true, true, false, 1},    {2176, 1, 8 * D, true, false, true, 8}};
  for (const Case& c : cases) {
    const int K = c.K;
    auto h = rnd({1, K}, 1.0f, 1), dl = rnd({1, K}, 1.0f, 2), g = rnd({K}, 0.3f, 3);
    auto w = rnd({c.n, K}, 0.05f, 10 + c.mode), b = rnd({1, c.n}, 0.5f, 20 + c.mode);
    Rope rope;
    if (c.mode == 1) {
      rope.rot = 6 * D;
      rope.head_dim = D;
      rope.freqs = c.use_freqs ? &freqs : nullptr;
      rope.log2_base = std::log2(10000.0f);
      rope.scale = c.use_freqs ? 1.0f : 0.5f;
    }
    const mx::array* dlp = c.add ? &dl : nullptr;
    const mx::array* bp = c.bias ? &b : nullptr;
    auto got = launch(h, dlp, g, 1e-5f, w, bp, c.mode, rope, pos, nullptr, 0, s, nullptr, c.S);
    auto want = reference(h, dlp, g, 1e-5f, w, bp, c.mode, rope, offset, s);
    auto f32 = [&](const mx::array& a) { return mx::astype(mx::reshape(a, {-1}, s), mx::float32, s); };
    if (c.mode == 1) {
      // The KV variant: q out, keys and values into a cache at `offset`,
      // every other position left as it was.
      const int qn = 4 * D, cap = offset + 3;
      auto cache = mx::zeros({1, 4, cap, D}, dt, s);
      mx::eval(cache);
      auto q = launch(h, dlp, g, 1e-5f, w, bp, c.mode, rope, pos, &cache, qn, s, nullptr, c.S)[1];
      mx::eval(q);
      auto slot = mx::slice(cache, {0, 0, offset, 0}, {1, 4, offset + 1, D}, s);
      auto got_kv = mx::concatenate({f32(q), f32(slot)}, 0, s);
      auto others = mx::concatenate({mx::slice(cache, {0, 0, 0, 0}, {1, 4, offset, D}, s),
                                     mx::slice(cache, {0, 0, offset + 1, 0}, {1, 4, cap, D}, s)}, 2, s);
      auto kerr = mx::max(mx::abs(mx::subtract(got_kv, f32(got[1]), s), s), s);
      auto stray = mx::max(mx::abs(f32(others), s), s);
      mx::eval({kerr, stray});
      if (!(kerr.item<float>() == 0.0f) || !(stray.item<float>() == 0.0f))
        return "KV variant differs from the plain one (max |diff| " + std::to_string(kerr.item<float>()) +
               ", other positions " + std::to_string(stray.item<float>()) + ")";
    }
    auto herr = mx::max(mx::abs(mx::subtract(f32(got[0]), f32(want[0]), s), s), s);
    mx::eval(herr);
    const float he = herr.item<float>();
    const std::string what = "K " + std::to_string(K) + " mode " + std::to_string(c.mode) + (c.add ? " +add" : "") +
                             (c.bias ? " +bias" : "") + " S " + std::to_string(c.S);
    if (std::string diff = max_diff_within(got[1], want[1], 0.02f, s); !diff.empty())
      return "results differ from MLX's (" + what + ": " + diff + ")";
    if (!(he == 0.0f)) return "residual sum differs from MLX's (" + what + ": " + std::to_string(he) + ")";
  }
  // Attention + o projection: heads of 128 with a bias and 4 query heads a
  // KV head; no grouping, heads of 64 and 8 warps a pair; more units than
  // blocks (a grid of 2 blocks for 8 heads in 2 slices of 200 positions:
  // units are taken by waiting blocks); the longest context the kernel
  // takes (4 slices), and 1 position. Cases of other head counts run in
  // between on one scratch (its layout must not depend on the shape).
  struct AttnCase {
    int HQ, HK, D, N;
    bool bias;
    std::vector<int> ns;
    int S;
  };
  const AttnCase attn_cases[] = {{8, 2, 128, 96, true, {1, 37, 300, 37}, 1},
                                 {4, 4, 64, 256, false, {5, 260}, 8},
                                 {8, 8, 64, 32, false, {400, 1}, 1},
                                 {4, 1, 64, 512, true, {ATTN_TMAX, 1}, 2}};
  for (const AttnCase& c : attn_cases)
    if (std::string why = attn_rows(dt, c.HQ, c.HK, c.D, c.N, c.bias, 0.125f, c.ns, c.S, s); !why.empty()) return why;
  // The gemv: a partial 256-wide chunk (K = 640: 3 chunks, S = 4 leaves a
  // warp none; K = 2184: 9 chunks, with S = 2 the in-flight ring refilled,
  // with S = 8 x read from an odd offset), a bias, every split.
  struct GemvCase {
    int K, N;
    bool bias;
    int S, offset;
  };
  const GemvCase gemv_cases[] = {{640, 96, false, 4, 0}, {640, 96, true, 1, 0}, {2184, 66, true, 8, 1},
                                 {2184, 512, false, 2, 0}};
  for (const GemvCase& c : gemv_cases)
    if (std::string why = gemv_rows(dt, c.K, c.N, c.bias, c.S, c.offset, s); !why.empty()) return why;
  // Greedy sampling over one scratch, alternating one block (V = 1003, a
  // tail past the last 16-byte word) with 19 slices (V = 40003, ties
  // across them), so one scratch serves calls with different block counts.
  auto scratch = greedy_scratch(s);
  auto prev = scratch;
  for (int seed : {57, 58, 61})
    for (int V : {1003, 40003})
      if (std::string why = greedy_rows(dt, V, seed, scratch, prev, s); !why.empty()) return why;
  return "";
}

// One kernel configuration as a model launches it: everything that picks
// a compiled kernel (the template arguments), so checking a configuration
// compiles exactly the kernel the model then runs.
struct Cfg {
  mx::Dtype dt = mx::bfloat16;
  int K = 0, N = 0, mode = 0, qn = 0;  // qn > 0: the KV variant
  bool add = false, bias = false;
  Rope rope;
  bool freqs = false;
  float eps = 0.f;
  // What picks the kernel, compared without formatting: launches look it
  // up on every call (33 a decode step), so no string is built for that.
  auto tie() const {
    return std::make_tuple(int(dt.val()), K, N, mode, qn, add, bias, rope.rot, rope.head_dim, freqs,
                           float_bits(rope.log2_base), float_bits(rope.scale), float_bits(eps));
  }
  bool operator<(const Cfg& o) const { return tie() < o.tie(); }
  std::string key() const {
    char b[256];
    std::snprintf(b, sizeof b, "%s K %d N %d mode %d qn %d add %d bias %d rot %d D %d freqs %d log2b %a scale %a eps %a",
                  dt == mx::bfloat16 ? "bfloat16" : "float16", K, N, mode, qn, add, bias, rope.rot, rope.head_dim,
                  freqs, rope.log2_base, rope.scale, eps);
    return b;
  }
};

// The configuration against MLX's ops on random inputs of its shapes (the
// first K = 640-style edge cases are self_test's, for the GPU test): outputs
// within 2 % of the largest magnitude (the dot products sum in another
// order than cuBLAS; a wrong row, pair or rotation is off by its size), the
// residual sum exact; the KV variant's keys and values land at the position
// and nowhere else.
std::string check_cfg(const Cfg& c, const mx::Stream& s) {
  const int K = c.K, N = c.N, D = c.rope.head_dim;
  // Drawn in the model's dtype: the weight alone is N x K (67 MB for a 1B
  // model's gate/up), so no float32 copy besides.
  auto rnd = [&](mx::Shape shape, float sd, int seed) {
    return mx::random::normal(shape, c.dt, 0.0f, sd, mx::random::key(seed), s);
  };
  auto freqs = mx::astype(mx::exp(mx::multiply(mx::arange(0, std::max(D / 2, 1), mx::float32, s), mx::array(0.3f), s), s),
                          mx::float32, s);
  const int offset = 37;
  auto pos = mx::arange(offset, offset + 4, mx::int32, s);
  auto h = rnd({1, K}, 1.0f, 1), dl = rnd({1, K}, 1.0f, 2), g = rnd({K}, 0.3f, 3);
  auto w = rnd({N, K}, 0.05f, 10), b = rnd({1, N}, 0.5f, 20);
  Rope rope = c.rope;
  rope.freqs = c.freqs ? &freqs : nullptr;
  const mx::array* dlp = c.add ? &dl : nullptr;
  const mx::array* bp = c.bias ? &b : nullptr;
  auto want = reference(h, dlp, g, c.eps, w, bp, c.mode, rope, offset, s);
  auto f32 = [&](const mx::array& a) { return mx::astype(mx::reshape(a, {-1}, s), mx::float32, s); };
  mx::array got_h = h, got_y = h, stray = mx::array(0.0f);
  if (c.qn > 0) {
    const int cap = offset + 3, heads = (N - c.qn) / D;
    auto cache = mx::zeros({1, heads, cap, D}, c.dt, s);
    mx::eval(cache);
    auto out = launch(h, dlp, g, c.eps, w, bp, c.mode, rope, pos, &cache, c.qn, s);
    mx::eval(out);
    auto slot = mx::slice(cache, {0, 0, offset, 0}, {1, heads, offset + 1, D}, s);
    got_h = out[0];
    got_y = mx::concatenate({f32(out[1]), f32(slot)}, 0, s);
    auto others = mx::concatenate({mx::slice(cache, {0, 0, 0, 0}, {1, heads, offset, D}, s),
                                   mx::slice(cache, {0, 0, offset + 1, 0}, {1, heads, cap, D}, s)}, 2, s);
    stray = mx::max(mx::abs(f32(others), s), s);
  } else {
    auto out = launch(h, dlp, g, c.eps, w, bp, c.mode, rope, pos, nullptr, 0, s);
    got_h = out[0];
    got_y = out[1];
  }
  auto herr = mx::max(mx::abs(mx::subtract(f32(got_h), f32(want[0]), s), s), s);
  mx::eval({herr, stray});
  const float he = herr.item<float>(), st = stray.item<float>();
  if (std::string diff = max_diff_within(got_y, want[1], 0.02f, s); !diff.empty())
    return "results differ from MLX's (" + c.key() + ": " + diff + ")";
  if (!(he == 0.0f)) return "residual sum differs from MLX's (" + c.key() + ": " + std::to_string(he) + ")";
  if (!(st == 0.0f)) return "keys or values written outside their position (" + c.key() + ")";
  return "";
}

// The greedy kernel for rows of V logits against MLX's ops (greedy_rows),
// all values equal, ties after rounding, and a wide spread.
std::string check_greedy(mx::Dtype dt, int V, const mx::Stream& s) {
  auto scratch = greedy_scratch(s);
  auto prev = scratch;
  for (int seed : {57, 58, 61})
    if (std::string why = greedy_rows(dt, V, seed, scratch, prev, s); !why.empty()) return why;
  return "";
}

std::mutex mu;
// configuration -> "" when it passed its check, else why not; greedy
// sampling's by (dtype, V).
std::map<Cfg, std::string> checks;
std::map<std::pair<int, int>, std::string> greedy_checks;
// attention + o projection's by (dtype, HQ, HK, D, N, bias, scale bits).
std::map<std::tuple<int, int, int, int, int, bool, int>, std::string> attn_checks;
// the gemv's by (dtype, K, N, bias).
std::map<std::tuple<int, int, int, bool>, std::string> gemv_checks;

template <typename M, typename K, typename F>
const std::string& checked(M& memo, const K& key, F run) {
  return memo_check(mu, memo, key, run, "check failed: ");
}

// The kernels can run for activations of dt on stream s: a GPU with CUDA,
// bf16 or f16, and kernels not turned off. Each configuration is checked
// against MLX's ops before its first use (checked()).
bool ready(mx::Dtype dt, const mx::Stream& s) {
  if (s.device != mx::Device::gpu || (dt != mx::bfloat16 && dt != mx::float16) || !gpu_kernels_wanted() ||
      !mx::cu::is_available())
    return false;
  static const bool off = env_off("CIDER_GPU_KERNELS");
  return !off;
}

// CIDER_GPU_ATTN=0 keeps MLX's attention and o projection while the other
// kernels run (for comparing the two).
bool attn_wanted() {
  static const bool off = env_off("CIDER_GPU_ATTN");
  return !off;
}

// CIDER_GPU_GEMV=0 keeps MLX's gemv for the down projection.
bool gemv_wanted() {
  static const bool off = env_off("CIDER_GPU_GEMV");
  return !off;
}

// The shapes a configuration must have ("" or what is wrong): the
// kernel's own limits, checked where a model asks (gpu_decode_check) and
// where it launches (gpu_norm_gemv).
std::string shape_error(int K, int N, int mode, int rot, int head_dim, int qn) {
  if (K % 8 != 0 || K <= 0 || K > MAX_K) return "K must be a multiple of 8, at most " + std::to_string(MAX_K);
  if (N % 2 != 0 || N <= 0) return "N must be even";
  if (mode < 0 || mode > 2) return "unknown mode " + std::to_string(mode);
  if (mode == 1 && (head_dim < 2 || head_dim % 2 || N % head_dim || rot % head_dim || rot > N)) return "bad RoPE heads";
  if (qn > 0 && (mode != 1 || qn % head_dim || qn >= rot))
    return "the KV variant needs RoPE and q rows below the rotated ones";
  return "";
}

// A configuration as both places key it: SwiGLU has no RoPE, and the
// frequencies' values are an input, not part of the kernel.
Cfg make_cfg(mx::Dtype dt, int K, int N, int mode, int qn, bool add, bool bias, const Rope& rope, bool freqs,
             float eps) {
  Cfg c{dt, K, N, mode, qn, add, bias, mode != 1 ? Rope{} : rope, mode != 1 ? false : freqs, eps};
  c.rope.freqs = nullptr;
  return c;
}

const std::string& cfg_checked(const Cfg& c, const mx::Stream& s) {
  return checked(checks, c, [&] { return check_cfg(c, s); });
}

const std::string& greedy_checked(mx::Dtype dt, int V, const mx::Stream& s) {
  return checked(greedy_checks, std::make_pair(int(dt.val()), V), [&] { return check_greedy(dt, V, s); });
}

// A model's attention + o projection, checked at 1, 37, 300 and 400
// positions (one, a partial round of scores, more than one round, two
// slices) and the longest it takes (four slices).
const std::string& attn_checked(mx::Dtype dt, int HQ, int HK, int D, int N, bool bias, float scale,
                                const mx::Stream& s) {
  return checked(attn_checks, std::make_tuple(int(dt.val()), HQ, HK, D, N, bias, float_bits(scale)), [&] {
    return attn_rows(dt, HQ, HK, D, N, bias, scale, {1, 37, 300, 400, ATTN_TMAX}, attn_split(N / 2, HQ * D), s);
  });
}

const std::string& gemv_checked(mx::Dtype dt, int K, int N, bool bias, const mx::Stream& s) {
  return checked(gemv_checks, std::make_tuple(int(dt.val()), K, N, bias),
                 [&] { return gemv_rows(dt, K, N, bias, gemv_split(N / 2, K), 0, s); });
}

mx::Dtype dtype_of(uint8_t code) {
  return code == 11 ? mx::bfloat16 : code == 9 ? mx::float16 : mx::float32;
}

}  // namespace

std::string shape_str(const mx::array& a) {
  std::string r = "[";
  for (size_t i = 0; i < a.ndim(); i++) r += (i ? ", " : "") + std::to_string(a.shape(i));
  return r + "]";
}

namespace dec {
const char* cuda_type(mx::Dtype t) {
  if (t == mx::bfloat16) return "__nv_bfloat16";
  if (t == mx::float16) return "__half";
  if (t == mx::float32) return "float";
  if (t == mx::int32) return "int32_t";
  if (t == mx::uint32) return "uint32_t";
  return nullptr;
}
std::string targ_lines(const TArgs& targs) {
  std::string src;
  for (const auto& [name, arg] : targs) {
    if (std::holds_alternative<int>(arg)) {
      src += "constexpr int " + name + " = " + std::to_string(std::get<int>(arg)) + ";\n";
    } else if (std::holds_alternative<bool>(arg)) {
      src += "constexpr bool " + name + " = " + (std::get<bool>(arg) ? "true" : "false") + ";\n";
    } else {
      const char* t = cuda_type(std::get<mx::Dtype>(arg));
      src += "using " + name + " = " + (t ? t : "float") + ";\n";
    }
  }
  return src;
}
void set_trace(std::vector<Traced>* into) {
  tracing = into;
}
const std::string& device_text() {
  return device_header().text;
}
}  // namespace dec

bool gpu_decode_ready(uint8_t dtype_code) {
  const mx::Stream s = mx::default_stream(mx::default_device());
  return ready(dtype_of(dtype_code), s);
}

rust::String gpu_decode_check(uint8_t dtype_code, int32_t K, int32_t N, int32_t mode, bool has_dl, bool has_bias,
                              int32_t rot, int32_t head_dim, bool has_freqs, float log2_base, float rope_scale,
                              float eps, int32_t qn) {
  const mx::Dtype dt = dtype_of(dtype_code);
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) return rust::String("not available on this device");
  const Cfg c = make_cfg(dt, K, N, mode, qn, has_dl, has_bias, Rope{rot, head_dim, nullptr, log2_base, rope_scale},
                         has_freqs, eps);
  if (std::string why = shape_error(K, N, mode, rot, head_dim, qn); !why.empty())
    return rust::String("shapes the kernel does not take: " + why + " (" + c.key() + ")");
  return rust::String(cfg_checked(c, s));
}

rust::String gpu_greedy_check(uint8_t dtype_code, int32_t V) {
  const mx::Dtype dt = dtype_of(dtype_code);
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) return rust::String("not available on this device");
  if (V < 1) return rust::String("no logits");
  return rust::String(greedy_checked(dt, V, s));
}

rust::String gpu_decode_self_test(uint8_t dtype_code) {
  const mx::Dtype dt = dtype_of(dtype_code);
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) return rust::String("not available on this device");
  try {
    return rust::String(self_test(dt, s));
  } catch (const std::exception& e) {
    return rust::String(std::string("self-test failed: ") + e.what());
  }
}

std::unique_ptr<ArrayList> gpu_norm_gemv(const Array& h, const Array& dl, bool has_dl, const Array& g, float eps,
                                         const Array& w, const Array& bias, bool has_bias, int32_t mode,
                                         int32_t rot, int32_t head_dim, const Array& pos, const Array& freqs,
                                         bool has_freqs, float log2_base, float rope_scale, const Array& cache,
                                         bool has_cache, int32_t qn, const Array& prev, int32_t pos_value,
                                         const Array& next, bool has_next) {
  const mx::Dtype dt = h.a.dtype();
  const int K = h.a.size(), N = w.a.ndim() == 2 ? w.a.shape(0) : 0;
  // The model checks all of this once at load; a mismatch here is a bug
  // there, reported instead of launching on memory the kernel does not own.
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("fused decode kernel: " + what + " (h " + shape_str(h.a) + ", w " +
                                shape_str(w.a) + ")");
  };
  if (dt != mx::bfloat16 && dt != mx::float16) bad("activations must be bfloat16 or float16");
  if (h.a.ndim() != 2 || h.a.shape(0) != 1) bad("h must be one row [1, K]");
  if (w.a.ndim() != 2 || w.a.shape(1) != K || w.a.dtype() != dt || !w.a.flags().row_contiguous)
    bad("w must be a row-contiguous [N, K] of h's dtype");
  if (std::string why = shape_error(K, N, mode, rot, head_dim, has_cache ? qn : 0); !why.empty()) bad(why);
  if (g.a.size() != size_t(K) || g.a.dtype() != dt) bad("norm weight must have K elements of h's dtype");
  if (has_dl && (dl.a.shape() != h.a.shape() || dl.a.dtype() != dt)) bad("residual must match h");
  if (has_bias && (bias.a.size() != size_t(N) || bias.a.dtype() != dt)) bad("bias must have N elements");
  Rope rope;
  if (mode == 1) {
    if (pos.a.dtype() != mx::int32 || pos.a.size() < 1) bad("position must be an int32 array (first value read)");
    if (has_freqs && (freqs.a.dtype() != mx::float32 || freqs.a.size() != size_t(head_dim / 2)))
      bad("RoPE frequencies must be head_dim / 2 float32 values");
    rope = Rope{rot, head_dim, has_freqs ? &freqs.a : nullptr, log2_base, rope_scale};
  }
  if (has_cache) {
    // The kernel writes where nothing else reads before it: the cache's
    // owner passes its buffer, already holding room for this position, and
    // the attention that reads it takes q from this kernel, so runs after.
    // MLX sees no write, so ordering between steps comes from `prev`, what
    // the last step computed from this buffer (an input the kernel does not
    // read): in a graph of several steps built before evaluating, each
    // step's write comes after the previous step's write and read.
    // MLX would copy an input that is not row-contiguous (the write would go
    // to the copy) and a position past the capacity would be out of bounds:
    // both are refused here.
    const auto& c = cache.a;
    if (qn <= 0) bad("the KV variant needs q rows");
    if (c.dtype() != dt || c.ndim() != 4 || c.shape(0) != 1 || c.shape(3) != head_dim ||
        int64_t(c.shape(1)) * head_dim != N - qn || !c.flags().row_contiguous || !c.is_available())
      bad("cache must be an evaluated, row-contiguous [1, " + std::to_string((N - qn) / head_dim) + ", capacity, " +
          std::to_string(head_dim) + "] of h's dtype, not " + shape_str(c));
    // pos may not be computed yet (it is made on the device: see
    // hidden_fused); the caller states its value.
    const int p = pos_value;
    if (p < 0 || p >= c.shape(2))
      bad("position " + std::to_string(p) + " outside the cache's " + std::to_string(c.shape(2)) + " slots");
  }
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) bad("not available on this device");
  // Checked against MLX's ops before its first launch (the model asks
  // gpu_decode_check first, so this finds it done).
  {
    const Cfg c = make_cfg(dt, K, N, mode, has_cache ? qn : 0, has_dl, has_bias, rope, has_freqs, eps);
    const std::string& why = cfg_checked(c, s);
    if (!why.empty()) bad("failed its check against MLX's ops: " + why);
  }
  const mx::array* nx = has_next ? &next.a : nullptr;
  auto out = launch(h.a, has_dl ? &dl.a : nullptr, g.a, eps, w.a, has_bias ? &bias.a : nullptr, mode, rope,
                    pos.a, has_cache ? &cache.a : nullptr, qn, s, &prev.a, 0, nx,
                    prefetch_lines(mode == 2 ? Next::Down : Next::O, nx));
  auto l = std::make_unique<ArrayList>();
  l->v = std::move(out);
  return l;
}

std::unique_ptr<Array> gpu_greedy_scratch() {
  return std::make_unique<Array>(greedy_scratch(mx::default_stream(mx::default_device())));
}

std::unique_ptr<Array> gpu_greedy(const Array& logits, const Array& scratch, const Array& prev) {
  const auto& x = logits.a;
  const auto& sc = scratch.a;
  if (sc.dtype() != mx::uint32 || sc.size() != size_t(2 * GREEDY_MAX_BLOCKS + 1) || !sc.is_available())
    throw std::invalid_argument("GPU greedy sampling: scratch must come from gpu_greedy_scratch");
  if ((x.dtype() != mx::bfloat16 && x.dtype() != mx::float16) || x.ndim() != 2 || x.shape(0) != 1 ||
      x.shape(1) < 1)
    throw std::invalid_argument("GPU greedy sampling: logits must be one bfloat16 or float16 row [1, V], not " +
                                shape_str(x));
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(x.dtype(), s))
    throw std::invalid_argument("GPU greedy sampling: not available on this device");
  const std::string& why = greedy_checked(x.dtype(), int(x.size()), s);
  if (!why.empty()) throw std::invalid_argument("GPU greedy sampling failed its check against MLX's ops: " + why);
  return std::make_unique<Array>(launch_greedy(x, sc, prev.a, s));
}

int32_t gpu_attn_o_max_positions() {
  return ATTN_TMAX;
}

rust::String gpu_attn_o_check(uint8_t dtype_code, int32_t heads, int32_t kv_heads, int32_t head_dim, int32_t n,
                              bool has_bias, float scale) {
  const mx::Dtype dt = dtype_of(dtype_code);
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) return rust::String("not available on this device");
  if (!attn_wanted()) return rust::String("turned off by CIDER_GPU_ATTN=0");
  if (std::string why = attn_shape_error(heads, kv_heads, head_dim, n); !why.empty())
    return rust::String("shapes the attention kernel does not take: " + why);
  return rust::String(attn_checked(dt, heads, kv_heads, head_dim, n, has_bias, scale, s));
}

std::unique_ptr<Array> gpu_attn_o(const Array& q, const Array& cache, const Array& pos, int32_t pos_value,
                                  const Array& w, const Array& bias, bool has_bias, float scale, const Array& next,
                                  bool has_next) {
  const auto &qa = q.a, &c = cache.a, &wa = w.a;
  const mx::Dtype dt = qa.dtype();
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("fused attention kernel: " + what + " (q " + shape_str(qa) + ", cache " +
                                shape_str(c) + ", w " + shape_str(wa) + ")");
  };
  if (dt != mx::bfloat16 && dt != mx::float16) bad("activations must be bfloat16 or float16");
  if (qa.ndim() != 4 || qa.shape(0) != 1 || qa.shape(2) != 1) bad("q must be one position [1, heads, 1, head_dim]");
  const int HQ = qa.shape(1), D = qa.shape(3);
  // The cache is read in place, so it must be the buffer itself, evaluated:
  // keys' heads then values'.
  if (c.dtype() != dt || c.ndim() != 4 || c.shape(0) != 1 || c.shape(1) % 2 || c.shape(3) != D ||
      !c.flags().row_contiguous || !c.is_available())
    bad("cache must be an evaluated, row-contiguous [1, 2 x kv heads, capacity, head_dim] of q's dtype");
  const int HK = c.shape(1) / 2;
  if (wa.ndim() != 2 || wa.shape(1) != HQ * D || wa.dtype() != dt || !wa.flags().row_contiguous)
    bad("w must be a row-contiguous [N, heads x head_dim] of q's dtype");
  const int N = wa.shape(0);
  if (std::string why = attn_shape_error(HQ, HK, D, N); !why.empty()) bad(why);
  if (has_bias && (bias.a.size() != size_t(N) || bias.a.dtype() != dt)) bad("bias must have N elements");
  if (pos.a.dtype() != mx::int32 || pos.a.size() < 1) bad("position must be an int32 array (first value read)");
  if (pos_value < 0 || pos_value >= c.shape(2) || pos_value >= ATTN_TMAX)
    bad("position " + std::to_string(pos_value) + " outside the cache's " + std::to_string(c.shape(2)) +
        " slots or past the kernel's " + std::to_string(ATTN_TMAX));
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) bad("not available on this device");
  if (!attn_wanted()) bad("turned off by CIDER_GPU_ATTN=0");
  const std::string& why = attn_checked(dt, HQ, HK, D, N, has_bias, scale, s);
  if (!why.empty()) bad("failed its check against MLX's ops: " + why);
  const mx::array* nx = has_next ? &next.a : nullptr;
  return std::make_unique<Array>(
      launch_attn(qa, c, pos.a, wa, has_bias ? &bias.a : nullptr, scale, s, 0, nx, prefetch_lines(Next::GateUp, nx))[0]);
}

rust::String gpu_gemv_check(uint8_t dtype_code, int32_t K, int32_t N, bool has_bias) {
  const mx::Dtype dt = dtype_of(dtype_code);
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) return rust::String("not available on this device");
  if (!gemv_wanted()) return rust::String("turned off by CIDER_GPU_GEMV=0");
  if (std::string why = gemv_shape_error(K, N); !why.empty())
    return rust::String("shapes the gemv kernel does not take: " + why);
  return rust::String(gemv_checked(dt, K, N, has_bias, s));
}

std::unique_ptr<Array> gpu_gemv(const Array& x, const Array& w, const Array& bias, bool has_bias, const Array& next,
                                bool has_next) {
  const auto &xa = x.a, &wa = w.a;
  const mx::Dtype dt = xa.dtype();
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("gemv kernel: " + what + " (x " + shape_str(xa) + ", w " + shape_str(wa) + ")");
  };
  if (dt != mx::bfloat16 && dt != mx::float16) bad("x must be bfloat16 or float16");
  if (xa.ndim() != 2 || xa.shape(0) != 1) bad("x must be one row [1, K]");
  const int K = xa.shape(1);
  // (MLX would copy a weight that is not row-contiguous on every call.)
  if (wa.ndim() != 2 || wa.shape(1) != K || wa.dtype() != dt || !wa.flags().row_contiguous)
    bad("w must be a row-contiguous [N, K] of x's dtype");
  const int N = wa.shape(0);
  if (std::string why = gemv_shape_error(K, N); !why.empty()) bad(why);
  if (has_bias && (bias.a.size() != size_t(N) || bias.a.dtype() != dt)) bad("bias must have N elements of x's dtype");
  const mx::Stream s = mx::default_stream(mx::default_device());
  if (!ready(dt, s)) bad("not available on this device");
  if (!gemv_wanted()) bad("turned off by CIDER_GPU_GEMV=0");
  const std::string& why = gemv_checked(dt, K, N, has_bias, s);
  if (!why.empty()) bad("failed its check against MLX's matmul: " + why);
  const mx::array* nx = has_next ? &next.a : nullptr;
  return std::make_unique<Array>(launch_gemv(xa, wa, has_bias ? &bias.a : nullptr, s, 0, nx, prefetch_lines(Next::Qkv, nx)));
}

std::string gpu_decode_status() {
  std::lock_guard<std::mutex> lock(mu);
  // "bfloat16 on (3 kernels checked)", or each failed check and why.
  std::string r;
  for (const mx::Dtype dt : {mx::bfloat16, mx::float16}) {
    int ok = 0;
    std::string bad;
    auto count = [&](int d, const std::string& why) {
      if (d != int(dt.val())) return;
      if (why.empty()) ok++;
      else bad += (bad.empty() ? "" : "; ") + why;
    };
    for (const auto& [c, why] : checks) count(int(c.dt.val()), why);
    for (const auto& [k, why] : greedy_checks) count(k.first, why);
    for (const auto& [k, why] : attn_checks) count(std::get<0>(k), why);
    for (const auto& [k, why] : gemv_checks) count(std::get<0>(k), why);
    if (ok == 0 && bad.empty()) continue;
    // A failed check turns off only its own kernel (the model's fused path,
    // or greedy sampling), so both counts are told.
    r += (r.empty() ? "" : ", ") + std::string(dt == mx::bfloat16 ? "bfloat16" : "float16") +
         (ok ? " on (" + std::to_string(ok) + " kernels checked)" : "") + (bad.empty() ? "" : " off: " + bad);
  }
  if (!r.empty()) r += ", " + prefetch_status();
  return r;
}

}  // namespace cider
