//! Layers shared by every architecture: linear (dense or MLX-quantized),
//! embedding, RMSNorm. Each mirrors the mlx.nn layer mlx-lm uses, op for op,
//! so the results are bit-identical.
use crate::error::Result;
use crate::mlx::Array;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    pub group_size: i32,
    pub bits: i32,
}

pub const QUANT_MODE: &str = "affine";

pub enum Linear {
    Dense { weight: Array, bias: Option<Array> },
    Quantized { weight: Array, scales: Array, biases: Array, bias: Option<Array>, q: QuantParams },
}

impl Linear {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Linear::Dense { weight, bias } => {
                let wt = weight.transpose(&[1, 0])?;
                match bias {
                    Some(b) => Array::addmm(b, x, &wt),
                    None => x.matmul(&wt),
                }
            }
            Linear::Quantized { weight, scales, biases, bias, q } => {
                let y = Array::quantized_matmul(x, weight, scales, Some(biases), true, q.group_size, q.bits, QUANT_MODE)?;
                match bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                }
            }
        }
    }
    pub fn quant(&self) -> Option<QuantParams> {
        match self {
            Linear::Quantized { q, .. } => Some(*q),
            _ => None,
        }
    }
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Dense { weight, bias } => weight.nbytes() + bias.as_ref().map_or(0, |b| b.nbytes()),
            Linear::Quantized { weight, scales, biases, bias, .. } => {
                weight.nbytes() + scales.nbytes() + biases.nbytes() + bias.as_ref().map_or(0, |b| b.nbytes())
            }
        }
    }
    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            Linear::Dense { weight, bias } => std::iter::once(weight).chain(bias.iter()).collect(),
            Linear::Quantized { weight, scales, biases, bias, .. } => {
                [weight, scales, biases].into_iter().chain(bias.iter()).collect()
            }
        }
    }
}

/// Token embedding; a quantized one dequantizes only the rows it looks up.
pub struct Embedding(pub Linear);

impl Embedding {
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match &self.0 {
            Linear::Dense { weight, .. } => weight.take(ids, 0),
            Linear::Quantized { weight, scales, biases, q, .. } => Array::dequantize(
                &weight.take(ids, 0)?,
                &scales.take(ids, 0)?,
                Some(&biases.take(ids, 0)?),
                q.group_size,
                q.bits,
                QUANT_MODE,
            ),
        }
    }
    /// The embedding used as the output projection (tied weights).
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        self.0.forward(x)
    }
}

pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        x.rms_norm(&self.weight, self.eps)
    }
}
