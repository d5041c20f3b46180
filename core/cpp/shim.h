// cider's C++ shim over MLX's C++ API. Kept deliberately thin: each function
// adapts one MLX call to types cxx can carry (slices, u8 dtype codes, bools
// instead of std::optional). Exceptions propagate to Rust as cxx::Exception.
#pragma once
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "mlx/mlx.h"
#include "rust/cxx.h"

namespace cider {

// An owned MLX array handle (MLX arrays are themselves ref-counted).
struct Array {
  mlx::core::array a;
  explicit Array(mlx::core::array x) : a(std::move(x)) {}
};

// A list of arrays, for eval/async_eval and multi-output ops.
struct ArrayList {
  std::vector<mlx::core::array> v;
};

// The arrays of one safetensors file, loaded lazily by MLX.
struct SafeTensors {
  std::unordered_map<std::string, mlx::core::array> tensors;
  std::unordered_map<std::string, std::string> metadata;
};

using ArrPtr = std::unique_ptr<Array>;

// construction and inspection
ArrPtr arr_from_f32(rust::Slice<const float> data, rust::Slice<const int32_t> shape);
ArrPtr arr_from_i32(rust::Slice<const int32_t> data, rust::Slice<const int32_t> shape);
ArrPtr arr_from_u32(rust::Slice<const uint32_t> data, rust::Slice<const int32_t> shape);
ArrPtr arr_scalar(double v, uint8_t dtype);
ArrPtr arr_zeros(rust::Slice<const int32_t> shape, uint8_t dtype);
ArrPtr arr_full(rust::Slice<const int32_t> shape, double v, uint8_t dtype);
ArrPtr arr_arange(int32_t start, int32_t stop, uint8_t dtype);
ArrPtr arr_clone(const Array& a);
rust::Vec<int32_t> arr_shape(const Array& a);
uint8_t arr_dtype(const Array& a);
size_t arr_nbytes(const Array& a);
size_t arr_size(const Array& a);
rust::Vec<float> arr_to_f32(const Array& a);
rust::Vec<int32_t> arr_to_i32(const Array& a);
// Evaluate a one-element integer array and read it, adding no graph nodes.
int64_t arr_item_i64(const Array& a);

// evaluation
std::unique_ptr<ArrayList> list_new();
void list_push(ArrayList& l, const Array& a);
size_t list_len(const ArrayList& l);
ArrPtr list_get(const ArrayList& l, size_t i);
void eval_list(const ArrayList& l);
void async_eval_list(const ArrayList& l);
void synchronize();
int32_t active_tasks();
// Makes CPU worker streams until there are n in all (the default stream is
// worker 0); returns how many there are.
int32_t cpu_workers(int32_t n);
rust::Vec<rust::String> graph_census(const ArrayList& l);
void eval_one(const Array& a);

// cider's CPU kernels for bf16 projections (cpu_linear.cc): the op, or
// nullopt where they do not apply (then MLX's op is used).
std::optional<mlx::core::array> try_cpu_linear(const mlx::core::array& x, const mlx::core::array& wt,
                                               const std::optional<mlx::core::array>& c,
                                               mlx::core::StreamOrDevice sd);
std::optional<mlx::core::array> try_cpu_qlinear(const mlx::core::array& x, const mlx::core::array& w,
                                                const mlx::core::array& scales, const mlx::core::array& biases,
                                                int group_size, int bits, mlx::core::StreamOrDevice sd);
// "on", "off: <why>", or which types are on and why the others are off.
rust::String cpu_kernels_status();
// "" when cider's CPU kernels compute projections of this dtype (a code of
// core/src/mlx/array.rs, Dtype), else why not.
rust::String cpu_kernels_off_reason(uint8_t dtype);
// The dtype of a code shared with Rust (core/src/mlx/array.rs, Dtype); throws on an
// unknown code.
mlx::core::Dtype to_dtype(uint8_t code);
// cider's 4-bit prompt matmul on NVIDIA GPUs (gpu_qmm.cc): the op, or
// nullopt where it does not apply (then MLX's op is used).
std::optional<mlx::core::array> try_gpu_qlinear(const mlx::core::array& x, const mlx::core::array& w,
                                                const mlx::core::array& scales, const mlx::core::array& biases,
                                                int group_size, int bits, mlx::core::StreamOrDevice sd);
// RoPE for q inside the prompt attention: none (`rotate` false: q comes
// rotated), or MLX's non-traditional RoPE over the whole head with `freqs`
// (float32 [D / 2]) or base 2^log2_base, positions times `scale`.
struct PattnRope {
  bool rotate = false;
  const mlx::core::array* freqs = nullptr;
  float log2_base = 0.0f, scale = 1.0f;
};
// cider's causal attention for short prompt passes (gpu_pattn.cc): q [1, Hq,
// L, D], k and v [1, Hk, keys, D] -> [L, Hq * D], or nullopt where it does
// not apply (then MLX's op is used).
std::optional<mlx::core::array> try_gpu_prefill_attention(const mlx::core::array& q, const mlx::core::array& k,
                                                          const mlx::core::array& v, float scale,
                                                          const PattnRope& rope, mlx::core::StreamOrDevice sd = {});
// "" before its first use, else "on (<heads>)" and which are off and why.
std::string gpu_pattn_status();
// The same through the bridge: null where it does not apply. rope_mode 0:
// q rotated already; 1: base 2^log2_base; 2: `freqs`.
ArrPtr gpu_prefill_attention(const Array& q, const Array& k, const Array& v, float scale, int32_t rope_mode,
                             const Array& freqs, float log2_base, float rope_scale);
// false: MLX's op from now on (until true again), for comparisons.
void gpu_kernels_enable(bool on);
// A float's bits as an int: how the GPU kernels take float template
// arguments (MLX's template arguments are ints, bools and dtypes).
inline int float_bits(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
// For the GPU kernels' checks against MLX's ops, whose sums run in another
// order: "" when every element of `got` is within frac of `want`'s largest
// magnitude (compared as float32), else "max |diff| E of T".
std::string max_diff_within(const mlx::core::array& got, const mlx::core::array& want, float frac,
                            const mlx::core::Stream& s);
// A kernel family's checks, (what, "" or why not), as a status: "on (a, b)",
// "off: c: why; d: why", or "on (a); off: c: why"; "" for none.
std::string on_off_status(const std::vector<std::pair<std::string, std::string>>& checks);
// A memo of checks under `mu`: run() ("" or why not) once per key, an
// exception it throws being a failed check (`failed` + its message).
template <typename M, typename K, typename F>
const std::string& memo_check(std::mutex& mu, M& memo, const K& key, F run, const char* failed) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = memo.find(key);
  if (it != memo.end()) return it->second;
  std::string why;
  try {
    why = run();
  } catch (const std::exception& e) {
    why = std::string(failed) + e.what();
  }
  return memo.emplace(key, why).first->second;
}
// A status line several threads set and read: a CUDA graph's "on (...)"
// or "off: why" (gpu_graph.cc, gpu_prompt.cc).
class StatusNote {
 public:
  void set(std::string s) {
    std::lock_guard<std::mutex> lock(mu_);
    s_ = std::move(s);
  }
  std::string get() {
    std::lock_guard<std::mutex> lock(mu_);
    return s_;
  }

