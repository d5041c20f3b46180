//! Compiles cider's C++ shim against the MLX headers of an installed MLX and
//! links the official libmlx dynamically, with an rpath so no
//! LD_LIBRARY_PATH is needed. MLX is found through `MLX_DIR` (a folder with
//! `include/` and `lib/`), else the `mlx` Python package of `$CIDER_PYTHON`,
//! the active virtualenv, the workspace's `.venv`, or `python3`.
use std::path::{Path, PathBuf};
use std::process::Command;

fn python_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("CIDER_PYTHON") {
        v.push(PathBuf::from(p));
    }
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        v.push(Path::new(&venv).join("bin/python"));
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    v.push(manifest.join("../.venv/bin/python"));
    v.push(PathBuf::from("python3"));
    v
}

fn find_mlx() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("MLX_DIR") {
        let p = PathBuf::from(dir);
        if p.join("include/mlx/mlx.h").exists() {
            return Ok(p);
        }
        return Err(format!("MLX_DIR={} has no include/mlx/mlx.h", p.display()));
    }
    let mut tried = Vec::new();
    for py in python_candidates() {
        let out = Command::new(&py)
            .args(["-c", "import mlx; print(list(mlx.__path__)[0])"])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                if p.join("include/mlx/mlx.h").exists() {
                    return Ok(p);
                }
                tried.push(format!("{}: {} has no include/mlx/mlx.h", py.display(), p.display()));
            }
            _ => tried.push(format!("{}: no `mlx` package", py.display())),
        }
    }
    Err(format!(
        "cider needs MLX. Install it with `pip install \"mlx[cpu]==0.32.4\"` (Linux) or \
         `pip install mlx` (macOS), or set MLX_DIR to a folder holding include/mlx and lib/. Tried: {}",
        tried.join("; ")
    ))
}

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=CIDER_PYTHON");
    println!("cargo:rerun-if-changed=cpp/shim.h");
    println!("cargo:rerun-if-changed=cpp/shim.cc");
    println!("cargo:rerun-if-changed=cpp/cpu_linear.cc");
    println!("cargo:rerun-if-changed=cpp/gpu_qmm.cc");
    println!("cargo:rerun-if-changed=cpp/gpu_qmm_src.h");
    println!("cargo:rerun-if-changed=cpp/gpu_pattn.cc");
    println!("cargo:rerun-if-changed=cpp/gpu_pattn_src.h");
    println!("cargo:rerun-if-changed=cpp/gpu_decode.cc");
    println!("cargo:rerun-if-changed=cpp/gpu_decode_src.h");
    println!("cargo:rerun-if-changed=cpp/gpu_trace.h");
    println!("cargo:rerun-if-changed=cpp/gpu_graph.cc");
    println!("cargo:rerun-if-changed=cpp/gpu_driver.h");
    println!("cargo:rerun-if-changed=cpp/gpu_prompt.cc");
    println!("cargo:rerun-if-changed=cpp/gpu_prompt_src.h");
    println!("cargo:rerun-if-changed=src/mlx/ffi.rs");
    let mlx = match find_mlx() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            panic!("{e}");
        }
    };
    let inc = mlx.join("include");
    let lib = mlx.join("lib");
    cxx_build::bridge("src/mlx/ffi.rs")
        .file("cpp/shim.cc")
        .file("cpp/cpu_linear.cc")
        .file("cpp/gpu_qmm.cc")
        .file("cpp/gpu_pattn.cc")
        .file("cpp/gpu_decode.cc")
        .file("cpp/gpu_graph.cc")
        .file("cpp/gpu_prompt.cc")
        .std("c++20")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        // The CPU kernels reproduce MLX's roundings: a multiply and an add
        // must never be fused into one (cpu_linear.cc, float32).
        .flag_if_supported("-ffp-contract=off")
        .include(&inc)
        .compile("cider_mlx_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    // For this crate's own tests; dependents add their own rpath from DEP_MLX_LIBDIR.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:libdir={}", lib.display());
    println!("cargo:include={}", inc.display());
}
