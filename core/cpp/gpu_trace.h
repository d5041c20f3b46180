// What gpu_graph.cc needs of gpu_decode.cc: the decode kernels' kinds
// (names, arguments, call lines), their device text, and a trace of the
// launches one decode step makes, so a CUDA graph can replay that step with
// the very kernels, template arguments and grids MLX ran (gpu_graph.cc
// says why).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "mlx/array.h"
#include "mlx/fast.h"

namespace cider::dec {

// The norm kernel's plain variant (output y) and KV variant (q, and keys
// and values into the cache in place); greedy sampling; the attention + o
// projection kernel; the MLP's down projection.
enum class Kind { Norm, NormKv, Greedy, AttnO, Gemv };

// Each kind's inputs, outputs and call line (indexed by Kind).
struct KindSpec {
  const char* name;
  std::vector<std::string> inputs, outputs;
  const char* call;
};
const KindSpec& spec(Kind kind);

using TArgs = std::vector<std::pair<std::string, mlx::core::fast::TemplateArg>>;

// One launch as MLX was asked to run it: arrays in spec(kind)'s order,
// outputs as MLX made them, blocks of `threads`.
struct Traced {
  Kind kind;
  TArgs targs;
  std::vector<mlx::core::array> inputs, outputs;
  int blocks, threads;
};

// The CUDA type of a dtype the kernels take (nullptr for others).
const char* cuda_type(mlx::core::Dtype t);

// The template arguments as the constexpr and using lines MLX's
// cuda_kernel writes before the call line.
std::string targ_lines(const TArgs& targs);

// Launches on this thread are appended to `into` until set_trace(nullptr).
void set_trace(std::vector<Traced>* into);

// The kernels' device code (gpu_decode_src.h, comments dropped).
const std::string& device_text();

}  // namespace cider::dec
