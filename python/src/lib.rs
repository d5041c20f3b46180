//! `cider._native`: cider-core's API in Python terms. It only translates
//! (arguments in, results and exceptions out) and moves work off the GIL;
//! every behaviour lives in cider-core.
//!
//! Generation runs on a Rust thread per call (`Worker`), which streams
//! events through a one-slot channel. The calling Python thread waits with
//! the GIL released and wakes every 50 ms to let Python handle signals, so
//! Ctrl-C works during `generate` too; a stream that is not being consumed
//! holds its worker within a token or two instead of running to max_tokens.
mod errors;
mod manager;

use cider_core::tokenizer::ChatMessage;
use cider_core::{GenerateOptions, SamplerConfig, Session, StreamEvent};
use errors::{invalid_arg, to_py, worker_lost, Op};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyBytes, PyList, PyMapping, PyString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a waiting Python thread wakes up to check for signals.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// An Option as Python writes it (`None` or the value).
fn py_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_owned(), |v| v.to_string())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

// ------------------------------------------------------------------ arguments

fn text_arg(text: &Bound<'_, PyAny>) -> PyResult<String> {
    let s = text
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("text must be a str, not {}", type_name(text))))?;
    Ok(s.to_cow()?.into_owned())
}

/// A token id from any Python int-like; bools, floats and out-of-range values
/// are refused with the position named.
fn token_id(item: &Bound<'_, PyAny>, what: &str, i: usize) -> PyResult<u32> {
    if item.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!("{what}[{i}] must be an int token id, not bool")));
    }
    let v: i64 = item
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{what}[{i}] must be an int token id, not {}", type_name(item))))?;
    u32::try_from(v).map_err(|_| invalid_arg(item.py(), format!("{what}[{i}] = {v} is not a valid token id")))
}

fn token_ids(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u32>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!("{what} must be a list of int token ids, not {}", type_name(obj))));
    }
    let it = obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a list of int token ids, not {}", type_name(obj))))?;
    let mut ids = Vec::new();
    for (i, item) in it.enumerate() {
        ids.push(token_id(&item?, what, i)?);
    }
    Ok(ids)
}

/// A prompt is text (encoded as mlx-lm encodes a plain prompt) or token ids.
fn prompt_ids(py: Python<'_>, model: &cider_core::Model, prompt: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(s) = prompt.cast::<PyString>() {
        let text = s.to_cow()?.into_owned();
        return py.detach(|| model.encode_prompt(&text)).map_err(|e| to_py(py, e, Op::Tokenize));
    }
    if prompt.is_instance_of::<PyBytes>() || prompt.try_iter().is_err() {
        return Err(PyTypeError::new_err(format!(
            "prompt must be a str or a list of int token ids, not {}",
            type_name(prompt)
        )));
    }
    token_ids(prompt, "prompt")
}

fn non_negative(py: Python<'_>, name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| invalid_arg(py, format!("{name} must be >= 0, got {v}")))
}

fn stop_strings(stop: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(stop) = stop else { return Ok(vec![]) };
    if stop.is_none() {
        return Ok(vec![]);
    }
    if let Ok(s) = stop.cast::<PyString>() {
        return Ok(vec![s.to_cow()?.into_owned()]);
    }
    let bad = || PyTypeError::new_err(format!("stop must be a str or a list of str, not {}", type_name(stop)));
    let it = stop.try_iter().map_err(|_| bad())?;
    let mut v = Vec::new();
    for item in it {
        let item = item?;
        let s = item
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("stop must hold str, not {}", type_name(&item))))?;
        v.push(s.to_cow()?.into_owned());
    }
    Ok(v)
}

