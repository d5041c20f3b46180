//! Tokenizing, detokenizing and chat templates.
use crate::handle::{self, require_out, write_out};
use crate::model::{model_ref, cider_model};
use crate::status::{boundary, boundary_value, cider_status, from_core, Failure, Stage};
use cider_core::tokenizer::ChatMessage;
use std::ffi::c_char;

/// Tokenizes `text` with the model's tokenizer.
///
/// - `text`: `text_len` bytes of UTF-8, not necessarily NUL-terminated; may
///   be NULL when `text_len` is 0.
/// - `add_special`: add the tokenizer's special tokens (BOS for most models),
///   as Hugging Face's `add_special_tokens`.
/// - `ids`, `capacity`: where to write the ids; `ids` may be NULL when
///   `capacity` is 0 (to ask for the size).
/// - `n_ids`: must not be NULL. Receives the number of ids on success, and
///   the number needed with `CIDER_STATUS_BUFFER_TOO_SMALL` (the one case
///   where an output is written on failure; `ids` is then untouched).
///
/// Thread-safe (the model is shared read-only).
///
/// Returns `CIDER_STATUS_OK`; `CIDER_STATUS_BUFFER_TOO_SMALL`;
/// `CIDER_STATUS_INVALID_ARGUMENT` (a NULL argument, text that is not
/// UTF-8, a tokenizer error on this text).
#[no_mangle]
pub extern "C" fn cider_tokenize(
    model: *const cider_model,
    text: *const c_char,
    text_len: usize,
    add_special: bool,
    ids: *mut i32,
    capacity: usize,
    n_ids: *mut usize,
) -> cider_status {
    boundary("cider_tokenize", || {
        let m = model_ref(model)?;
        require_out(n_ids, "n_ids")?;
        // SAFETY: `text` is NULL or holds `text_len` readable bytes (header contract).
        let bytes = unsafe { handle::slice(text as *const u8, text_len, "text") }?;
        let s = std::str::from_utf8(bytes).map_err(|e| {
            Failure::invalid_arg(format!("`text` is not valid UTF-8: invalid byte at offset {}", e.valid_up_to()))
        })?;
        // SAFETY: `ids` is NULL or holds `capacity` writable int32_t (header contract).
        let dst = unsafe { handle::slice_out(ids, capacity, "ids") }?;
        let tokens = m.model.tokenizer.encode(s, add_special).map_err(|e| from_core(e, Stage::Input))?;
        if tokens.len() > dst.len() {
            // SAFETY: `n_ids` is non-NULL (checked above) and writable.
            unsafe { write_out(n_ids, tokens.len()) };
            return Err(Failure::new(
                cider_status::BufferTooSmall,
                format!("{} token ids do not fit in a buffer of {}", tokens.len(), dst.len()),
            ));
        }
        for (d, &t) in dst.iter_mut().zip(&tokens) {
            *d = t as i32;
        }
        // SAFETY: as above.
        unsafe { write_out(n_ids, tokens.len()) };
        Ok(())
    })
}

/// Turns token ids back into text (special tokens included, as Hugging
/// Face's `decode(ids, skip_special_tokens=False)`).
///
/// - `ids`: `n_ids` ids, each in [0, vocab_size); may be NULL when `n_ids` is
///   0. Ids the tokenizer does not know (an embedding padded past the
///   vocabulary) decode to nothing.
/// - `out_text`: must not be NULL; on success receives a NUL-terminated
///   UTF-8 string owned by the caller, to be released with
///   `cider_string_free`. Untouched on failure.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`
/// (a NULL argument, an id out of range); `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_detokenize(
    model: *const cider_model,
    ids: *const i32,
    n_ids: usize,
    out_text: *mut *mut c_char,
) -> cider_status {
    boundary("cider_detokenize", || {
        let m = model_ref(model)?;
        require_out(out_text, "out_text")?;
        // SAFETY: `ids` is NULL or holds `n_ids` readable int32_t (header contract).
        let ids = unsafe { handle::slice(ids, n_ids, "ids") }?;
        let vocab = m.model.info.vocab_size;
        let mut tokens = Vec::with_capacity(ids.len());
        for (i, &t) in ids.iter().enumerate() {
            if t < 0 || t as usize >= vocab {
                return Err(Failure::invalid_arg(format!("ids[{i}] = {t} is outside the vocabulary [0, {vocab})")));
            }
            tokens.push(t as u32);
        }
        let text = m.model.tokenizer.decode(&tokens, false).map_err(|e| from_core(e, Stage::Input))?;
        let p = handle::malloc_str(text.as_bytes())?;
        // SAFETY: `out_text` is non-NULL (checked above) and writable.
        unsafe { write_out(out_text, p) };
        Ok(())
    })
}

