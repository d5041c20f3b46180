use super::ffi::ffi;
use crate::error::{Error, Result};
use cxx::UniquePtr;

/// Element types, numbered as in cpp/shim.cc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool = 0,
    U8 = 1,
    U16 = 2,
    U32 = 3,
    U64 = 4,
    I8 = 5,
    I16 = 6,
    I32 = 7,
    I64 = 8,
    F16 = 9,
    F32 = 10,
    BF16 = 11,
    C64 = 12,
    F64 = 13,
}

impl Dtype {
    fn from_code(c: u8) -> Dtype {
        use Dtype::*;
        match c {
            0 => Bool,
            1 => U8,
            2 => U16,
            3 => U32,
            4 => U64,
            5 => I8,
            6 => I16,
            7 => I32,
            8 => I64,
            9 => F16,
            10 => F32,
            11 => BF16,
            12 => C64,
            _ => F64,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::BF16 | Dtype::F64)
    }
    pub fn size(self) -> usize {
        use Dtype::*;
        match self {
            Bool | U8 | I8 => 1,
            U16 | I16 | F16 | BF16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | C64 => 8,
        }
    }
    /// Parse the names used by config.json (`torch_dtype`) and safetensors.
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "float32" | "F32" => Dtype::F32,
            "float16" | "F16" => Dtype::F16,
            "bfloat16" | "BF16" => Dtype::BF16,
            "float64" | "F64" => Dtype::F64,
            "int8" | "I8" => Dtype::I8,
            "int16" | "I16" => Dtype::I16,
            "int32" | "I32" => Dtype::I32,
            "int64" | "I64" => Dtype::I64,
            "uint8" | "U8" => Dtype::U8,
            "uint16" | "U16" => Dtype::U16,
            "uint32" | "U32" => Dtype::U32,
            "uint64" | "U64" => Dtype::U64,
            "bool" | "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            Bool => "bool",
            U8 => "uint8",
            U16 => "uint16",
            U32 => "uint32",
            U64 => "uint64",
            I8 => "int8",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            F16 => "float16",
            F32 => "float32",
            BF16 => "bfloat16",
            C64 => "complex64",
            F64 => "float64",
        }
    }
}

/// An owned handle to an MLX array (lazy: nothing is computed until `eval`).
pub struct Array {
    pub(crate) inner: UniquePtr<ffi::Array>,
}

// SAFETY: an MLX array is a shared_ptr to immutable graph data; handing the
// handle to another thread is sound. Concurrent evaluation of graphs that
// share nodes is serialised by callers (see `generate::MLX_LOCK`), so Array is
// Send but deliberately not Sync.
unsafe impl Send for Array {}

impl Clone for Array {
    fn clone(&self) -> Self {
        Array { inner: ffi::arr_clone(&self.inner) }
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({:?}, {:?})", self.shape(), self.dtype())
    }
}

fn wrap(r: std::result::Result<UniquePtr<ffi::Array>, cxx::Exception>) -> Result<Array> {
    Ok(Array { inner: r? })
}

/// An MLX list holding `arrays`, for the calls that take several at once.
fn list_of(arrays: &[&Array]) -> UniquePtr<ffi::ArrayList> {
    let mut l = ffi::list_new();
    for a in arrays {
        ffi::list_push(l.pin_mut(), &a.inner);
    }
    l
}

/// Evaluate several outputs in one graph.
pub fn eval(arrays: &[&Array]) -> Result<()> {
    ffi::eval_list(&list_of(arrays))?;
    Ok(())
}

/// The primitive names of the graph nodes an eval of `arrays` would run.
pub fn graph_census(arrays: &[&Array]) -> Vec<String> {
    ffi::graph_census(&list_of(arrays))
}

/// Start computing `arrays` on the device and return at once, so the host can
/// build the next step's graph meanwhile.
pub fn async_eval(arrays: &[&Array]) -> Result<()> {
    ffi::async_eval_list(&list_of(arrays))?;
    Ok(())
}

/// Wait until the default stream and the CPU worker streams have no work
/// left (see `generate::Drain` for why a generation must not return before).
pub fn synchronize() -> Result<()> {
    ffi::synchronize()?;
    Ok(())
}

/// Makes sure there are `n` CPU streams for `*_on` ops to run on (worker 0 is
/// the default stream; the others are made once per process and shared) and
/// returns how many there are. MLX runs one stream's kernels in order on one
/// thread, so more workers let independent kernels use more cores.
pub fn cpu_workers(n: usize) -> Result<usize> {
    Ok(ffi::cpu_workers(n.min(i32::MAX as usize) as i32)? as usize)
}

/// Whether cider's own CPU kernels for bf16, f16 and f32 projections are in
/// use: "on", "off: <why>", or which types are on and why the others are off
/// (see core/cpp/cpu_linear.cc; decided on first use, per type).
pub fn cpu_kernels_status() -> String {
    ffi::cpu_kernels_status()
}