/// The keyword arguments every generation entry point takes, in the core's
/// terms. Range checks beyond "fits the Rust type" are the core's.
#[allow(clippy::too_many_arguments)]
fn options(
    py: Python<'_>,
    max_tokens: i64,
    temperature: f64,
    top_p: f64,
    top_k: i64,
    min_p: f64,
    repetition_penalty: Option<f64>,
    repetition_context_size: i64,
    seed: Option<i64>,
    stop: Option<&Bound<'_, PyAny>>,
    ignore_eos: bool,
    prefill_step_size: i64,
) -> PyResult<GenerateOptions> {
    let top_k = u32::try_from(top_k).map_err(|_| invalid_arg(py, format!("top_k must be >= 0, got {top_k}")))?;
    let seed = match seed {
        None => None,
        Some(s) => Some(u64::try_from(s).map_err(|_| invalid_arg(py, format!("seed must be >= 0, got {s}")))?),
    };
    Ok(GenerateOptions {
        max_tokens: non_negative(py, "max_tokens", max_tokens)?,
        sampler: SamplerConfig {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k,
            min_p: min_p as f32,
            seed,
        },
        repetition_penalty: repetition_penalty.map(|p| p as f32),
        repetition_context_size: non_negative(py, "repetition_context_size", repetition_context_size)?,
        stop: stop_strings(stop)?,
        ignore_eos,
        prefill_step_size: non_negative(py, "prefill_step_size", prefill_step_size)?,
    })
}

fn messages(obj: &Bound<'_, PyAny>) -> PyResult<Vec<ChatMessage>> {
    let bad = || {
        PyTypeError::new_err(format!(
            "messages must be a list of {{\"role\": str, \"content\": str}} dicts, not {}",
            type_name(obj)
        ))
    };
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyMapping>() {
        return Err(bad());
    }
    let mut out = Vec::new();
    for (i, m) in obj.try_iter().map_err(|_| bad())?.enumerate() {
        let m = m?;
        let m = m
            .cast::<PyMapping>()
            .map_err(|_| PyTypeError::new_err(format!("messages[{i}] must be a dict, not {}", type_name(&m))))?;
        let field = |key: &str| -> PyResult<String> {
            if !m.contains(key)? {
                return Err(invalid_arg(m.py(), format!("messages[{i}] has no \"{key}\"")));
            }
            let v = m.get_item(key)?;
            let s = v.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!("messages[{i}][\"{key}\"] must be a str, not {}", type_name(&v)))
            })?;
            Ok(s.to_cow()?.into_owned())
        };
        out.push(ChatMessage { role: field("role")?, content: field("content")? });
    }
    Ok(out)
}

// ------------------------------------------------------------------ results

/// Timing and memory of one generation (cider-core's `Stats`).
#[pyclass(module = "cider", frozen, get_all, from_py_object)]
#[derive(Clone)]
struct Stats {
    prompt_tokens: usize,
    prompt_tps: f64,
    generation_tokens: usize,
    generation_tps: f64,
    ttft_s: f64,
    total_s: f64,
    peak_memory_bytes: u64,
}

#[pymethods]
impl Stats {
    fn __repr__(&self) -> String {
        format!(
            "Stats(prompt_tokens={}, prompt_tps={:.3}, generation_tokens={}, generation_tps={:.3}, ttft_s={:.4}, total_s={:.4}, peak_memory_bytes={})",
            self.prompt_tokens, self.prompt_tps, self.generation_tokens, self.generation_tps, self.ttft_s, self.total_s, self.peak_memory_bytes
        )
    }
}

/// The whole outcome of one generation.
#[pyclass(module = "cider", frozen, get_all)]
struct GenerationResult {
    text: String,
    tokens: Vec<u32>,
    prompt_ids: Vec<u32>,
    finish_reason: &'static str,
    stats: Stats,
}

#[pymethods]
impl GenerationResult {
    fn __repr__(&self) -> String {
        format!(
            "GenerationResult(text={:?}, tokens=<{} ids>, prompt_ids=<{} ids>, finish_reason={:?})",
            self.text,
            self.tokens.len(),
            self.prompt_ids.len(),
            self.finish_reason
        )
    }
}

impl From<cider_core::GenerationResult> for GenerationResult {
    fn from(r: cider_core::GenerationResult) -> Self {
        let s = r.stats;
        GenerationResult {
            text: r.text,
            tokens: r.tokens,
            prompt_ids: r.prompt_tokens,
            finish_reason: r.finish_reason.as_str(),
            stats: Stats {
                prompt_tokens: s.prompt_tokens,
                prompt_tps: s.prompt_tps,
                generation_tokens: s.generation_tokens,
                generation_tps: s.generation_tps,
                ttft_s: s.ttft_s,
                total_s: s.total_s,
                peak_memory_bytes: s.peak_memory_bytes,
            },
        }
    }
}

