// A dense model's prompt pass replayed as one CUDA graph (NVIDIA GPUs).
//
// Why: through MLX, a Llama-3.2-1B bf16 prompt pass of 128 tokens costs the
// host 3.2-4.7 ms on an H100 (about 660 graph nodes: 14 us for each of the
// 64 cuBLAS matmuls, which MLX captures into its CUDA graph one by one, 7-9
// us a commit, 2-7 us a kernel; bench/RESULTS.md, twelfth and sixteenth
// passes), while the device needs about 1.5 ms: the first token waits on
// the host. Here the pass is captured once per bucket of prompt lengths
// (multiples of 32: the prompt's ids are padded with id 0, rows no real row
// attends to) into one graph of cider's kernels (gpu_prompt_src.h; the
// attention is gpu_pattn_src.h's) and cuBLAS's matrix products, the ones
// MLX runs: a later prompt of that bucket costs one graph launch. What
// differs between two prompts of a bucket (the ids, each layer's KV buffer
// and its capacity, the last real row, where that row's output goes) is in
// a small block the graph's first node copies from pinned host memory.
//
// Keys and values go straight into each cache's joint buffer
// (KvCache::joint_reserve), where the decode steps then find them. The pass
// ends with the last real row's residual stream; the caller applies the
// final norm and head, as for any pass.
//
// cuBLAS is looked up at run time like the driver (gpu_driver.h): MLX's
// CUDA build has loaded it.
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_driver.h"
#include "gpu_pattn_src.h"
#include "gpu_prompt_src.h"
#include "mlx/allocator.h"
#include "mlx/backend/cuda/cuda.h"
#include "shim.h"

namespace mx = mlx::core;