/// One message of a conversation. Both strings are NUL-terminated UTF-8,
/// borrowed for the duration of the call.
#[repr(C)]
pub struct cider_chat_message {
    /// "system", "user", "assistant", ... as the template expects.
    pub role: *const c_char,
    /// The message text.
    pub content: *const c_char,
}

/// Renders a conversation with the model's chat template (as transformers'
/// `apply_chat_template(messages, tokenize=False, add_generation_prompt)`),
/// giving the prompt text to pass to `cider_session_generate`.
///
/// - `messages`: `n_messages` (at least 1) messages; must not be NULL.
/// - `add_generation_prompt`: end with the header of an assistant turn.
/// - `out_text`: must not be NULL; on success receives a NUL-terminated
///   string owned by the caller, to be released with `cider_string_free`.
///   Untouched on failure.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`
/// (a NULL argument or field, text that is not UTF-8, no messages, a
/// template that rejects the conversation); `CIDER_STATUS_UNSUPPORTED` (the
/// model has no chat template); `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_chat_template_apply(
    model: *const cider_model,
    messages: *const cider_chat_message,
    n_messages: usize,
    add_generation_prompt: bool,
    out_text: *mut *mut c_char,
) -> cider_status {
    boundary("cider_chat_template_apply", || {
        let m = model_ref(model)?;
        require_out(out_text, "out_text")?;
        if messages.is_null() {
            return Err(Failure::invalid_arg("`messages` is NULL"));
        }
        // SAFETY: `messages` is non-NULL and holds `n_messages` entries (header contract).
        let raw = unsafe { handle::slice(messages, n_messages, "messages") }?;
        let mut conv = Vec::with_capacity(raw.len());
        for (i, msg) in raw.iter().enumerate() {
            // SAFETY: each field is NULL or a NUL-terminated string (header contract).
            let role = unsafe { handle::c_str(msg.role, &format!("messages[{i}].role")) }?;
            let content = unsafe { handle::c_str(msg.content, &format!("messages[{i}].content")) }?;
            conv.push(ChatMessage::new(role, content));
        }
        let tok = &m.model.tokenizer;
        if !tok.has_chat_template() {
            return Err(Failure::new(
                cider_status::Unsupported,
                format!("the model in {} has no chat template", m.model.path.display()),
            ));
        }
        let text = tok.apply_chat_template(&conv, add_generation_prompt).map_err(|e| from_core(e, Stage::Input))?;
        let p = handle::malloc_str(text.as_bytes())?;
        // SAFETY: `out_text` is non-NULL (checked above) and writable.
        unsafe { write_out(out_text, p) };
        Ok(())
    })
}

/// Releases a string returned by cider (`cider_detokenize`,
/// `cider_chat_template_apply`, the `cider_manager_*` JSON functions). NULL
/// is a no-op. Thread-safe.
#[no_mangle]
pub extern "C" fn cider_string_free(s: *mut c_char) {
    boundary_value("cider_string_free", (), || {
        // SAFETY: NULL or a string cider malloc'd and the caller owns (header contract).
        unsafe { handle::free_c(s) }
    })
}