/// One item of a stream, shaped like mlx-lm's `GenerationResponse`: one per
/// generated token; the last carries `finish_reason` and the final speeds
/// (before it they are 0.0). `peak_memory` is in GB, as in mlx-lm.
#[pyclass(module = "cider", frozen, get_all)]
struct GenerationResponse {
    text: String,
    token: Option<u32>,
    finish_reason: Option<&'static str>,
    prompt_tokens: usize,
    prompt_tps: f64,
    generation_tokens: usize,
    generation_tps: f64,
    peak_memory: f64,
}

#[pymethods]
impl GenerationResponse {
    fn __repr__(&self) -> String {
        format!(
            "GenerationResponse(text={:?}, token={}, finish_reason={}, generation_tokens={})",
            self.text,
            py_opt(self.token),
            py_opt(self.finish_reason.map(|f| format!("{f:?}"))),
            self.generation_tokens
        )
    }
}

// ------------------------------------------------------------------ worker

enum Msg {
    /// Text that became final and the token that made it (None: the final flush).
    Piece(String, Option<u32>),
    Done(cider_core::Result<cider_core::GenerationResult>),
}

/// One generation on its own thread; dropping it cancels the generation and
/// waits for the thread.
struct Worker {
    rx: Receiver<Msg>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The result collected by `stop`.
    stopped_with: Option<cider_core::Result<cider_core::GenerationResult>>,
}

impl Worker {
    fn start(py: Python<'_>, model: Arc<cider_core::Model>, ids: Vec<u32>, opts: GenerateOptions, stream: bool) -> PyResult<Worker> {
        // One slot: a consumer that stops reading (an exception in the body of
        // its `for` loop) holds the generation within a token or two.
        let (tx, rx) = mpsc::sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("cider-generate".into())
            .spawn(move || {
                let mut session = Session::new(model).with_cancel_flag(flag.clone());
                let events = tx.clone();
                let mut on_event = |e: &StreamEvent| {
                    !stream
                        || (!flag.load(Ordering::Relaxed) && events.send(Msg::Piece(e.text.to_owned(), e.token)).is_ok())
                };
                let r = session.generate(&ids, &opts, &mut on_event);
                let _ = tx.send(Msg::Done(r));
            })
            .map_err(|e| to_py(py, cider_core::Error::backend(format!("starting a generation thread: {e}")), Op::Generate))?;
        Ok(Worker { rx, cancel, handle: Some(handle), stopped_with: None })
    }

