//! The cxx bridge to cpp/shim.h. Raw and unsafe-free by cxx's design; the safe
//! API lives in `array.rs`.
#[cxx::bridge(namespace = "cider")]
pub(crate) mod ffi {
    unsafe extern "C++" {
        include!("cider-core/cpp/shim.h");

        type Array;
        type ArrayList;
        type SafeTensors;

        fn arr_from_f32(data: &[f32], shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn arr_from_i32(data: &[i32], shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn arr_from_u32(data: &[u32], shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn arr_scalar(v: f64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn arr_zeros(shape: &[i32], dtype: u8) -> Result<UniquePtr<Array>>;
        fn arr_full(shape: &[i32], v: f64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn arr_arange(start: i32, stop: i32, dtype: u8) -> Result<UniquePtr<Array>>;
        fn arr_clone(a: &Array) -> UniquePtr<Array>;
        fn arr_shape(a: &Array) -> Vec<i32>;
        fn arr_dtype(a: &Array) -> u8;
        fn arr_nbytes(a: &Array) -> usize;
        fn arr_size(a: &Array) -> usize;
        fn arr_to_f32(a: &Array) -> Result<Vec<f32>>;
        fn arr_to_i32(a: &Array) -> Result<Vec<i32>>;
        fn arr_item_i64(a: &Array) -> Result<i64>;

        fn list_new() -> UniquePtr<ArrayList>;
        fn list_push(l: Pin<&mut ArrayList>, a: &Array);
        fn list_len(l: &ArrayList) -> usize;
        fn list_get(l: &ArrayList, i: usize) -> Result<UniquePtr<Array>>;
        fn eval_list(l: &ArrayList) -> Result<()>;
        fn async_eval_list(l: &ArrayList) -> Result<()>;
        fn synchronize() -> Result<()>;
        fn active_tasks() -> i32;
        fn cpu_workers(n: i32) -> Result<i32>;
        fn cpu_kernels_status() -> String;
        fn cpu_kernels_off_reason(dtype: u8) -> Result<String>;
        fn gpu_kernels_status() -> String;
        fn cpu_kernels_enable(on: bool);
        fn gpu_kernels_enable(on: bool);
        fn gpu_decode_ready(dtype: u8) -> Result<bool>;
        #[allow(clippy::too_many_arguments)]
        fn gpu_norm_gemv(h: &Array, dl: &Array, has_dl: bool, g: &Array, eps: f32, w: &Array, bias: &Array,
                         has_bias: bool, mode: i32, rot: i32, head_dim: i32, pos: &Array, freqs: &Array,
                         has_freqs: bool, log2_base: f32, rope_scale: f32, cache: &Array, has_cache: bool,
                         qn: i32, prev: &Array, pos_value: i32, next: &Array, has_next: bool) -> Result<UniquePtr<ArrayList>>;
        fn gpu_greedy_scratch() -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn gpu_decode_check(dtype: u8, k: i32, n: i32, mode: i32, has_dl: bool, has_bias: bool, rot: i32, head_dim: i32,
                            has_freqs: bool, log2_base: f32, rope_scale: f32, eps: f32, qn: i32) -> Result<String>;
        fn gpu_greedy_check(dtype: u8, v: i32) -> Result<String>;
        fn gpu_decode_self_test(dtype: u8) -> Result<String>;
        fn gpu_greedy(logits: &Array, scratch: &Array, prev: &Array) -> Result<UniquePtr<Array>>;
        fn gpu_attn_o_max_positions() -> i32;
        fn gpu_attn_o_check(dtype: u8, heads: i32, kv_heads: i32, head_dim: i32, n: i32, has_bias: bool, scale: f32) -> Result<String>;
        #[allow(clippy::too_many_arguments)]
        fn gpu_attn_o(q: &Array, cache: &Array, pos: &Array, pos_value: i32, w: &Array, bias: &Array, has_bias: bool,
                      scale: f32, next: &Array, has_next: bool) -> Result<UniquePtr<Array>>;
        fn gpu_gemv_check(dtype: u8, k: i32, n: i32, has_bias: bool) -> Result<String>;
        type DecodeGraph;
        fn gpu_graph_available() -> bool;
        fn gpu_graph_unavailable_reason() -> String;
        fn gpu_graph_trace(on: bool);
        #[allow(clippy::too_many_arguments)]
        fn gpu_graph_new(table: &Array, h0: &Array, pos: &Array, token: &Array, base: i32, steps: i32, layers: i32)
            -> Result<UniquePtr<DecodeGraph>>;
        fn gpu_graph_launch(g: Pin<&mut DecodeGraph>) -> Result<u64>;
        fn gpu_graph_token(g: Pin<&mut DecodeGraph>, k: u64) -> Result<u32>;
        fn gpu_graph_finish(g: Pin<&mut DecodeGraph>) -> Result<u64>;
        fn gpu_graph_note(why: &str);
        type PromptGraph;
        #[allow(clippy::too_many_arguments)]
        fn gpu_prompt_new(weights: &ArrayList, dims: &[i32], eps: f32, attn_scale: f32, rope_mode: i32, log2_base: f32,
                          rope_scale: f32) -> Result<UniquePtr<PromptGraph>>;
        fn gpu_prompt_run(g: Pin<&mut PromptGraph>, ids: &[i32], caches: &ArrayList) -> Result<UniquePtr<Array>>;
        fn gpu_prompt_max_rows() -> i32;
        fn gpu_prompt_bucket() -> i32;
        fn gpu_prompt_note(why: &str);
        fn gpu_kernels_wanted() -> bool;
        fn gpu_graph_unroll() -> i32;
        fn gpu_gemv(x: &Array, w: &Array, bias: &Array, has_bias: bool, next: &Array, has_next: bool) -> Result<UniquePtr<Array>>;
        fn graph_census(l: &ArrayList) -> Vec<String>;
        fn eval_one(a: &Array) -> Result<()>;

        fn astype(a: &Array, dtype: u8) -> Result<UniquePtr<Array>>;
        fn reshape(a: &Array, shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn transpose(a: &Array, axes: &[i32]) -> Result<UniquePtr<Array>>;
        fn add(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn subtract(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn multiply(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn divide(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn maximum(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn less(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn greater(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn power(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn greater_equal(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn logical_and(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn where_(c: &Array, a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn negative(a: &Array) -> Result<UniquePtr<Array>>;
        fn sigmoid(a: &Array) -> Result<UniquePtr<Array>>;
        fn exp(a: &Array) -> Result<UniquePtr<Array>>;
        fn log(a: &Array) -> Result<UniquePtr<Array>>;
        fn matmul(a: &Array, b: &Array, worker: i32) -> Result<UniquePtr<Array>>;
        fn addmm(c: &Array, a: &Array, b: &Array, worker: i32) -> Result<UniquePtr<Array>>;
        fn swiglu(gate: &Array, x: &Array) -> Result<UniquePtr<Array>>;

        fn sum_axis(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn max_axis(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn logsumexp_axis(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn softmax_axis(a: &Array, axis: i32, precise: bool) -> Result<UniquePtr<Array>>;
        fn argmax_axis(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn take(a: &Array, idx: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn take_along_axis(a: &Array, idx: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn put_along_axis(a: &Array, idx: &Array, vals: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn contiguous(a: &Array) -> Result<UniquePtr<Array>>;
        fn concatenate2(a: &Array, b: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn concatenate_list(l: &ArrayList, axis: i32) -> Result<UniquePtr<Array>>;
        fn slice(a: &Array, start: &[i32], stop: &[i32]) -> Result<UniquePtr<Array>>;
        fn slice_update(src: &Array, upd: &Array, start: &[i32], stop: &[i32]) -> Result<UniquePtr<Array>>;
        fn sort_axis(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn argsort_axis(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn argpartition_axis(a: &Array, kth: i32, axis: i32) -> Result<UniquePtr<Array>>;
        fn cumsum_axis(a: &Array, axis: i32, reverse: bool, inclusive: bool) -> Result<UniquePtr<Array>>;

        #[allow(clippy::too_many_arguments)]
        fn quantized_matmul(x: &Array, w: &Array, scales: &Array, biases: &Array, has_biases: bool,
            transpose: bool, group_size: i32, bits: i32, mode: &str, worker: i32) -> Result<UniquePtr<Array>>;
        fn quantize(w: &Array, group_size: i32, bits: i32, mode: &str) -> Result<UniquePtr<ArrayList>>;
        fn dequantize(w: &Array, scales: &Array, biases: &Array, has_biases: bool, group_size: i32,
            bits: i32, mode: &str) -> Result<UniquePtr<Array>>;

        fn rms_norm(x: &Array, w: &Array, eps: f32) -> Result<UniquePtr<Array>>;
        fn rope(x: &Array, dims: i32, traditional: bool, base: f32, scale: f32, offset: i32) -> Result<UniquePtr<Array>>;
        fn rope_freqs(x: &Array, dims: i32, traditional: bool, scale: f32, offset: i32, freqs: &Array) -> Result<UniquePtr<Array>>;
        fn sdpa(q: &Array, k: &Array, v: &Array, scale: f32, mask_mode: &str, mask: &Array, has_mask: bool) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn gpu_prefill_attention(q: &Array, k: &Array, v: &Array, scale: f32, rope_mode: i32, freqs: &Array,
            log2_base: f32, rope_scale: f32) -> Result<UniquePtr<Array>>;

        fn random_key(seed: u64) -> Result<UniquePtr<Array>>;
        fn random_split(key: &Array) -> Result<UniquePtr<ArrayList>>;
        fn categorical(logits: &Array, key: &Array) -> Result<UniquePtr<Array>>;

        fn load_safetensors(path: &str) -> Result<UniquePtr<SafeTensors>>;
        fn st_keys(st: &SafeTensors) -> Vec<String>;
        fn st_get(st: &SafeTensors, name: &str) -> Result<UniquePtr<Array>>;
        fn st_metadata(st: &SafeTensors) -> Vec<String>;
        fn save_safetensors(path: &str, names: &[String], arrays: &ArrayList) -> Result<()>;

        fn get_active_memory() -> usize;
        fn get_peak_memory() -> usize;
        fn reset_peak_memory();
        fn get_cache_memory() -> usize;
        fn set_memory_limit(limit: usize) -> usize;
        fn get_memory_limit() -> usize;
        fn set_cache_limit(limit: usize) -> usize;
        fn clear_cache();
        fn gpu_available() -> bool;
        fn gpu_is_cuda() -> bool;
        fn set_default_device(gpu: bool) -> Result<()>;
        fn default_device_is_gpu() -> bool;
        fn mlx_version() -> String;
    }
}