/// "" when cider's CPU kernels compute the projections of `dtype`, else why
/// not (the per-type part of `cpu_kernels_status`).
pub fn cpu_kernels_off_reason(dtype: Dtype) -> String {
    ffi::cpu_kernels_off_reason(dtype as u8).unwrap_or_else(|e| e.what().to_string())
}

/// Whether cider's quantized prompt matmul runs on the GPU ("not used yet" until
/// a 4/8-bit model's prompt has run there; see core/cpp/gpu_qmm.cc).
pub fn gpu_kernels_status() -> String {
    ffi::gpu_kernels_status()
}

/// `false`: graphs built from now on use MLX's own ops for projections
/// instead of cider's CPU kernels (the same bits; for comparisons).
pub fn set_cpu_kernels(on: bool) {
    ffi::cpu_kernels_enable(on)
}

/// `false`: graphs built from now on use MLX's quantized_matmul on the GPU
/// instead of cider's prompt kernel (for comparisons; results agree to
/// rounding, not bits).
pub fn set_gpu_kernels(on: bool) {
    ffi::gpu_kernels_enable(on)
}

/// Whether cider's GPU kernels are wanted (`set_gpu_kernels`).
pub fn gpu_kernels_on() -> bool {
    ffi::gpu_kernels_wanted()
}

/// Whether cider's fused decode kernels (core/cpp/gpu_decode.cc) can run
/// for activations of `dtype` on the default device: a GPU with CUDA, and
/// kernels not turned off. Each kernel configuration is also checked against
/// MLX's ops before its first use: see `gpu_decode_check`.
pub fn gpu_decode_ready(dtype: Dtype) -> bool {
    ffi::gpu_decode_ready(dtype as u8).unwrap_or(false)
}

fn check_result(why: String) -> Result<()> {
    if why.is_empty() {
        Ok(())
    } else {
        Err(Error::backend(why))
    }
}

/// Checks, once per process, the fused kernel that `gpu_norm_gemv` runs for
/// these shapes (an [n, k] weight, a residual add or not, a bias or not,
/// this epilogue, the KV variant when `qn` > 0) against MLX's ops on random
/// inputs; compiles only that kernel. Err says why it is not used.
#[allow(clippy::too_many_arguments)]
pub fn gpu_decode_check(dtype: Dtype, k: i32, n: i32, has_dl: bool, has_bias: bool, eps: f32, epi: &DecodeEpilogue, qn: i32) -> Result<()> {
    let (mode, rot, head_dim, has_freqs, log2_base, scale) = match epi {
        DecodeEpilogue::Rope { rot, head_dim, freqs, log2_base, scale, .. } => (1, *rot, *head_dim, freqs.is_some(), *log2_base, *scale),
        DecodeEpilogue::Swiglu => (2, 0, 2, false, 0.0, 1.0),
        DecodeEpilogue::Plain => (0, 0, 2, false, 0.0, 1.0),
    };
    check_result(ffi::gpu_decode_check(dtype as u8, k, n, mode, has_dl, has_bias, rot, head_dim, has_freqs, log2_base, scale, eps, qn)?)
}

/// Checks, once per process, the GPU greedy kernel for rows of `v` logits
/// against MLX's ops. Err says why it is not used.
pub fn gpu_greedy_check(dtype: Dtype, v: i32) -> Result<()> {
    check_result(ffi::gpu_greedy_check(dtype as u8, v)?)
}

/// The fused kernels' edge cases against MLX's ops (for tests: compiles
/// about ten kernels). Err says what differs.
pub fn gpu_decode_self_test(dtype: Dtype) -> Result<()> {
    check_result(ffi::gpu_decode_self_test(dtype as u8)?)
}

/// Checks, once per process, cider's attention + o projection kernel for
/// these shapes (`heads` query heads over `kv_heads`, `head_dim`, an o
/// projection of `n` rows, a bias or not, this softmax scale) against MLX's
/// attention and matmul. Err says why it is not used.
pub fn gpu_attn_o_check(dtype: Dtype, heads: i32, kv_heads: i32, head_dim: i32, n: i32, has_bias: bool, scale: f32) -> Result<()> {
    check_result(ffi::gpu_attn_o_check(dtype as u8, heads, kv_heads, head_dim, n, has_bias, scale)?)
}

/// The most positions `gpu_attn_o` attends over (pos_value + 1).
pub fn gpu_attn_o_max_positions() -> i32 {
    ffi::gpu_attn_o_max_positions()
}

