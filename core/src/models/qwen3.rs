//! Qwen3: RMSNorm on each head of q and k, an explicit head_dim (often not
//! hidden/heads), no biases. mlx-lm requires head_dim, max_position_embeddings
//! and tie_word_embeddings in config.json, so cider does too.
use super::{rope_scaling, rope_theta, ArchConfig, Common};
use crate::error::Result;
use crate::json::JsonFile;
use crate::rope::parse_scaling;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = cfg.req_usize("head_dim")?;
    let base = rope_theta(cfg, None)?;
    let scaling = rope_scaling(cfg)?;
    let rope = parse_scaling(&cfg.path, scaling.map_or("rope_scaling", |s| s.0), scaling.map(|s| s.1), base)?;
    Ok(ArchConfig {
        model_type: "qwen3".into(),
        head_dim,
        rope,
        rope_dims: head_dim,
        rope_traditional: false,
        tie_word_embeddings: cfg.bool("tie_word_embeddings")?.ok_or_else(|| cfg.missing("tie_word_embeddings"))?,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: true,
        fused: false,
        context_length: cfg.req_usize("max_position_embeddings")?,
        hidden_size: c.hidden_size,
        num_layers: c.num_layers,
        intermediate_size: c.intermediate_size,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps,
    })
}
