// cider's quantized matmul for prompt passes on NVIDIA GPUs (source and
// why: gpu_qmm_src.h). Used instead of MLX's quantized_matmul for
// 9..2048 rows (512 for 8-bit) of bf16/f16 activations against 4- or 8-bit
// affine weights, once a self-check against MLX's op has passed for that type, bit
// width and group size; any other case, or a failed check, leaves MLX's op
// in place. CIDER_GPU_KERNELS=0 turns it off.
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <variant>

#include "gpu_qmm_src.h"
#include "mlx/backend/cuda/cuda.h"
#include "mlx/fast.h"
#include "shim.h"

namespace mx = mlx::core;

namespace cider {
namespace {

// One row is a decode step and up to 8 go to MLX's matrix-vector kernel,
// which reads the weights once; this kernel is for the prompt's many rows.
// 4-bit: measured faster than MLX's kernel from 16 to 2048 rows (cider's
// default prefill chunk). 8-bit: 2x less device time for a Llama-3.2-1B
// layer at 128 rows, 6 % less at 512 (its gate+up already 12 % slower
// there), not measured beyond. Longer chunks stay with MLX's kernel.
constexpr int MIN_ROWS = 9;
int max_rows(int bits) { return bits == 8 ? 512 : 2048; }

// Warp tile 16 MT x 8 NT, WN warps along N, KS warps splitting K.
struct Cfg {
  int mt, nt, wn, ks;
};

// The tiles choose() picks from; the self-check runs every one of them.
constexpr Cfg SMALL{2, 4, 1, 8}, WIDE{4, 4, 4, 1}, MID{4, 4, 1, 4};
constexpr Cfg TILES[] = {SMALL, WIDE, MID};

// Chosen from device times on an H100 (ncu over bench/gpu_qmm.py --once, 16
// to 2048 rows, bench/RESULTS.md): 64 x 32 block tiles with K split 4 ways
// are near the best almost everywhere. Short prompts, or less than a block
// per SM, want 32 x 32 tiles and K split 8 ways (a 2048-wide output at 128
// rows: 12 us against 13; 8 us against 12 at 16-32 rows); many blocks over a
// short K want no split and 4 warps side by side (a 16384-wide output at
// 128 rows: 49 us against 58).
Cfg choose(int M, int N, int K) {
  const int blocks = (M + 63) / 64 * (N / 32);
  if (M <= 32 || blocks < 132) return SMALL;
  // (WIDE's 128-column tiles must divide N.)
  if (blocks >= 1024 && K < 4096 && N % 128 == 0) return WIDE;
  return MID;
}

const mx::fast::CustomKernelFunction& kernel() {
  static const mx::fast::CustomKernelFunction k = mx::fast::cuda_kernel(
      "cider_qmm", {"x", "w", "scales", "biases"}, {"y"}, kCiderQmmBody, kCiderQmmHeader,
      /*ensure_row_contiguous=*/true, /*shared_memory=*/0);
  return k;
}

mx::array run(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
              int bits, int group_size, Cfg c, const mx::Stream& s) {
  const int K = x.shape(-1), N = w.shape(0);
  const int M = int(x.size() / K);
  auto shape = x.shape();
  shape.back() = N;
  const int threads = 32 * c.wn * c.ks, bn = 8 * c.nt * c.wn, bm = 16 * c.mt;
  return kernel()({x, w, scales, biases}, {shape}, {x.dtype()},
                  {threads * (N / bn), (M + bm - 1) / bm, 1}, {threads, 1, 1},
                  {{"T", x.dtype()}, {"BITS", bits}, {"MT", c.mt}, {"NT", c.nt}, {"WN", c.wn}, {"KS", c.ks},
                   {"G", group_size}},
                  std::nullopt, false, s)[0];
}

// Called only where MLX's CUDA backend is in use (try_gpu_qlinear checks).
bool cuda_sm80() {
  const auto& info = mx::gpu::device_info(0);
  auto it = info.find("compute_capability_major");
  // mma.sync on bf16 needs sm_80; without the key the self-check decides.
  if (it != info.end() && std::holds_alternative<size_t>(it->second)) return std::get<size_t>(it->second) >= 8;
  return true;
}

// Every tile configuration against MLX's quantized_matmul on a shape with a
// partial row tile (M = 40) and enough K for 8-way splits. The kernel sums
// in another order than MLX's, so results agree to rounding, not bits:
// allowed 2 % of the output's largest magnitude (a wrong fragment layout or
// nibble order is off by the output's size).
std::string self_check(mx::Dtype dt, int bits, int gs, const mx::Stream& s) {
  const int M = 40, N = 256, K = 1024;
  auto x = mx::astype(mx::random::normal({M, K}, mx::float32, 0.0f, 1.0f, mx::random::key(7), s), dt, s);
  auto wf = mx::astype(mx::random::normal({N, K}, mx::float32, 0.0f, 0.05f, mx::random::key(8), s), dt, s);
  auto q = mx::quantize(wf, gs, bits, "affine", std::nullopt, s);
  auto ref = mx::quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine", s);
  for (Cfg c : TILES) {
    if (std::string diff = max_diff_within(run(x, q[0], q[1], q[2], bits, gs, c, s), ref, 0.02f, s); !diff.empty())
      return "results differ from MLX's (tile " + std::to_string(c.mt) + "x" + std::to_string(c.nt) + "x" +
             std::to_string(c.wn) + "x" + std::to_string(c.ks) + ", " + std::to_string(bits) + "-bit group " +
             std::to_string(gs) + ": " + diff + ")";
  }
  return "";
}

// Cleared by gpu_kernels_enable(false): MLX's op is used instead.
std::atomic<bool> wanted{true};

std::mutex checks_mu;
// (dtype, bits, group size) -> "" when in use, else why not.
std::map<std::tuple<int, int, int>, std::string> checks;

const std::string& check(mx::Dtype dt, int bits, int gs, const mx::Stream& s) {
  return memo_check(checks_mu, checks, std::make_tuple(int(dt.val()), bits, gs), [&]() -> std::string {
    if (env_off("CIDER_GPU_KERNELS")) return "turned off by CIDER_GPU_KERNELS=0";
    if (!cuda_sm80()) return "needs an NVIDIA GPU of compute capability 8.0 or newer";
    return self_check(dt, bits, gs, s);
  }, "self-check failed: ");
}

}  // namespace

std::optional<mx::array> try_gpu_qlinear(const mx::array& x, const mx::array& w, const mx::array& scales,
                                         const mx::array& biases, int group_size, int bits,
                                         mx::StreamOrDevice sd) {
  const mx::Stream s = mx::to_stream(sd);
  const mx::Dtype dt = x.dtype();
  if (s.device != mx::Device::gpu || (bits != 4 && bits != 8) || (dt != mx::bfloat16 && dt != mx::float16) ||
      (group_size != 32 && group_size != 64 && group_size != 128) || scales.dtype() != dt ||
      biases.dtype() != dt || w.dtype() != mx::uint32 || w.ndim() != 2 || scales.ndim() != 2 || x.ndim() < 1 ||
      x.size() == 0)
    return std::nullopt;
  const int K = x.shape(-1), N = w.shape(0);
  const int64_t M = int64_t(x.size()) / K;
  if (M < MIN_ROWS || M > max_rows(bits) || N % 32 != 0 || K % group_size != 0 || w.shape(1) != K * bits / 32 ||
      scales.shape(0) != N || scales.shape(1) != K / group_size || biases.shape() != scales.shape())
    return std::nullopt;
  if (!wanted || !mx::cu::is_available() || !check(dt, bits, group_size, s).empty()) return std::nullopt;
  return run(x, w, scales, biases, bits, group_size, choose(int(M), N, K), s);
}

void gpu_kernels_enable(bool on) { wanted = on; }
bool gpu_kernels_wanted() { return wanted; }

rust::String gpu_kernels_status() {
  // The fused decode kernel's own state (gpu_decode.cc), when it was asked for.
  const std::string dec = gpu_decode_status(), att = gpu_pattn_status(), graph = gpu_graph_status(),
                    prompt = gpu_prompt_status();
  const std::string tail = (att.empty() ? "" : "; prompt attention: " + att) + (dec.empty() ? "" : "; decode: " + dec) +
                           (graph.empty() ? "" : "; decode CUDA graph: " + graph) +
                           (prompt.empty() ? "" : "; prompt CUDA graph: " + prompt);
  std::lock_guard<std::mutex> lock(checks_mu);
  if (checks.empty()) return rust::String((tail.empty() ? "not used yet" : "prompt: not used yet") + tail);
  std::vector<std::pair<std::string, std::string>> items;
  for (const auto& [k, why] : checks) {
    const auto& [dt, bits, gs] = k;
    items.emplace_back(std::string(dt == int(mx::Dtype::Val::bfloat16) ? "bfloat16" : "float16") + " " +
                           std::to_string(bits) + "-bit g" + std::to_string(gs),
                       why);
  }
  return rust::String(on_off_status(items) + tail);
}

}  // namespace cider
