// Greedy decode steps replayed as one CUDA graph (NVIDIA GPUs).
//
// Why: a Llama-3.2-1B bf16 decode step's kernels take about 1.01 ms on an
// H100 (bench/l2_chain.py), but each step through MLX also costs the host
// about 1 ms (building the graph of ~70 nodes, then MLX encoding them into
// 3-4 CUDA graphs), which on a slow host is as long as the device's work,
// and the device idles between MLX's graphs. Here the step is built once
// through MLX, traced (gpu_trace.h: every kernel launch with its template
// arguments, grid and arrays), evaluated by MLX as usual, and then replayed
// with those very kernels, compiled once more by NVRTC, on the same
// buffers: one graph launch a step, a few microseconds of host time, with
// the sampled token fed back on the device. Only what differs between two
// steps is moved by the graph itself: a last kernel (tail) records the
// token, gathers its embedding into the first layer's input and advances
// the position every kernel reads from device memory.
//
// Nothing links against CUDA: the driver API and NVRTC, both already loaded
// by MLX's CUDA build, are looked up at run time, so this file builds and
// is inert on macOS and Linux CPU.
#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_driver.h"
#include "gpu_trace.h"
#include "mlx/backend/cuda/cuda.h"
#include "shim.h"

namespace mx = mlx::core;

