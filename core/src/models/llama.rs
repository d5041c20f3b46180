//! Llama (1/2/3.x, SmolLM, TinyLlama, ...): optional attention/MLP biases,
//! `rope_scaling` of type linear or llama3, tied or untied embeddings.
use super::{rope_scaling, rope_theta, ArchConfig, Common};
use crate::error::Result;
use crate::json::JsonFile;
use crate::rope::parse_scaling;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = cfg.usize("head_dim")?.unwrap_or(c.hidden_size / c.n_heads);
    let base = rope_theta(cfg, Some(10000.0))?;
    let scaling = rope_scaling(cfg)?;
    let rope = parse_scaling(&cfg.path, scaling.map_or("rope_scaling", |s| s.0), scaling.map(|s| s.1), base)?;
    let attention_bias = cfg.bool("attention_bias")?.unwrap_or(false);
    Ok(ArchConfig {
        model_type: cfg.req_str("model_type")?.to_string(),
        head_dim,
        rope,
        rope_dims: head_dim,
        rope_traditional: cfg.bool("rope_traditional")?.unwrap_or(false),
        tie_word_embeddings: cfg.bool("tie_word_embeddings")?.unwrap_or(true),
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        mlp_bias: cfg.bool("mlp_bias")?.unwrap_or(false),
        qk_norm: false,
        fused: false,
        context_length: cfg.usize("max_position_embeddings")?.unwrap_or(2048),
        hidden_size: c.hidden_size,
        num_layers: c.num_layers,
        intermediate_size: c.intermediate_size,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps,
    })
}
