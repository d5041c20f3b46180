//! Loading a model folder: config.json, generation_config.json, the weights
//! (validated, then mapped and evaluated once), the tokenizer and the chat
//! template. A loaded `Model` is immutable and shared by every session.
use crate::error::{Error, Result};
use crate::json::JsonFile;
use crate::mlx::{self, memory, Array};
use crate::models::{arch_config, ArchConfig, Transformer};
use crate::nn::QuantParams;
use crate::tokenizer::Tokenizer;
use crate::weights::{QuantConfig, Weights};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Progress callback for loading: fraction in [0, 1]; return false to cancel.
pub type ProgressFn<'a> = &'a mut dyn FnMut(f32) -> bool;

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_type: String,
    pub parameters: u64,
    /// None for float weights.
    pub quantization: Option<QuantParams>,
    pub dtype: String,
    pub vocab_size: usize,
    pub context_length: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// Bytes of weights held by MLX.
    pub weight_bytes: u64,
    pub load_seconds: f64,
    /// MLX active memory added by this load.
    pub resident_bytes: u64,
}

/// How to load a model. `Default` gives bit-parity with mlx-lm.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compute in this dtype: float weights and norms are converted once at
    /// load; quantization scales and biases only where that does not widen
    /// them (MLX converts them to the activations' dtype per call); the KV
    /// cache keeps the checkpoint's dtype when that is narrower.
    /// `Some(F32)` gives up bit-parity with mlx-lm (which computes in the
    /// checkpoint's dtype). It was the fast path on CPUs before cider's own
    /// CPU kernels (core/cpp/cpu_linear.cc); on x86-64 with AVX2 the default
    /// is now faster for bf16, f16 and quantized checkpoints. None keeps the
    /// checkpoint's dtypes.
    pub compute_dtype: Option<crate::mlx::Dtype>,
    /// CPU streams a model loaded on the CPU runs its projections on (each
    /// cut by output rows, see `Linear::split_rows`; results stay
    /// bit-identical). None: the `CIDER_CPU_THREADS` environment variable,
    /// else one per core up to `MAX_CPU_THREADS`. 1 runs every kernel on
    /// MLX's one default stream, as mlx-lm does. Ignored on a GPU.
    pub cpu_threads: Option<usize>,
}

/// The most CPU streams chosen by default: past this, the cost of joining
/// the parts outgrows what another core saves on models small enough to run
/// on a CPU.
pub const MAX_CPU_THREADS: usize = 8;

/// How many CPU streams to split projections over (see `LoadOptions::cpu_threads`).
pub fn cpu_threads(asked: Option<usize>) -> Result<usize> {
    let n = match asked {
        Some(n) => n,
        None => match std::env::var("CIDER_CPU_THREADS") {
            Ok(v) => v.trim().parse::<usize>().map_err(|_| {
                Error::invalid_arg(format!("CIDER_CPU_THREADS must be a whole number of threads, got \"{v}\""))
            })?,
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_CPU_THREADS),
        },
    };
    if n == 0 || n > 256 {
        return Err(Error::invalid_arg(format!("CPU threads must be between 1 and 256, got {n}")));
    }
    Ok(n)
}

pub struct Model {
    pub path: PathBuf,
    pub net: Transformer,
    pub tokenizer: Tokenizer,
    /// EOS ids from generation_config.json, config.json and the tokenizer.
    pub eos_ids: Vec<u32>,
    pub info: ModelInfo,
    /// Called with every finished generation's statistics (set once, e.g. by
    /// the model manager to keep usage statistics whatever binding generates).
    pub usage_hook: std::sync::OnceLock<Box<dyn Fn(&crate::generate::Stats) + Send + Sync>>,
}

impl Model {
    pub fn load(dir: &Path) -> Result<Model> {
        Self::load_with_progress(dir, &mut |_| true)
    }

    pub fn load_with_progress(dir: &Path, progress: ProgressFn) -> Result<Model> {
        Self::load_with(dir, &LoadOptions::default(), progress)
    }