    /// The next message, waited for with the GIL released. A pending signal
    /// (Ctrl-C) stops the generation and is raised.
    fn recv(&mut self, py: Python<'_>) -> PyResult<Msg> {
        loop {
            if let Err(e) = py.check_signals() {
                self.stop(py);
                return Err(e);
            }
            // `move` hands the closure `&mut Receiver`, which is Send (a `&Receiver` is not).
            let rx = &mut self.rx;
            match py.detach(move || rx.recv_timeout(SIGNAL_POLL)) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(worker_lost(py)),
            }
        }
    }

    /// Cancels, drains the channel so the thread can finish, and joins it.
    fn stop(&mut self, py: Python<'_>) {
        self.cancel.store(true, Ordering::Relaxed);
        let Worker { rx, handle, stopped_with, .. } = self;
        py.detach(move || {
            while let Ok(m) = rx.recv() {
                if let Msg::Done(r) = m {
                    *stopped_with = Some(r);
                }
            }
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        });
    }

    /// Runs to the end (no streaming) and returns the core's result.
    fn finish(mut self, py: Python<'_>) -> PyResult<cider_core::GenerationResult> {
        loop {
            if let Msg::Done(r) = self.recv(py)? {
                return r.map_err(|e| to_py(py, e, Op::Generate));
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if self.handle.is_some() {
            // Joining does not need the GIL; release it if this thread holds it
            // so other Python threads run meanwhile (at most one step).
            Python::attach(|py| self.stop(py));
        }
    }
}

// ------------------------------------------------------------------ stream

struct StreamState {
    worker: Option<Worker>,
    /// The newest token's piece, held until the next event tells whether it
    /// is the last one (which carries finish_reason).
    pending: Option<(String, u32)>,
    flushed: String,
    emitted: usize,
    prompt_tokens: usize,
    result: Option<Py<GenerationResult>>,
    finished: bool,
}

/// An iterator of `GenerationResponse`s. Generation runs ahead by at most a
/// token or two; `close()` (or dropping the stream) cancels it.
#[pyclass(module = "cider", frozen)]
struct TokenStream {
    state: Mutex<StreamState>,
}

impl StreamState {
    fn response(&self, text: String, token: Option<u32>) -> GenerationResponse {
        GenerationResponse {
            text,
            token,
            finish_reason: None,
            prompt_tokens: self.prompt_tokens,
            prompt_tps: 0.0,
            generation_tokens: self.emitted,
            generation_tps: 0.0,
            peak_memory: 0.0,
        }
    }

    fn finish(&mut self, py: Python<'_>, r: cider_core::GenerationResult) -> PyResult<GenerationResponse> {
        self.finished = true;
        let (mut text, token) = match self.pending.take() {
            Some((t, k)) => (t, Some(k)),
            None => (String::new(), None),
        };
        text.push_str(&std::mem::take(&mut self.flushed));
        let s = &r.stats;
        let resp = GenerationResponse {
            text,
            token,
            finish_reason: Some(r.finish_reason.as_str()),
            prompt_tokens: s.prompt_tokens,
            prompt_tps: s.prompt_tps,
            generation_tokens: r.tokens.len(),
            generation_tps: s.generation_tps,
            peak_memory: s.peak_memory_bytes as f64 / 1e9,
        };
        self.result = Some(Py::new(py, GenerationResult::from(r))?);
        Ok(resp)
    }
}

#[pymethods]
impl TokenStream {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<GenerationResponse>> {
        let mut guard = self.state.lock_py_attached(py).unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        loop {
            if st.finished {
                return Ok(None);
            }
            let Some(worker) = st.worker.as_mut() else { return Ok(None) };
            let msg = match worker.recv(py) {
                Ok(m) => m,
                Err(e) => {
                    // A signal: the worker has been stopped; keep its result for close().
                    st.finished = true;
                    if let Some(Ok(r)) = st.worker.take().and_then(|mut w| w.stopped_with.take()) {
                        st.result = Some(Py::new(py, GenerationResult::from(r))?);
                    }
                    return Err(e);
                }
            };
            match msg {
                Msg::Piece(text, Some(tok)) => {
                    if let Some((t, k)) = st.pending.replace((text, tok)) {
                        st.emitted += 1;
                        return Ok(Some(st.response(t, Some(k))));
                    }
                }
                Msg::Piece(text, None) => st.flushed.push_str(&text),
                Msg::Done(r) => {
                    st.worker = None;
                    st.finished = true;
                    return match r {
                        Ok(r) => st.finish(py, r).map(Some),
                        Err(e) => Err(to_py(py, e, Op::Generate)),
                    };
                }
            }
        }
    }

    /// Stops the generation if it is still running and returns its result
    /// (finish_reason "cancelled" when it was cut short), or None when it
    /// failed. Safe to call more than once.
    fn close(&self, py: Python<'_>) -> PyResult<Option<Py<GenerationResult>>> {
        let mut st = self.state.lock_py_attached(py).unwrap_or_else(|p| p.into_inner());
        if let Some(mut w) = st.worker.take() {
            w.stop(py);
            st.finished = true;
            if let Some(Ok(r)) = w.stopped_with.take() {
                st.result = Some(Py::new(py, GenerationResult::from(r))?);
            }
        }
        Ok(st.result.as_ref().map(|r| r.clone_ref(py)))
    }

    /// The result once the stream has ended, else None.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<GenerationResult>> {
        let st = self.state.lock_py_attached(py).unwrap_or_else(|p| p.into_inner());
        st.result.as_ref().map(|r| r.clone_ref(py))
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        self.close(py).map(|_| ())
    }
}

// ------------------------------------------------------------------ model

/// What `Model.info` reports about a loaded model.
#[pyclass(module = "cider", frozen, get_all)]
struct ModelInfo {
    model_type: String,
    parameters: u64,
    /// None for float weights.
    bits: Option<i32>,
    group_size: Option<i32>,
    dtype: String,
    vocab_size: usize,
    context_length: usize,
    num_layers: usize,
    hidden_size: usize,
    weight_bytes: u64,
    load_seconds: f64,
    resident_bytes: u64,
}

