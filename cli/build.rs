//! Give the `cider` binary an rpath to the libmlx that cider-core linked
//! (cider-core's own link args do not reach dependent crates).
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