namespace cider {
namespace {
using namespace cu;

// cuBLAS's calls used (cublas_api.h's, by their exported names).
struct Blas {
  using Handle = struct cublasContext*;
  int (*Create)(Handle*) = nullptr;
  int (*Destroy)(Handle) = nullptr;
  int (*SetStream)(Handle, CUstream) = nullptr;
  int (*SetWorkspace)(Handle, void*, size_t) = nullptr;
  int (*GemmEx)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                const void*, void*, int, int, int, int) = nullptr;
  std::string error;
};
constexpr int kOpN = 0, kOpT = 1, kR16F = 2, kR16BF = 14, kCompute32F = 68, kGemmDefault = -1;

const Blas& blas() {
  static const Blas b = [] {
    Blas b;
    void* lib = nullptr;
    // The cuBLAS MLX loaded, if any, else the newest to be found.
    for (int flags : {RTLD_NOW | RTLD_NOLOAD, RTLD_NOW | RTLD_GLOBAL}) {
      for (const char* n : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
        if ((lib = dlopen(n, flags))) break;
      if (lib) break;
    }
    if (!lib) {
      b.error = "cannot load libcublas.so.13 or .12";
      return b;
    }
    b.Create = reinterpret_cast<decltype(b.Create)>(dlsym(lib, "cublasCreate_v2"));
    b.Destroy = reinterpret_cast<decltype(b.Destroy)>(dlsym(lib, "cublasDestroy_v2"));
    b.SetStream = reinterpret_cast<decltype(b.SetStream)>(dlsym(lib, "cublasSetStream_v2"));
    b.SetWorkspace = reinterpret_cast<decltype(b.SetWorkspace)>(dlsym(lib, "cublasSetWorkspace_v2"));
    b.GemmEx = reinterpret_cast<decltype(b.GemmEx)>(dlsym(lib, "cublasGemmEx"));
    if (!b.Create || !b.Destroy || !b.SetStream || !b.SetWorkspace || !b.GemmEx) b.error = "libcublas lacks a call this needs";
    return b;
  }();
  return b;
}

void blas_check(int r, const char* what) {
  if (r != 0) throw std::runtime_error(std::string("prompt graph: ") + what + " failed: cuBLAS status " + std::to_string(r));
}

// Per layer: input norm, q/k/v, o, post-attention norm, gate/up, down.
constexpr int PER_LAYER = 6;
// cuBLAS's workspace (its default on Hopper is 32 MiB; 4 is its default
// before), counted in MLX's memory like the rest of the pass's buffers.
constexpr size_t WORKSPACE = size_t(4) << 20;
constexpr int BUCKET = 32;
// Prompt graphs kept per model (each holds its activations' buffers).
constexpr size_t KEEP = 2;

// Query rows per block of the attention (CIDER_PROMPT_QT: 4, 8 or 16):
// with fewer, a short prompt's attention has more blocks (at 16, a
// 128-token pass of 32 heads is 256 blocks of 4 warps for 132 SMs).
int query_tile() {
  const char* e = std::getenv("CIDER_PROMPT_QT");
  const int v = e ? std::atoi(e) : 0;
  return v == 4 || v == 8 || v == 16 ? v : 4;
}

// An uninitialised MLX buffer (MLX's allocator: counted in its memory).
mx::array buffer(mx::Shape shape, mx::Dtype dt) {
  size_t n = dt.size();
  for (auto s : shape) n *= size_t(s);
  return mx::array(mx::allocator::malloc(n), std::move(shape), dt);
}

// The block the graph's first node copies: each layer's KV buffer and
// capacity, the last real row, where its output goes, the ids (padded).
struct ParamLayout {
  size_t kv, caps, last, out, ids, bytes;
  ParamLayout(int layers, int lp) {
    kv = 0;
    caps = kv + 8 * size_t(layers);
    last = caps + 4 * size_t(layers);
    out = (last + 4 + 7) / 8 * 8;
    ids = out + 8;
    bytes = (ids + 4 * size_t(lp) + 15) / 16 * 16;
  }
};

struct Pass {
  int lp = 0;
  ParamLayout layout{1, 1};
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  char* host = nullptr;  // pinned: what the graph's first node copies
  std::vector<mx::array> keep;
  uint64_t used = 0;  // for keeping the most recently used
  ~Pass() {
    const Driver& d = driver();
    if (exec) d.GraphExecDestroy(exec);
    if (graph) d.GraphDestroy(graph);
    if (host) d.MemFreeHost(host);
  }
};

}  // namespace

struct PromptGraphImpl {
  // Model
  mx::Dtype dt = mx::bfloat16;
  int K = 0, HQ = 0, HK = 0, D = 0, I = 0, NL = 0, vocab = 0;
  float eps = 0, scale = 0;
  int rope_mode = 1;  // 1 base 2^log2_base, 2 freqs
  int qt = query_tile();
  float log2_base = 0, rope_scale = 1;
  // Which projections have biases (bits: 1 q/k/v, 2 o, 4 gate/up, 8 down),
  // the same in every layer.
  int bias_mask = 0;
  // PER_LAYER per layer, then the embedding table, then freqs (or none),
  // then each layer's biases in the order of bias_mask's bits.
  std::vector<mx::array> w;
  // Device
  CUstream stream = nullptr;
  Blas::Handle handle = nullptr;
  std::vector<mx::array> workspace;
  CUfunction f_embed = nullptr, f_norm0 = nullptr, f_norm1 = nullptr, f_rope_kv = nullptr, f_attend = nullptr,
             f_swiglu = nullptr, f_last = nullptr, f_fill = nullptr;
  std::map<int, std::unique_ptr<Pass>> passes;
  uint64_t clock = 0;

  ~PromptGraphImpl() {
    const Driver& d = driver();
    try {
      ensure_context();  // (a model may be dropped on another thread)
    } catch (...) {
    }
    if (stream) d.StreamSynchronize(stream);
    passes.clear();
    if (handle) blas().Destroy(handle);
    if (stream) d.StreamDestroy(stream);
  }

  const mx::array& weight(int layer, int j) const { return w[size_t(layer) * PER_LAYER + j]; }
  const mx::array& table() const { return w[size_t(NL) * PER_LAYER]; }
  const mx::array& freqs() const { return w[size_t(NL) * PER_LAYER + 1]; }
  int n_biases() const { return __builtin_popcount(unsigned(bias_mask)); }
  // Layer `layer`'s bias for projection bit `bit` (nullptr: none).
  const mx::array* bias(int layer, int bit) const {
    if (!(bias_mask & bit)) return nullptr;
    const size_t first = size_t(NL) * PER_LAYER + 1 + (rope_mode == 2 ? 1 : 0);
    return &w[first + size_t(layer) * n_biases() + __builtin_popcount(unsigned(bias_mask & (bit - 1)))];
  }

