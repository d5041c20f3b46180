//! libcider: the stable C ABI of cider. This crate only translates between C
//! and `cider_core`; it holds no behaviour a second host would have to write
//! again. `include/cider.h` is generated from these sources by cbindgen
//! (`ffi/header-gen`, configured by `ffi/cbindgen.toml`), so the doc comments
//! on the `pub` items below are the header's documentation.
//!
//! Layout: `status.rs` (status codes, the thread-local error message and the
//! panic boundary every extern body runs in), `handle.rs` (every conversion
//! between raw pointers and Rust values), then one file per area of the API (`model.rs`,
//! `text.rs`, `session.rs`, `manager.rs`).
#![allow(non_camel_case_types)]
// Extern functions take raw pointers from C and check them; marking them
// `unsafe fn` would only move the same checks into every Rust caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod handle;
mod status;
mod model;
mod text;
mod session;
mod manager;

pub use manager::*;
pub use model::*;
pub use session::*;
pub use status::*;
pub use text::*;
