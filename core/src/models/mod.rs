//! Architectures, registered by config.json's `model_type`. Each architecture
//! file turns its config.json into an `ArchConfig` (its own defaults, key
//! names and weight layout); the decoder graph they all share lives in
//! `transformer.rs`, written op for op like mlx-lm's so greedy tokens match.
mod llama;
mod mistral;
mod phi3;
mod qwen2;
mod qwen3;
pub mod transformer;

use crate::error::{Error, Result};
use crate::json::JsonFile;
use crate::rope::RopeKind;

pub use transformer::Transformer;

/// A resolved architecture: every option decided, nothing optional.
#[derive(Debug, Clone)]
pub struct ArchConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub intermediate_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeKind,
    /// How many leading features of each head are rotated.
    pub rope_dims: usize,
    pub rope_traditional: bool,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3: RMSNorm over each head of q and k before RoPE.
    pub qk_norm: bool,
    /// Phi-3: one `qkv_proj` and one `gate_up_proj`.
    pub fused: bool,
    pub context_length: usize,
}

type ConfigFn = fn(&JsonFile) -> Result<ArchConfig>;

/// model_type -> config reader. Adding an architecture is one file plus one line here.
const REGISTRY: &[(&str, ConfigFn)] = &[
    ("llama", llama::config),
    ("mistral", mistral::config),
    ("qwen2", qwen2::config),
    ("qwen3", qwen3::config),
    ("phi3", phi3::config),
];

pub fn supported_model_types() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

pub fn arch_config(cfg: &JsonFile) -> Result<ArchConfig> {
    let mt = cfg.req_str("model_type")?;
    let f = REGISTRY.iter().find(|(n, _)| *n == mt).map(|(_, f)| f).ok_or_else(|| {
        Error::unsupported(format!(
            "{}: model_type \"{mt}\" is not supported (supported: {})",
            cfg.path.display(),
            supported_model_types().join(", ")
        ))
    })?;
    f(cfg)
}

/// Fields every llama-family config.json spells the same way.
pub(crate) struct Common {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub intermediate_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
}

impl Common {
    /// The llama defaults (no biases, no q/k norm, separate projections,
    /// untied unless said, rotary over the whole head); architectures change
    /// what differs with struct-update syntax.
    pub fn arch(self, model_type: &str, head_dim: usize, rope: RopeKind, context_length: usize) -> ArchConfig {
        ArchConfig {
            model_type: model_type.to_string(),
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            intermediate_size: self.intermediate_size,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope,
            rope_dims: head_dim,
            rope_traditional: false,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            fused: false,
            context_length,
        }
    }

    pub fn read(cfg: &JsonFile) -> Result<Common> {
        let n_heads = cfg.req_usize("num_attention_heads")?;
        let hidden_size = cfg.req_usize("hidden_size")?;
        if n_heads == 0 {
            return Err(Error::invalid_model(format!("{}: num_attention_heads is 0", cfg.path.display())));
        }
        let n_kv_heads = cfg.usize("num_key_value_heads")?.unwrap_or(n_heads);
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::invalid_model(format!(
                "{}: num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv_heads})",
                cfg.path.display()
            )));
        }
        Ok(Common {
            hidden_size,
            num_layers: cfg.req_usize("num_hidden_layers")?,
            intermediate_size: cfg.req_usize("intermediate_size")?,
            n_heads,
            n_kv_heads,
            vocab_size: cfg.req_usize("vocab_size")?,
            rms_norm_eps: cfg.req_f64("rms_norm_eps")? as f32,
        })
    }
}

/// rope_theta, falling back to transformers 5's `rope_parameters.rope_theta`.
pub(crate) fn rope_theta(cfg: &JsonFile, default: Option<f64>) -> Result<f32> {
    if let Some(t) = cfg.f64("rope_theta")? {
        return Ok(t as f32);
    }
    if let Some(p) = cfg.object("rope_parameters")? {
        if let Some(t) = p.get("rope_theta").and_then(|v| v.as_f64()) {
            return Ok(t as f32);
        }
    }
    default.map(|d| d as f32).ok_or_else(|| cfg.missing("rope_theta"))
}

/// The rotary embedding of the llama family: theta plus an optional scaling block.
pub(crate) fn llama_rope(cfg: &JsonFile, default_theta: Option<f64>) -> Result<RopeKind> {
    let base = rope_theta(cfg, default_theta)?;
    let scaling = rope_scaling(cfg)?;
    crate::rope::parse_scaling(&cfg.path, scaling.map_or("rope_scaling", |s| s.0), scaling.map(|s| s.1), base)
}

/// The scaling block: `rope_scaling`, else a `rope_parameters` that names a type.
pub(crate) fn rope_scaling(cfg: &JsonFile) -> Result<Option<(&'static str, &serde_json::Map<String, serde_json::Value>)>> {
    if let Some(o) = cfg.object("rope_scaling")? {
        return Ok(Some(("rope_scaling", o)));
    }
    if let Some(o) = cfg.object("rope_parameters")? {
        if o.contains_key("rope_type") || o.contains_key("type") {
            return Ok(Some(("rope_parameters", o)));
        }
    }
    Ok(None)
}