/// One position's attention and o projection on the GPU, in one kernel:
/// softmax(scale * q . keys) . values over positions 0..=pos_value of the
/// cache's joint buffer `cache` [1, 2 kv_heads, capacity, head_dim] (keys'
/// heads, then values'), times w.T (+ bias): q [1, heads, 1, head_dim] ->
/// [1, N]. `pos` holds `pos_value` (it may not be computed yet). `next`: the
/// weights the next kernel reads (asked of L2 at the end: see `gpu_gemv`).
/// Check `gpu_attn_o_check` first; arguments that do not fit are an error.
#[allow(clippy::too_many_arguments)]
pub fn gpu_attn_o(q: &Array, cache: &Array, pos: &Array, pos_value: i32, w: &Array, bias: Option<&Array>, scale: f32, next: Option<&Array>) -> Result<Array> {
    wrap(ffi::gpu_attn_o(&q.inner, &cache.inner, &pos.inner, pos_value, &w.inner, &bias.unwrap_or(w).inner, bias.is_some(), scale, &next.unwrap_or(w).inner, next.is_some()))
}

/// Checks, once per process, cider's gemv for a one-row product with a
/// [n, k] weight (a bias or not) against MLX's matmul. Err says why it is
/// not used.
pub fn gpu_gemv_check(dtype: Dtype, k: i32, n: i32, has_bias: bool) -> Result<()> {
    check_result(ffi::gpu_gemv_check(dtype as u8, k, n, has_bias)?)
}

/// x [1, K] times w [N, K] transposed (+ bias) -> [1, N] on the GPU with
/// cider's gemv (the MLP's down projection in decode steps). `next`: the
/// weights the kernel after this one reads, of which this one asks L2 for
/// the first few megabytes once its own loads are in (CIDER_GPU_PF;
/// `l2_share` in core/cpp/gpu_decode_src.h says why). Check `gpu_gemv_check` first;
/// arguments that do not fit are an error.
pub fn gpu_gemv(x: &Array, w: &Array, bias: Option<&Array>, next: Option<&Array>) -> Result<Array> {
    wrap(ffi::gpu_gemv(&x.inner, &w.inner, &bias.unwrap_or(w).inner, bias.is_some(), &next.unwrap_or(w).inner, next.is_some()))
}

/// What the fused decode kernel does after its matrix-vector product.
pub enum DecodeEpilogue<'a> {
    /// RoPE on the first `rot` outputs, heads of `head_dim`, at position
    /// `scale * pos`, frequencies `freqs` or base `2^log2_base`:
    /// y [1, N / head_dim, 1, head_dim].
    /// `pos` holds `pos_value` (it may not be computed yet).
    Rope { rot: i32, head_dim: i32, pos: &'a Array, pos_value: i32, freqs: Option<&'a Array>, log2_base: f32, scale: f32 },
    /// silu(first half) * second half: y [1, N / 2].
    Swiglu,
    /// Nothing more: y [1, N] (the head's logits).
    Plain,
}

/// Fused one-row step on the GPU: hs = h (+ dl); y = epilogue(rms_norm(hs,
/// g, eps) @ w.T (+ bias)). Returns (hs, y). With `kv` = (cache, qn, prev)
/// (RoPE only), y is the first qn outputs as q [1, qn / head_dim, 1,
/// head_dim], and the rest (keys, then values) are written in place into
/// `cache` [1, heads, capacity, head_dim] at the RoPE position, after
/// `prev` (an output of the last kernel that wrote there) is computed: only
/// the cache's owner may pass it, evaluated and with room (see
/// `KvCache::joint_slot`). `next`: the weights the next kernel reads (asked
/// of L2 at the end: see `gpu_gemv`).
/// Check `gpu_decode_ready` first; arguments that do not fit are an error,
/// not a fallback.
#[allow(clippy::too_many_arguments)]
pub fn gpu_norm_gemv(
    h: &Array,
    dl: Option<&Array>,
    g: &Array,
    eps: f32,
    w: &Array,
    bias: Option<&Array>,
    epi: &DecodeEpilogue,
    kv: Option<(&Array, i32, &Array)>,
    next: Option<&Array>,
) -> Result<(Array, Array)> {
    let (mode, rot, head_dim, pos, pos_value, freqs, log2_base, scale) = match epi {
        DecodeEpilogue::Rope { rot, head_dim, pos, pos_value, freqs, log2_base, scale } => {
            (1, *rot, *head_dim, *pos, *pos_value, *freqs, *log2_base, *scale)
        }
        DecodeEpilogue::Swiglu => (2, 0, 2, h, 0, None, 0.0, 1.0),
        DecodeEpilogue::Plain => (0, 0, 2, h, 0, None, 0.0, 1.0),
    };
    let l = ffi::gpu_norm_gemv(
        &h.inner,
        &dl.unwrap_or(h).inner,
        dl.is_some(),
        &g.inner,
        eps,
        &w.inner,
        &bias.unwrap_or(g).inner,
        bias.is_some(),
        mode,
        rot,
        head_dim,
        &pos.inner,
        &freqs.unwrap_or(h).inner,
        freqs.is_some(),
        log2_base,
        scale,
        &kv.map_or(h, |k| k.0).inner,
        kv.is_some(),
        kv.map_or(0, |k| k.1),
        &kv.map_or(h, |k| k.2).inner,
        pos_value,
        &next.unwrap_or(w).inner,
        next.is_some(),
    )?;
    let mut v = list_to_vec(l)?.into_iter();
    match (v.next(), v.next()) {
        (Some(hs), Some(y)) => Ok((hs, y)),
        _ => Err(Error::backend("fused decode kernel returned no outputs")),
    }
}

