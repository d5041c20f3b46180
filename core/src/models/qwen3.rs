//! Qwen3: RMSNorm on each head of q and k, an explicit head_dim (often not
//! hidden/heads), no biases. mlx-lm requires head_dim, max_position_embeddings
//! and tie_word_embeddings in config.json, so cider does too.
use super::{llama_rope, ArchConfig, Common};
use crate::error::Result;
use crate::json::JsonFile;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = cfg.req_usize("head_dim")?;
    let rope = llama_rope(cfg, None)?;
    let tie = cfg.bool("tie_word_embeddings")?.ok_or_else(|| cfg.missing("tie_word_embeddings"))?;
    let context_length = cfg.req_usize("max_position_embeddings")?;
    Ok(ArchConfig { tie_word_embeddings: tie, qk_norm: true, ..c.arch("qwen3", head_dim, rope, context_length) })
}
