//! Generation sessions, options and results.
use crate::handle::{self, require_out, write_out};
use crate::model::{cider_model, model_ref};
use crate::status::{boundary, boundary_value, cider_status, from_core, FfiResult, Failure, Stage};
use cider_core::{ErrorKind, FinishReason, GenerateOptions, GenerationResult, SamplerConfig, Session};
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

/// `cider_generate_options.seed` value that asks for a fresh random seed.
pub const CIDER_SEED_RANDOM: u64 = u64::MAX;

/// A generation context made from a model by `cider_session_new`, released
/// by `cider_session_free`. Holds its own reference to the model.
///
/// A session is used by one thread at a time: different threads may use
/// different sessions of one model at the same time (generations interleave
/// step by step), and a session may move between threads between calls. A
/// second concurrent (or re-entrant, from its own callback) call on one
/// session is refused with `CIDER_STATUS_INVALID_ARGUMENT`.
pub struct cider_session {
    session: UnsafeCell<Session>,
    busy: AtomicBool,
}

/// Called once per generated token from inside `cider_session_generate*`,
/// on the calling thread.
///
/// - `piece`, `piece_len`: the text that became final with this token,
///   NUL-terminated, UTF-8. Often empty (""), when text is held back until it
///   forms whole UTF-8 characters or could be the start of a stop string.
///   Borrowed: valid only during the call.
/// - `token_id`: the token, or -1 for one last call that flushes held-back
///   text after the final token.
///
/// Return true to go on, false to stop: the call then returns
/// `CIDER_STATUS_CANCELLED` with the partial result. The return value of
/// the final (-1) call is ignored. The callback must not unwind (C++
/// exceptions, longjmp) through cider, nor free or reuse this session.
pub type cider_token_callback =
    Option<unsafe extern "C" fn(piece: *const c_char, piece_len: usize, token_id: i32, user_data: *mut c_void) -> bool>;

/// Generation settings. Always start from `cider_generate_options_default()`
/// and set the fields you need: fields are only ever appended, and new ones
/// get defaults that keep today's behaviour.
#[repr(C)]
pub struct cider_generate_options {
    /// Most tokens to generate. Default 256.
    pub max_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add
    /// up to top_p, in [0, 1]; 0 or 1 (the default) disables it.
    pub top_p: f32,
    /// Keep only the top_k most likely tokens; 0 (the default) disables it.
    pub top_k: u32,
    /// Keep tokens with probability >= min_p * p(most likely), in [0, 1];
    /// 0 (the default) disables it.
    pub min_p: f32,
    /// Divides the logits of recently generated tokens (>= 0); 1 (the
    /// default) or 0 disables it.
    pub repetition_penalty: f32,
    /// How many recent tokens `repetition_penalty` looks at. Default 20.
    pub repetition_context_size: usize,
    /// Sampling seed; `CIDER_SEED_RANDOM` (the default) for a random one.
    pub seed: u64,
    /// Stop strings: generation ends before the first occurrence of any of
    /// them, which is not returned. `n_stop` NUL-terminated UTF-8 strings,
    /// borrowed for the call. Default NULL (none).
    pub stop: *const *const c_char,
    /// Number of entries in `stop`. Default 0.
    pub n_stop: usize,
    /// Keep generating past end-of-sequence tokens. Default false.
    pub ignore_eos: bool,
    /// Prompt tokens per forward pass while reading the prompt. Default 2048.
    pub prefill_step_size: usize,
}

/// Why generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cider_finish_reason {
    /// An end-of-sequence token or a stop string.
    Stop = 0,
    /// `max_tokens` were generated.
    Length = 1,
    /// The token callback returned false.
    Cancelled = 2,
}

/// Measurements of one generation.
#[repr(C)]
pub struct cider_generation_stats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens per second (prompt_tokens / ttft_s).
    pub prompt_tps: f64,
    /// Tokens generated (the same as `n_tokens` of the result).
    pub generation_tokens: usize,
    /// Tokens per second after the first token.
    pub generation_tps: f64,
    /// Seconds from the start of the call to the first token.
    pub ttft_s: f64,
    /// Seconds the whole call took.
    pub total_s: f64,
    /// MLX peak memory during the generation, in bytes.
    pub peak_memory_bytes: u64,
}

