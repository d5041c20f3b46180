"""Compile cider's decode kernels (core/cpp/gpu_decode_src.h) with NVRTC for
an H100 (sm_90a, as MLX's JIT does) on a machine without a GPU, and print
each kernel's registers and spills: a compile error found here costs no
device time. The text around the device code imitates what MLX's
cuda_kernel generates (mlx/backend/cuda/custom_kernel.cpp): a __global__
function taking the named inputs and outputs, with the template arguments
as constexpr lines, then the one call line.

    pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12   # any venv
    python bench/nvrtc_check.py [--arch sm_90a] [--qmm]

--qmm compiles the prompt-pass kernels instead: the quantized matmul
(gpu_qmm_src.h), every tile the shim picks from, and the attention
(gpu_pattn_src.h). --prompt compiles the prompt graph's module
(gpu_prompt_src.h with the attention), as gpu_prompt.cc's source() writes it,
for a few model shapes.
"""
import argparse
import ctypes
import glob
import os
import re
import sys

import dec_src
from dec_src import fbits

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICE, CALLS = dec_src.parse(dec_src.text())

PRELUDE = """
#include <cuda_fp16.h>
#include <cuda_bf16.h>
typedef unsigned int uint32_t;
typedef int int32_t;
struct Shape { int v[8]; __device__ int operator[](int i) const { return v[i]; } };
struct Strides { long long v[8]; __device__ long long operator[](int i) const { return v[i]; } };
"""


def kernel(name, inputs, outputs, targs, call):
    """inputs/outputs: [(name, cuda type)]; targs: [(name, value)], a str value a type."""
    args = [f"const {t}* {n}" for n, t in inputs]
    for n, _ in inputs:  # MLX passes an input's shape (and ndim) where the call names them
        if f"{n}_shape" in call:
            args.append(f"const __grid_constant__ Shape {n}_shape")
        if f"{n}_strides" in call:
            args.append(f"const __grid_constant__ Strides {n}_strides")
        if f"{n}_ndim" in call:
            args.append(f"const int {n}_ndim")
    args += [f"{t}* {n}" for n, t in outputs]
    lines = [f"using {k} = {v};" if isinstance(v, str) else
             f"constexpr {'bool' if isinstance(v, bool) else 'int'} {k} = {str(v).lower() if isinstance(v, bool) else v};"
             for k, v in targs]
    return f"extern \"C\" __global__ void {name}({', '.join(args)}) {{\n" + "\n".join(lines) + "\n" + call + "\n}\n"


