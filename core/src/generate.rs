//! The generation loop: chunked prefill, then decode with a per-layer KV
//! cache while the host builds step n+1 as the device computes step n (MLX
//! async eval), as mlx-lm's `generate_step` does. Streams UTF-8-safe text
//! pieces, applies stop strings and EOS, and measures what users ask for.
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::mlx::{self, memory, Array, Dtype};
use crate::model::Model;
use crate::models::transformer::GraphStep;
use crate::sampling::{apply_repetition_penalty, Sampler, SamplerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

static MLX_LOCK: Mutex<()> = Mutex::new(());

/// MLX builds and evaluates graphs on shared streams; cider serialises graph
/// building and evaluation across threads with this lock (held per step, so
/// concurrent generations interleave token by token).
pub fn mlx_lock() -> MutexGuard<'static, ()> {
    MLX_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// None or 1.0 disables it.
    pub repetition_penalty: Option<f32>,
    /// How many recent tokens the penalty looks at (mlx-lm's default: 20).
    pub repetition_context_size: usize,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
    /// Keep going past EOS tokens (benchmarks, parity tests).
    pub ignore_eos: bool,
    /// Prompt tokens per forward pass during prefill (mlx-lm: 2048).
    pub prefill_step_size: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            repetition_penalty: None,
            repetition_context_size: 20,
            stop: vec![],
            ignore_eos: false,
            prefill_step_size: 2048,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// max_tokens reached.
    Length,
    /// The caller cancelled.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens / time to first token.
    pub prompt_tps: f64,
    pub generation_tokens: usize,
    /// Tokens after the first / time from the first token to the last.
    pub generation_tps: f64,
    /// From the start of the call (tokens in hand) to the first sampled token on the host.
    pub ttft_s: f64,
    pub total_s: f64,
    /// MLX peak memory during this generation, in bytes.
    pub peak_memory_bytes: u64,
    /// Decode steps: host seconds spent building step graphs (the model's
    /// forward and the sampler; no device work).
    pub decode_build_s: f64,
    /// Decode steps: host seconds spent in async eval, where MLX turns the
    /// graph into kernels and submits them.
    pub decode_submit_s: f64,
    /// Decode steps: host seconds spent waiting for the device to hand back
    /// the sampled token. build + submit + wait + the rest of the loop =
    /// decode time.
    pub decode_wait_s: f64,
    /// Seconds from the start of the call until the first token's last
    /// graph was submitted: prefill chunks, building and encoding the last
    /// pass, and the waits for the device inside it (per layer on the CPU,
    /// for the layer two back on a GPU). The rest of ttft is the wait for
    /// the device to finish that pass.
    pub first_submit_s: f64,
}

#[derive(Debug, Clone)]
pub struct GenerationResult {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: Stats,
}

/// One streamed event: text that became final (possibly empty), and the
/// token that produced it (None for the final flush).
pub struct StreamEvent<'a> {
    pub text: &'a str,
    pub token: Option<u32>,
}

/// Returns false to cancel.
pub type StreamFn<'a> = dyn FnMut(&StreamEvent) -> bool + 'a;

/// A generation context: owns KV caches, borrows the shared model. One
/// thread at a time; create one per concurrent generation.
pub struct Session {
    pub model: Arc<Model>,
    cancel: Option<Arc<AtomicBool>>,
}

struct Stepper<'a> {
    model: &'a Model,
    caches: Vec<Box<dyn KvCache>>,
    sampler: Sampler,
    history: Option<Array>,
    penalty: Option<(f32, usize)>,
    /// The GPU greedy kernel's working memory (made at its first use, once
    /// the kernel passed its check).
    greedy: Option<mlx::GreedyScratch>,
    /// Steps a CUDA graph may replay in this generation (0: none; see
    /// `graph_steps`), the first decode step built for it (traced), and
    /// the graph once made from that step.
    graph_steps: i32,
    traced: Option<GraphStep>,
    graph: Option<mlx::DecodeGraph>,
}

/// A sampled token not read yet: MLX's lazy array, or a step of the CUDA
/// graph (its number).
enum Pending {
    Lazy(Array),
    Graph(u64),
}