/// The GPU greedy kernel's working memory, which the kernel writes between
/// MLX's back: one per sequence of calls, each call ordered after the last
/// (the kernel takes the last call's token as an input it does not read).
pub struct GreedyScratch {
    buf: Array,
    last: Option<Array>,
}

impl GreedyScratch {
    pub fn new() -> Result<Self> {
        Ok(GreedyScratch { buf: wrap(ffi::gpu_greedy_scratch())?, last: None })
    }
}

/// Greedy token of one row of logits [1, V] (bf16/f16) on the GPU, in one
/// kernel: the argmax of logits - logsumexp(logits) as MLX's three ops give
/// it. Check `gpu_decode_ready` first.
pub fn gpu_greedy(logits: &Array, scratch: &mut GreedyScratch) -> Result<Array> {
    let prev = scratch.last.as_ref().unwrap_or(&scratch.buf);
    let t = wrap(ffi::gpu_greedy(&logits.inner, &scratch.buf.inner, &prev.inner))?;
    scratch.last = Some(t.clone());
    Ok(t)
}

/// Greedy decode steps replayed as one CUDA graph (core/cpp/gpu_graph.cc
/// says why): made from a traced step (`gpu_graph_trace`) once MLX has
/// evaluated it; each `launch` runs one more step on the device, feeding
/// the sampled token back there, and `token` waits for a step's token.
pub struct DecodeGraph {
    inner: UniquePtr<ffi::DecodeGraph>,
}

/// Whether CUDA graphs of decode steps can be made here, else why not.
pub fn gpu_graph_available() -> std::result::Result<(), String> {
    if ffi::gpu_graph_available() {
        Ok(())
    } else {
        Err(ffi::gpu_graph_unavailable_reason())
    }
}

/// Steps each launch of a CUDA graph of decode steps runs
/// (CIDER_GPU_GRAPH_STEPS, default 1): a graph may run up to this many
/// steps past the last one asked for.
pub fn gpu_graph_unroll() -> i32 {
    ffi::gpu_graph_unroll()
}

/// Notes why no CUDA graph of decode steps was made (`gpu_kernels_status`
/// tells it).
pub fn gpu_graph_note(why: &str) {
    ffi::gpu_graph_note(why)
}

/// Records (true) or stops recording (false) the decode kernels launched on
/// this thread: the step a `DecodeGraph` is made from.
pub fn gpu_graph_trace(on: bool) {
    ffi::gpu_graph_trace(on)
}

impl DecodeGraph {
    /// From the launches traced on this thread (which it stops): `layers`
    /// layers, the head and greedy sampling of `token`, fed back through
    /// `table` into `h0` at positions `pos` (`base` first); `steps` steps
    /// at most.
    #[allow(clippy::too_many_arguments)]
    pub fn new(table: &Array, h0: &Array, pos: &Array, token: &Array, base: i32, steps: i32, layers: i32) -> Result<Self> {
        let g = ffi::gpu_graph_new(&table.inner, &h0.inner, &pos.inner, &token.inner, base, steps, layers)
            .map_err(|e| Error::backend(e.what().to_string()))?;
        Ok(DecodeGraph { inner: g })
    }
    /// Runs one more step; returns its number (1, 2, ...).
    pub fn launch(&mut self) -> Result<u64> {
        ffi::gpu_graph_launch(self.inner.pin_mut()).map_err(|e| Error::backend(e.what().to_string()))
    }
    /// The token step `k` sampled (waits for it).
    pub fn token(&mut self, k: u64) -> Result<u32> {
        ffi::gpu_graph_token(self.inner.pin_mut(), k).map_err(|e| Error::backend(e.what().to_string()))
    }
    /// Waits for every launched step; returns how many there were.
    pub fn finish(&mut self) -> Result<u64> {
        ffi::gpu_graph_finish(self.inner.pin_mut()).map_err(|e| Error::backend(e.what().to_string()))
    }
}

/// A dense model's prompt pass as one CUDA graph per bucket of prompt
/// lengths (core/cpp/gpu_prompt.cc says why and how).
pub struct PromptGraph {
    inner: UniquePtr<ffi::PromptGraph>,
}

// SAFETY: the C++ object is only reached through &mut (one thread at a
// time); it holds no thread-affine state (its CUDA stream and cuBLAS handle
// are used under the caller's lock).
unsafe impl Send for PromptGraph {}

