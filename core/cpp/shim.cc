// Implementation of cider's MLX shim. See shim.h for why it is shaped this way.
#include "cider-core/cpp/shim.h"

#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <unordered_set>

#include "mlx/backend/cuda/cuda.h"
#include "mlx/primitives.h"
#include "mlx/scheduler.h"

namespace mx = mlx::core;

namespace cider {

// Dtype codes shared with Rust (core/src/mlx/array.rs, Dtype). Fixed numbers.
mx::Dtype to_dtype(uint8_t code) {
  switch (code) {
    case 0: return mx::bool_;
    case 1: return mx::uint8;
    case 2: return mx::uint16;
    case 3: return mx::uint32;
    case 4: return mx::uint64;
    case 5: return mx::int8;
    case 6: return mx::int16;
    case 7: return mx::int32;
    case 8: return mx::int64;
    case 9: return mx::float16;
    case 10: return mx::float32;
    case 11: return mx::bfloat16;
    case 12: return mx::complex64;
    case 13: return mx::float64;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(code));
}

namespace {

uint8_t from_dtype(mx::Dtype d) {
  switch (d.val()) {
    case mx::Dtype::Val::bool_: return 0;
    case mx::Dtype::Val::uint8: return 1;
    case mx::Dtype::Val::uint16: return 2;
    case mx::Dtype::Val::uint32: return 3;
    case mx::Dtype::Val::uint64: return 4;
    case mx::Dtype::Val::int8: return 5;
    case mx::Dtype::Val::int16: return 6;
    case mx::Dtype::Val::int32: return 7;
    case mx::Dtype::Val::int64: return 8;
    case mx::Dtype::Val::float16: return 9;
    case mx::Dtype::Val::float32: return 10;
    case mx::Dtype::Val::bfloat16: return 11;
    case mx::Dtype::Val::complex64: return 12;
    case mx::Dtype::Val::float64: return 13;
  }
  return 255;
}

mx::Shape to_shape(rust::Slice<const int32_t> s) {
  return mx::Shape(s.begin(), s.end());
}

ArrPtr wrap(mx::array a) { return std::make_unique<Array>(std::move(a)); }

// The SwiGLU activation compiled once, shapeless, exactly as mlx-lm's
// `swiglu` is (silu(gate) * x); compiling changes how MLX fuses the kernel,
// so using the same compiled graph keeps results bit-identical.
std::vector<mx::array> swiglu_impl(const std::vector<mx::array>& in) {
  const auto& g = in[0];
  return {mx::multiply(mx::multiply(g, mx::sigmoid(g)), in[1])};
}

}  // namespace

ArrPtr arr_from_f32(rust::Slice<const float> data, rust::Slice<const int32_t> shape) {
  return wrap(mx::array(data.data(), to_shape(shape), mx::float32));
}
ArrPtr arr_from_i32(rust::Slice<const int32_t> data, rust::Slice<const int32_t> shape) {
  return wrap(mx::array(data.data(), to_shape(shape), mx::int32));
}
ArrPtr arr_from_u32(rust::Slice<const uint32_t> data, rust::Slice<const int32_t> shape) {
  return wrap(mx::array(data.data(), to_shape(shape), mx::uint32));
}
ArrPtr arr_scalar(double v, uint8_t dtype) {
  auto d = to_dtype(dtype);
  // Build in float32 then cast, matching how MLX turns a Python float into a
  // weakly typed scalar of the other operand's dtype.
  return wrap(mx::astype(mx::array(static_cast<float>(v)), d));
}
ArrPtr arr_zeros(rust::Slice<const int32_t> shape, uint8_t dtype) {
  return wrap(mx::zeros(to_shape(shape), to_dtype(dtype)));
}
ArrPtr arr_full(rust::Slice<const int32_t> shape, double v, uint8_t dtype) {
  return wrap(mx::full(to_shape(shape), mx::array(static_cast<float>(v)), to_dtype(dtype)));
}
ArrPtr arr_arange(int32_t start, int32_t stop, uint8_t dtype) {
  return wrap(mx::arange(start, stop, to_dtype(dtype)));
}
ArrPtr arr_clone(const Array& a) { return wrap(a.a); }
rust::Vec<int32_t> arr_shape(const Array& a) {
  rust::Vec<int32_t> out;
  for (auto d : a.a.shape()) out.push_back(d);
  return out;
}
uint8_t arr_dtype(const Array& a) { return from_dtype(a.a.dtype()); }
size_t arr_nbytes(const Array& a) { return a.a.nbytes(); }
size_t arr_size(const Array& a) { return a.a.size(); }
rust::Vec<float> arr_to_f32(const Array& a) {
  auto x = mx::astype(a.a, mx::float32);
  x.eval();
  // astype of a non-contiguous view may still be strided: copy contiguously.
  x = mx::flatten(x);
  x = mx::contiguous(x);
  x.eval();
  rust::Vec<float> out;
  out.reserve(x.size());
  const float* p = x.data<float>();
  for (size_t i = 0; i < x.size(); ++i) out.push_back(p[i]);
  return out;
}
rust::Vec<int32_t> arr_to_i32(const Array& a) {
  auto x = mx::contiguous(mx::flatten(mx::astype(a.a, mx::int32)));
  x.eval();
  rust::Vec<int32_t> out;
  out.reserve(x.size());
  const int32_t* p = x.data<int32_t>();
  for (size_t i = 0; i < x.size(); ++i) out.push_back(p[i]);
  return out;
}

int64_t arr_item_i64(const Array& a) {
  // The sampled token each decode step: reading it directly (as mlx-lm's
  // `y.item()` does) avoids the astype/flatten/contiguous nodes and the extra
  // kernel launch and evaluation that arr_to_i32 would add to every token.
  if (a.a.size() != 1) throw std::invalid_argument("item() of an array with size != 1");
  auto x = a.a;
  x.eval();
  switch (x.dtype().val()) {
    case mx::Dtype::Val::uint32: return x.item<uint32_t>();
    case mx::Dtype::Val::int32: return x.item<int32_t>();
    case mx::Dtype::Val::int64: return x.item<int64_t>();
    case mx::Dtype::Val::uint64: return static_cast<int64_t>(x.item<uint64_t>());
    case mx::Dtype::Val::int16: return x.item<int16_t>();
    case mx::Dtype::Val::uint16: return x.item<uint16_t>();
    case mx::Dtype::Val::int8: return x.item<int8_t>();
    case mx::Dtype::Val::uint8: return x.item<uint8_t>();
    default: throw std::invalid_argument("item_i64 of a non-integer array");
  }
}

std::unique_ptr<ArrayList> list_new() { return std::make_unique<ArrayList>(); }
void list_push(ArrayList& l, const Array& a) { l.v.push_back(a.a); }
size_t list_len(const ArrayList& l) { return l.v.size(); }
ArrPtr list_get(const ArrayList& l, size_t i) { return wrap(l.v.at(i)); }
void eval_list(const ArrayList& l) { mx::eval(l.v); }
void async_eval_list(const ArrayList& l) { mx::async_eval(l.v); }
// MLX's CPU backend runs each stream's kernels one after another on that
// stream's own thread, so one stream uses one core. cider splits a layer's
// output rows over several CPU streams ("workers") to use more cores; worker
// 0 is the default stream. MLX streams belong to the host thread that made
// them (each host thread has its own default stream), so the workers are
// thread-local streams: every host thread that runs a model gets its own
// set, made by MLX on first use.
namespace {
std::mutex workers_mu;
std::vector<mx::ThreadLocalStream>& worker_streams() {
  static std::vector<mx::ThreadLocalStream> w;
  return w;
}
std::vector<mx::ThreadLocalStream> workers_now() {
  std::lock_guard<std::mutex> g(workers_mu);
  return worker_streams();
}
}  // namespace

mx::StreamOrDevice on_worker(int32_t worker) {
  if (worker <= 0) return {};
  std::optional<mx::ThreadLocalStream> tls;
  {
    std::lock_guard<std::mutex> g(workers_mu);
    auto& w = worker_streams();
    if (static_cast<size_t>(worker) > w.size())
      throw std::invalid_argument("CPU worker stream " + std::to_string(worker) + " was not made (" +
                                  std::to_string(w.size() + 1) + " exist)");
    tls = w[worker - 1];
  }
  return mx::stream_from_thread_local_stream(*tls);
}
int32_t cpu_workers(int32_t n) {
  std::lock_guard<std::mutex> g(workers_mu);
  auto& w = worker_streams();
  while (static_cast<int32_t>(w.size()) < n - 1) w.push_back(mx::new_thread_local_stream(mx::Device::cpu));
  return static_cast<int32_t>(w.size()) + 1;
}

// The calling thread's default stream and worker streams.
void synchronize() {
  mx::synchronize();
  for (auto& s : workers_now()) mx::synchronize(s);
}
int32_t active_tasks() { return mx::scheduler::n_active_tasks(); }
void eval_one(const Array& a) { mx::eval({a.a}); }

// The primitive of every node an eval of `l` would run (each unevaluated
// array once, siblings counted with their primitive): MLX's host cost per
// decode step grows with this count, so `cider bench` can report it.
rust::Vec<rust::String> graph_census(const ArrayList& l) {
  rust::Vec<rust::String> out;
  std::unordered_set<std::uintptr_t> seen;
  std::vector<mx::array> stack(l.v.begin(), l.v.end());
  while (!stack.empty()) {
    auto a = std::move(stack.back());
    stack.pop_back();
    if (a.status() != mx::array::Status::unscheduled || !a.has_primitive()) continue;
    if (!seen.insert(a.id()).second) continue;
    for (auto& s : a.siblings()) seen.insert(s.id());
    out.push_back(rust::String(a.primitive().name()));
    for (auto& in : a.inputs()) stack.push_back(in);
  }
  return out;
}

ArrPtr astype(const Array& a, uint8_t dtype) { return wrap(mx::astype(a.a, to_dtype(dtype))); }
ArrPtr reshape(const Array& a, rust::Slice<const int32_t> shape) {
  return wrap(mx::reshape(a.a, to_shape(shape)));
}
ArrPtr transpose(const Array& a, rust::Slice<const int32_t> axes) {
  return wrap(mx::transpose(a.a, std::vector<int>(axes.begin(), axes.end())));
}
ArrPtr add(const Array& a, const Array& b) { return wrap(mx::add(a.a, b.a)); }
ArrPtr subtract(const Array& a, const Array& b) { return wrap(mx::subtract(a.a, b.a)); }
ArrPtr multiply(const Array& a, const Array& b) { return wrap(mx::multiply(a.a, b.a)); }
ArrPtr divide(const Array& a, const Array& b) { return wrap(mx::divide(a.a, b.a)); }
ArrPtr maximum(const Array& a, const Array& b) { return wrap(mx::maximum(a.a, b.a)); }
ArrPtr less(const Array& a, const Array& b) { return wrap(mx::less(a.a, b.a)); }
ArrPtr greater(const Array& a, const Array& b) { return wrap(mx::greater(a.a, b.a)); }
ArrPtr power(const Array& a, const Array& b) { return wrap(mx::power(a.a, b.a)); }
ArrPtr greater_equal(const Array& a, const Array& b) { return wrap(mx::greater_equal(a.a, b.a)); }
ArrPtr logical_and(const Array& a, const Array& b) { return wrap(mx::logical_and(a.a, b.a)); }
ArrPtr where_(const Array& c, const Array& a, const Array& b) {
  return wrap(mx::where(c.a, a.a, b.a));
}
ArrPtr negative(const Array& a) { return wrap(mx::negative(a.a)); }
ArrPtr sigmoid(const Array& a) { return wrap(mx::sigmoid(a.a)); }
ArrPtr exp(const Array& a) { return wrap(mx::exp(a.a)); }
ArrPtr log(const Array& a) { return wrap(mx::log(a.a)); }
ArrPtr matmul(const Array& a, const Array& b, int32_t worker) {
  auto sd = on_worker(worker);
  if (auto y = try_cpu_linear(a.a, b.a, std::nullopt, sd)) return wrap(*y);
  return wrap(mx::matmul(a.a, b.a, sd));
}
ArrPtr addmm(const Array& c, const Array& a, const Array& b, int32_t worker) {
  auto sd = on_worker(worker);
  if (auto y = try_cpu_linear(a.a, b.a, c.a, sd)) return wrap(*y);
  return wrap(mx::addmm(c.a, a.a, b.a, 1.0f, 1.0f, sd));
}
ArrPtr swiglu(const Array& gate, const Array& x) {
  static auto compiled = mx::compile(swiglu_impl, /*shapeless=*/true);
  return wrap(compiled({gate.a, x.a})[0]);
}

ArrPtr sum_axis(const Array& a, int32_t axis, bool keepdims) {
  return wrap(mx::sum(a.a, axis, keepdims));
}
ArrPtr max_axis(const Array& a, int32_t axis, bool keepdims) {
  return wrap(mx::max(a.a, axis, keepdims));
}
ArrPtr logsumexp_axis(const Array& a, int32_t axis, bool keepdims) {
  return wrap(mx::logsumexp(a.a, axis, keepdims));
}
ArrPtr softmax_axis(const Array& a, int32_t axis, bool precise) {
  return wrap(mx::softmax(a.a, std::vector<int>{axis}, precise));
}
ArrPtr argmax_axis(const Array& a, int32_t axis, bool keepdims) {
  return wrap(mx::argmax(a.a, axis, keepdims));
}
ArrPtr take(const Array& a, const Array& idx, int32_t axis) {
  return wrap(mx::take(a.a, idx.a, axis));
}
ArrPtr take_along_axis(const Array& a, const Array& idx, int32_t axis) {
  return wrap(mx::take_along_axis(a.a, idx.a, axis));
}
ArrPtr put_along_axis(const Array& a, const Array& idx, const Array& vals, int32_t axis) {
  return wrap(mx::put_along_axis(a.a, idx.a, vals.a, axis));
}
ArrPtr contiguous(const Array& a) {
  return wrap(mx::contiguous(a.a));
}
ArrPtr concatenate2(const Array& a, const Array& b, int32_t axis) {
  return wrap(mx::concatenate({a.a, b.a}, axis));
}
ArrPtr concatenate_list(const ArrayList& l, int32_t axis) {
  return wrap(mx::concatenate(l.v, axis));
}
ArrPtr slice(const Array& a, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop) {
  return wrap(mx::slice(a.a, to_shape(start), to_shape(stop)));
}
ArrPtr slice_update(const Array& src, const Array& upd, rust::Slice<const int32_t> start,
                    rust::Slice<const int32_t> stop) {
  return wrap(mx::slice_update(src.a, upd.a, to_shape(start), to_shape(stop)));
}
ArrPtr sort_axis(const Array& a, int32_t axis) { return wrap(mx::sort(a.a, axis)); }
ArrPtr argsort_axis(const Array& a, int32_t axis) { return wrap(mx::argsort(a.a, axis)); }
ArrPtr argpartition_axis(const Array& a, int32_t kth, int32_t axis) {
  return wrap(mx::argpartition(a.a, kth, axis));
}
ArrPtr cumsum_axis(const Array& a, int32_t axis, bool reverse, bool inclusive) {
  return wrap(mx::cumsum(a.a, axis, reverse, inclusive));
}

ArrPtr quantized_matmul(const Array& x, const Array& w, const Array& scales, const Array& biases,
                        bool has_biases, bool transpose, int32_t group_size, int32_t bits,
                        rust::Str mode, int32_t worker) {
  std::optional<mx::array> b;
  if (has_biases) b = biases.a;
  auto sd = on_worker(worker);
  if (has_biases && transpose && std::string(mode) == "affine") {
    if (auto y = try_cpu_qlinear(x.a, w.a, scales.a, biases.a, group_size, bits, sd)) return wrap(*y);
    if (auto y = try_gpu_qlinear(x.a, w.a, scales.a, biases.a, group_size, bits, sd)) return wrap(*y);
  }
  return wrap(mx::quantized_matmul(x.a, w.a, scales.a, b, transpose, group_size, bits,
                                   std::string(mode), sd));
}
std::unique_ptr<ArrayList> quantize(const Array& w, int32_t group_size, int32_t bits,
                                    rust::Str mode) {
  auto out = std::make_unique<ArrayList>();
  out->v = mx::quantize(w.a, group_size, bits, std::string(mode));
  return out;
}
ArrPtr dequantize(const Array& w, const Array& scales, const Array& biases, bool has_biases,
                  int32_t group_size, int32_t bits, rust::Str mode) {
  std::optional<mx::array> b;
  if (has_biases) b = biases.a;
  return wrap(mx::dequantize(w.a, scales.a, b, group_size, bits, std::string(mode)));
}

ArrPtr rms_norm(const Array& x, const Array& w, float eps) {
  return wrap(mx::fast::rms_norm(x.a, w.a, eps));
}
ArrPtr rope(const Array& x, int32_t dims, bool traditional, float base, float scale,
            int32_t offset) {
  return wrap(mx::fast::rope(x.a, dims, traditional, base, scale, offset));
}
ArrPtr rope_freqs(const Array& x, int32_t dims, bool traditional, float scale, int32_t offset,
                  const Array& freqs) {
  return wrap(mx::fast::rope(x.a, dims, traditional, std::nullopt, scale, offset, freqs.a));
}
ArrPtr sdpa(const Array& q, const Array& k, const Array& v, float scale, rust::Str mask_mode,
            const Array& mask, bool has_mask) {
  std::optional<mx::array> m;
  if (has_mask) m = mask.a;
  return wrap(mx::fast::scaled_dot_product_attention(q.a, k.a, v.a, scale,
                                                     std::string(mask_mode), m));
}

ArrPtr gpu_prefill_attention(const Array& q, const Array& k, const Array& v, float scale, int32_t rope_mode,
                             const Array& freqs, float log2_base, float rope_scale) {
  if (rope_mode < 0 || rope_mode > 2) throw std::invalid_argument("gpu_prefill_attention: rope_mode must be 0, 1 or 2");
  PattnRope rope{rope_mode != 0, rope_mode == 2 ? &freqs.a : nullptr, log2_base, rope_scale};
  if (auto o = try_gpu_prefill_attention(q.a, k.a, v.a, scale, rope)) return wrap(*o);
  return nullptr;
}

ArrPtr random_key(uint64_t seed) { return wrap(mx::random::key(seed)); }
std::unique_ptr<ArrayList> random_split(const Array& key) {
  auto [a, b] = mx::random::split(key.a);
  auto out = std::make_unique<ArrayList>();
  out->v = {a, b};
  return out;
}
ArrPtr categorical(const Array& logits, const Array& key) {
  return wrap(mx::random::categorical(logits.a, -1, key.a));
}

std::unique_ptr<SafeTensors> load_safetensors(rust::Str path) {
  auto loaded = mx::load_safetensors(std::string(path));
  auto out = std::make_unique<SafeTensors>();
  out->tensors = std::move(loaded.first);
  out->metadata = std::move(loaded.second);
  return out;
}
rust::Vec<rust::String> st_keys(const SafeTensors& st) {
  rust::Vec<rust::String> out;
  for (const auto& kv : st.tensors) out.push_back(rust::String(kv.first));
  return out;
}
ArrPtr st_get(const SafeTensors& st, rust::Str name) {
  auto it = st.tensors.find(std::string(name));
  if (it == st.tensors.end()) throw std::out_of_range("no tensor named " + std::string(name));
  return wrap(it->second);
}
rust::Vec<rust::String> st_metadata(const SafeTensors& st) {
  rust::Vec<rust::String> out;
  for (const auto& kv : st.metadata) {
    out.push_back(rust::String(kv.first));
    out.push_back(rust::String(kv.second));
  }
  return out;
}
void save_safetensors(rust::Str path, rust::Slice<const rust::String> names,
                      const ArrayList& arrays) {
  if (names.size() != arrays.v.size()) throw std::invalid_argument("names/arrays length mismatch");
  std::unordered_map<std::string, mx::array> m;
  for (size_t i = 0; i < names.size(); ++i) m.emplace(std::string(names[i]), arrays.v[i]);
  mx::save_safetensors(std::string(path), m, {{"format", "mlx"}});
}

size_t get_active_memory() { return mx::get_active_memory(); }
size_t get_peak_memory() { return mx::get_peak_memory(); }
void reset_peak_memory() { mx::reset_peak_memory(); }
size_t get_cache_memory() { return mx::get_cache_memory(); }
size_t set_memory_limit(size_t limit) { return mx::set_memory_limit(limit); }
size_t get_memory_limit() { return mx::get_memory_limit(); }
size_t set_cache_limit(size_t limit) { return mx::set_cache_limit(limit); }
void clear_cache() { mx::clear_cache(); }
bool gpu_available() { return mx::is_available(mx::Device::gpu); }
bool gpu_is_cuda() { return mx::cu::is_available(); }

std::string max_diff_within(const mx::array& got, const mx::array& want, float frac, const mx::Stream& s) {
  auto f32 = [&](const mx::array& a) { return mx::astype(mx::reshape(a, {-1}, s), mx::float32, s); };
  auto err = mx::max(mx::abs(mx::subtract(f32(got), f32(want), s), s), s);
  auto top = mx::max(mx::abs(f32(want), s), s);
  mx::eval({err, top});
  const float e = err.item<float>(), t = top.item<float>();
  if (e <= frac * t) return "";  // (false for NaN)
  return "max |diff| " + std::to_string(e) + " of " + std::to_string(t);
}

std::string on_off_status(const std::vector<std::pair<std::string, std::string>>& checks) {
  std::string on, off;
  for (const auto& [what, why] : checks) {
    if (why.empty())
      on += (on.empty() ? "" : ", ") + what;
    else
      off += (off.empty() ? "" : "; ") + what + ": " + why;
  }
  if (on.empty() && off.empty()) return "";
  if (off.empty()) return "on (" + on + ")";
  if (on.empty()) return "off: " + off;
  return "on (" + on + "); off: " + off;
}
bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "0";
}
void set_default_device(bool gpu) {
  mx::set_default_device(gpu ? mx::Device::gpu : mx::Device::cpu);
}
bool default_device_is_gpu() { return mx::default_device() == mx::Device::gpu; }
rust::String mlx_version() { return rust::String(mx::version()); }

}  // namespace cider