namespace cider {
namespace cu {
namespace {

template <typename F>
bool sym(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

// A folder holding cuda_bf16.h: CUDA_HOME or CUDA_PATH, else beside NVRTC
// (pip's nvidia/cu13/lib -> nvidia/cu13/include, where MLX's JIT also
// looks), else /usr/local/cuda.
std::string find_include(void* nvrtc_symbol) {
  std::vector<std::filesystem::path> tries;
  for (const char* v : {"CUDA_HOME", "CUDA_PATH"})
    if (const char* e = std::getenv(v); e && *e) tries.push_back(std::filesystem::path(e) / "include");
  Dl_info info{};
  if (dladdr(nvrtc_symbol, &info) && info.dli_fname) {
    const auto lib = std::filesystem::path(info.dli_fname).parent_path();
    tries.push_back(lib.parent_path() / "include");
    tries.push_back(lib.parent_path().parent_path() / "cu13" / "include");
    tries.push_back(lib.parent_path().parent_path() / "cuda_runtime" / "include");
  }
  tries.push_back("/usr/local/cuda/include");
  std::error_code ec;
  for (const auto& t : tries)
    if (std::filesystem::exists(t / "cuda_bf16.h", ec)) return t.string();
  return "";
}
}  // namespace

const Driver& driver() {
  static const Driver d = [] {
    Driver d{};
    void* cu = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    void* rtc = nullptr;
    for (const char* n : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"})
      if ((rtc = dlopen(n, RTLD_NOW | RTLD_GLOBAL))) break;
    if (!cu || !rtc) {
      d.error = std::string("cannot load ") + (!cu ? "libcuda.so.1" : "libnvrtc.so.13 or .12");
      return d;
    }
    bool ok = sym(cu, "cuInit", d.Init) && sym(cu, "cuCtxGetCurrent", d.CtxGetCurrent) &&
              sym(cu, "cuCtxSetCurrent", d.CtxSetCurrent) && sym(cu, "cuCtxGetDevice", d.CtxGetDevice) &&
              sym(cu, "cuDevicePrimaryCtxRetain", d.DevicePrimaryCtxRetain) &&
              sym(cu, "cuDeviceGetAttribute", d.DeviceGetAttribute) && sym(cu, "cuModuleLoadData", d.ModuleLoadData) &&
              sym(cu, "cuModuleGetFunction", d.ModuleGetFunction) && sym(cu, "cuStreamCreate", d.StreamCreate) &&
              sym(cu, "cuStreamDestroy_v2", d.StreamDestroy) && sym(cu, "cuStreamSynchronize", d.StreamSynchronize) &&
              sym(cu, "cuStreamBeginCapture_v2", d.StreamBeginCapture) &&
              sym(cu, "cuStreamEndCapture", d.StreamEndCapture) && sym(cu, "cuLaunchKernel", d.LaunchKernel) &&
              sym(cu, "cuGraphInstantiateWithFlags", d.GraphInstantiate) && sym(cu, "cuGraphLaunch", d.GraphLaunch) &&
              sym(cu, "cuGraphDestroy", d.GraphDestroy) && sym(cu, "cuGraphExecDestroy", d.GraphExecDestroy) &&
              sym(cu, "cuEventCreate", d.EventCreate) && sym(cu, "cuEventRecord", d.EventRecord) &&
              sym(cu, "cuEventSynchronize", d.EventSynchronize) &&
              sym(cu, "cuEventQuery", d.EventQuery) && sym(cu, "cuEventDestroy_v2", d.EventDestroy) &&
              sym(cu, "cuMemHostAlloc", d.MemHostAlloc) &&
              sym(cu, "cuMemHostGetDevicePointer_v2", d.MemHostGetDevicePointer) &&
              sym(cu, "cuMemFreeHost", d.MemFreeHost) && sym(cu, "cuGetErrorString", d.GetErrorString) &&
              sym(cu, "cuMemcpyHtoDAsync_v2", d.MemcpyHtoDAsync) && sym(cu, "cuMemsetD8Async", d.MemsetD8Async);
    if (!ok) {
      d.error = "libcuda.so.1 lacks a driver call this needs (CUDA 12 or later)";
      return d;
    }
    sym(cu, "cuLaunchKernelEx", d.LaunchKernelEx);
    ok = sym(rtc, "nvrtcCreateProgram", d.CreateProgram) && sym(rtc, "nvrtcCompileProgram", d.CompileProgram) &&
         sym(rtc, "nvrtcGetProgramLogSize", d.GetProgramLogSize) && sym(rtc, "nvrtcGetProgramLog", d.GetProgramLog) &&
         sym(rtc, "nvrtcGetPTXSize", d.GetPTXSize) && sym(rtc, "nvrtcGetPTX", d.GetPTX) &&
         sym(rtc, "nvrtcDestroyProgram", d.DestroyProgram);
    if (!ok) {
      d.error = "the NVRTC library lacks a call this needs";
      return d;
    }
    d.include_dir = find_include(reinterpret_cast<void*>(d.CompileProgram));
    if (d.include_dir.empty()) d.error = "CUDA's headers (cuda_bf16.h) not found: set CUDA_HOME";
    return d;
  }();
  return d;
}

void check(CUresult r, const char* what) {
  if (r == 0) return;
  const char* s = nullptr;
  driver().GetErrorString(r, &s);
  throw std::runtime_error(std::string("CUDA graph: ") + what + " failed: " + (s ? s : "error " + std::to_string(r)));
}

// The device address of an evaluated array: MLX 0.32's CUDA buffer
// (mlx/backend/cuda/allocator.h, CudaBuffer) starts with it, which is what
// MLX's own gpu_ptr reads (array::data() would move the buffer to managed
// memory first).
CUdeviceptr dev_ptr(const mx::array& a) {
  struct CudaBufferHead {
    void* data;
  };
  auto buf = a.buffer();
  auto* b = static_cast<const CudaBufferHead*>(buf.ptr());
  return CUdeviceptr(static_cast<char*>(b->data) + a.offset());
}


Capability capability(const Driver& d) {
  CUdevice dev;
  check(d.CtxGetDevice(&dev), "cuCtxGetDevice");
  Capability c;
  check(d.DeviceGetAttribute(&c.major, 75, dev), "compute capability");
  check(d.DeviceGetAttribute(&c.minor, 76, dev), "compute capability");
  return c;
}

// Compiled modules by source: a process compiles a model's step once.
CUmodule compile(const std::string& src) {
  static std::mutex m;
  static std::map<std::string, CUmodule> made;
  std::lock_guard<std::mutex> lock(m);
  if (auto it = made.find(src); it != made.end()) return it->second;
  const Driver& d = driver();
  const auto [major, minor] = capability(d);
  // As MLX's JIT: PTX for compute_XY, with "a" (the architecture's own
  // instructions) from 9.0 on.
  const std::string arch = "--gpu-architecture=compute_" + std::to_string(major) + std::to_string(minor) +
                           (major >= 9 ? "a" : "");
  const std::string inc = "--include-path=" + d.include_dir;
  const char* opts[] = {arch.c_str(), inc.c_str(), "--std=c++17"};
  nvrtcProgram prog = nullptr;
  if (d.CreateProgram(&prog, src.c_str(), "cider_graph.cu", 0, nullptr, nullptr) != 0)
    throw std::runtime_error("CUDA graph: nvrtcCreateProgram failed");
  const int rc = d.CompileProgram(prog, 3, opts);
  if (rc != 0) {
    size_t n = 0;
    d.GetProgramLogSize(prog, &n);
    std::string log(n, '\0');
    d.GetProgramLog(prog, log.data());
    d.DestroyProgram(&prog);
    throw std::runtime_error("CUDA graph: NVRTC could not compile the kernels: " + log.substr(0, 2000));
  }
  size_t n = 0;
  d.GetPTXSize(prog, &n);
  std::string ptx(n, '\0');
  d.GetPTX(prog, ptx.data());
  d.DestroyProgram(&prog);
  CUmodule mod = nullptr;
  check(d.ModuleLoadData(&mod, ptx.data()), "cuModuleLoadData");
  return made.emplace(src, mod).first->second;
}


void ensure_context() {
  const Driver& d = driver();
  CUcontext ctx = nullptr;
  check(d.Init(0), "cuInit");
  check(d.CtxGetCurrent(&ctx), "cuCtxGetCurrent");
  if (!ctx) {
    check(d.DevicePrimaryCtxRetain(&ctx, 0), "cuDevicePrimaryCtxRetain");
    check(d.CtxSetCurrent(ctx), "cuCtxSetCurrent");
  }
}

}  // namespace cu
using namespace cu;

namespace {

// The launches being traced on this thread (gpu_graph_trace).
thread_local std::vector<dec::Traced> traced;

constexpr int EVENTS = 16;
constexpr uint32_t NO_TOKEN = 0xffffffffu;  // a hist slot no step has written


constexpr const char* kPrelude = R"CUDA(
#include <cuda_fp16.h>
#include <cuda_bf16.h>
typedef unsigned int uint32_t;
typedef int int32_t;
struct CiderShape { int v[8]; __device__ int operator[](int i) const { return v[i]; } };
)CUDA";

// The token this step sampled (tok) -> hist[pos - base] (host memory the
// host reads), its embedding row -> h (the first layer's input), and the
// position advanced: what the next replay reads. One block. (Asking L2 here
// for the first layer's q/k/v weights, from 128 blocks, measured nothing:
// 958.6 tok/s without, 959.8 with 16 MB, 956.5 with 4, on an H100.)
constexpr const char* kTail = R"CUDA(
template <typename T, int K>
__device__ void cider_graph_tail(const T* table, const uint32_t* tok, int32_t* pos, T* h, uint32_t* hist, int base) {
  cider_dec::pdl_wait();
  cider_dec::pdl_launch();
  const uint32_t t = tok[0];
  const uint4* row = reinterpret_cast<const uint4*>(table + size_t(t) * K);
  for (int i = threadIdx.x; i < K / 8; i += blockDim.x) reinterpret_cast<uint4*>(h)[i] = row[i];
  if (threadIdx.x == 0) {
    const int p = pos[0];
    hist[p - base] = t;
    for (int j = 0; j < 4; j++) pos[j] = p + 1 + j;
  }
}
)CUDA";


// Whether kernel k's call line names `what` (an input's shape, say): then
// MLX's cuda_kernel passes it, and so does the wrapper here.
bool call_names(const dec::KindSpec& k, const std::string& what) {
  return std::string(k.call).find(what) != std::string::npos;
}

// One launch's kernel parameters (cuLaunchKernel's array of pointers to
// each), in the wrapper's order: input addresses, the shapes the call line
// names, output addresses.
struct LaunchArgs {
  struct Shape8 {
    int v[8];
  };
  std::vector<CUdeviceptr> ptrs;
  std::vector<Shape8> shapes;
  std::vector<void*> params;