/// The outcome of a generation, filled by `cider_session_generate*` when they
/// return `CIDER_STATUS_OK` or `CIDER_STATUS_CANCELLED` (untouched
/// otherwise). The caller owns `text` and `tokens` and releases them with
/// `cider_generation_result_free`. Fields are only ever appended.
#[repr(C)]
pub struct cider_generation_result {
    /// The generated text (stop strings removed), NUL-terminated UTF-8.
    pub text: *mut c_char,
    /// Length of `text` in bytes, without the NUL.
    pub text_len: usize,
    /// The generated token ids (EOS not included); NULL when `n_tokens` is 0.
    pub tokens: *mut i32,
    /// Number of generated tokens.
    pub n_tokens: usize,
    /// Why generation ended.
    pub finish_reason: cider_finish_reason,
    /// Timings and counts.
    pub stats: cider_generation_stats,
}

/// The default generation options: 256 tokens, greedy, no penalties, no
/// stop strings, stop at end-of-sequence tokens.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn cider_generate_options_default() -> cider_generate_options {
    let d = GenerateOptions::default();
    let fallback = || cider_generate_options {
        max_tokens: 256,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        repetition_context_size: 20,
        seed: CIDER_SEED_RANDOM,
        stop: std::ptr::null(),
        n_stop: 0,
        ignore_eos: false,
        prefill_step_size: 2048,
    };
    boundary_value("cider_generate_options_default", fallback(), || cider_generate_options {
        max_tokens: d.max_tokens,
        temperature: d.sampler.temperature,
        top_p: d.sampler.top_p,
        top_k: d.sampler.top_k,
        min_p: d.sampler.min_p,
        repetition_penalty: d.repetition_penalty.unwrap_or(1.0),
        repetition_context_size: d.repetition_context_size,
        seed: d.sampler.seed.unwrap_or(CIDER_SEED_RANDOM),
        stop: std::ptr::null(),
        n_stop: 0,
        ignore_eos: d.ignore_eos,
        prefill_step_size: d.prefill_step_size,
    })
}

/// Makes a session that generates with `model`.
///
/// - `model`: must not be NULL. The session keeps the model alive.
/// - `out`: must not be NULL; on success receives a new session owned by
///   the caller, to be released with `cider_session_free`. Untouched on
///   failure.
///
/// Thread-safe. Returns `CIDER_STATUS_OK` or `CIDER_STATUS_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn cider_session_new(model: *const cider_model, out: *mut *mut cider_session) -> cider_status {
    boundary("cider_session_new", || {
        let m = model_ref(model)?;
        require_out(out, "out")?;
        let s = cider_session { session: UnsafeCell::new(Session::new(m.model.clone())), busy: AtomicBool::new(false) };
        // SAFETY: `out` is non-NULL (checked above) and writable.
        unsafe { write_out(out, handle::into_raw(s)) };
        Ok(())
    })
}

/// Releases a session. NULL is a no-op. Must not be called while the
/// session is generating (including from its own token callback).
#[no_mangle]
pub extern "C" fn cider_session_free(session: *mut cider_session) {
    boundary_value("cider_session_free", (), || {
        // A session may hold the last reference to its model.
        crate::model::release(|| {
            // SAFETY: NULL or a handle from cider_session_new not yet freed (header contract).
            unsafe { handle::free_raw(session) }
        })
    })
}

/// Generates a continuation of `prompt`, streaming tokens to `on_token`.
///
/// - `session`: must not be NULL.
/// - `prompt`: NUL-terminated UTF-8, used as given: no chat template is
///   applied (use `cider_chat_template_apply` first for chat models). It is
///   tokenized as mlx-lm tokenizes a plain prompt: the tokenizer's special
///   tokens (BOS) are added unless the text already starts with the BOS
///   token. Must not be NULL.
/// - `options`: NULL for the defaults (`cider_generate_options_default()`).
/// - `on_token`, `user_data`: may be NULL (see `cider_token_callback`).
/// - `out`: may be NULL. Filled when the call returns `CIDER_STATUS_OK` or
///   `CIDER_STATUS_CANCELLED`; release it with
///   `cider_generation_result_free`.
///
/// One thread at a time per session (see `cider_session`).
///
/// Returns `CIDER_STATUS_OK`; `CIDER_STATUS_CANCELLED` (the callback returned
/// false; `out` holds the partial result); `CIDER_STATUS_INVALID_ARGUMENT`
/// (a NULL argument, text that is not UTF-8, an empty prompt, a bad option
/// value, the session busy); `CIDER_STATUS_INVALID_MODEL`;
/// `CIDER_STATUS_OUT_OF_MEMORY`; `CIDER_STATUS_BACKEND`.
#[no_mangle]
pub extern "C" fn cider_session_generate(
    session: *mut cider_session,
    prompt: *const c_char,
    options: *const cider_generate_options,
    on_token: cider_token_callback,
    user_data: *mut c_void,
    out: *mut cider_generation_result,
) -> cider_status {
    boundary("cider_session_generate", || {
        let s = session_ref(session)?;
        // SAFETY: `prompt` is NULL or a NUL-terminated string (header contract).
        let text = unsafe { handle::c_str(prompt, "prompt") }?;
        run(s, options, on_token, user_data, out, |sess| {
            sess.model.encode_prompt(text).map_err(|e| from_core(e, Stage::Input))
        })
    })
}

