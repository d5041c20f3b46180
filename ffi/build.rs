//! libcider needs libmlx at run time. cider-core's own rpath does not reach
//! dependents, so give libcider.so (and this crate's test binaries) an rpath
//! to the libmlx that cider-core linked, as cli/build.rs does for `cider`.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