  explicit LaunchArgs(const dec::Traced& t) {
    const auto& k = dec::spec(t.kind);
    // (Reserved: params point into both.)
    ptrs.reserve(t.inputs.size() + t.outputs.size());
    shapes.reserve(k.inputs.size());
    for (const auto& a : t.inputs) {
      ptrs.push_back(dev_ptr(a));
      params.push_back(&ptrs.back());
    }
    for (size_t j = 0; j < k.inputs.size(); j++)
      if (call_names(k, k.inputs[j] + "_shape")) {
        Shape8 s{};
        const auto& a = t.inputs[j];
        for (int x = 0; x < int(a.ndim()) && x < 8; x++) s.v[x] = a.shape(x);
        shapes.push_back(s);
        params.push_back(&shapes.back());
      }
    for (const auto& a : t.outputs) {
      ptrs.push_back(dev_ptr(a));
      params.push_back(&ptrs.back());
    }
  }
};

}  // namespace

// Steps each graph launch runs (CIDER_GPU_GRAPH_STEPS, 1 to 8; default 1):
// the step's kernels captured that many times over.
int32_t gpu_graph_unroll() {
  static const int v = [] {
    const char* e = std::getenv("CIDER_GPU_GRAPH_STEPS");
    const int n = e ? std::atoi(e) : 0;
    return n >= 1 && n <= 8 ? n : 1;
  }();
  return v;
}

namespace {
// Whether the graph's kernels overlap (programmatic dependent launch:
// gpu_decode_src.h, pdl_wait): a compute capability 9.0 device (the
// kernels wait only there), cuLaunchKernelEx, and not CIDER_GPU_PDL=0.
// "" when they do, else why not.
std::string overlap_off(const Driver& d) {
  if (const char* e = std::getenv("CIDER_GPU_PDL"); e && std::string(e) == "0") return "CIDER_GPU_PDL=0";
  if (!d.LaunchKernelEx) return "the driver lacks cuLaunchKernelEx";
  return capability(d).major >= 9 ? "" : "compute capability below 9.0";
}
}  // namespace

struct DecodeGraphImpl {
  CUstream stream = nullptr;
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  std::vector<CUevent> events;
  uint32_t* hist = nullptr;  // host memory the tail writes tokens into
  // Steps handed out (gpu_graph_launch), at most `steps`; steps launched
  // on the device, `unroll` a graph launch, at most `cap`.
  uint64_t steps = 0, cap = 0, issued = 0, launched = 0;
  int unroll = 1;
  std::string overlap_off;  // "" when the kernels overlap, else why not
  std::vector<mx::array> keep;  // every array a launch reads or writes