#[pymethods]
impl ModelInfo {
    fn __repr__(&self) -> String {
        format!(
            "ModelInfo(model_type={:?}, parameters={}, bits={}, group_size={}, dtype={:?}, vocab_size={}, context_length={}, num_layers={}, hidden_size={}, weight_bytes={})",
            self.model_type,
            self.parameters,
            py_opt(self.bits),
            py_opt(self.group_size),
            self.dtype,
            self.vocab_size,
            self.context_length,
            self.num_layers,
            self.hidden_size,
            self.weight_bytes
        )
    }
}

/// A tokenizer: a loaded model's, or one loaded alone by `load_tokenizer`.
#[pyclass(module = "cider", frozen)]
struct Tokenizer {
    source: TokenizerSource,
}

enum TokenizerSource {
    Model(Arc<cider_core::Model>),
    Alone(cider_core::tokenizer::Tokenizer),
}

impl Tokenizer {
    fn tok(&self) -> &cider_core::tokenizer::Tokenizer {
        match &self.source {
            TokenizerSource::Model(m) => &m.tokenizer,
            TokenizerSource::Alone(t) => t,
        }
    }
}

fn chat(py: Python<'_>, tok: &cider_core::tokenizer::Tokenizer, msgs: &Bound<'_, PyAny>, add_generation_prompt: bool, tokenize: bool) -> PyResult<Py<PyAny>> {
    let msgs = messages(msgs)?;
    if tokenize {
        let ids = py.detach(|| tok.encode_chat(&msgs, add_generation_prompt)).map_err(|e| to_py(py, e, Op::Tokenize))?;
        Ok(PyList::new(py, ids)?.into_any().unbind())
    } else {
        let text = py.detach(|| tok.apply_chat_template(&msgs, add_generation_prompt)).map_err(|e| to_py(py, e, Op::Tokenize))?;
        Ok(PyString::new(py, &text).into_any().unbind())
    }
}

#[pymethods]
impl Tokenizer {
    /// Token ids of `text`; `add_special_tokens` adds BOS etc. as the tokenizer's post-processor says.
    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode(&self, py: Python<'_>, text: &Bound<'_, PyAny>, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let text = text_arg(text)?;
        let tok = self.tok();
        py.detach(|| tok.encode(&text, add_special_tokens)).map_err(|e| to_py(py, e, Op::Tokenize))
    }

    /// Token ids of a plain prompt as mlx-lm's generate encodes it: special
    /// tokens are added unless the text already starts with the BOS token.
    fn encode_prompt(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let text = text_arg(text)?;
        let tok = self.tok();
        py.detach(|| tok.encode_prompt(&text)).map_err(|e| to_py(py, e, Op::Tokenize))
    }

    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, py: Python<'_>, ids: &Bound<'_, PyAny>, skip_special_tokens: bool) -> PyResult<String> {
        let ids = token_ids(ids, "ids")?;
        let tok = self.tok();
        py.detach(|| tok.decode(&ids, skip_special_tokens)).map_err(|e| to_py(py, e, Op::Tokenize))
    }

    /// Renders `messages` ([{"role": ..., "content": ...}]) with the model's
    /// chat template; `tokenize=True` returns token ids instead of text.
    #[pyo3(signature = (messages, add_generation_prompt = true, tokenize = false))]
    fn apply_chat_template(&self, py: Python<'_>, messages: &Bound<'_, PyAny>, add_generation_prompt: bool, tokenize: bool) -> PyResult<Py<PyAny>> {
        chat(py, self.tok(), messages, add_generation_prompt, tokenize)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok().token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.tok().id_to_token(id)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.tok().vocab_size()
    }

    #[getter]
    fn bos_token(&self) -> Option<String> {
        self.tok().bos_token().map(str::to_owned)
    }

    #[getter]
    fn eos_token(&self) -> Option<String> {
        self.tok().eos_token().map(str::to_owned)
    }

    /// The ids that end generation: for a model's tokenizer also those of
    /// generation_config.json and config.json, as the model uses them.
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        match &self.source {
            TokenizerSource::Model(m) => m.eos_ids.clone(),
            TokenizerSource::Alone(t) => t.eos_token_ids().to_vec(),
        }
    }

    #[getter]
    fn has_chat_template(&self) -> bool {
        self.tok().has_chat_template()
    }

    fn __repr__(&self) -> String {
        format!("Tokenizer(vocab_size={})", self.tok().vocab_size())
    }
}