  std::string source() const {
    const char* T = dt == mx::bfloat16 ? "__nv_bfloat16" : "__half";
    const std::string k = std::to_string(K), i = std::to_string(I);
    const std::string heads = std::to_string(D) + ", " + std::to_string(HQ) + ", " + std::to_string(HK) + ", " +
                              std::to_string(rope_mode) + ", " + std::to_string(float_bits(log2_base)) + ", " +
                              std::to_string(float_bits(rope_scale));
    std::string s = std::string(kCiderPattnHeader) + kCiderPromptSrc;
    s += "using T = " + std::string(T) + ";\n";
    s += "extern \"C\" __global__ void cp_embed(const T* table, const unsigned* ids, T* h) { cider_prompt::embed<T, " + k +
         ">(table, ids, h); }\n";
    for (int add = 0; add < 2; add++)
      s += "extern \"C\" __global__ void cp_norm" + std::to_string(add) +
           "(T* h, const T* delta, const T* w, T* n, float eps) { cider_prompt::add_norm<T, " + k + ", " +
           (add ? "true" : "false") + ">(h, delta, w, n, eps); }\n";
    s += "extern \"C\" __global__ void cp_rope_kv(const T* qkv, const unsigned long long* kv, const int* caps, int layer, "
         "const float* freqs) { cider_prompt::rope_kv<T, " + heads + ">(qkv, kv, caps, layer, freqs); }\n";
    s += "extern \"C\" __global__ void cp_attend(const T* qkv, const unsigned long long* kv, const int* caps, int layer, "
         "const float* freqs, T* o, int lp, float scale_log2) { cider_prompt::attend<T, " + heads + ", " +
         std::to_string(qt) + ">(qkv, kv, caps, layer, freqs, o, lp, scale_log2); }\n";
    s += "extern \"C\" __global__ void cp_swiglu(const T* gu, T* act, int total) { cider_prompt::swiglu<T, " + i +
         ">(gu, act, total); }\n";
    s += "extern \"C\" __global__ void cp_fill(const T* b, T* y, int n, int total) { cider_prompt::fill<T>(b, y, n, total); }\n";
    s += "extern \"C\" __global__ void cp_last(const T* h, const T* delta, const int* last, T* const* out) { "
         "cider_prompt::last_row<T, " + k + ">(h, delta, last, out[0]); }\n";
    return "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n" + s;
  }

  void launch(CUfunction f, unsigned gx, unsigned gy, unsigned threads, std::vector<void*> params) const {
    check(driver().LaunchKernel(f, gx, gy, 1, threads, 1, 1, 0, stream, params.data(), nullptr), "a kernel launch");
  }

  // y [lp, n] = x [lp, k] times w [n, k] transposed (row-major; to cuBLAS's
  // column-major: y^T = w x^T), float32 sums.
  // With a bias: y's rows filled with it first and added in cuBLAS's
  // epilogue (beta 1), rounded once, as MLX's addmm.
  void gemm(const mx::array& x, const mx::array& wt, const mx::array* b, const mx::array& y, int lp) const {
    const int n = wt.shape(0), k = wt.shape(1);
    const int t = dt == mx::bfloat16 ? kR16BF : kR16F;
    const float one = 1.0f, beta = b ? 1.0f : 0.0f;
    if (b) {
      CUdeviceptr B = dev_ptr(*b), Y = dev_ptr(y);
      int nn = n, total = n * lp;
      launch(f_fill, unsigned((total + 255) / 256), 1, 256, {&B, &Y, &nn, &total});
    }
    blas_check(blas().GemmEx(handle, kOpT, kOpN, n, lp, k, &one, reinterpret_cast<const void*>(dev_ptr(wt)), t, k,
                             reinterpret_cast<const void*>(dev_ptr(x)), t, k, &beta,
                             reinterpret_cast<void*>(dev_ptr(y)), t, n, kCompute32F, kGemmDefault),
               "cublasGemmEx");
  }

