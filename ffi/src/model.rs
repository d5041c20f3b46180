//! Loading, describing and freeing models.
use crate::handle::{self, borrow, require_out, write_out};
use crate::status::{boundary, boundary_value, cider_status, from_core, FfiResult, Stage};
use cider_core::generate::mlx_lock;
use cider_core::manager::ModelHandle;
use cider_core::mlx::memory;
use cider_core::Model;
use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Arc;

/// A loaded model: weights, tokenizer, chat template and configuration.
///
/// Made by `cider_model_load` or `cider_manager_acquire`, released by
/// `cider_model_free`. Immutable after loading: one model may be used by any
/// number of threads at once (tokenizing, applying chat templates, creating
/// sessions) without locking. Sessions hold their own reference, so a model
/// may be freed while its sessions are still in use; the memory goes when
/// the last one is freed (for a model from a manager: when the manager
/// unloads it, which it does only after that).
pub struct cider_model {
    pub(crate) model: Arc<Model>,
    model_type: CString,
    dtype: CString,
    eos_ids: Vec<i32>,
    /// The manager's handle when the model came from `cider_manager_acquire`:
    /// dropping it tells the manager the model was let go of (so a deferred
    /// unload happens then rather than at the manager's next sweep).
    pub(crate) lease: Option<ModelHandle>,
}

/// Called while a model loads with the fraction done, from 0.0 to 1.0,
/// non-decreasing, on the thread that called `cider_model_load`. Return true
/// to go on, false to cancel the load (`CIDER_STATUS_CANCELLED`). It runs
/// while cider holds its MLX lock, so it must not load, free or generate
/// (other cider calls are fine), and must not unwind (C++ exceptions,
/// longjmp) through cider.
pub type cider_progress_callback = Option<unsafe extern "C" fn(fraction: f32, user_data: *mut c_void) -> bool>;

/// Options for `cider_model_load`. Get the defaults from
/// `cider_load_options_default()` (or zero the struct), then set fields.
/// Fields are only ever appended.
#[repr(C)]
pub struct cider_load_options {
    /// Progress callback; NULL (the default) for none.
    pub progress: cider_progress_callback,
    /// Passed unchanged to `progress`. Default NULL.
    pub user_data: *mut c_void,
    /// NUL-terminated dtype to compute in: NULL (the default) keeps the
    /// checkpoint's dtypes, bit-identical to mlx-lm; "float32" (or "float16",
    /// "bfloat16") computes in that dtype: float weights and norms are
    /// converted once at load, quantization scales only where that does not
    /// widen them. Not bit-identical to mlx-lm, and uses more memory; on
    /// x86-64 CPUs with AVX2 the default is the faster one for bf16, f16 and
    /// quantized checkpoints (cider's own CPU kernels).
    pub compute_dtype: *const c_char,
    /// CPU streams each projection is split over when the model runs on the
    /// CPU (MLX runs one stream on one core; results stay bit-identical).
    /// 0 (the default): the CIDER_CPU_THREADS environment variable, else one
    /// per core, at most 8. 1: everything on MLX's one default stream, as
    /// mlx-lm runs. Ignored on a GPU.
    pub cpu_threads: i32,
}

/// Facts about a loaded model, filled by `cider_model_get_info`. Fields are
/// only ever appended. The strings and arrays are borrowed from the model:
/// they live until `cider_model_free`; do not free them.
#[repr(C)]
pub struct cider_model_info {
    /// config.json's `model_type` ("llama", "qwen3", ...).
    pub model_type: *const c_char,
    /// Data type of the float weights ("bfloat16", "float16", "float32").
    pub dtype: *const c_char,
    /// Number of parameters (quantized weights counted unpacked).
    pub parameters: u64,
    /// Bits per quantized weight; 0 when the weights are not quantized.
    pub bits: i32,
    /// Quantization group size; 0 when the weights are not quantized.
    pub group_size: i32,
    /// Rows of the embedding: token ids must be below this.
    pub vocab_size: usize,
    /// Maximum context length from config.json, in tokens.
    pub context_length: usize,
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Hidden (model) dimension.
    pub hidden_size: usize,
    /// Bytes of weights held in memory.
    pub weight_bytes: u64,
    /// Bytes of MLX memory the load added.
    pub resident_bytes: u64,
    /// Seconds the load took.
    pub load_seconds: f64,
    /// Whether `cider_chat_template_apply` can be used.
    pub has_chat_template: bool,
    /// Token ids that end generation (unless `ignore_eos`): from
    /// generation_config.json, config.json and the tokenizer.
    pub eos_ids: *const i32,
    /// Number of entries in `eos_ids`.
    pub n_eos_ids: usize,
}

