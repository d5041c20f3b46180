//! Mistral 7B and relatives. mlx-lm runs `model_type: "mistral"` with its
//! llama implementation, so cider does too; the differences live in the
//! config (no biases, GQA, rope_theta), which the llama reader already covers.
//! `sliding_window` is not applied, as in mlx-lm's llama path (Mistral v0.2+
//! sets it to null; v0.1's 4096 window only matters past 4096 tokens).
use super::{llama, ArchConfig};
use crate::error::Result;
use crate::json::JsonFile;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let mut c = llama::config(cfg)?;
    if cfg.get("max_position_embeddings").is_none() {
        c.context_length = 32768;
    }
    Ok(c)
}
