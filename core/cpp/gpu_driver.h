// The CUDA driver API and NVRTC as cider's CUDA graphs use them
// (gpu_graph.cc: decode steps; gpu_prompt.cc: prompt passes): looked up at
// run time (both are already loaded by MLX's CUDA build), so nothing links
// against CUDA and the files build, inert, on macOS and Linux CPU.
#pragma once

#include <string>

#include "mlx/array.h"

namespace cider::cu {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;
using CUevent = struct CUevent_st*;
using CUgraph = struct CUgraph_st*;
using CUgraphExec = struct CUgraphExec_st*;
using nvrtcProgram = struct nvrtcProgram_st*;
// cuLaunchKernelEx's configuration and one launch attribute (cuda.h's
// CUlaunchConfig and CUlaunchAttribute, same layout).
struct LaunchAttr {
  int id;
  char pad[4];
  union {
    char bytes[64];
    int value;
    void* align;
  } v;
};
static_assert(sizeof(LaunchAttr) == 72, "CUlaunchAttribute's layout");
struct LaunchConfig {
  unsigned grid[3], block[3], shared;
  CUstream stream;
  LaunchAttr* attrs;
  unsigned n_attrs;
};
constexpr int kAttrProgrammaticSerialization = 6;  // CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION

// The driver calls used, by their exported names (the versioned ones where
// cuda.h maps a name to a _v2 symbol).
struct Driver {
  CUresult (*Init)(unsigned);
  CUresult (*CtxGetCurrent)(CUcontext*);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*CtxGetDevice)(CUdevice*);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*DeviceGetAttribute)(int*, int, CUdevice);
  CUresult (*ModuleLoadData)(CUmodule*, const void*);
  CUresult (*ModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*StreamCreate)(CUstream*, unsigned);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*StreamSynchronize)(CUstream);
  CUresult (*StreamBeginCapture)(CUstream, int);
  CUresult (*StreamEndCapture)(CUstream, CUgraph*);
  CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                           void**, void**);
  CUresult (*GraphInstantiate)(CUgraphExec*, CUgraph, unsigned long long);
  CUresult (*GraphLaunch)(CUgraphExec, CUstream);
  CUresult (*GraphDestroy)(CUgraph);
  CUresult (*GraphExecDestroy)(CUgraphExec);
  CUresult (*EventCreate)(CUevent*, unsigned);
  CUresult (*EventRecord)(CUevent, CUstream);
  CUresult (*EventSynchronize)(CUevent);
  CUresult (*EventQuery)(CUevent);
  CUresult (*EventDestroy)(CUevent);
  CUresult (*MemHostAlloc)(void**, size_t, unsigned);
  CUresult (*MemHostGetDevicePointer)(CUdeviceptr*, void*, unsigned);
  CUresult (*MemFreeHost)(void*);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
  CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
  CUresult (*GetErrorString)(CUresult, const char**);
  // (CUDA 12: with it the graph's kernels overlap; without, they do not.)
  CUresult (*LaunchKernelEx)(const LaunchConfig*, CUfunction, void**, void**) = nullptr;
  // NVRTC
  int (*CreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*, const char* const*);
  int (*CompileProgram)(nvrtcProgram, int, const char* const*);
  int (*GetProgramLogSize)(nvrtcProgram, size_t*);
  int (*GetProgramLog)(nvrtcProgram, char*);
  int (*GetPTXSize)(nvrtcProgram, size_t*);
  int (*GetPTX)(nvrtcProgram, char*);
  int (*DestroyProgram)(nvrtcProgram*);
  std::string include_dir;  // CUDA's headers (cuda_bf16.h), for NVRTC
  std::string error;        // why the above could not be had
};

// The driver and NVRTC, looked up once (error says why not, else "").
const Driver& driver();
// Throws "CUDA graph: <what> failed: <the driver's message>" unless r is 0.
void check(CUresult r, const char* what);
// The device address of an evaluated MLX array (see gpu_graph.cc).
CUdeviceptr dev_ptr(const mlx::core::array& a);
// The current context's device's compute capability.
struct Capability {
  int major = 0, minor = 0;
};
Capability capability(const Driver& d);
// PTX for this device from CUDA source, loaded; once per distinct source.
CUmodule compile(const std::string& src);
// Makes a context current on this thread (MLX's primary one).
void ensure_context();

}  // namespace cider::cu