  std::unique_ptr<Pass> capture(int lp) {
    const Driver& d = driver();
    auto p = std::make_unique<Pass>();
    p->lp = lp;
    p->layout = ParamLayout(NL, lp);
    const int NQKV = (HQ + 2 * HK) * D;
    auto h = buffer({lp, K}, dt), n = buffer({lp, K}, dt), qkv = buffer({lp, NQKV}, dt), o = buffer({lp, HQ * D}, dt),
         r = buffer({lp, K}, dt), gu = buffer({lp, 2 * I}, dt), act = buffer({lp, I}, dt);
    auto params = buffer({int(p->layout.bytes)}, mx::uint8);
    p->keep = {h, n, qkv, o, r, gu, act, params};
    // Touched once here: MLX's allocator may hand out memory whose pages
    // the first kernel to use them would fault in, in the first replay.
    for (const auto& a : p->keep) check(d.MemsetD8Async(dev_ptr(a), 0, a.nbytes(), stream), "cuMemsetD8Async");
    check(d.StreamSynchronize(stream), "cuStreamSynchronize");
    check(d.MemHostAlloc(reinterpret_cast<void**>(&p->host), p->layout.bytes, 0), "cuMemHostAlloc");
    std::memset(p->host, 0, p->layout.bytes);
    const CUdeviceptr pd = dev_ptr(params);
    CUdeviceptr kv = pd + p->layout.kv, caps = pd + p->layout.caps, last = pd + p->layout.last,
                out = pd + p->layout.out, ids = pd + p->layout.ids;
    CUdeviceptr H = dev_ptr(h), N = dev_ptr(n), QKV = dev_ptr(qkv), O = dev_ptr(o), R = dev_ptr(r), GU = dev_ptr(gu),
                ACT = dev_ptr(act), TAB = dev_ptr(table());
    CUdeviceptr FREQS = rope_mode == 2 ? dev_ptr(freqs()) : 0;
    float e = eps, scale_log2 = scale * 1.4426950408889634f;
    int total = lp * I, lpv = lp;

    check(d.StreamBeginCapture(stream, 2 /* relaxed */), "cuStreamBeginCapture");
    try {
      check(d.MemcpyHtoDAsync(pd, p->host, p->layout.bytes, stream), "the parameters' copy");
      launch(f_embed, lp, 1, 128, {&TAB, &ids, &H});
      for (int l = 0; l < NL; l++) {
        CUdeviceptr w_in = dev_ptr(weight(l, 0)), w_post = dev_ptr(weight(l, 3));
        int layer = l;
        launch(l == 0 ? f_norm0 : f_norm1, lp, 1, 256, {&H, &R, &w_in, &N, &e});
        gemm(n, weight(l, 1), bias(l, 1), qkv, lp);
        launch(f_rope_kv, lp, HK, unsigned(std::min(D / 2, 64)), {&QKV, &kv, &caps, &layer, &FREQS});
        launch(f_attend, unsigned(lp / qt), HQ, 128, {&QKV, &kv, &caps, &layer, &FREQS, &O, &lpv, &scale_log2});
        gemm(o, weight(l, 2), bias(l, 2), r, lp);
        launch(f_norm1, lp, 1, 256, {&H, &R, &w_post, &N, &e});
        gemm(n, weight(l, 4), bias(l, 4), gu, lp);
        launch(f_swiglu, unsigned((total + 255) / 256), 1, 256, {&GU, &ACT, &total});
        gemm(act, weight(l, 5), bias(l, 8), r, lp);
      }
      launch(f_last, 1, 1, 256, {&H, &R, &last, &out});
    } catch (...) {
      CUgraph dropped = nullptr;
      d.StreamEndCapture(stream, &dropped);
      if (dropped) d.GraphDestroy(dropped);
      throw;
    }
    check(d.StreamEndCapture(stream, &p->graph), "cuStreamEndCapture");
    check(d.GraphInstantiate(&p->exec, p->graph, 0), "cuGraphInstantiate");
    return p;
  }