  ~DecodeGraphImpl() {
    const Driver& d = driver();
    if (stream) d.StreamSynchronize(stream);
    if (exec) d.GraphExecDestroy(exec);
    if (graph) d.GraphDestroy(graph);
    for (auto e : events) d.EventDestroy(e);
    if (hist) d.MemFreeHost(hist);
    if (stream) d.StreamDestroy(stream);
  }
};

bool gpu_graph_available() {
  return mx::cu::is_available() && driver().error.empty();
}

rust::String gpu_graph_unavailable_reason() {
  if (!mx::cu::is_available()) return rust::String("not a CUDA device");
  return rust::String(driver().error);
}

void gpu_graph_trace(bool on) {
  if (on) traced.clear();
  dec::set_trace(on ? &traced : nullptr);
}

namespace {
StatusNote status;  // the last graph's making, or why there was none
}  // namespace

void gpu_graph_note(rust::Str why) { status.set(std::string(why)); }

std::string gpu_graph_status() { return status.get(); }

namespace {
std::unique_ptr<DecodeGraph> make_graph(const Array& table, const Array& h0, const Array& pos, const Array& token,
                                        int32_t base, int32_t steps, int32_t layers) {
  dec::set_trace(nullptr);
  std::vector<dec::Traced> launches = std::move(traced);
  traced.clear();
  const Driver& d = driver();
  if (!mx::cu::is_available()) throw std::runtime_error("CUDA graph: not a CUDA device");
  if (!d.error.empty()) throw std::runtime_error("CUDA graph: " + d.error);
  auto bad = [](const std::string& what) { throw std::invalid_argument("CUDA graph: " + what); };
  // The step this replays: per layer q/k/v, attention + o, gate/up, down;
  // then the head and greedy sampling. Anything else traced (a kernel's
  // first-use check, MLX's ops in place of one) is not that step.
  if (launches.size() != size_t(4 * layers + 2)) bad("traced " + std::to_string(launches.size()) + " launches, not the " +
                                                     std::to_string(4 * layers + 2) + " of a step of " +
                                                     std::to_string(layers) + " layers");
  for (int i = 0; i < layers; i++) {
    const dec::Kind want[4] = {dec::Kind::NormKv, dec::Kind::AttnO, dec::Kind::Norm, dec::Kind::Gemv};
    for (int j = 0; j < 4; j++)
      if (launches[4 * i + j].kind != want[j]) bad("layer " + std::to_string(i) + "'s launches are not the fused step's");
  }
  if (launches[4 * layers].kind != dec::Kind::Norm || launches[4 * layers + 1].kind != dec::Kind::Greedy)
    bad("the step does not end in the head and greedy sampling");
  const auto &tab = table.a, &h = h0.a, &p = pos.a, &tok = token.a;
  for (const auto* a : {&tab, &h, &p, &tok})
    if (!a->is_available() || !a->flags().row_contiguous) bad("its arrays must be evaluated and row-contiguous");
  const int K = int(h.size());
  if (tab.ndim() != 2 || tab.shape(1) != K || tab.dtype() != h.dtype() || K % 8 || !dec::cuda_type(h.dtype()) ||
      dev_ptr(tab) % 16 || dev_ptr(h) % 16)
    bad("the embedding table must be [vocab, " + std::to_string(K) + "] of the activations' dtype, rows 16-byte aligned");
  if (p.dtype() != mx::int32 || p.size() != 4 || tok.dtype() != mx::uint32 || tok.size() != 1)
    bad("position must be 4 int32 values and the token one uint32");
  if (steps < 1 || base < 0) bad("steps must be at least 1");

  // The module: each distinct kernel once, as MLX's cuda_kernel writes it
  // (inputs, then the shapes the call line names, then outputs; template
  // arguments as constexpr lines; the call line).
  std::string src = std::string(kPrelude) + dec::device_text() + kTail;
  std::map<std::string, std::string> fn_of;  // wrapper text -> name
  std::vector<std::string> names;
  for (const auto& t : launches) {
    const auto& k = dec::spec(t.kind);
    std::string params, body = dec::targ_lines(t.targs) + k.call + "\n";
    for (size_t i = 0; i < k.inputs.size(); i++) {
      const auto& a = t.inputs[i];
      if (!dec::cuda_type(a.dtype())) bad("input " + k.inputs[i] + " of an unexpected dtype");
      params += std::string(params.empty() ? "" : ", ") + "const " + dec::cuda_type(a.dtype()) + "* " + k.inputs[i];
    }
    for (const auto& n : k.inputs) {
      if (call_names(k, n + "_strides") || call_names(k, n + "_ndim"))
        bad(std::string(k.name) + "'s call line takes strides or ndim, which this does not pass");
      if (call_names(k, n + "_shape")) params += ", const CiderShape " + n + "_shape";
    }
    for (size_t i = 0; i < k.outputs.size(); i++)
      params += std::string(", ") + dec::cuda_type(t.outputs[i].dtype()) + "* " + k.outputs[i];
    const std::string text = "(" + params + ") {\n" + body + "}\n";
    auto it = fn_of.find(text);
    if (it == fn_of.end()) {
      const std::string name = "cider_graph_" + std::to_string(fn_of.size());
      src += "extern \"C\" __global__ void " + name + text;
      it = fn_of.emplace(text, name).first;
    }
    names.push_back(it->second);
  }
  src += std::string("extern \"C\" __global__ void cider_graph_tail_k(const ") + dec::cuda_type(h.dtype()) +
         "* table, const uint32_t* tok, int32_t* pos, " + dec::cuda_type(h.dtype()) +
         "* h, uint32_t* hist, int base) {\ncider_graph_tail<" + dec::cuda_type(h.dtype()) + ", " + std::to_string(K) +
         ">(table, tok, pos, h, hist, base);\n}\n";

  // Every array any launch reads or writes must be MLX's evaluated,
  // row-contiguous buffer (what the kernel saw: MLX copies other inputs).
  auto g = std::make_shared<DecodeGraphImpl>();
  for (const auto& t : launches)
    for (const auto* v : {&t.inputs, &t.outputs})
      for (const auto& a : *v) {
        if (!a.is_available() || !a.flags().row_contiguous) bad("a traced array is not an evaluated row-contiguous buffer");
        g->keep.push_back(a);
      }
  for (const auto* a : {&tab, &h, &p, &tok}) g->keep.push_back(*a);

  ensure_context();
  CUmodule mod = compile(src);
  std::vector<CUfunction> fns;
  for (const auto& n : names) {
    CUfunction f = nullptr;
    check(d.ModuleGetFunction(&f, mod, n.c_str()), "cuModuleGetFunction");
    fns.push_back(f);
  }
  CUfunction tail = nullptr;
  check(d.ModuleGetFunction(&tail, mod, "cider_graph_tail_k"), "cuModuleGetFunction");

  check(d.StreamCreate(&g->stream, 1 /* non-blocking */), "cuStreamCreate");
  for (int i = 0; i < EVENTS; i++) {
    CUevent e = nullptr;
    check(d.EventCreate(&e, 2 /* no timing */), "cuEventCreate");
    g->events.push_back(e);
  }
  g->steps = uint64_t(steps);
  g->unroll = gpu_graph_unroll();
  g->cap = (g->steps + g->unroll - 1) / g->unroll * g->unroll;
  check(d.MemHostAlloc(reinterpret_cast<void**>(&g->hist), sizeof(uint32_t) * (g->cap + 1), 2 /* mapped */),
        "cuMemHostAlloc");
  for (uint64_t i = 0; i <= g->cap; i++) g->hist[i] = NO_TOKEN;
  CUdeviceptr hist_dev = 0;
  check(d.MemHostGetDevicePointer(&hist_dev, g->hist, 0), "cuMemHostGetDevicePointer");

  // The traced step is MLX's: done before anything here reads its buffers.
  mx::synchronize();

  CUdeviceptr tail_args[5] = {dev_ptr(tab), dev_ptr(tok), dev_ptr(p), dev_ptr(h), hist_dev};
  int tail_base = base;
  void* tail_params[6] = {&tail_args[0], &tail_args[1], &tail_args[2], &tail_args[3], &tail_args[4], &tail_base};
  // The traced step sampled at position base: its token goes to hist[0],
  // its embedding into h, and the position to base + 1. Then the graph.
  check(d.LaunchKernel(tail, 1, 1, 1, 256, 1, 1, 0, g->stream, tail_params, nullptr), "the first tail launch");
  std::vector<LaunchArgs> args;
  args.reserve(launches.size());
  for (const auto& t : launches) args.emplace_back(t);
  // Every captured launch but the first may start before the one before it
  // ends (each kernel waits for it where it must: pdl_wait).
  g->overlap_off = overlap_off(d);
  auto launch = [&](CUfunction f, unsigned blocks, unsigned threads, void** params, bool first, const char* what) {
    if (!g->overlap_off.empty() || first) {
      check(d.LaunchKernel(f, blocks, 1, 1, threads, 1, 1, 0, g->stream, params, nullptr), what);
      return;
    }
    LaunchAttr overlap{};
    overlap.id = kAttrProgrammaticSerialization;
    overlap.v.value = 1;
    const LaunchConfig c{{blocks, 1, 1}, {threads, 1, 1}, 0, g->stream, &overlap, 1};
    check(d.LaunchKernelEx(&c, f, params, nullptr), what);
  };
  check(d.StreamBeginCapture(g->stream, 2 /* relaxed */), "cuStreamBeginCapture");
  try {
    for (size_t u = 0; u < size_t(g->unroll) * launches.size(); u++) {
      const size_t i = u % launches.size();
      const auto& t = launches[i];
      launch(fns[i], unsigned(t.blocks), unsigned(t.threads), args[i].params.data(), u == 0, "a captured launch");
      if (i + 1 == launches.size()) launch(tail, 1, 256, tail_params, false, "the captured tail");
    }
  } catch (...) {
    CUgraph dropped = nullptr;
    d.StreamEndCapture(g->stream, &dropped);
    if (dropped) d.GraphDestroy(dropped);
    throw;
  }
  check(d.StreamEndCapture(g->stream, &g->graph), "cuStreamEndCapture");
  check(d.GraphInstantiate(&g->exec, g->graph, 0), "cuGraphInstantiate");
  auto out = std::make_unique<DecodeGraph>();
  out->impl = std::move(g);
  return out;
}
}  // namespace

std::unique_ptr<DecodeGraph> gpu_graph_new(const Array& table, const Array& h0, const Array& pos, const Array& token,
                                           int32_t base, int32_t steps, int32_t layers) {
  try {
    auto g = make_graph(table, h0, pos, token, base, steps, layers);
    const std::string& off = g->impl->overlap_off;
    gpu_graph_note("on (" + std::to_string(4 * layers + 3) + " kernels a step, one graph launch; kernels " +
                   (off.empty() ? std::string("overlapped") : "not overlapped: " + off) + ")");
    return g;
  } catch (const std::exception& e) {
    gpu_graph_note(std::string("off: ") + e.what());
    throw;
  }
}

uint64_t gpu_graph_launch(DecodeGraph& graph) {
  DecodeGraphImpl& g = *graph.impl;
  if (g.issued >= g.steps)
    throw std::invalid_argument("CUDA graph: all " + std::to_string(g.steps) + " steps it was made for were launched");
  g.issued++;
  // One graph launch ahead of the step handed out (as MLX's steps are
  // built one ahead), and with several steps a launch, a whole launch
  // more: the token of a launch's last step is read before the next launch.
  const Driver& d = driver();
  const uint64_t ahead = g.unroll > 1 ? uint64_t(g.unroll) : 0;
  while (g.launched < g.issued + ahead && g.launched < g.cap) {
    check(d.GraphLaunch(g.exec, g.stream), "cuGraphLaunch");
    g.launched += g.unroll;
    check(d.EventRecord(g.events[(g.launched / g.unroll) % EVENTS], g.stream), "cuEventRecord");
  }
  return g.issued;
}

uint32_t gpu_graph_token(DecodeGraph& graph, uint64_t k) {
  DecodeGraphImpl& g = *graph.impl;
  if (k < 1 || k > g.issued)
    throw std::invalid_argument("CUDA graph: step " + std::to_string(k) + " was not launched");
  // Each step's tail writes its token into host memory: read as soon as it
  // is there. Now and then the event of the launch holding step k (or of a
  // later one recorded in its slot since: the same stream, so done means
  // step k is done) tells whether the launch finished without writing it,
  // or failed.
  volatile uint32_t* hist = g.hist;
  const CUevent e = g.events[((k + g.unroll - 1) / g.unroll) % EVENTS];
  for (uint64_t spin = 0;; spin++) {
    const uint32_t t = hist[k];
    if (t != NO_TOKEN) return t;
    if (spin % 64 == 63) {
      const CUresult r = driver().EventQuery(e);
      if (r == 0) {
        if (hist[k] != NO_TOKEN) return hist[k];
        throw std::runtime_error("CUDA graph: step " + std::to_string(k) + " finished without writing its token");
      }
      if (r != 600 /* not ready */) check(r, "waiting for a step");
    }
  }
}

uint64_t gpu_graph_finish(DecodeGraph& graph) {
  DecodeGraphImpl& g = *graph.impl;
  check(driver().StreamSynchronize(g.stream), "cuStreamSynchronize");
  return g.launched;  // every launched step wrote its position
}

}  // namespace cider
