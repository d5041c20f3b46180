//! Qwen2 / Qwen2.5: biases on q/k/v (not on o), head_dim = hidden/heads,
//! rope_theta defaults to 1e6, embeddings tied by default.
use super::{llama_rope, ArchConfig, Common};
use crate::error::Result;
use crate::json::JsonFile;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = c.hidden_size / c.n_heads;
    let rope = llama_rope(cfg, Some(1_000_000.0))?;
    let context_length = cfg.usize("max_position_embeddings")?.unwrap_or(32768);
    Ok(ArchConfig {
        rope_traditional: cfg.bool("rope_traditional")?.unwrap_or(false),
        tie_word_embeddings: cfg.bool("tie_word_embeddings")?.unwrap_or(true),
        qkv_bias: true,
        ..c.arch("qwen2", head_dim, rope, context_length)
    })
}