impl PromptGraph {
    /// `weights`: per layer the input norm, q/k/v, o, post-attention norm,
    /// gate/up and down weights, then the embedding table, then (rope_mode
    /// 2) the RoPE frequencies, then each layer's biases. dims: hidden,
    /// heads, kv heads, head dim, intermediate, layers, vocab, which
    /// projections have biases (bits: 1 q/k/v, 2 o, 4 gate/up, 8 down; the
    /// same in every layer). Err says why the model cannot run so.
    #[allow(clippy::too_many_arguments)]
    pub fn new(weights: &[&Array], dims: &[i32; 8], eps: f32, attn_scale: f32, rope_mode: i32, log2_base: f32, rope_scale: f32) -> Result<Self> {
        let g = ffi::gpu_prompt_new(&list_of(weights), dims, eps, attn_scale, rope_mode, log2_base, rope_scale)
            .map_err(|e| Error::backend(e.what().to_string()))?;
        Ok(PromptGraph { inner: g })
    }
    /// Runs the pass over `ids`, writing keys and values into each layer's
    /// joint KV buffer; returns the last position's residual stream
    /// [1, hidden], evaluated.
    pub fn run(&mut self, ids: &[i32], caches: &[&Array]) -> Result<Array> {
        wrap(ffi::gpu_prompt_run(self.inner.pin_mut(), ids, &list_of(caches)))
    }
    /// The longest prompt it takes.
    pub fn max_rows() -> i32 {
        ffi::gpu_prompt_max_rows()
    }
    /// Prompt lengths share a graph in buckets of this many rows.
    pub fn bucket() -> i32 {
        ffi::gpu_prompt_bucket()
    }
    /// Notes whether prompt passes run as CUDA graphs, or why not
    /// (`gpu_kernels_status` tells it).
    pub fn note(why: &str) {
        ffi::gpu_prompt_note(why)
    }
}

/// How many evaluations MLX has submitted and not finished, on all streams.
pub fn active_tasks() -> usize {
    ffi::active_tasks().max(0) as usize
}

fn list_to_vec(l: UniquePtr<ffi::ArrayList>) -> Result<Vec<Array>> {
    (0..ffi::list_len(&l)).map(|i| wrap(ffi::list_get(&l, i))).collect()
}

impl Array {
    pub fn from_f32(data: &[f32], shape: &[i32]) -> Result<Array> {
        check_len(data.len(), shape)?;
        wrap(ffi::arr_from_f32(data, shape))
    }
    pub fn from_i32(data: &[i32], shape: &[i32]) -> Result<Array> {
        check_len(data.len(), shape)?;
        wrap(ffi::arr_from_i32(data, shape))
    }
    pub fn from_u32(data: &[u32], shape: &[i32]) -> Result<Array> {
        check_len(data.len(), shape)?;
        wrap(ffi::arr_from_u32(data, shape))
    }
    /// A 0-d array holding `v` in `dtype` (as MLX's weakly typed Python scalars behave).
    pub fn scalar(v: f64, dtype: Dtype) -> Result<Array> {
        wrap(ffi::arr_scalar(v, dtype as u8))
    }
    pub fn zeros(shape: &[i32], dtype: Dtype) -> Result<Array> {
        wrap(ffi::arr_zeros(shape, dtype as u8))
    }
    pub fn full(shape: &[i32], v: f64, dtype: Dtype) -> Result<Array> {
        wrap(ffi::arr_full(shape, v, dtype as u8))
    }
    pub fn arange(start: i32, stop: i32, dtype: Dtype) -> Result<Array> {
        wrap(ffi::arr_arange(start, stop, dtype as u8))
    }

