//! Where the extension finds libmlx at run time. pip installs the `mlx`
//! distribution next to `cider/`, so `site-packages/cider/_native.abi3.so`
//! reaches `site-packages/mlx/lib/libmlx.*` through an rpath relative to its
//! own location: no LD_LIBRARY_PATH, and the same libmlx file that
//! `import mlx` loads, so one process never holds two copies of MLX.
//! (cider-core's link arguments do not reach dependent crates; its
//! `rustc-link-search`/`-lmlx` do, so only the rpath is ours to add.)
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let rpath = match os.as_str() {
        "macos" | "ios" => "@loader_path/../mlx/lib",
        _ => "$ORIGIN/../mlx/lib",
    };
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,{rpath}");
    println!("cargo:rerun-if-changed=build.rs");
}
