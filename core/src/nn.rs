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

/// MLX's CUDA backend runs a one-row quantized product with its fast
/// matrix-vector kernel only up to 16384 outputs (larger ones go to the
/// general matrix kernel, slower for one row). Stacking an 8B model's
/// gate and up projections (2 x 14336) would cross that, so such layers
/// stay separate.
pub const MAX_FUSED_QUANT_ROWS: i64 = 16384;

/// A bias is kept as a [1, out] row (made once at load), so adding it to a
/// decode step's [1, out] output needs no broadcast node; a prompt chunk's
/// [L, out] gets the same values broadcast as from an [out] vector.
///
/// `split` is empty, or the same layer cut by output rows into parts that
/// run on different CPU worker streams (see `Linear::split_rows`).
pub enum Linear {
    /// `wt` is `weight` transposed: a view made once (see `Linear::dense`).
    Dense { weight: Array, wt: Array, bias: Option<Array>, split: Vec<Linear> },
    Quantized { weight: Array, scales: Array, biases: Array, bias: Option<Array>, q: QuantParams, split: Vec<Linear> },
}

/// Output rows of each part of a split layer are a multiple of this, so
/// MLX's vectorised column blocks are never cut.
const SPLIT_ALIGN: i32 = 32;

impl Linear {
    /// A dense layer computing `x @ weight.T (+ bias)` as mlx.nn.Linear does.
    /// The transposed view is made here once and evaluated with the weights
    /// (`views`) instead of a fresh transpose node per call: the matmul gets
    /// the same strided input, so results are identical, and MLX has a node
    /// less to walk per layer and decode step.
    pub fn dense(weight: Array, bias: Option<Array>) -> Result<Linear> {
        let wt = weight.transpose(&[1, 0])?;
        Ok(Linear::Dense { weight, wt, bias, split: Vec::new() })
    }
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let split = match self {
            Linear::Dense { split, .. } | Linear::Quantized { split, .. } => split,
        };
        if split.is_empty() {
            return self.forward_on(x, 0);
        }
        let ys = split.iter().enumerate().map(|(i, p)| p.forward_on(x, i as i32)).collect::<Result<Vec<_>>>()?;
        let y = Array::concatenate_all(&ys.iter().collect::<Vec<_>>(), -1)?;
        match self {
            // Dense parts add their slice of the bias inside their addmm, as
            // the whole layer would; a quantized layer adds it after its
            // product in any case, so it is added once to the joined rows.
            Linear::Quantized { bias: Some(b), .. } => y.add(b),
            _ => Ok(y),
        }
    }
    fn forward_on(&self, x: &Array, worker: i32) -> Result<Array> {
        match self {
            Linear::Dense { wt, bias, .. } => match bias {
                Some(b) => Array::addmm_on(b, x, wt, worker),
                None => x.matmul_on(wt, worker),
            },
            Linear::Quantized { weight, scales, biases, bias, q, .. } => {
                let y = Array::quantized_matmul_on(x, weight, scales, Some(biases), true, q.group_size, q.bits, QUANT_MODE, worker)?;
                match bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                }
            }
        }
    }
    pub fn out_dim(&self) -> i32 {
        match self {
            Linear::Dense { weight, .. } | Linear::Quantized { weight, .. } => weight.dim(0),
        }
    }
    /// Cuts the layer by output rows into up to `workers` parts, part i to
    /// run on CPU worker stream i (`mlx::cpu_workers`), joined again after.
    /// MLX's CPU backend runs one stream's kernels on one thread; the parts
    /// run at once on as many cores. Each output element is still the dot
    /// product of the same weight row with the same input, computed by the
    /// same kernel, so results are bit-identical to the whole layer
    /// (core/tests/cpu_split.rs). The parts are views of the weights: no
    /// memory of their own. A layer too small for two aligned parts stays
    /// whole.
    pub fn split_rows(&mut self, workers: usize) -> Result<()> {
        let rows = self.out_dim();
        // Rows per part: an even share, rounded up to a multiple of SPLIT_ALIGN.
        let w = workers.max(1) as i32;
        let share = (rows + w - 1) / w;
        let per = (share + SPLIT_ALIGN - 1) / SPLIT_ALIGN * SPLIT_ALIGN;
        let mut parts = Vec::new();
        if workers >= 2 && per < rows {
            let mut lo = 0;
            while lo < rows {
                let hi = (lo + per).min(rows);
                parts.push(match &*self {
                    Linear::Dense { weight, bias, .. } => Linear::dense(
                        weight.slice_axis(0, lo, hi)?,
                        bias.as_ref().map(|b| b.slice_axis(-1, lo, hi)).transpose()?,
                    )?,
                    Linear::Quantized { weight, scales, biases, q, .. } => Linear::Quantized {
                        weight: weight.slice_axis(0, lo, hi)?,
                        scales: scales.slice_axis(0, lo, hi)?,
                        biases: biases.slice_axis(0, lo, hi)?,
                        bias: None,
                        q: *q,
                        split: Vec::new(),
                    },
                });
                lo = hi;
            }
        }
        match self {
            Linear::Dense { split, .. } | Linear::Quantized { split, .. } => *split = parts,
        }
        Ok(())
    }
    /// One linear computing all of `parts` side by side (weights stacked along
    /// the output axis), so a decode step launches one matrix-vector product
    /// instead of several. Each output element is still the dot product of
    /// the same row with the same input, reduced along the same axis, so the
    /// results match the separate layers. Gives the parts back unchanged when
    /// they cannot be stacked (dense mixed with quantized, different
    /// quantization, dtypes, or bias presence), or when a stacked quantized
    /// layer would have more than `MAX_FUSED_QUANT_ROWS` outputs.
    pub fn fuse(parts: Vec<Linear>) -> std::result::Result<Linear, Vec<Linear>> {
        // Weights stack along their output rows (axis 0), bias rows along
        // their last axis.
        let cat = Array::concatenate_all;
        if parts.len() < 2 {
            return Err(parts);
        }
        let rows: i64 = parts
            .iter()
            .map(|p| match p {
                Linear::Dense { weight, .. } | Linear::Quantized { weight, .. } => weight.dim(0) as i64,
            })
            .sum();
        if matches!(parts[0], Linear::Quantized { .. }) && rows > MAX_FUSED_QUANT_ROWS {
            return Err(parts);
        }
        let first = &parts[0];
        let same = parts.iter().all(|p| match (first, p) {
            (Linear::Dense { weight: w0, bias: b0, .. }, Linear::Dense { weight, bias, .. }) => {
                w0.dtype() == weight.dtype()
                    && w0.dim(1) == weight.dim(1)
                    && b0.is_some() == bias.is_some()
                    && b0.as_ref().zip(bias.as_ref()).map_or(true, |(x, y)| x.dtype() == y.dtype())
            }
            (
                Linear::Quantized { weight: w0, scales: s0, biases: z0, bias: b0, q: q0, .. },
                Linear::Quantized { weight, scales, biases, bias, q, .. },
            ) => {
                q0 == q
                    && w0.dim(1) == weight.dim(1)
                    && s0.dtype() == scales.dtype()
                    && z0.dtype() == biases.dtype()
                    && b0.is_some() == bias.is_some()
                    && b0.as_ref().zip(bias.as_ref()).map_or(true, |(x, y)| x.dtype() == y.dtype())
            }
            _ => false,
        });
        if !same {
            return Err(parts);
        }
        let fused = (|| -> Result<Linear> {
            let bias = match first {
                Linear::Dense { bias: Some(_), .. } | Linear::Quantized { bias: Some(_), .. } => Some(cat(
                    &parts
                        .iter()
                        .map(|p| match p {
                            Linear::Dense { bias, .. } | Linear::Quantized { bias, .. } => bias.as_ref().unwrap(),
                        })
                        .collect::<Vec<_>>(),
                    -1,
                )?),
                _ => None,
            };
            Ok(match first {
                Linear::Dense { .. } => {
                    let w: Vec<&Array> = parts
                        .iter()
                        .map(|p| match p {
                            Linear::Dense { weight, .. } => weight,
                            _ => unreachable!(),
                        })
                        .collect();
                    Linear::dense(cat(&w, 0)?, bias)?
                }
                Linear::Quantized { q, .. } => {
                    let pick = |i: usize| -> Vec<&Array> {
                        parts
                            .iter()
                            .map(|p| match p {
                                Linear::Quantized { weight, scales, biases, .. } => [weight, scales, biases][i],
                                _ => unreachable!(),
                            })
                            .collect()
                    };
                    Linear::Quantized {
                        weight: cat(&pick(0), 0)?,
                        scales: cat(&pick(1), 0)?,
                        biases: cat(&pick(2), 0)?,
                        bias,
                        q: *q,
                        split: Vec::new(),
                    }
                }
            })
        })();
        fused.map_err(|_| parts)
    }

    pub fn quant(&self) -> Option<QuantParams> {
        match self {
            Linear::Quantized { q, .. } => Some(*q),
            _ => None,
        }
    }
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Dense { weight, bias, .. } => weight.nbytes() + bias.as_ref().map_or(0, |b| b.nbytes()),
            Linear::Quantized { weight, scales, biases, bias, .. } => {
                weight.nbytes() + scales.nbytes() + biases.nbytes() + bias.as_ref().map_or(0, |b| b.nbytes())
            }
        }
    }
    /// Views over the weights, evaluated once after them (no memory of their
    /// own): the transposed weight and the split parts' slices.
    pub fn views(&self) -> Vec<&Array> {
        match self {
            Linear::Dense { wt, split, .. } => {
                std::iter::once(wt).chain(split.iter().flat_map(|p| p.arrays().into_iter().chain(p.views()))).collect()
            }
            Linear::Quantized { split, .. } => split.iter().flat_map(|p| p.arrays().into_iter().chain(p.views())).collect(),
        }
    }
    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            Linear::Dense { weight, bias, .. } => std::iter::once(weight).chain(bias.iter()).collect(),
            Linear::Quantized { weight, scales, biases, bias, .. } => {
                [weight, scales, biases].into_iter().chain(bias.iter()).collect()
            }
        }
    }
}

/// Token embedding; a quantized one dequantizes only the rows it looks up.
/// The second field is the compute dtype the looked-up rows are converted to
/// (rows dequantized with scales kept in a narrower dtype come out in it).
pub struct Embedding(pub Linear, pub Option<crate::mlx::Dtype>);

impl Embedding {
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match &self.0 {
            Linear::Dense { weight, .. } => weight.take(ids, 0),
            Linear::Quantized { weight, scales, biases, q, .. } => {
                let (mut s, mut b) = (scales.take(ids, 0)?, biases.take(ids, 0)?);
                if let Some(dt) = self.1 {
                    (s, b) = (s.astype(dt)?, b.astype(dt)?);
                }
                Array::dequantize(&weight.take(ids, 0)?, &s, Some(&b), q.group_size, q.bits, QUANT_MODE)
            }
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