    pub fn shape(&self) -> Vec<i32> {
        ffi::arr_shape(&self.inner)
    }
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }
    pub fn dim(&self, axis: i32) -> i32 {
        let s = self.shape();
        let i = if axis < 0 { s.len() as i32 + axis } else { axis };
        s[i as usize]
    }
    pub fn dtype(&self) -> Dtype {
        Dtype::from_code(ffi::arr_dtype(&self.inner))
    }
    pub fn nbytes(&self) -> usize {
        ffi::arr_nbytes(&self.inner)
    }
    pub fn size(&self) -> usize {
        ffi::arr_size(&self.inner)
    }
    /// Evaluate and copy out as f32 (any dtype is converted).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(ffi::arr_to_f32(&self.inner)?)
    }
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        Ok(ffi::arr_to_i32(&self.inner)?)
    }
    /// Evaluate a one-element array and return it as an integer (a host sync).
    pub fn item_i32(&self) -> Result<i32> {
        if self.dtype().is_float() {
            let v = self.to_vec_i32()?;
            return v.first().copied().ok_or_else(|| Error::backend("item() of an empty array"));
        }
        let v = ffi::arr_item_i64(&self.inner)?;
        i32::try_from(v).map_err(|_| Error::backend(format!("item() value {v} does not fit in i32")))
    }
    pub fn eval(&self) -> Result<()> {
        Ok(ffi::eval_one(&self.inner)?)
    }

    pub fn astype(&self, dtype: Dtype) -> Result<Array> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        wrap(ffi::astype(&self.inner, dtype as u8))
    }
    pub fn reshape(&self, shape: &[i32]) -> Result<Array> {
        wrap(ffi::reshape(&self.inner, shape))
    }
    pub fn transpose(&self, axes: &[i32]) -> Result<Array> {
        wrap(ffi::transpose(&self.inner, axes))
    }
    pub fn add(&self, b: &Array) -> Result<Array> {
        wrap(ffi::add(&self.inner, &b.inner))
    }
    pub fn sub(&self, b: &Array) -> Result<Array> {
        wrap(ffi::subtract(&self.inner, &b.inner))
    }
    pub fn mul(&self, b: &Array) -> Result<Array> {
        wrap(ffi::multiply(&self.inner, &b.inner))
    }
    pub fn div(&self, b: &Array) -> Result<Array> {
        wrap(ffi::divide(&self.inner, &b.inner))
    }
    pub fn maximum(&self, b: &Array) -> Result<Array> {
        wrap(ffi::maximum(&self.inner, &b.inner))
    }
    /// Multiply by a scalar of this array's own dtype (as `x * 2.0` does in Python MLX).
    pub fn mul_scalar(&self, v: f64) -> Result<Array> {
        self.mul(&Array::scalar(v, self.scalar_dtype())?)
    }
    pub fn add_scalar(&self, v: f64) -> Result<Array> {
        self.add(&Array::scalar(v, self.scalar_dtype())?)
    }
    fn scalar_dtype(&self) -> Dtype {
        let d = self.dtype();
        if d.is_float() {
            d
        } else {
            Dtype::F32
        }
    }
    pub fn less(&self, b: &Array) -> Result<Array> {
        wrap(ffi::less(&self.inner, &b.inner))
    }
    pub fn greater(&self, b: &Array) -> Result<Array> {
        wrap(ffi::greater(&self.inner, &b.inner))
    }
    pub fn power(&self, b: &Array) -> Result<Array> {
        wrap(ffi::power(&self.inner, &b.inner))
    }
    pub fn greater_equal(&self, b: &Array) -> Result<Array> {
        wrap(ffi::greater_equal(&self.inner, &b.inner))
    }
    pub fn logical_and(&self, b: &Array) -> Result<Array> {
        wrap(ffi::logical_and(&self.inner, &b.inner))
    }
    /// `where(cond, self, other)`
    pub fn where_(cond: &Array, a: &Array, b: &Array) -> Result<Array> {
        wrap(ffi::where_(&cond.inner, &a.inner, &b.inner))
    }
    pub fn neg(&self) -> Result<Array> {
        wrap(ffi::negative(&self.inner))
    }
    pub fn sigmoid(&self) -> Result<Array> {
        wrap(ffi::sigmoid(&self.inner))
    }
    pub fn exp(&self) -> Result<Array> {
        wrap(ffi::exp(&self.inner))
    }
    pub fn log(&self) -> Result<Array> {
        wrap(ffi::log(&self.inner))
    }
    pub fn matmul(&self, b: &Array) -> Result<Array> {
        self.matmul_on(b, 0)
    }
    /// `self @ b` run on CPU worker stream `worker` (0: the default stream; see `cpu_workers`).
    pub fn matmul_on(&self, b: &Array, worker: i32) -> Result<Array> {
        wrap(ffi::matmul(&self.inner, &b.inner, worker))
    }
    /// `c + a @ b`
    pub fn addmm(c: &Array, a: &Array, b: &Array) -> Result<Array> {
        Self::addmm_on(c, a, b, 0)
    }
    /// `c + a @ b` run on CPU worker stream `worker`.
    pub fn addmm_on(c: &Array, a: &Array, b: &Array, worker: i32) -> Result<Array> {
        wrap(ffi::addmm(&c.inner, &a.inner, &b.inner, worker))
    }
    /// silu(gate) * x, compiled the way mlx-lm compiles it.
    pub fn swiglu(gate: &Array, x: &Array) -> Result<Array> {
        wrap(ffi::swiglu(&gate.inner, &x.inner))
    }

    pub fn sum_axis(&self, axis: i32, keepdims: bool) -> Result<Array> {
        wrap(ffi::sum_axis(&self.inner, axis, keepdims))
    }
    pub fn max_axis(&self, axis: i32, keepdims: bool) -> Result<Array> {
        wrap(ffi::max_axis(&self.inner, axis, keepdims))
    }
    pub fn logsumexp(&self, axis: i32, keepdims: bool) -> Result<Array> {
        wrap(ffi::logsumexp_axis(&self.inner, axis, keepdims))
    }
    pub fn softmax(&self, axis: i32, precise: bool) -> Result<Array> {
        wrap(ffi::softmax_axis(&self.inner, axis, precise))
    }
    pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Array> {
        wrap(ffi::argmax_axis(&self.inner, axis, keepdims))
    }
    pub fn take(&self, idx: &Array, axis: i32) -> Result<Array> {
        wrap(ffi::take(&self.inner, &idx.inner, axis))
    }
    pub fn take_along_axis(&self, idx: &Array, axis: i32) -> Result<Array> {
        wrap(ffi::take_along_axis(&self.inner, &idx.inner, axis))
    }
    pub fn put_along_axis(&self, idx: &Array, vals: &Array, axis: i32) -> Result<Array> {
        wrap(ffi::put_along_axis(&self.inner, &idx.inner, &vals.inner, axis))
    }
    /// A row-major copy, or the array itself where it already is one (the
    /// copy is decided when evaluated).
    pub fn contiguous(&self) -> Result<Array> {
        wrap(ffi::contiguous(&self.inner))
    }
    pub fn concatenate(a: &Array, b: &Array, axis: i32) -> Result<Array> {
        wrap(ffi::concatenate2(&a.inner, &b.inner, axis))
    }
    /// All of `arrays` joined along `axis`, in one node.
    pub fn concatenate_all(arrays: &[&Array], axis: i32) -> Result<Array> {
        wrap(ffi::concatenate_list(&list_of(arrays), axis))
    }
    /// `self[start0:stop0, start1:stop1, ...]` (stride 1); axes not named are taken whole.
    pub fn slice(&self, start: &[i32], stop: &[i32]) -> Result<Array> {
        wrap(ffi::slice(&self.inner, start, stop))
    }
    /// Slice along one axis: `self[..., start:stop, ...]`.
    pub fn slice_axis(&self, axis: i32, start: i32, stop: i32) -> Result<Array> {
        let shape = self.shape();
        let ax = if axis < 0 { shape.len() as i32 + axis } else { axis } as usize;
        let mut lo = vec![0; shape.len()];
        let mut hi = shape.clone();
        lo[ax] = start;
        hi[ax] = stop;
        self.slice(&lo, &hi)
    }
    /// A copy of `self` with `update` written into `self[start:stop]`.
    pub fn slice_update(&self, update: &Array, start: &[i32], stop: &[i32]) -> Result<Array> {
        wrap(ffi::slice_update(&self.inner, &update.inner, start, stop))
    }
    pub fn sort(&self, axis: i32) -> Result<Array> {
        wrap(ffi::sort_axis(&self.inner, axis))
    }
    pub fn argsort(&self, axis: i32) -> Result<Array> {
        wrap(ffi::argsort_axis(&self.inner, axis))
    }
    pub fn argpartition(&self, kth: i32, axis: i32) -> Result<Array> {
        wrap(ffi::argpartition_axis(&self.inner, kth, axis))
    }
    pub fn cumsum(&self, axis: i32, reverse: bool, inclusive: bool) -> Result<Array> {
        wrap(ffi::cumsum_axis(&self.inner, axis, reverse, inclusive))
    }

    /// `x @ dequantize(w)` (`.T` with `transpose`), run on CPU worker stream
    /// `worker` (0: the default stream; see `cpu_workers`).
    #[allow(clippy::too_many_arguments)]
    pub fn quantized_matmul_on(
        x: &Array,
        w: &Array,
        scales: &Array,
        biases: Option<&Array>,
        transpose: bool,
        group_size: i32,
        bits: i32,
        mode: &str,
        worker: i32,
    ) -> Result<Array> {
        let (b, has) = match biases {
            Some(b) => (b, true),
            None => (scales, false),
        };
        wrap(ffi::quantized_matmul(
            &x.inner, &w.inner, &scales.inner, &b.inner, has, transpose, group_size, bits, mode, worker,
        ))
    }
    /// Quantize along the last axis: (packed weights, scales, biases).
    pub fn quantize(&self, group_size: i32, bits: i32, mode: &str) -> Result<Vec<Array>> {
        list_to_vec(ffi::quantize(&self.inner, group_size, bits, mode)?)
    }
    pub fn dequantize(
        w: &Array,
        scales: &Array,
        biases: Option<&Array>,
        group_size: i32,
        bits: i32,
        mode: &str,
    ) -> Result<Array> {
        let (b, has) = match biases {
            Some(b) => (b, true),
            None => (scales, false),
        };
        wrap(ffi::dequantize(&w.inner, &scales.inner, &b.inner, has, group_size, bits, mode))
    }

    pub fn rms_norm(&self, weight: &Array, eps: f32) -> Result<Array> {
        wrap(ffi::rms_norm(&self.inner, &weight.inner, eps))
    }
    pub fn rope(&self, dims: i32, traditional: bool, base: f32, scale: f32, offset: i32) -> Result<Array> {
        wrap(ffi::rope(&self.inner, dims, traditional, base, scale, offset))
    }
    pub fn rope_with_freqs(
        &self,
        dims: i32,
        traditional: bool,
        scale: f32,
        offset: i32,
        freqs: &Array,
    ) -> Result<Array> {
        wrap(ffi::rope_freqs(&self.inner, dims, traditional, scale, offset, &freqs.inner))
    }
    /// Fused attention. `mask`: `Mask::None`, `Mask::Causal`, or an explicit array.
    pub fn sdpa(q: &Array, k: &Array, v: &Array, scale: f32, mask: &Mask) -> Result<Array> {
        match mask {
            Mask::None => wrap(ffi::sdpa(&q.inner, &k.inner, &v.inner, scale, "", &q.inner, false)),
            Mask::Causal => wrap(ffi::sdpa(&q.inner, &k.inner, &v.inner, scale, "causal", &q.inner, false)),
            Mask::Array(m) => wrap(ffi::sdpa(&q.inner, &k.inner, &v.inner, scale, "array", &m.inner, true)),
        }
    }

    /// Causal attention of one sequence's prompt rows through cider's GPU
    /// kernel (core/cpp/gpu_pattn.cc): q [1, Hq, L, D], k and v [1, Hk,
    /// keys, D] -> [L, Hq * D], the o projection's input. With `rope`
    /// (`Rope::fused_params`: freqs, or log2 of the base; position scale),
    /// q comes unrotated and the kernel rotates it at positions keys - L +
    /// i. `None` where the kernel does not apply (not a GPU, too many keys,
    /// a failed self-check, ...): then `sdpa` does the same.
    pub fn sdpa_causal_rows(q: &Array, k: &Array, v: &Array, scale: f32, rope: Option<(Option<&Array>, f32, f32)>) -> Result<Option<Array>> {
        let (mode, freqs, log2_base, rope_scale) = match rope {
            None => (0, q, 0.0, 1.0),
            Some((None, log2_base, s)) => (1, q, log2_base, s),
            Some((Some(f), _, s)) => (2, f, 0.0, s),
        };
        let p = ffi::gpu_prefill_attention(&q.inner, &k.inner, &v.inner, scale, mode, &freqs.inner, log2_base, rope_scale)?;
        Ok(if p.is_null() { None } else { Some(Array { inner: p }) })
    }

    pub fn random_key(seed: u64) -> Result<Array> {
        wrap(ffi::random_key(seed))
    }
    /// Split a PRNG key into two independent keys.
    pub fn random_split(&self) -> Result<(Array, Array)> {
        let mut v = list_to_vec(ffi::random_split(&self.inner)?)?;
        let b = v.pop().unwrap();
        let a = v.pop().unwrap();
        Ok((a, b))
    }
    /// Sample indices from unnormalised log-probabilities along the last axis.
    pub fn categorical(logits: &Array, key: &Array) -> Result<Array> {
        wrap(ffi::categorical(&logits.inner, &key.inner))
    }
}