/// How many steps after the first decode step (which it is traced from) a
/// CUDA graph may replay for this generation, or 0 where none is made:
/// greedy sampling without a penalty, a model whose every decode kernel
/// and head run cider's kernels (`Transformer::graph_ready`), and room:
/// cider's attention kernel takes every position up to the last
/// (gpu_attn_o_max_positions), as the graph cannot switch to MLX's.
fn graph_steps(model: &Model, opts: &GenerateOptions, prompt_len: usize, penalty: bool) -> i32 {
    if opts.sampler.temperature != 0.0 || penalty || opts.max_tokens < 3 || !mlx::device::is_cuda() {
        return 0;
    }
    let last = prompt_len + opts.max_tokens + mlx::gpu_graph_unroll() as usize;
    if last >= mlx::gpu_attn_o_max_positions() as usize {
        mlx::gpu_graph_note("off: the generation reaches past cider's attention kernel's positions");
        return 0;
    }
    match model.net.graph_ready() {
        Ok(()) => (opts.max_tokens - 2) as i32,
        Err(why) => {
            mlx::gpu_graph_note(&format!("off: {why}"));
            0
        }
    }
}

impl Stepper<'_> {
    /// Append `ids` to the token history the repetition penalty looks at
    /// (kept lazily on the device, as mlx-lm does; only when a penalty is set).
    fn push_history(&mut self, ids: &Array) -> Result<()> {
        if self.penalty.is_some() {
            let ids = ids.astype(Dtype::I32)?;
            self.history = Some(match self.history.take() {
                Some(h) => Array::concatenate(&h, &ids, 0)?,
                None => ids,
            });
        }
        Ok(())
    }

    /// One forward pass over `input` ([L] ids) -> the id sampled from the
    /// last position's logits [1] (lazy). With L > 1 (the end of the prompt)
    /// the other positions only fill the caches.
    fn step(&mut self, input: &Array) -> Result<Array> {
        let mut logits = self.model.forward_last(input, &mut self.caches)?;
        self.push_history(input)?;
        if let (Some((p, ctx)), Some(h)) = (self.penalty, &self.history) {
            logits = apply_repetition_penalty(&logits, h, p, ctx)?;
        }
        // Greedy on the GPU: one kernel instead of MLX's logsumexp, subtract
        // and single-block argmax (about 37 us of an H100 decode step of
        // 1.3 ms for a 128K vocabulary), same token (its logsumexp sums in
        // another order, so a tie after rounding could rarely go the other way).
        // (gpu_decode_ready is false for dtypes other than bf16 and f16.)
        // The kernel's check runs once, before the Stepper makes its scratch
        // (one model: the dtype and vocabulary never change).
        if self.sampler.is_greedy() && logits.ndim() == 2 && logits.dim(0) == 1 && mlx::gpu_decode_ready(logits.dtype()) {
            if self.greedy.is_none() && mlx::gpu_greedy_check(logits.dtype(), logits.dim(1)).is_ok() {
                self.greedy = Some(mlx::GreedyScratch::new()?);
            }
            if let Some(scratch) = self.greedy.as_mut() {
                return mlx::gpu_greedy(&logits, scratch);
            }
        }
        let logprobs = logits.sub(&logits.logsumexp(-1, true)?)?;
        self.sampler.sample(&logprobs)
    }

    /// The first decode step (after the token `y`), built through cider's
    /// kernels with their launches traced, for a CUDA graph (`graph_steps`
    /// > 0): the caches first get room for every step the graph may run.
    /// None where that is not possible here (the step is then built as any).
    fn traced_step(&mut self, y: &Array) -> Result<Option<Array>> {
        let net = &self.model.net;
        let offset = self.caches.first().map_or(0, |c| c.offset());
        // (A graph launch runs whole unrolled launches: up to unroll - 1
        // steps past the last asked for.)
        let u = mlx::gpu_graph_unroll();
        let steps = (self.graph_steps + u - 1) / u * u;
        if !net.graph_reserve(&mut self.caches, offset + steps + 1)? {
            mlx::gpu_graph_note("off: a KV cache cannot be written in place");
            return Ok(None);
        }
        if self.greedy.is_none() {
            self.greedy = Some(mlx::GreedyScratch::new()?);
        }
        mlx::gpu_graph_trace(true);
        let step = net.graph_step(y, &mut self.caches, self.greedy.as_mut().unwrap());
        mlx::gpu_graph_trace(false);
        let step = step?;
        let token = step.token.clone();
        self.traced = Some(step);
        Ok(Some(token))
    }

    /// The CUDA graph from the traced step (evaluated by now, or waited for
    /// here) and its first launch; None where it could not be made (why is
    /// in `gpu_kernels_status`), and the steps go on through MLX.
    fn start_graph(&mut self) -> Result<Option<u64>> {
        let Some(t) = self.traced.take() else { return Ok(None) };
        t.token.eval()?;
        let base = self.caches.first().map_or(0, |c| c.offset()) - 1;
        match mlx::DecodeGraph::new(&t.table, &t.h0, &t.pos, &t.token, base, self.graph_steps, self.model.net.n_layers() as i32) {
            Ok(g) => {
                let g = self.graph.insert(g);
                Ok(Some(g.launch()?))
            }
            Err(_) => Ok(None),
        }
    }

    /// Waits for the graph's steps and counts their positions as stored.
    fn finish_graph(&mut self) -> Result<()> {
        if let Some(mut g) = self.graph.take() {
            let n = g.finish()? as i32;
            for c in self.caches.iter_mut() {
                c.joint_advance(n);
            }
        }
        Ok(())
    }

    /// Run the prompt chunk `ids` through the model into the caches.
    fn prefill(&mut self, ids: &Array) -> Result<()> {
        let l = ids.dim(0);
        self.model.forward(&ids.reshape(&[1, l])?, &mut self.caches)?;
        self.push_history(ids)?;
        let state: Vec<&Array> = self.caches.iter().flat_map(|c| c.state()).chain(self.history.iter()).collect();
        mlx::eval(&state)
    }
}