/// A loaded model: immutable, shared by every generation; any number of
/// Python threads may generate from it at once.
#[pyclass(module = "cider", frozen)]
struct Model {
    inner: Arc<cider_core::Model>,
    tokenizer: Py<Tokenizer>,
}

impl Model {
    fn worker(&self, py: Python<'_>, prompt: &Bound<'_, PyAny>, opts: GenerateOptions, stream: bool) -> PyResult<(Worker, usize)> {
        let ids = prompt_ids(py, &self.inner, prompt)?;
        let n = ids.len();
        Ok((Worker::start(py, self.inner.clone(), ids, opts, stream)?, n))
    }
}

#[pymethods]
impl Model {
    #[getter]
    fn info(&self) -> ModelInfo {
        let i = &self.inner.info;
        ModelInfo {
            model_type: i.model_type.clone(),
            parameters: i.parameters,
            bits: i.quantization.as_ref().map(|q| q.bits),
            group_size: i.quantization.as_ref().map(|q| q.group_size),
            dtype: i.dtype.clone(),
            vocab_size: i.vocab_size,
            context_length: i.context_length,
            num_layers: i.num_layers,
            hidden_size: i.hidden_size,
            weight_bytes: i.weight_bytes,
            load_seconds: i.load_seconds,
            resident_bytes: i.resident_bytes,
        }
    }

    #[getter]
    fn tokenizer(&self, py: Python<'_>) -> Py<Tokenizer> {
        self.tokenizer.clone_ref(py)
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.path.display().to_string()
    }

    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_ids.clone()
    }

    #[pyo3(signature = (messages, add_generation_prompt = true, tokenize = false))]
    fn apply_chat_template(&self, py: Python<'_>, messages: &Bound<'_, PyAny>, add_generation_prompt: bool, tokenize: bool) -> PyResult<Py<PyAny>> {
        chat(py, &self.inner.tokenizer, messages, add_generation_prompt, tokenize)
    }

    /// Generates and returns the text.
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.0, top_p = 1.0, top_k = 0, min_p = 0.0, repetition_penalty = None, repetition_context_size = 20, seed = None, stop = None, ignore_eos = false, prefill_step_size = 2048))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: i64,
        temperature: f64,
        top_p: f64,
        top_k: i64,
        min_p: f64,
        repetition_penalty: Option<f64>,
        repetition_context_size: i64,
        seed: Option<i64>,
        stop: Option<&Bound<'_, PyAny>>,
        ignore_eos: bool,
        prefill_step_size: i64,
    ) -> PyResult<String> {
        let opts = options(py, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, repetition_context_size, seed, stop, ignore_eos, prefill_step_size)?;
        let (w, _) = self.worker(py, prompt, opts, false)?;
        Ok(w.finish(py)?.text)
    }

    /// Generates and returns text, token ids, finish reason and statistics.
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.0, top_p = 1.0, top_k = 0, min_p = 0.0, repetition_penalty = None, repetition_context_size = 20, seed = None, stop = None, ignore_eos = false, prefill_step_size = 2048))]
    #[allow(clippy::too_many_arguments)]
    fn generate_result(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: i64,
        temperature: f64,
        top_p: f64,
        top_k: i64,
        min_p: f64,
        repetition_penalty: Option<f64>,
        repetition_context_size: i64,
        seed: Option<i64>,
        stop: Option<&Bound<'_, PyAny>>,
        ignore_eos: bool,
        prefill_step_size: i64,
    ) -> PyResult<GenerationResult> {
        let opts = options(py, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, repetition_context_size, seed, stop, ignore_eos, prefill_step_size)?;
        let (w, _) = self.worker(py, prompt, opts, false)?;
        Ok(w.finish(py)?.into())
    }

    /// Streams the generation: an iterator of GenerationResponse.
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.0, top_p = 1.0, top_k = 0, min_p = 0.0, repetition_penalty = None, repetition_context_size = 20, seed = None, stop = None, ignore_eos = false, prefill_step_size = 2048))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: i64,
        temperature: f64,
        top_p: f64,
        top_k: i64,
        min_p: f64,
        repetition_penalty: Option<f64>,
        repetition_context_size: i64,
        seed: Option<i64>,
        stop: Option<&Bound<'_, PyAny>>,
        ignore_eos: bool,
        prefill_step_size: i64,
    ) -> PyResult<TokenStream> {
        let opts = options(py, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, repetition_context_size, seed, stop, ignore_eos, prefill_step_size)?;
        let (w, n) = self.worker(py, prompt, opts, true)?;
        Ok(TokenStream {
            state: Mutex::new(StreamState {
                worker: Some(w),
                pending: None,
                flushed: String::new(),
                emitted: 0,
                prompt_tokens: n,
                result: None,
                finished: false,
            }),
        })
    }

    fn __repr__(&self) -> String {
        let i = &self.inner.info;
        format!("Model(path={:?}, model_type={:?}, parameters={})", self.inner.path.display().to_string(), i.model_type, i.parameters)
    }
}

