//! Phi-3 / Phi-3.5 mini: fused `qkv_proj` and `gate_up_proj`, partial rotary
//! factor, and "su"/"longrope" scaling. Difference from transformers, kept to
//! match mlx-lm: the long factors and their attention scale
//! (sqrt(1 + ln(max/original_max) / ln(original_max))) are used at every
//! sequence length; transformers uses the short factors while the sequence
//! is within original_max_position_embeddings.
use super::{rope_theta, ArchConfig, Common};
use crate::error::{Error, Result};
use crate::json::{JsonFile, Section};
use crate::rope::RopeKind;

pub fn config(cfg: &JsonFile) -> Result<ArchConfig> {
    let c = Common::read(cfg)?;
    let head_dim = c.hidden_size / c.n_heads;
    let rope_dims = (head_dim as f64 * cfg.f64("partial_rotary_factor")?.unwrap_or(1.0)) as usize;
    let base = rope_theta(cfg, Some(10000.0))?;
    let max_pos = cfg.usize("max_position_embeddings")?.unwrap_or(131072);
    let orig_max = cfg.usize("original_max_position_embeddings")?.unwrap_or(4096);
    let rope = match cfg.object("rope_scaling")? {
        None => RopeKind::Default { base, scale: 1.0 },
        Some(obj) => {
            let s = Section { file: &cfg.path, name: "rope_scaling".into(), obj };
            let ty = s.str("type")?.or(s.str("rope_type")?).unwrap_or("");
            match ty {
                "su" | "longrope" => {
                    let long_factor = s.f32_list("long_factor")?.ok_or_else(|| {
                        Error::invalid_model(format!("{}: rope_scaling.long_factor is required", cfg.path.display()))
                    })?;
                    if long_factor.len() != rope_dims / 2 && long_factor.len() != 1 {
                        return Err(Error::invalid_model(format!(
                            "{}: rope_scaling.long_factor has {} entries, expected {} (rotary dims / 2)",
                            cfg.path.display(),
                            long_factor.len(),
                            rope_dims / 2
                        )));
                    }
                    let factor = max_pos as f64 / orig_max as f64;
                    // mlx-lm's Phi-3 never passes long_mscale, so neither do we.
                    let mscale = if factor <= 1.0 { 1.0 } else { (1.0 + factor.ln() / (orig_max as f64).ln()).sqrt() };
                    RopeKind::SuScaled { base, long_factor, mscale }
                }
                "linear" => RopeKind::Default { base, scale: (1.0 / s.req_f64("factor")?) as f32 },
                // mlx-lm warns and runs without scaling for any other type.
                _ => RopeKind::Default { base, scale: 1.0 },
            }
        }
    };
    Ok(ArchConfig {
        rope_dims,
        rope_traditional: cfg.bool("rope_traditional")?.unwrap_or(false),
        tie_word_embeddings: cfg.bool("tie_word_embeddings")?.unwrap_or(false),
        fused: true,
        ..c.arch("phi3", head_dim, rope, max_pos)
    })
}
