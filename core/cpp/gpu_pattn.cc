// cider's causal attention for short prompt passes on NVIDIA GPUs (source
// and why: gpu_pattn_src.h). Used instead of MLX's attention (cuDNN's) for
// one sequence of 2..MAX_KEYS keys, bf16/f16, head dims 64/96/128, once a
// self-check against MLX's op has passed for that shape of heads; any other
// case, or a failed check, leaves MLX's op in place. CIDER_GPU_KERNELS=0
// turns it off, with the prompt matmul (gpu_qmm.cc); CIDER_GPU_PATTN=0 alone.
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "gpu_pattn_src.h"
#include "mlx/backend/cuda/cuda.h"
#include "mlx/fast.h"
#include "shim.h"

namespace mx = mlx::core;

namespace cider {
namespace {

// Query rows per block (4 warps, 4 rows each).
constexpr int QT = 16;
// The kernel's work grows with L x keys while cuDNN's flash attention uses
// tensor cores: at 128 keys a custom node saves host time at no device cost,
// at thousands the device time would be several times cuDNN's.
constexpr int MAX_KEYS = 512;

const mx::fast::CustomKernelFunction& kernel() {
  static const mx::fast::CustomKernelFunction k = mx::fast::cuda_kernel(
      "cider_pattn", {"q", "k", "v", "freqs"}, {"o"}, kCiderPattnBody, kCiderPattnHeader,
      /*ensure_row_contiguous=*/false, /*shared_memory=*/0);
  return k;
}

// The kernel's RoPE mode: 0 none (q rotated already), 1 base, 2 freqs.
int rope_mode(const PattnRope& r) { return r.rotate ? (r.freqs ? 2 : 1) : 0; }

mx::array run(const mx::array& q, const mx::array& k, const mx::array& v, float scale, const PattnRope& rope,
              const mx::Stream& s) {
  static const mx::array no_freqs = mx::array({0.0f});
  const int L = q.shape(2), hq = q.shape(1), hk = k.shape(1), d = q.shape(3);
  const float scale_log2 = scale * 1.4426950408889634f;
  return kernel()({q, k, v, rope.freqs ? *rope.freqs : no_freqs}, {{L, hq * d}}, {q.dtype()},
                  {128 * ((L + QT - 1) / QT), hq, 1}, {128, 1, 1},
                  {{"T", q.dtype()}, {"D", d}, {"QT", QT}, {"HQ", hq}, {"HK", hk}, {"ROPE", rope_mode(rope)},
                   {"LOG2B", float_bits(rope.log2_base)}, {"PSCALE", float_bits(rope.scale)},
                   {"SCALE", float_bits(scale_log2)}},
                  std::nullopt, false, s)[0];
}

// The kernel against MLX's RoPE (when it rotates q) and causal attention,
// for this shape of heads, scale and RoPE (the same compiled kernel the
// model then uses), on inputs laid out as a prompt pass has them: q a
// transposed view, k and v slices of a longer cache, once with as many keys
// as queries and once with earlier keys. Sums run in another order (and
// cuDNN rounds the probabilities to 16 bits), so results agree to rounding:
// allowed 2 % of the output's largest magnitude.
std::string self_check(mx::Dtype dt, int hq, int hk, int d, float scale, const PattnRope& rope,
                       const mx::Stream& s) {
  for (auto [L, keys] : {std::pair{40, 40}, std::pair{24, 88}}) {
    auto rnd = [&](mx::Shape shape, int seed) {
      return mx::astype(mx::random::normal(shape, mx::float32, 0.0f, 1.0f, mx::random::key(seed), s), dt, s);
    };
    auto q = mx::transpose(rnd({1, L, hq, d}, 1), {0, 2, 1, 3}, s);
    auto k = mx::slice(rnd({1, hk, 96, d}, 2), {0, 0, 0, 0}, {1, hk, keys, d}, s);
    auto v = mx::slice(rnd({1, hk, 96, d}, 3), {0, 0, 0, 0}, {1, hk, keys, d}, s);
    mx::eval({q, k, v});
    auto qr = q;
    if (rope.rotate)
      qr = rope.freqs ? mx::fast::rope(q, d, false, std::nullopt, rope.scale, keys - L, *rope.freqs, s)
                      : mx::fast::rope(q, d, false, std::exp2(rope.log2_base), rope.scale, keys - L, std::nullopt, s);
    auto ref = mx::fast::scaled_dot_product_attention(qr, k, v, scale, "causal", std::nullopt, std::nullopt,
                                                      false, s);
    ref = mx::reshape(mx::transpose(ref, {0, 2, 1, 3}, s), {L, hq * d}, s);
    if (std::string diff = max_diff_within(run(q, k, v, scale, rope, s), ref, 0.02f, s); !diff.empty())
      return "results differ from MLX's (" + std::to_string(L) + " queries, " + std::to_string(keys) + " keys: " + diff +
             ")";
  }
  return "";
}

std::mutex checks_mu;
// (dtype, heads, kv heads, head dim, scale, RoPE mode, base, position scale;
// floats as bits) -> "" when in use, else why not.
using Key = std::tuple<int, int, int, int, int, int, int, int>;
std::map<Key, std::string> checks;

const std::string& check(mx::Dtype dt, int hq, int hk, int d, float scale, const PattnRope& rope,
                         const mx::Stream& s) {
  auto key = Key(int(dt.val()), hq, hk, d, float_bits(scale), rope_mode(rope), float_bits(rope.log2_base),
                 float_bits(rope.scale));
  return memo_check(checks_mu, checks, key, [&]() -> std::string {
    if (env_off("CIDER_GPU_KERNELS")) return "turned off by CIDER_GPU_KERNELS=0";
    if (env_off("CIDER_GPU_PATTN")) return "turned off by CIDER_GPU_PATTN=0";
    return self_check(dt, hq, hk, d, scale, rope, s);
  }, "self-check failed: ");
}

}  // namespace

std::optional<mx::array> try_gpu_prefill_attention(const mx::array& q, const mx::array& k, const mx::array& v,
                                                   float scale, const PattnRope& rope, mx::StreamOrDevice sd) {
  const mx::Stream s = mx::to_stream(sd);
  const mx::Dtype dt = q.dtype();
  if (s.device != mx::Device::gpu || (dt != mx::bfloat16 && dt != mx::float16) || k.dtype() != dt ||
      v.dtype() != dt || q.ndim() != 4 || k.ndim() != 4 || v.shape() != k.shape())
    return std::nullopt;
  const int hq = q.shape(1), L = q.shape(2), d = q.shape(3), hk = k.shape(1), keys = k.shape(2);
  if (q.shape(0) != 1 || k.shape(0) != 1 || (d != 64 && d != 96 && d != 128) || k.shape(3) != d || hk < 1 ||
      hq % hk != 0 || L < 2 || keys < L || keys > MAX_KEYS)
    return std::nullopt;
  if (rope.freqs && (rope.freqs->dtype() != mx::float32 || rope.freqs->size() != size_t(d / 2) ||
                     !rope.freqs->flags().row_contiguous))
    return std::nullopt;
  if (!gpu_kernels_wanted() || !mx::cu::is_available() || !check(dt, hq, hk, d, scale, rope, s).empty())
    return std::nullopt;
  // (Strides are not checked here: an unevaluated array reports row-major
  // ones. The kernel reads the evaluated strides MLX passes it, any layout.)
  try {
    return run(q, k, v, scale, rope, s);
  } catch (const std::exception&) {
    return std::nullopt;  // MLX's op instead, as for any case the kernel does not take
  }
}

std::string gpu_pattn_status() {
  std::lock_guard<std::mutex> lock(checks_mu);
  std::vector<std::pair<std::string, std::string>> items;
  for (const auto& [key, why] : checks) {
    const auto& [dt, hq, hk, d, sc, mode, lb, ps] = key;
    (void)sc, (void)lb, (void)ps;
    items.emplace_back(std::string(dt == int(mx::Dtype::Val::bfloat16) ? "bfloat16" : "float16") + " " +
                           std::to_string(hq) + "/" + std::to_string(hk) + " heads of " + std::to_string(d) +
                           (mode ? " + q RoPE" : ""),
                       why);
  }
  return on_off_status(items);
}

}  // namespace cider