/// Attention masks as MLX's fused attention takes them.
pub enum Mask {
    None,
    Causal,
    Array(Array),
}

fn check_len(n: usize, shape: &[i32]) -> Result<()> {
    let want: i64 = shape.iter().map(|&d| d as i64).product();
    if shape.iter().any(|&d| d < 0) || want != n as i64 {
        return Err(Error::invalid_arg(format!(
            "array data has {n} elements but shape {shape:?} needs {want}"
        )));
    }
    Ok(())
}

/// Memory statistics as MLX's allocator reports them, in bytes.
pub mod memory {
    use super::ffi;
    pub fn active() -> usize {
        ffi::get_active_memory()
    }
    pub fn peak() -> usize {
        ffi::get_peak_memory()
    }
    pub fn reset_peak() {
        ffi::reset_peak_memory()
    }
    pub fn cache() -> usize {
        ffi::get_cache_memory()
    }
    /// Set the allocator's memory limit; returns the previous one.
    pub fn set_limit(bytes: usize) -> usize {
        ffi::set_memory_limit(bytes)
    }
    pub fn limit() -> usize {
        ffi::get_memory_limit()
    }
    pub fn set_cache_limit(bytes: usize) -> usize {
        ffi::set_cache_limit(bytes)
    }
    pub fn clear_cache() {
        ffi::clear_cache()
    }
}

/// Device selection. MLX has one default device per process.
pub mod device {
    use super::ffi;
    use crate::error::Result;
    pub fn gpu_available() -> bool {
        ffi::gpu_available()
    }
    pub fn set_gpu(gpu: bool) -> Result<()> {
        Ok(ffi::set_default_device(gpu)?)
    }
    pub fn is_gpu() -> bool {
        ffi::default_device_is_gpu()
    }
    /// The GPU is MLX's CUDA backend (an NVIDIA GPU, not Metal).
    pub fn is_cuda() -> bool {
        ffi::default_device_is_gpu() && ffi::gpu_is_cuda()
    }
    pub fn mlx_version() -> String {
        ffi::mlx_version()
    }
}