def variants():
    norm_in = ["h", "dl", "g", "w", "bias", "pos", "freqs", "nxt"]
    for T in ("__nv_bfloat16", "__half"):
        t = "bf16" if "bfloat" in T else "f16"
        for IF in (4, 8):
            base = [("T", T), ("K", 2048), ("S", 1), ("ADD", True), ("BIAS", False), ("D", 64), ("FREQS", True),
                    ("EPS", fbits(1e-5)), ("SCALE", fbits(1.0)), ("LOG2B", 0), ("IF", IF), ("PFL", 98304)]
            ins = [(n, T) for n in norm_in]  # (pos and freqs are cast in the call line)
            yield (f"qkv_{t}_if{IF}", ins + [("cache", T), ("prev", T)], [("hout", T), ("q", T)],
                   base + [("N", 3072), ("MODE", 1), ("ROT", 2560), ("QN", 2048)], CALLS["kCiderNormKvCall"])
            yield (f"gateup_{t}_if{IF}", ins, [("hout", T), ("y", T)],
                   base + [("N", 16384), ("MODE", 2), ("ROT", 0)], CALLS["kCiderNormCall"])
        for K, N, D, HQ, HK, S in ((2048, 2048, 64, 32, 8, 1), (2048, 2048, 64, 32, 8, 2), (4096, 3072, 128, 32, 8, 2)):
            yield (f"attn_o_{t}_K{K}_D{D}_S{S}",
                   [("q", T), ("cache", T), ("pos", "int32_t"), ("w", T), ("bias", T), ("scratch", "uint32_t"), ("nxt", T)],
                   [("y", T), ("att", T)],
                   [("T", T), ("K", K), ("N", N), ("S", S), ("BIAS", S == 2), ("D", D), ("HQ", HQ), ("HK", HK),
                    ("TMAX", 2048), ("SCALE_LOG2", fbits(0.125 * 1.4426950408889634)), ("IF", 4),
                    ("MAXH", 128), ("MS", 4), ("PFL", 65536)],
                   CALLS["kCiderAttnOCall"])
        for K, N, S, bias, IF in ((8192, 2048, 4, False, 2), (8192, 2048, 2, False, 4), (4864, 896, 8, True, 2),
                                  (8200, 2048, 1, False, 2)):
            yield (f"gemv_{t}_K{K}_S{S}_if{IF}", [("x", T), ("w", T), ("bias", T), ("nxt", "float" if bias else T)], [("y", T)],
                   [("T", T), ("K", K), ("N", N), ("S", S), ("BIAS", bias), ("IF", IF), ("PFL", 0 if bias else 98304)], CALLS["kCiderGemvCall"])
        for V, NB in ((128256, 62), (1003, 1), (40003, 19)):
            yield (f"greedy_{t}_V{V}", [("x", T), ("scratch", "uint32_t"), ("prev", "uint32_t")], [("y", "uint32_t")],
                   [("T", T), ("V", V), ("NB", NB)], CALLS["kCiderGreedyCall"])


def strings(name):
    """A core/cpp source header's named CUDA strings (kCider...) by name."""
    src = open(os.path.join(HERE, "..", "core", "cpp", name)).read()
    return dict(zip(re.findall(r'static const char\* (kCider\w+) = R"CUDA\(', src),
                    re.findall(r'R"CUDA\((.*?)\)CUDA"', src, re.S)))


QMM, PATTN = strings("gpu_qmm_src.h"), strings("gpu_pattn_src.h")


def qmm_variants():
    """(name, device text, inputs, outputs, targs, body) for the prompt matmuls."""
    # Where MLX names an input's ndim or shape in the body, it passes them.
    for T in ("__nv_bfloat16", "__half"):
        t = "bf16" if "bfloat" in T else "f16"
        for mt, nt, wn, ks in ((2, 4, 1, 8), (4, 4, 4, 1), (4, 4, 1, 4)):
            tile = [("MT", mt), ("NT", nt), ("WN", wn), ("KS", ks)]
            for bits in (4, 8):
                yield (f"qmm{bits}_{t}_{mt}{nt}{wn}{ks}", [("x", T), ("w", "uint32_t"), ("scales", T), ("biases", T)],
                       [("y", T)], [("T", T), ("BITS", bits)] + tile + [("G", 64)], QMM["kCiderQmmBody"])


def pattn_variants():
    for T in ("__nv_bfloat16", "__half"):
        t = "bf16" if "bfloat" in T else "f16"
        for D, HQ, HK, ROPE in ((64, 32, 8, 2), (96, 32, 32, 0), (128, 16, 8, 1)):
            yield (f"pattn_{t}_D{D}_rope{ROPE}", [("q", T), ("k", T), ("v", T), ("freqs", "float")], [("o", T)],
                   [("T", T), ("D", D), ("QT", 16), ("HQ", HQ), ("HK", HK), ("ROPE", ROPE),
                    ("LOG2B", fbits(13.3)), ("PSCALE", fbits(1.0)), ("SCALE", fbits(0.18))],
                   PATTN["kCiderPattnBody"])


PROMPT = strings("gpu_prompt_src.h")


