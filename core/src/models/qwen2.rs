//! Qwen2 / Qwen2.5: biases on q/k/v (not on o), head_dim = hidden/heads,
//! rope_theta defaults to 1e6, embeddings tied by default.
use super::{rope_scaling, rope_theta, ArchConfig, Common};
use crate::error::Result;
use crate::json::JsonFile;
use crate::rope::parse_scaling;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = c.hidden_size / c.n_heads;
    let base = rope_theta(cfg, Some(1_000_000.0))?;
    let scaling = rope_scaling(cfg)?;
    let rope = parse_scaling(&cfg.path, scaling.map_or("rope_scaling", |s| s.0), scaling.map(|s| s.1), base)?;
    Ok(ArchConfig {
        model_type: "qwen2".into(),
        head_dim,
        rope,
        rope_dims: head_dim,
        rope_traditional: cfg.bool("rope_traditional")?.unwrap_or(false),
        tie_word_embeddings: cfg.bool("tie_word_embeddings")?.unwrap_or(true),
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        fused: false,
        context_length: cfg.usize("max_position_embeddings")?.unwrap_or(32768),
        hidden_size: c.hidden_size,
        num_layers: c.num_layers,
        intermediate_size: c.intermediate_size,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        vocab_size: c.vocab_size,
        rms_norm_eps: c.rms_norm_eps,
    })
}