/// As `cider_session_generate`, from prompt token ids (for example from
/// `cider_tokenize`) instead of text.
///
/// - `prompt_ids`: `n_prompt_ids` (at least 1) ids in [0, vocab_size); must
///   not be NULL.
///
/// Returns the statuses of `cider_session_generate`.
#[no_mangle]
pub extern "C" fn cider_session_generate_tokens(
    session: *mut cider_session,
    prompt_ids: *const i32,
    n_prompt_ids: usize,
    options: *const cider_generate_options,
    on_token: cider_token_callback,
    user_data: *mut c_void,
    out: *mut cider_generation_result,
) -> cider_status {
    boundary("cider_session_generate_tokens", || {
        let s = session_ref(session)?;
        if prompt_ids.is_null() {
            return Err(Failure::invalid_arg("`prompt_ids` is NULL"));
        }
        // SAFETY: `prompt_ids` is non-NULL and holds `n_prompt_ids` ids (header contract).
        let ids = unsafe { handle::slice(prompt_ids, n_prompt_ids, "prompt_ids") }?;
        let mut prompt = Vec::with_capacity(ids.len());
        for (i, &t) in ids.iter().enumerate() {
            if t < 0 {
                return Err(Failure::invalid_arg(format!("prompt_ids[{i}] = {t} is negative")));
            }
            prompt.push(t as u32);
        }
        run(s, options, on_token, user_data, out, |_| Ok(prompt))
    })
}

/// Releases what a result owns (`text`, `tokens`) and resets those fields
/// to NULL / 0, so a second call is harmless. The struct itself belongs to
/// the caller. NULL is a no-op. Pass only a result filled by cider or one
/// zero-initialised (`cider_generation_result r = {0};`).
#[no_mangle]
pub extern "C" fn cider_generation_result_free(result: *mut cider_generation_result) {
    boundary_value("cider_generation_result_free", (), || {
        if result.is_null() {
            return;
        }
        // SAFETY: `result` points to a result cider filled or a zeroed one
        // (header contract). Only the pointer and length fields are read and
        // written through the raw pointer: no reference to the whole struct
        // is made, so a garbage `finish_reason` is never read.
        unsafe {
            handle::free_c((*result).text);
            handle::free_c((*result).tokens);
            (*result).text = std::ptr::null_mut();
            (*result).text_len = 0;
            (*result).tokens = std::ptr::null_mut();
            (*result).n_tokens = 0;
        }
    })
}

fn session_ref<'a>(session: *mut cider_session) -> FfiResult<&'a cider_session> {
    // SAFETY: NULL or a live session handle (header contract). Only shared
    // access is made here; the Session inside is reached through `Busy`.
    unsafe { handle::borrow(session as *const cider_session, "session") }
}

/// Exclusive access to a session's Session for one call: the flag makes a
/// concurrent or re-entrant second call fail instead of aliasing `&mut`.
struct Busy<'a>(&'a cider_session);

impl<'a> Busy<'a> {
    fn acquire(s: &'a cider_session) -> FfiResult<Busy<'a>> {
        s.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| Busy(s))
            .map_err(|_| {
                Failure::invalid_arg("the session is already generating (used from two threads, or from its own callback)")
            })
    }

