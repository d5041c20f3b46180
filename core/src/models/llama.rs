//! Llama (1/2/3.x, SmolLM, TinyLlama, ...): optional attention/MLP biases,
//! `rope_scaling` of type linear or llama3, tied or untied embeddings.
use super::{llama_rope, ArchConfig, Common};
use crate::error::Result;
use crate::json::JsonFile;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = cfg.usize("head_dim")?.unwrap_or(c.hidden_size / c.n_heads);
    let rope = llama_rope(cfg, Some(10000.0))?;
    let attention_bias = cfg.bool("attention_bias")?.unwrap_or(false);
    let context_length = cfg.usize("max_position_embeddings")?.unwrap_or(2048);
    Ok(ArchConfig {
        rope_traditional: cfg.bool("rope_traditional")?.unwrap_or(false),
        tie_word_embeddings: cfg.bool("tie_word_embeddings")?.unwrap_or(true),
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        mlp_bias: cfg.bool("mlp_bias")?.unwrap_or(false),
        ..c.arch(cfg.req_str("model_type")?, head_dim, rope, context_length)
    })
}