    pub fn load_with(dir: &Path, opts: &LoadOptions, progress: ProgressFn) -> Result<Model> {
        if let Some(dt) = opts.compute_dtype {
            if !dt.is_float() {
                return Err(Error::invalid_arg(format!("compute dtype must be a float type, got {}", dt.name())));
            }
        }
        let t0 = Instant::now();
        if !dir.exists() {
            return Err(Error::not_found(format!("model folder {} does not exist", dir.display())));
        }
        if !dir.is_dir() {
            return Err(Error::invalid_arg(format!("{} is not a folder", dir.display())));
        }
        let cancel = |p: &mut dyn FnMut(f32) -> bool, f: f32| if p(f) { Ok(()) } else { Err(Error::cancelled()) };
        cancel(progress, 0.0)?;
        let cfg = JsonFile::open(&dir.join("config.json"))?;
        let arch: ArchConfig = arch_config(&cfg)?;
        let quant = QuantConfig::from_config(&cfg)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        cancel(progress, 0.05)?;

        let mut eos_ids = Vec::new();
        let gen = JsonFile::open_optional(&dir.join("generation_config.json"))?;
        // As mlx-lm: generation_config's eos_token_id replaces config.json's.
        let from_gen = match &gen {
            Some(g) => g.int_list("eos_token_id")?,
            None => vec![],
        };
        let cfg_eos = if from_gen.is_empty() { cfg.int_list("eos_token_id")? } else { from_gen };
        for id in cfg_eos.into_iter().chain(tokenizer.eos_token_ids().iter().copied()) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }

        let before = memory::active();
        let mut weights = Weights::load(dir, quant, opts.compute_dtype)?;
        let mut net = Transformer::load(arch.clone(), &mut weights)?;
        weights.finish()?;
        let threads = cpu_threads(opts.cpu_threads)?;
        if !mlx::device::is_gpu() && threads > 1 {
            // The streams are shared by every model of the process (an
            // earlier load may have made more); this model uses `threads`.
            mlx::cpu_workers(threads)?;
            net.split_linears(threads)?;
        }
        cancel(progress, 0.1)?;
        // Evaluate the weights layer by layer so progress can be reported and
        // cancelled; each tensor is read from disk exactly once.
        let arrays = net.arrays();
        let chunk = (arrays.len() / 20).max(1);
        for (i, part) in arrays.chunks(chunk).enumerate() {
            mlx::eval(part)?;
            let done = ((i + 1) * chunk).min(arrays.len()) as f32 / arrays.len() as f32;
            cancel(progress, 0.1 + 0.9 * done)?;
        }
        mlx::eval(&net.views())?;
        let resident = memory::active().saturating_sub(before) as u64;
        // The dtype activations run in: the compute dtype when one was asked
        // for (quantization scales may stay narrower, see Weights), else the
        // first float tensor's (the embedding, or its scales).
        let dtype = opts
            .compute_dtype
            .map(|d| d.name())
            .into_iter()
            .chain(arrays.iter().filter(|a| a.dtype().is_float()).map(|a| a.dtype().name()))
            .next()
            .unwrap_or("float32")
            .to_string();
        let info = ModelInfo {
            model_type: arch.model_type.clone(),
            parameters: net.parameters(),
            quantization: net.quantization(),
            dtype,
            vocab_size: arch.vocab_size,
            context_length: arch.context_length,
            num_layers: arch.num_layers,
            hidden_size: arch.hidden_size,
            weight_bytes: net.weight_bytes() as u64,
            load_seconds: t0.elapsed().as_secs_f64(),
            resident_bytes: resident,
        };
        Ok(Model { path: dir.to_path_buf(), net, tokenizer, eos_ids, info, usage_hook: Default::default() })
    }

    /// Token ids for a plain prompt, encoded as mlx-lm encodes plain text
    /// (special tokens added unless the text already starts with BOS).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(text)
    }

    pub fn forward(&self, ids: &Array, caches: &mut [Box<dyn crate::cache::KvCache>]) -> Result<Array> {
        self.net.forward(ids, caches)
    }

    /// One sequence's ids [L] -> the logits of its last position, [1, vocab].
    pub fn forward_last(&self, ids: &Array, caches: &mut [Box<dyn crate::cache::KvCache>]) -> Result<Array> {
        self.net.forward_last(ids, caches)
    }
}