 private:
  std::mutex mu_;
  std::string s_;
};
// "[2, 3]" (for error messages).
std::string shape_str(const mlx::core::array& a);
// Whether the environment variable `name` is "0": cider's switches that
// turn a family of its kernels off (CIDER_GPU_KERNELS=0 and the like).
bool env_off(const char* name);
// "not used yet", "on (<types>)", or which types are off and why; then the
// fused decode kernel's state after "; decode: ", once asked for.
rust::String gpu_kernels_status();
bool gpu_kernels_wanted();
// cider's fused decode kernel (gpu_decode.cc): [h + dl] -> RMSNorm(g, eps) ->
// one row times w [N, K] -> [+ bias] -> mode 0 nothing more (y [1, N]), mode 1 RoPE on the first
// `rot` rows (heads of head_dim; freqs, or base 2^log2_base; position
// rope_scale * pos), 2 SwiGLU of the two halves. Returns [h + dl, y]. With
// has_cache (mode 1), returns [h + dl, q] (rows < qn) and writes the other
// rows (keys, then values) into cache [1, heads, capacity, head_dim] at
// position pos (whose value is pos_value), in place, after `prev` (the last writer's output) has
// been computed. Throws where the arguments do not fit; call
// gpu_decode_ready first. h, dl, g and w are read 16 bytes at a time: they
// must start on 16-byte boundaries, as arrays MLX allocates do (views at an
// offset are not passed here).
bool gpu_decode_ready(uint8_t dtype);
std::unique_ptr<ArrayList> gpu_norm_gemv(const Array& h, const Array& dl, bool has_dl, const Array& g, float eps,
                                         const Array& w, const Array& bias, bool has_bias, int32_t mode,
                                         int32_t rot, int32_t head_dim, const Array& pos, const Array& freqs,
                                         bool has_freqs, float log2_base, float rope_scale, const Array& cache,
                                         bool has_cache, int32_t qn, const Array& prev, int32_t pos_value,
                                         const Array& next, bool has_next);
// logits [1, V] (bf16/f16) -> greedy token [1] (uint32): argmax of logits -
// logsumexp(logits), rounded as MLX's ops round. scratch (from
// gpu_greedy_scratch) is written by the kernel; prev, the last call's
// output on that scratch (or the scratch itself the first time), orders the
// calls. Throws where the logits do not fit; call gpu_decode_ready first.
std::unique_ptr<Array> gpu_greedy_scratch();
// "" when the kernel for this configuration (gpu_norm_gemv's arguments by
// shape) or for greedy rows of V logits agrees with MLX's ops on random
// inputs, else why not; checked once per process, compiling only the kernel
// that configuration runs. A model asks before its first fused step.
rust::String gpu_decode_check(uint8_t dtype, int32_t K, int32_t N, int32_t mode, bool has_dl, bool has_bias,
                              int32_t rot, int32_t head_dim, bool has_freqs, float log2_base, float rope_scale,
                              float eps, int32_t qn);
rust::String gpu_greedy_check(uint8_t dtype, int32_t V);
// The kernels' edge cases (partial chunks, every split, KV variant against
// the plain one, greedy rows across slices) against MLX's ops: "" or what
// differs. For tests (compiles about ten kernels).
rust::String gpu_decode_self_test(uint8_t dtype);
std::unique_ptr<Array> gpu_greedy(const Array& logits, const Array& scratch, const Array& prev);
// cider's attention + o projection kernel for one decode position
// (gpu_decode.cc): q [1, heads, 1, head_dim], the cache's joint buffer
// [1, 2 kv_heads, capacity, head_dim] read at positions 0..pos, w [N,
// heads * head_dim] -> y [1, N]. Throws where the arguments do not fit;
// gpu_attn_o_check first.
int32_t gpu_attn_o_max_positions();
rust::String gpu_attn_o_check(uint8_t dtype, int32_t heads, int32_t kv_heads, int32_t head_dim, int32_t n,
                              bool has_bias, float scale);
std::unique_ptr<Array> gpu_attn_o(const Array& q, const Array& cache, const Array& pos, int32_t pos_value,
                                  const Array& w, const Array& bias, bool has_bias, float scale, const Array& next,
                                  bool has_next);
// cider's gemv for the MLP's down projection in decode steps: x [1, K] .
// w [N, K]^T (+ bias) -> [1, N], bf16 or f16. Throws where the arguments do
// not fit; gpu_gemv_check (by dtype, K, N, bias) first.
rust::String gpu_gemv_check(uint8_t dtype, int32_t K, int32_t N, bool has_bias);
std::unique_ptr<Array> gpu_gemv(const Array& x, const Array& w, const Array& bias, bool has_bias, const Array& next,
                                bool has_next);
// `next` (gpu_norm_gemv, gpu_attn_o, gpu_gemv, where has_next): the
// weights of the kernel that runs next, of which each kernel asks L2 for up
// to CIDER_GPU_PF megabytes once its own loads are in (gpu_decode.cc).
std::string gpu_decode_status();
// Greedy decode steps replayed as one CUDA graph (gpu_graph.cc says why).
// gpu_graph_trace(true) records the decode kernels launched on this thread
// (the step being built), false stops; gpu_graph_new, once MLX has
// evaluated that step, makes the graph from the record: `layers` layers,
// then the head and greedy sampling, whose token array `token` the graph's
// tail feeds back through the embedding `table` into `h0` (the first
// layer's input) and advances `pos` (4 int32, the step's position `base`
// first). It hands out at most `steps` steps, gpu_graph_unroll() a graph
// launch (so up to that many more run: the caches need room for them).
// Launch returns a step's number (1, 2, ...), token waits for it, finish
// for all and returns how many ran.
struct DecodeGraphImpl;
struct DecodeGraph {
  std::shared_ptr<DecodeGraphImpl> impl;
};
bool gpu_graph_available();
rust::String gpu_graph_unavailable_reason();
void gpu_graph_trace(bool on);
std::unique_ptr<DecodeGraph> gpu_graph_new(const Array& table, const Array& h0, const Array& pos, const Array& token,
                                           int32_t base, int32_t steps, int32_t layers);
uint64_t gpu_graph_launch(DecodeGraph& g);
uint32_t gpu_graph_token(DecodeGraph& g, uint64_t k);
uint64_t gpu_graph_finish(DecodeGraph& g);
int32_t gpu_graph_unroll();
// What the last attempt to make such a graph came to ("on (...)", "off:
// why"), or a reason the caller notes; "" before any.
void gpu_graph_note(rust::Str why);
// A dense model's prompt pass as one CUDA graph per bucket of lengths
// (gpu_prompt.cc says why and how). gpu_prompt_new takes per layer the
// input norm, q/k/v, o, post-attention norm, gate/up and down weights, then
// the embedding table, then (rope_mode 2) the RoPE frequencies, then each
// layer's biases; dims: hidden, heads, kv heads, head dim, intermediate,
// layers, vocab, bias bits (1 q/k/v, 2 o, 4 gate/up, 8 down). It
// throws where the model does not fit or the GPU cannot. gpu_prompt_run
// writes the prompt's keys and values into each layer's joint KV buffer
// [1, 2 * kv heads, capacity, head dim] (positions 0.., capacity at least
// the prompt rounded up to 32) and returns the last position's residual
// stream [1, hidden], evaluated.
struct PromptGraphImpl;
struct PromptGraph {
  std::shared_ptr<PromptGraphImpl> impl;
};
std::unique_ptr<PromptGraph> gpu_prompt_new(const ArrayList& weights, rust::Slice<const int32_t> dims, float eps,
                                            float attn_scale, int32_t rope_mode, float log2_base, float rope_scale);
ArrPtr gpu_prompt_run(PromptGraph& graph, rust::Slice<const int32_t> ids, const ArrayList& caches);
// The longest prompt it takes.
int32_t gpu_prompt_max_rows();
// Prompt lengths share a graph in buckets of this many rows.
int32_t gpu_prompt_bucket();
// Whether the prompt graph runs ("on (...)"), or why not ("off: ..."), as
// the model noted it; "" before.
void gpu_prompt_note(rust::Str why);
std::string gpu_prompt_status();

std::string gpu_graph_status();
// false: MLX's ops from now on (until true again), for comparisons.
void cpu_kernels_enable(bool on);

// element-wise and shape ops
ArrPtr astype(const Array& a, uint8_t dtype);
ArrPtr reshape(const Array& a, rust::Slice<const int32_t> shape);
ArrPtr transpose(const Array& a, rust::Slice<const int32_t> axes);
ArrPtr add(const Array& a, const Array& b);
ArrPtr subtract(const Array& a, const Array& b);
ArrPtr multiply(const Array& a, const Array& b);
ArrPtr divide(const Array& a, const Array& b);
ArrPtr maximum(const Array& a, const Array& b);
ArrPtr less(const Array& a, const Array& b);
ArrPtr greater(const Array& a, const Array& b);
ArrPtr power(const Array& a, const Array& b);
ArrPtr greater_equal(const Array& a, const Array& b);
ArrPtr logical_and(const Array& a, const Array& b);
ArrPtr where_(const Array& c, const Array& a, const Array& b);
ArrPtr negative(const Array& a);
ArrPtr sigmoid(const Array& a);
ArrPtr exp(const Array& a);
ArrPtr log(const Array& a);
// `worker`: 0 for the default stream, i > 0 for CPU worker stream i (see cpu_workers).
ArrPtr matmul(const Array& a, const Array& b, int32_t worker);
ArrPtr addmm(const Array& c, const Array& a, const Array& b, int32_t worker);
ArrPtr swiglu(const Array& gate, const Array& x);

// reductions, indexing, sorting
ArrPtr sum_axis(const Array& a, int32_t axis, bool keepdims);
ArrPtr max_axis(const Array& a, int32_t axis, bool keepdims);
ArrPtr logsumexp_axis(const Array& a, int32_t axis, bool keepdims);
ArrPtr softmax_axis(const Array& a, int32_t axis, bool precise);
ArrPtr argmax_axis(const Array& a, int32_t axis, bool keepdims);
ArrPtr take(const Array& a, const Array& idx, int32_t axis);
ArrPtr take_along_axis(const Array& a, const Array& idx, int32_t axis);
ArrPtr put_along_axis(const Array& a, const Array& idx, const Array& vals, int32_t axis);
ArrPtr contiguous(const Array& a);
ArrPtr concatenate2(const Array& a, const Array& b, int32_t axis);
ArrPtr concatenate_list(const ArrayList& l, int32_t axis);
ArrPtr slice(const Array& a, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop);
ArrPtr slice_update(const Array& src, const Array& upd, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop);
ArrPtr sort_axis(const Array& a, int32_t axis);
ArrPtr argsort_axis(const Array& a, int32_t axis);
ArrPtr argpartition_axis(const Array& a, int32_t kth, int32_t axis);
ArrPtr cumsum_axis(const Array& a, int32_t axis, bool reverse, bool inclusive);

// quantization
ArrPtr quantized_matmul(const Array& x, const Array& w, const Array& scales, const Array& biases,
                        bool has_biases, bool transpose, int32_t group_size, int32_t bits,
                        rust::Str mode, int32_t worker);
std::unique_ptr<ArrayList> quantize(const Array& w, int32_t group_size, int32_t bits, rust::Str mode);
ArrPtr dequantize(const Array& w, const Array& scales, const Array& biases, bool has_biases,
                  int32_t group_size, int32_t bits, rust::Str mode);

// fast kernels
ArrPtr rms_norm(const Array& x, const Array& w, float eps);
ArrPtr rope(const Array& x, int32_t dims, bool traditional, float base, float scale, int32_t offset);
ArrPtr rope_freqs(const Array& x, int32_t dims, bool traditional, float scale, int32_t offset,
                  const Array& freqs);
ArrPtr sdpa(const Array& q, const Array& k, const Array& v, float scale, rust::Str mask_mode,
            const Array& mask, bool has_mask);

// random
ArrPtr random_key(uint64_t seed);
std::unique_ptr<ArrayList> random_split(const Array& key);
ArrPtr categorical(const Array& logits, const Array& key);

// io
std::unique_ptr<SafeTensors> load_safetensors(rust::Str path);
rust::Vec<rust::String> st_keys(const SafeTensors& st);
ArrPtr st_get(const SafeTensors& st, rust::Str name);
rust::Vec<rust::String> st_metadata(const SafeTensors& st);
void save_safetensors(rust::Str path, rust::Slice<const rust::String> names, const ArrayList& arrays);

// memory and devices
size_t get_active_memory();
size_t get_peak_memory();
void reset_peak_memory();
size_t get_cache_memory();
size_t set_memory_limit(size_t limit);
size_t get_memory_limit();
size_t set_cache_limit(size_t limit);
void clear_cache();
bool gpu_available();
// MLX's CUDA backend is the one in use (not Metal's, not none).
bool gpu_is_cuda();
void set_default_device(bool gpu);
bool default_device_is_gpu();
rust::String mlx_version();

}  // namespace cider
