//! Rotary position embeddings in the variants the supported models use. The
//! frequency tables are computed with MLX ops in the same order as mlx-lm's
//! `rope_utils.py`, so they are bit-identical to the reference.
use crate::error::{Error, Result};
use crate::json::Section;
use crate::mlx::{Array, Dtype};
use std::path::Path;

#[derive(Debug, Clone)]
pub enum RopeKind {
    /// `fast.rope` with a base and a position scale (1/factor for "linear").
    Default { base: f32, scale: f32 },
    /// Llama 3.x: per-frequency scaling (low/high frequency factors).
    Llama3 { base: f32, factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: f64 },
    /// Phi-3 "su"/"longrope". As mlx-lm does, the long factors and their
    /// attention scale apply at every length (transformers switches to the
    /// short factors below original_max_position_embeddings).
    SuScaled { base: f32, long_factor: Vec<f32>, mscale: f64 },
}

pub struct Rope {
    pub dims: i32,
    pub traditional: bool,
    kind: RopeKind,
    freqs: Option<Array>,
}

fn scalar(v: f64) -> Result<Array> {
    Array::scalar(v, Dtype::F32)
}

/// base ** (arange(0, dims, 2) / dims) in float32, as mlx-lm writes it.
fn base_freqs(base: f32, dims: i32) -> Result<Array> {
    let exps = Array::arange(0, dims, Dtype::F32)?;
    // arange(0, dims, 2): take every second element
    let idx = Array::arange(0, (dims + 1) / 2, Dtype::I32)?.mul(&Array::scalar(2.0, Dtype::I32)?)?;
    let exps = exps.take(&idx, 0)?.div(&scalar(dims as f64)?)?;
    scalar(base as f64)?.power(&exps)
}

impl Rope {
    pub fn new(dims: usize, traditional: bool, kind: RopeKind) -> Result<Rope> {
        let d = dims as i32;
        let freqs = match &kind {
            RopeKind::Default { .. } => None,
            RopeKind::Llama3 { base, factor, low_freq_factor, high_freq_factor, original_max } => {
                let freqs = base_freqs(*base, d)?;
                let low_wavelen = original_max / low_freq_factor;
                let high_wavelen = original_max / high_freq_factor;
                let wavelens = scalar(2.0 * std::f64::consts::PI)?.mul(&freqs)?;
                let freqs = Array::where_(
                    &wavelens.greater(&scalar(low_wavelen)?)?,
                    &freqs.mul(&scalar(*factor)?)?,
                    &freqs,
                )?;
                let is_medium = wavelens
                    .greater(&scalar(high_wavelen)?)?
                    .logical_and(&wavelens.less(&scalar(low_wavelen)?)?)?;
                let smooth = scalar(*original_max)?
                    .div(&wavelens)?
                    .sub(&scalar(*low_freq_factor)?)?
                    .div(&scalar(high_freq_factor - low_freq_factor)?)?;
                let denom = scalar(1.0)?.sub(&smooth)?.div(&scalar(*factor)?)?.add(&smooth)?;
                let smooth_freqs = freqs.div(&denom)?;
                Some(Array::where_(&is_medium, &smooth_freqs, &freqs)?)
            }
            RopeKind::SuScaled { base, long_factor, .. } => {
                let lf = Array::from_f32(long_factor, &[long_factor.len() as i32])?;
                Some(lf.mul(&base_freqs(*base, d)?)?)
            }
        };
        if let Some(f) = &freqs {
            f.eval()?;
        }
        Ok(Rope { dims: d, traditional, kind, freqs })
    }

    /// What cider's fused decode kernel needs to apply this RoPE itself
    /// (frequencies, or log2 of the base; the position scale), or None where
    /// it cannot: traditional (interleaved) pairs, partial rotation, or
    /// Phi-3's scaled inputs.
    pub fn fused_params(&self, head_dim: i32) -> Option<(Option<&Array>, f32, f32)> {
        if self.traditional || self.dims != head_dim {
            return None;
        }
        match (&self.kind, &self.freqs) {
            // MLX's RoPE kernel takes log2(base) and raises 2 to it.
            (RopeKind::Default { base, scale }, _) => Some((None, base.log2(), *scale)),
            (RopeKind::Llama3 { .. }, Some(f)) => Some((Some(f), 0.0, 1.0)),
            _ => None,
        }
    }

    /// Apply to x of shape [B, heads, L, head_dim] at position `offset`.
    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        match (&self.kind, &self.freqs) {
            (RopeKind::Default { base, scale }, _) => x.rope(self.dims, self.traditional, *base, *scale, offset),
            (RopeKind::SuScaled { mscale, .. }, Some(f)) => {
                let head_dim = x.dim(-1);
                let scaled = if head_dim == self.dims {
                    x.mul_scalar(*mscale)?
                } else {
                    let shape = x.shape();
                    let mut stop = shape.clone();
                    *stop.last_mut().unwrap() = self.dims;
                    let start = vec![0; shape.len()];
                    let part = x.slice(&start, &stop)?.mul_scalar(*mscale)?;
                    x.slice_update(&part, &start, &stop)?
                };
                scaled.rope_with_freqs(self.dims, false, 1.0, offset, f)
            }
            (_, Some(f)) => x.rope_with_freqs(self.dims, self.traditional, 1.0, offset, f),
            (_, None) => unreachable!("frequency table built in Rope::new"),
        }
    }
}

/// Read `rope_scaling` (or transformers 5's `rope_parameters`) for the
/// llama-family models. `None` = plain RoPE.
pub fn parse_scaling(
    file: &Path,
    name: &str,
    obj: Option<&serde_json::Map<String, serde_json::Value>>,
    base: f32,
) -> Result<RopeKind> {
    let Some(obj) = obj else { return Ok(RopeKind::Default { base, scale: 1.0 }) };
    let s = Section { file, name: name.to_string(), obj };
    let ty = s.str("type")?.or(s.str("rope_type")?).unwrap_or("default");
    match ty {
        "default" => Ok(RopeKind::Default { base, scale: 1.0 }),
        "linear" => Ok(RopeKind::Default { base, scale: (1.0 / s.req_f64("factor")?) as f32 }),
        "llama3" => Ok(RopeKind::Llama3 {
            base,
            factor: s.req_f64("factor")?,
            low_freq_factor: s.f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: s.f64("high_freq_factor")?.unwrap_or(4.0),
            original_max: s.f64("original_max_position_embeddings")?.unwrap_or(8192.0),
        }),
        other => Err(Error::unsupported(format!(
            "{}: {name}.type \"{other}\" is not supported for this architecture (supported: default, linear, llama3)",
            file.display()
        ))),
    }
}