def prompt_modules():
    """(name, whole source) as PromptGraphImpl::source() writes them."""
    for T in ("__nv_bfloat16", "__half"):
        for K, I, D, HQ, HK, ROPE in ((2048, 8192, 64, 32, 8, 2), (896, 4864, 64, 14, 2, 1), (3072, 8192, 96, 32, 32, 1)):
            heads = f"{D}, {HQ}, {HK}, {ROPE}, {fbits(13.3)}, {fbits(1.0)}"
            s = PATTN["kCiderPattnHeader"] + PROMPT["kCiderPromptSrc"] + f"using T = {T};\n"
            s += f'extern "C" __global__ void cp_embed(const T* table, const unsigned* ids, T* h) {{ cider_prompt::embed<T, {K}>(table, ids, h); }}\n'
            for add in (0, 1):
                s += (f'extern "C" __global__ void cp_norm{add}(T* h, const T* delta, const T* w, T* n, float eps) '
                      f'{{ cider_prompt::add_norm<T, {K}, {"true" if add else "false"}>(h, delta, w, n, eps); }}\n')
            s += (f'extern "C" __global__ void cp_rope_kv(const T* qkv, const unsigned long long* kv, const int* caps, int layer, '
                  f'const float* freqs) {{ cider_prompt::rope_kv<T, {heads}>(qkv, kv, caps, layer, freqs); }}\n')
            s += (f'extern "C" __global__ void cp_attend(const T* qkv, const unsigned long long* kv, const int* caps, int layer, '
                  f'const float* freqs, T* o, int lp, float scale_log2) {{ cider_prompt::attend<T, {heads}, 8>(qkv, kv, caps, layer, freqs, o, lp, scale_log2); }}\n')
            s += f'extern "C" __global__ void cp_swiglu(const T* gu, T* act, int total) {{ cider_prompt::swiglu<T, {I}>(gu, act, total); }}\n'
            s += 'extern "C" __global__ void cp_fill(const T* b, T* y, int n, int total) { cider_prompt::fill<T>(b, y, n, total); }\n'
            s += (f'extern "C" __global__ void cp_last(const T* h, const T* delta, const int* last, T* const* out) '
                  f'{{ cider_prompt::last_row<T, {K}>(h, delta, last, out[0]); }}\n')
            yield f"prompt_{T}_K{K}_D{D}", "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n" + s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--qmm", action="store_true", help="the prompt kernels (gpu_qmm_src.h, gpu_pattn_src.h)")
    ap.add_argument("--prompt", action="store_true", help="the prompt graph's module (gpu_prompt_src.h)")
    a = ap.parse_args()
    global DEVICE
    if a.qmm:
        DEVICE = QMM["kCiderQmmHeader"] + PATTN["kCiderPattnHeader"]
    import nvidia.cuda_nvrtc, nvidia.cuda_runtime  # noqa: E401  (pip packages named in the docstring)
    lib = sorted(glob.glob(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib", "libnvrtc.so*")))[0]
    inc = os.path.join(list(nvidia.cuda_runtime.__path__)[0], "include")
    nvrtc = ctypes.CDLL(lib)
    failed = 0
    if a.prompt:
        units = list(prompt_modules())
    else:
        units = [(name, PRELUDE + DEVICE + kernel(name, ins, outs, targs, call))
                 for name, ins, outs, targs, call in ([*qmm_variants(), *pattn_variants()] if a.qmm else variants())]
    for name, src in units:
        prog = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(), 0, None, None) == 0
        opts = [f"--gpu-architecture={a.arch}", f"--include-path={inc}", "--device-as-default-execution-space",
                "--ptxas-options=-v", "--std=c++17"]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace")
        if rc != 0:
            failed += 1
            print(f"{name}: FAILED\n{text}")
        else:
            regs = re.findall(r"Used (\d+) registers", text)
            spill = re.findall(r"(\d+) bytes spill stores", text)
            smem = re.findall(r"(\d+) bytes smem", text)
            print(f"{name}: registers {regs} spill stores {spill} smem {smem}")
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