    fn session(&mut self) -> &mut Session {
        // SAFETY: `busy` was false -> true for this Busy only, so no other
        // reference to the Session exists until it is dropped.
        unsafe { &mut *self.0.session.get() }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

fn convert_options(options: *const cider_generate_options) -> FfiResult<GenerateOptions> {
    // SAFETY: `options` is NULL or points to a cider_generate_options (header contract).
    let Some(o) = (unsafe { options.as_ref() }) else {
        return Ok(GenerateOptions::default());
    };
    // SAFETY: `stop` is NULL or holds `n_stop` string pointers (header contract).
    let raw = unsafe { handle::slice(o.stop, o.n_stop, "options->stop") }?;
    let mut stop = Vec::with_capacity(raw.len());
    for (i, &p) in raw.iter().enumerate() {
        // SAFETY: each entry is NULL or a NUL-terminated string (header contract).
        let s = unsafe { handle::c_str(p, &format!("options->stop[{i}]")) }?;
        if s.is_empty() {
            return Err(Failure::invalid_arg(format!("options->stop[{i}] is empty")));
        }
        stop.push(s.to_string());
    }
    Ok(GenerateOptions {
        max_tokens: o.max_tokens,
        sampler: SamplerConfig {
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            min_p: o.min_p,
            seed: (o.seed != CIDER_SEED_RANDOM).then_some(o.seed),
        },
        repetition_penalty: Some(o.repetition_penalty),
        repetition_context_size: o.repetition_context_size,
        stop,
        ignore_eos: o.ignore_eos,
        prefill_step_size: o.prefill_step_size,
    })
}

fn run(
    s: &cider_session,
    options: *const cider_generate_options,
    on_token: cider_token_callback,
    user_data: *mut c_void,
    out: *mut cider_generation_result,
    prompt: impl FnOnce(&Session) -> FfiResult<Vec<u32>>,
) -> FfiResult<()> {
    let opts = convert_options(options)?;
    let mut busy = Busy::acquire(s)?;
    let session = busy.session();
    let prompt = prompt(session)?;
    let mut piece = Vec::<u8>::new();
    let mut on_event = |ev: &cider_core::StreamEvent| -> bool {
        let Some(cb) = on_token else { return true };
        piece.clear();
        piece.extend_from_slice(ev.text.as_bytes());
        piece.push(0);
        let token = ev.token.map_or(-1, |t| t as i32);
        // SAFETY: a C function pointer given by the caller with its own
        // user_data; `piece` is NUL-terminated and outlives the call.
        unsafe { cb(piece.as_ptr() as *const c_char, ev.text.len(), token, user_data) }
    };
    let result = match session.generate(&prompt, &opts, &mut on_event) {
        Ok(r) => r,
        // Cancelled before the first token: report an empty partial result.
        Err(e) if e.kind == ErrorKind::Cancelled => GenerationResult {
            text: String::new(),
            tokens: vec![],
            prompt_tokens: prompt.clone(),
            finish_reason: FinishReason::Cancelled,
            stats: Default::default(),
        },
        Err(e) => return Err(from_core(e, Stage::Generate)),
    };
    drop(busy);
    let cancelled = result.finish_reason == FinishReason::Cancelled;
    let n = result.tokens.len();
    if !out.is_null() {
        let value = c_result(&result)?;
        // SAFETY: `out` is non-NULL and writable (header contract).
        unsafe { write_out(out, value) };
    }
    if cancelled {
        return Err(Failure::new(cider_status::Cancelled, format!("cancelled by the token callback after {n} tokens")));
    }
    Ok(())
}

fn c_result(r: &GenerationResult) -> FfiResult<cider_generation_result> {
    let tokens: Vec<i32> = r.tokens.iter().map(|&t| t as i32).collect();
    let text = handle::malloc_str(r.text.as_bytes())?;
    let tokens_ptr = match handle::malloc_array(&tokens) {
        Ok(p) => p,
        Err(e) => {
            // SAFETY: `text` was just malloc'd and is not shared.
            unsafe { handle::free_c(text) };
            return Err(e);
        }
    };
    let st = &r.stats;
    Ok(cider_generation_result {
        text,
        text_len: r.text.len(),
        tokens: tokens_ptr,
        n_tokens: tokens.len(),
        finish_reason: match r.finish_reason {
            FinishReason::Stop => cider_finish_reason::Stop,
            FinishReason::Length => cider_finish_reason::Length,
            FinishReason::Cancelled => cider_finish_reason::Cancelled,
        },
        stats: cider_generation_stats {
            prompt_tokens: st.prompt_tokens,
            prompt_tps: st.prompt_tps,
            generation_tokens: st.generation_tokens,
            generation_tps: st.generation_tps,
            ttft_s: st.ttft_s,
            total_s: st.total_s,
            peak_memory_bytes: st.peak_memory_bytes,
        },
    })
}
