//! Safe Rust over MLX: an owned `Array`, the operations an LLM needs, memory
//! statistics and device selection. Every MLX exception becomes an `Error`.
mod array;
mod ffi;
pub mod io;

pub use array::*;