/// The default load options: no progress callback.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn cider_load_options_default() -> cider_load_options {
    cider_load_options { progress: None, user_data: std::ptr::null_mut(), compute_dtype: std::ptr::null(), cpu_threads: 0 }
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Loads the model in the folder `path` (an MLX / Hugging Face folder:
/// config.json, *.safetensors, tokenizer files), validating every file, and
/// reads all weights into memory.
///
/// - `path`: NUL-terminated; need not be UTF-8. Must not be NULL.
/// - `options`: NULL for the defaults.
/// - `out`: on success receives a new model, owned by the caller, to be
///   released with `cider_model_free`. Untouched on failure. Must not be NULL.
///
/// Thread-safe. Loads are serialised with each other and with generation
/// steps of other threads (which pause while a model loads).
///
/// Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT` (a NULL
/// argument, `path` not a folder); `CIDER_STATUS_NOT_FOUND` (no such folder,
/// or a file it needs is missing); `CIDER_STATUS_INVALID_MODEL` (bad JSON,
/// truncated or missing tensors, a broken tokenizer); `CIDER_STATUS_UNSUPPORTED`
/// (an architecture or quantization cider does not know);
/// `CIDER_STATUS_CANCELLED` (the progress callback returned false);
/// `CIDER_STATUS_OUT_OF_MEMORY`; `CIDER_STATUS_BACKEND` (MLX or I/O errors).
#[no_mangle]
pub extern "C" fn cider_model_load(
    path: *const c_char,
    options: *const cider_load_options,
    out: *mut *mut cider_model,
) -> cider_status {
    boundary("cider_model_load", || {
        // SAFETY: `path` is NULL or a NUL-terminated string (header contract).
        let path_bytes = unsafe { handle::c_bytes(path, "path") }?;
        require_out(out, "out")?;
        // SAFETY: `options` is NULL or points to a cider_load_options.
        let (progress, user_data, dtype, threads) = match unsafe { options.as_ref() } {
            Some(o) => (o.progress, o.user_data, o.compute_dtype, o.cpu_threads),
            None => (None, std::ptr::null_mut(), std::ptr::null(), 0),
        };
        let mut load_opts = cider_core::LoadOptions::default();
        if threads < 0 {
            return Err(crate::status::Failure::invalid_arg(format!(
                "options->cpu_threads is {threads}; expected 0 (automatic) or a positive count"
            )));
        }
        if threads > 0 {
            load_opts.cpu_threads = Some(threads as usize);
        }
        if !dtype.is_null() {
            // SAFETY: non-NULL `compute_dtype` is a NUL-terminated string (header contract).
            let name = unsafe { std::ffi::CStr::from_ptr(dtype) }.to_string_lossy();
            load_opts.compute_dtype = Some(cider_core::mlx::Dtype::parse(&name).filter(|d| d.is_float()).ok_or_else(|| {
                crate::status::Failure::invalid_arg(format!(
                    "options->compute_dtype \"{name}\" is not float32, float16 or bfloat16"
                ))
            })?);
        }
        let dir = path_from_bytes(path_bytes);
        let mut on_progress = |f: f32| match progress {
            // SAFETY: a C function pointer given by the caller with its own user_data.
            Some(cb) => unsafe { cb(f, user_data) },
            None => true,
        };
        // MLX graphs are built and evaluated under the core's lock (as the
        // core's model manager loads); other threads' generations wait.
        let loaded = {
            let _g = mlx_lock();
            Model::load_with(dir, &load_opts, &mut on_progress)
        };
        let model = loaded.map_err(|e| from_core(e, Stage::Load))?;
        let handle = model_from_arc(Arc::new(model));
        // SAFETY: `out` is non-NULL (checked above) and writable.
        unsafe { write_out(out, handle::into_raw(handle)) };
        Ok(())
    })
}

#[cfg(unix)]
pub(crate) fn path_from_bytes(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
pub(crate) fn path_from_bytes(bytes: &[u8]) -> &Path {
    // Non-Unix hosts pass UTF-8; anything else cannot name a file there anyway.
    Path::new(std::str::from_utf8(bytes).unwrap_or("\u{FFFD}"))
}

/// The C handle of a loaded (possibly shared) model, without a manager lease.
pub(crate) fn model_from_arc(model: Arc<Model>) -> cider_model {
    let info = &model.info;
    cider_model {
        model_type: cstring(&info.model_type),
        dtype: cstring(&info.dtype),
        eos_ids: model.eos_ids.iter().map(|&t| t as i32).collect(),
        model,
        lease: None,
    }
}

/// Releases a model made by `cider_model_load` or `cider_manager_acquire`.
/// NULL is a no-op. Sessions made from it stay usable (they hold their own
/// reference); pointers from `cider_model_get_info` become invalid. For a
/// model from a manager this ends its use: once its sessions are freed too,
/// the manager may evict it, and a deferred `cider_manager_unload` happens.
/// No other thread may be using this handle when it is freed.
#[no_mangle]
pub extern "C" fn cider_model_free(model: *mut cider_model) {
    boundary_value("cider_model_free", (), || {
        // SAFETY: NULL or a handle from cider_model_load / cider_manager_acquire
        // not yet freed (header contract).
        let Some(mut m) = (unsafe { handle::take_raw(model) }) else { return };
        let lease = m.lease.take();
        release(|| drop(m));
        // Outside the MLX lock: the manager takes it itself when the release
        // frees the model (it is not reentrant).
        drop(lease);
    })
}

/// Describes a loaded model.
///
/// - `model`: must not be NULL.
/// - `out`: must not be NULL; filled on success, untouched on failure. Its
///   strings and arrays are borrowed from `model` (see `cider_model_info`).
///
/// Thread-safe. Returns `CIDER_STATUS_OK` or `CIDER_STATUS_INVALID_ARGUMENT`
/// (a NULL argument).
#[no_mangle]
pub extern "C" fn cider_model_get_info(model: *const cider_model, out: *mut cider_model_info) -> cider_status {
    boundary("cider_model_get_info", || {
        // SAFETY: NULL or a live model handle (header contract).
        let m = unsafe { borrow(model, "model") }?;
        require_out(out, "out")?;
        let info = &m.model.info;
        let (bits, group_size) = info.quantization.as_ref().map(|q| (q.bits, q.group_size)).unwrap_or((0, 0));
        let value = cider_model_info {
            model_type: m.model_type.as_ptr(),
            dtype: m.dtype.as_ptr(),
            parameters: info.parameters,
            bits,
            group_size,
            vocab_size: info.vocab_size,
            context_length: info.context_length,
            num_layers: info.num_layers,
            hidden_size: info.hidden_size,
            weight_bytes: info.weight_bytes,
            resident_bytes: info.resident_bytes,
            load_seconds: info.load_seconds,
            has_chat_template: m.model.tokenizer.has_chat_template(),
            eos_ids: if m.eos_ids.is_empty() { std::ptr::null() } else { m.eos_ids.as_ptr() },
            n_eos_ids: m.eos_ids.len(),
        };
        // SAFETY: `out` is non-NULL (checked above) and writable.
        unsafe { write_out(out, value) };
        Ok(())
    })
}

/// Drops handles that may hold the last reference to a model the way the
/// core's model manager does: under the MLX lock, then hands MLX's cached
/// buffers back so the memory is really returned.
pub(crate) fn release(drop_handle: impl FnOnce()) {
    let _g = mlx_lock();
    drop_handle();
    memory::clear_cache();
}

pub(crate) fn model_ref<'a>(model: *const cider_model) -> FfiResult<&'a cider_model> {
    // SAFETY: NULL or a live model handle, which is immutable (header contract).
    unsafe { borrow(model, "model") }
}

// The header promises that a model may be shared by threads.
const _: fn() = || {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Model>();
    is_send_sync::<ModelHandle>();
};