/// Loads a model folder (config.json, safetensors, tokenizer files). The GIL
/// is released while loading; `progress(fraction)` is called along the way
/// and may return False to cancel (CancelledError). Ctrl-C also cancels.
/// `compute_dtype` ("float32", "float16", "bfloat16"; None = the checkpoint's)
/// computes in that dtype (weights converted once at load; quantization
/// scales kept as stored), not bit-identical to mlx-lm; on x86-64 CPUs with
/// AVX2 the default is now the faster one for bf16, f16 and quantized checkpoints. `cpu_threads`: CPU streams each projection is
/// split over on the CPU (results stay bit-identical); None = the
/// CIDER_CPU_THREADS environment variable, else one per core (at most 8).
#[pyfunction]
#[pyo3(signature = (path, *, progress = None, compute_dtype = None, cpu_threads = None))]
fn load(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    progress: Option<Py<PyAny>>,
    compute_dtype: Option<&str>,
    cpu_threads: Option<usize>,
) -> PyResult<Model> {
    let opts = cider_core::LoadOptions {
        compute_dtype: match compute_dtype {
            None => None,
            Some(s) => Some(cider_core::mlx::Dtype::parse(s).filter(|d| d.is_float()).ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(format!(
                    "compute_dtype must be None, \"float32\", \"float16\" or \"bfloat16\", not {s:?}"
                ))
            })?),
        },
        cpu_threads,
    };
    let path: PathBuf = path
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("path must be a str or os.PathLike, not {}", type_name(path))))?;
    if let Some(cb) = &progress {
        if !cb.bind(py).is_callable() {
            return Err(PyTypeError::new_err("progress must be callable: progress(fraction: float) -> bool | None"));
        }
    }
    let mut raised: Option<PyErr> = None;
    let loaded = py.detach(|| {
        cider_core::Model::load_with(&path, &opts, &mut |f| {
            Python::attach(|py| {
                if let Err(e) = py.check_signals() {
                    raised = Some(e);
                    return false;
                }
                let Some(cb) = &progress else { return true };
                match cb.call1(py, (f,)).and_then(|v| {
                    let v = v.bind(py);
                    Ok(v.is_none() || v.is_truthy()?)
                }) {
                    Ok(go_on) => go_on,
                    Err(e) => {
                        raised = Some(e);
                        false
                    }
                }
            })
        })
    });
    if let Some(e) = raised {
        return Err(e);
    }
    let inner = Arc::new(loaded.map_err(|e| to_py(py, e, Op::Load))?);
    let tokenizer = Py::new(py, Tokenizer { source: TokenizerSource::Model(inner.clone()) })?;
    Ok(Model { inner, tokenizer })
}

/// Loads only the tokenizer files of a model folder (no weights).
#[pyfunction]
fn load_tokenizer(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<Tokenizer> {
    let path: PathBuf = path
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("path must be a str or os.PathLike, not {}", type_name(path))))?;
    let tok = py
        .detach(|| cider_core::tokenizer::Tokenizer::from_dir(&path))
        .map_err(|e| to_py(py, e, Op::Load))?;
    Ok(Tokenizer { source: TokenizerSource::Alone(tok) })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<Model>()?;
    m.add_class::<manager::Manager>()?;
    m.add_class::<Tokenizer>()?;
    m.add_class::<ModelInfo>()?;
    m.add_class::<TokenStream>()?;
    m.add_class::<GenerationResponse>()?;
    m.add_class::<GenerationResult>()?;
    m.add_class::<Stats>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(load_tokenizer, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