/// Drains MLX's stream when a generation returns. Work left in flight would
/// run on after the caller may have exited the process, and exit destroys
/// MLX's allocator under the stream thread (a SIGSEGV after `cider generate`
/// had printed its output: 4 of about 700 runs, two at a time on two cores).
struct Drain;

impl Drop for Drain {
    fn drop(&mut self) {
        let _g = mlx_lock();
        // Nothing to report from a drop; an MLX error here would have
        // surfaced from the step that caused it.
        let _ = mlx::synchronize();
    }
}

/// `CIDER_GRAPH_CENSUS=1` prints, once per generation, the MLX primitives of
/// one decode step's graph to stderr: MLX's host time per token grows with
/// their number (bench/RESULTS.md, "where the time goes").
fn census_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CIDER_GRAPH_CENSUS").is_some_and(|v| v != "0"))
}

fn print_census(step: &Array) {
    let mut by_name: std::collections::BTreeMap<String, usize> = Default::default();
    for p in mlx::graph_census(&[step]) {
        *by_name.entry(p).or_default() += 1;
    }
    let total: usize = by_name.values().sum();
    let parts: Vec<String> = by_name.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!("cider: decode step graph: {total} nodes: {}", parts.join(", "));
}

/// Holds back text that might be the start of a stop string, and finds the
/// first complete stop string.
struct StopScan<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl StopScan<'_> {
    /// Add final text; returns (text safe to emit now, stopped).
    fn push(&mut self, piece: &str) -> (String, bool) {
        let search_from = self.emitted.saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        let search_from = floor_char(&self.text, search_from);
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|p| p + search_from))
            .min();
        if let Some(p) = hit {
            self.text.truncate(p);
            let out = self.text[self.emitted.min(p)..].to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of a stop string.
        let mut hold = 0;
        for s in self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let safe = (self.text.len() - hold).max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }
    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Session {
    pub fn new(model: Arc<Model>) -> Self {
        Session { model, cancel: None }
    }

    /// Also stop (as Cancelled) when `flag` becomes true; checked between
    /// tokens and between prefill chunks. Another thread may set it.
    pub fn with_cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    pub fn generate(&mut self, prompt: &[u32], opts: &GenerateOptions, on_event: &mut StreamFn) -> Result<GenerationResult> {
        let model: &Model = &self.model;
        let vocab = model.info.vocab_size;
        if prompt.is_empty() {
            return Err(Error::invalid_arg("the prompt is empty: at least one token is needed"));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid_arg(format!("prompt token id {bad} is outside the vocabulary (size {vocab})")));
        }
        opts.sampler.validate(vocab)?;
        if let Some(p) = opts.repetition_penalty {
            if !(p >= 0.0) || !p.is_finite() {
                return Err(Error::invalid_arg(format!("repetition_penalty must be >= 0, got {p}")));
            }
        }
        if opts.prefill_step_size == 0 {
            return Err(Error::invalid_arg("prefill_step_size must be > 0"));
        }
        // The GPU decode kernels' one-time check, before the clock and the
        // peak-memory count start (it is not this generation's work).
        {
            let _g = mlx_lock();
            model.net.prepare_decode();
        }
        let t0 = Instant::now();
        let penalty = opts.repetition_penalty.filter(|&p| p != 0.0 && p != 1.0).map(|p| (p, opts.repetition_context_size));
        let mut st = {
            let _g = mlx_lock();
            memory::reset_peak();
            let graph_steps = graph_steps(model, opts, prompt.len(), penalty.is_some());
            Stepper {
                model,
                caches: model.net.make_caches(),
                sampler: Sampler::new(opts.sampler.clone())?,
                history: None,
                penalty,
                greedy: None,
                graph_steps,
                traced: None,
                graph: None,
            }
        };
        // From here on MLX may hold work for this generation in flight (a
        // prompt layer, the step after an EOS); however this returns, the
        // stream is drained first.
        let _drain = Drain;
        let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();

        // Prefill in chunks of prefill_step_size at the same boundaries as
        // mlx-lm. The rest of the prompt (1 to prefill_step_size tokens) goes
        // through the model in the pass that yields the first token: mlx-lm
        // instead runs it without its last token, waits, then runs the last
        // token alone, which is a second pass over every weight and a second
        // graph for the host to walk before the first token. On the CPU the
        // logits are bit-identical either way (the parity tests check); on a
        // GPU, matrix products may round differently for a block of rows than
        // for one row.
        let mut done = 0;
        loop {
            if self.cancelled() {
                return Err(Error::cancelled());
            }
            if ids.len() - done <= opts.prefill_step_size {
                break;
            }
            let n = opts.prefill_step_size;
            let _g = mlx_lock();
            st.prefill(&Array::from_i32(&ids[done..done + n], &[n as i32])?)?;
            memory::clear_cache();
            done += n;
        }

        let mut decoder = model.tokenizer.stream_decoder();
        let mut scan = StopScan { stops: &opts.stop, text: String::new(), emitted: 0 };
        let mut tokens: Vec<u32> = Vec::new();
        let mut finish = FinishReason::Length;
        let mut stopped_by_string = false;
        let mut ttft = 0.0;
        let mut t_first = t0;
        let mut t_last = t0;

        let mut y = {
            let _g = mlx_lock();
            let last = Array::from_i32(&ids[done..], &[(ids.len() - done) as i32])?;
            let y = st.step(&last)?;
            mlx::async_eval(&[&y])?;
            Pending::Lazy(y)
        };
        let first_submit_s = t0.elapsed().as_secs_f64();
        let mut n = 0usize;
        let (mut build_s, mut submit_s, mut wait_s) = (0.0, 0.0, 0.0);
        // Builds and submits the step after `y` (None past the last token:
        // mlx-lm builds one it never reads), timing the host's two parts.
        // With a CUDA graph (`graph_steps`), step 1 is built traced, the
        // graph is made from it before step 2, and every later step is one
        // graph launch (counted as submit time).
        let mut build_next = |st: &mut Stepper, y: &Pending, n: usize| -> Result<Option<Pending>> {
            if n + 1 >= opts.max_tokens {
                return Ok(None);
            }
            let tb = Instant::now();
            if let Some(g) = st.graph.as_mut() {
                let k = g.launch()?;
                submit_s += tb.elapsed().as_secs_f64();
                return Ok(Some(Pending::Graph(k)));
            }
            if let Some(k) = st.start_graph()? {
                submit_s += tb.elapsed().as_secs_f64();
                return Ok(Some(Pending::Graph(k)));
            }
            let Pending::Lazy(y) = y else { unreachable!("graph steps come only from a graph") };
            let traced = if n == 0 && st.graph_steps > 0 { st.traced_step(y)? } else { None };
            let next = match traced {
                Some(t) => t,
                None => st.step(y)?,
            };
            let ts = Instant::now();
            if n == 1 && census_requested() {
                print_census(&next);
            }
            mlx::async_eval(&[&next])?;
            build_s += ts.duration_since(tb).as_secs_f64();
            submit_s += ts.elapsed().as_secs_f64();
            Ok(Some(Pending::Lazy(next)))
        };
        let mut next = None;
        loop {
            if opts.max_tokens == 0 {
                break;
            }
            let tok = {
                let _g = mlx_lock();
                // Step n + 1 is built and submitted before token n is read,
                // so the device computes it while the host hands token n out
                // (mlx-lm's order). Not for the first token: its wait would
                // then also cover building a whole decode step (Llama-3.2-1B
                // bf16 on an H100: time to first token 5.8 -> 4.3 ms; on a
                // CPU, a step's compute), so it is read and handed out first,
                // and step 1 is built after it.
                if n > 0 {
                    next = build_next(&mut st, &y, n)?;
                }
                let tw = Instant::now();
                let tok = match &y {
                    Pending::Lazy(a) => a.item_i32()? as u32,
                    Pending::Graph(k) => st.graph.as_mut().expect("a graph step has its graph").token(*k)?,
                };
                if n > 0 {
                    wait_s += tw.elapsed().as_secs_f64();
                }
                tok
            };
            let now = Instant::now();
            if n == 0 {
                ttft = now.duration_since(t0).as_secs_f64();
                t_first = now;
            }
            t_last = now;
            if !opts.ignore_eos && model.eos_ids.contains(&tok) {
                finish = FinishReason::Stop;
                break;
            }
            tokens.push(tok);
            let piece = decoder.push(tok)?;
            let (out, stopped) = scan.push(&piece);
            if !on_event(&StreamEvent { text: &out, token: Some(tok) }) || self.cancelled() {
                finish = FinishReason::Cancelled;
                break;
            }
            if stopped {
                stopped_by_string = true;
                finish = FinishReason::Stop;
                break;
            }
            if n % 256 == 0 {
                memory::clear_cache();
            }
            if n == 0 {
                let _g = mlx_lock();
                next = build_next(&mut st, &y, n)?;
            }
            y = match next.take() {
                Some(next) => next,
                None => break,
            };
            n += 1;
        }
        if !stopped_by_string {
            // Flush what the decoder and the stop-string scan held back.
            let (mut out, hit) = scan.push(&decoder.finish()?);
            if hit {
                finish = FinishReason::Stop;
            } else {
                out.push_str(&scan.flush());
            }
            if !out.is_empty() {
                on_event(&StreamEvent { text: &out, token: None });
            }
        }
        let peak = {
            let _g = mlx_lock();
            // A step built before an EOS or a stop may still be running:
            // count its memory too.
            st.finish_graph()?;
            mlx::synchronize()?;
            memory::peak() as u64
        };
        let gen_s = t_last.duration_since(t_first).as_secs_f64();
        let stats = Stats {
            prompt_tokens: prompt.len(),
            prompt_tps: if ttft > 0.0 { prompt.len() as f64 / ttft } else { 0.0 },
            generation_tokens: tokens.len(),
            generation_tps: if tokens.len() > 1 && gen_s > 0.0 { (tokens.len() - 1) as f64 / gen_s } else { 0.0 },
            ttft_s: ttft,
            total_s: t0.elapsed().as_secs_f64(),
            peak_memory_bytes: peak,
            decode_build_s: build_s,
            decode_submit_s: submit_s,
            decode_wait_s: wait_s,
            first_submit_s,
        };
        if let Some(hook) = model.usage_hook.get() {
            hook(&stats);
        }
        Ok(GenerationResult { text: scan.text, tokens, prompt_tokens: prompt.to_vec(), finish_reason: finish, stats })
    }
}