  void setup() {
    const Driver& d = driver();
    ensure_context();
    CUmodule mod = compile(source());
    const std::pair<CUfunction*, const char*> fns[] = {
        {&f_embed, "cp_embed"},   {&f_norm0, "cp_norm0"},   {&f_norm1, "cp_norm1"}, {&f_rope_kv, "cp_rope_kv"},
        {&f_attend, "cp_attend"}, {&f_swiglu, "cp_swiglu"}, {&f_last, "cp_last"},   {&f_fill, "cp_fill"}};
    for (const auto& [f, name] : fns) check(d.ModuleGetFunction(f, mod, name), "cuModuleGetFunction");
    check(d.StreamCreate(&stream, 1 /* non-blocking */), "cuStreamCreate");
    blas_check(blas().Create(&handle), "cublasCreate");
    blas_check(blas().SetStream(handle, stream), "cublasSetStream");
    workspace = {buffer({int(WORKSPACE)}, mx::uint8)};
    blas_check(blas().SetWorkspace(handle, reinterpret_cast<void*>(dev_ptr(workspace[0])), WORKSPACE),
               "cublasSetWorkspace");
  }
};

namespace {
[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("prompt graph: " + what); }
}  // namespace

int32_t gpu_prompt_max_rows() { return 512; }
int32_t gpu_prompt_bucket() { return BUCKET; }

namespace {
StatusNote status;  // the last prompt's: on, or why not
}  // namespace

void gpu_prompt_note(rust::Str why) { status.set(std::string(why)); }

std::string gpu_prompt_status() { return status.get(); }

std::unique_ptr<PromptGraph> gpu_prompt_new(const ArrayList& weights, rust::Slice<const int32_t> dims, float eps,
                                             float attn_scale, int32_t rope_mode, float log2_base, float rope_scale) {
  const Driver& d = driver();
  if (!mx::cu::is_available()) bad("not a CUDA device");
  if (!d.error.empty()) bad(d.error);
  if (!blas().error.empty()) bad(blas().error);
  if (env_off("CIDER_GPU_KERNELS")) bad("turned off by CIDER_GPU_KERNELS=0");
  if (env_off("CIDER_GPU_PROMPT_GRAPH")) bad("turned off by CIDER_GPU_PROMPT_GRAPH=0");
  if (dims.size() != 8) bad("dims must be hidden, heads, kv heads, head dim, intermediate, layers, vocab, bias bits");
  auto g = std::make_shared<PromptGraphImpl>();
  g->K = dims[0], g->HQ = dims[1], g->HK = dims[2], g->D = dims[3], g->I = dims[4], g->NL = dims[5], g->vocab = dims[6];
  g->bias_mask = dims[7];
  g->eps = eps, g->scale = attn_scale, g->rope_mode = rope_mode, g->log2_base = log2_base, g->rope_scale = rope_scale;
  const int K = g->K, HQ = g->HQ, HK = g->HK, D = g->D, I = g->I, NL = g->NL;
  if (K < 8 || K % 8 || K > 8192) bad("hidden size " + std::to_string(K) + " is not a multiple of 8 up to 8192");
  if ((D != 64 && D != 96 && D != 128) || HK < 1 || HQ % HK) bad("heads of " + std::to_string(D) + " (64, 96 or 128 taken), " +
                                                              std::to_string(HQ) + "/" + std::to_string(HK) + " heads");
  if (I < 1 || NL < 1 || g->vocab < 1) bad("empty dimensions");
  if (rope_mode != 1 && rope_mode != 2) bad("RoPE mode must be 1 (base) or 2 (freqs)");
  if (g->bias_mask < 0 || g->bias_mask > 15) bad("bias bits must be 0 to 15");
  const size_t want = size_t(NL) * (PER_LAYER + g->n_biases()) + 1 + (rope_mode == 2 ? 1 : 0);
  if (weights.v.size() != want) bad(std::to_string(weights.v.size()) + " arrays, not " + std::to_string(want));
  g->w = weights.v;
  g->dt = g->table().dtype();
  if (g->dt != mx::bfloat16 && g->dt != mx::float16) bad("activations must be bfloat16 or float16");
  const int NQKV = (HQ + 2 * HK) * D;
  const char* names[PER_LAYER] = {"input norm", "q/k/v projection", "o projection", "post-attention norm",
                                  "gate/up projection", "down projection"};
  for (int l = 0; l < NL; l++) {
    const mx::Shape shapes[PER_LAYER] = {{K}, {NQKV, K}, {K, HQ * D}, {K}, {2 * I, K}, {K, I}};
    for (int j = 0; j < PER_LAYER; j++) {
      const auto& a = g->weight(l, j);
      if (a.shape() != shapes[j] || a.dtype() != g->dt)
        bad("layer " + std::to_string(l) + "'s " + names[j] + " is " + shape_str(a) + ", not the dense one expected");
    }
  }
  const std::pair<int, int> bias_len[] = {{1, NQKV}, {2, K}, {4, 2 * I}, {8, K}};
  for (int l = 0; l < NL; l++)
    for (const auto& [bit, n] : bias_len)
      // ([n] or, as cider keeps them, [1, n].)
      if (const mx::array* b = g->bias(l, bit); b && (b->size() != size_t(n) || b->shape(-1) != n || b->dtype() != g->dt))
        bad("layer " + std::to_string(l) + "'s bias " + std::to_string(bit) + " is " + shape_str(*b) + ", not [" +
            std::to_string(n) + "]");
  if (g->table().shape() != mx::Shape{g->vocab, K}) bad("the embedding table is " + shape_str(g->table()));
  if (rope_mode == 2 && (g->freqs().dtype() != mx::float32 || g->freqs().size() != size_t(D / 2)))
    bad("RoPE frequencies must be " + std::to_string(D / 2) + " float32 values");
  for (auto& a : g->w) {
    if (!a.is_available()) mx::eval(a);
    if (!a.flags().row_contiguous) bad("a weight is not row-contiguous");
    if (dev_ptr(a) % 16) bad("a weight does not start on a 16-byte boundary");
  }
  mx::synchronize();
  g->setup();
  auto out = std::make_unique<PromptGraph>();
  out->impl = std::move(g);
  return out;
}

ArrPtr gpu_prompt_run(PromptGraph& graph, rust::Slice<const int32_t> ids, const ArrayList& caches) {
  PromptGraphImpl& g = *graph.impl;
  const Driver& d = driver();
  const int L = int(ids.size());
  if (L < 2 || L > gpu_prompt_max_rows())
    bad(std::to_string(L) + " prompt tokens (2 to " + std::to_string(gpu_prompt_max_rows()) + " taken)");
  const int lp = (L + BUCKET - 1) / BUCKET * BUCKET;
  if (int(caches.v.size()) != g.NL) bad(std::to_string(caches.v.size()) + " caches for " + std::to_string(g.NL) + " layers");
  for (int i = 0; i < L; i++)
    if (ids[i] < 0 || ids[i] >= g.vocab)
      bad("token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) + " is outside the vocabulary of " +
          std::to_string(g.vocab));
  for (size_t l = 0; l < caches.v.size(); l++) {
    const auto& c = caches.v[l];
    if (c.dtype() != g.dt || c.ndim() != 4 || c.shape(0) != 1 || c.shape(1) != 2 * g.HK || c.shape(2) < lp ||
        c.shape(3) != g.D || !c.is_available() || !c.flags().row_contiguous)
      bad("layer " + std::to_string(l) + "'s KV buffer is " + shape_str(c) + ", not an evaluated [1, " +
          std::to_string(2 * g.HK) + ", >= " + std::to_string(lp) + ", " + std::to_string(g.D) + "] buffer");
  }
  auto it = g.passes.find(lp);
  if (it == g.passes.end()) {
    if (g.passes.size() >= KEEP) {
      auto oldest = g.passes.begin();
      for (auto j = g.passes.begin(); j != g.passes.end(); ++j)
        if (j->second->used < oldest->second->used) oldest = j;
      g.passes.erase(oldest);
    }
    it = g.passes.emplace(lp, g.capture(lp)).first;
  }
  Pass& p = *it->second;
  p.used = ++g.clock;
  auto out = buffer({1, g.K}, g.dt);
  const ParamLayout& pl = p.layout;
  for (int l = 0; l < g.NL; l++) {
    const CUdeviceptr kv = dev_ptr(caches.v[l]);
    const int cap = caches.v[l].shape(2);
    std::memcpy(p.host + pl.kv + 8 * size_t(l), &kv, 8);
    std::memcpy(p.host + pl.caps + 4 * size_t(l), &cap, 4);
  }
  const int last = L - 1;
  const CUdeviceptr o = dev_ptr(out);
  std::memcpy(p.host + pl.last, &last, 4);
  std::memcpy(p.host + pl.out, &o, 8);
  auto* id = reinterpret_cast<uint32_t*>(p.host + pl.ids);
  for (int i = 0; i < lp; i++) id[i] = i < L ? uint32_t(ids[i]) : 0u;
  // MLX's work on the caches (their zero fill) is done before the graph
  // writes them; the graph is done before MLX reads them or `out`.
  mx::synchronize();
  check(d.GraphLaunch(p.exec, g.stream), "cuGraphLaunch");
  check(d.StreamSynchronize(g.stream), "the prompt graph");
  return std::make_unique<Array>(out);
}

}  // namespace cider
