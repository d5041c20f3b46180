//! Logit processors and samplers, built from MLX ops in the same order as
//! mlx-lm's `sample_utils.py`, so greedy decoding matches it exactly and the
//! filters keep the same tokens.
use crate::error::{Error, Result};
use crate::mlx::{Array, Dtype};

#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling; 0 or >= 1 disables it.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables it.
    pub top_k: u32,
    /// Keep tokens with probability >= min_p * p(top token); 0 disables it.
    pub min_p: f32,
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_p: 1.0, top_k: 0, min_p: 0.0, seed: None }
    }
}

impl SamplerConfig {
    pub fn validate(&self, vocab: usize) -> Result<()> {
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return Err(Error::invalid_arg(format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::invalid_arg(format!("top_p must be in [0, 1], got {}", self.top_p)));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid_arg(format!("min_p must be in [0, 1], got {}", self.min_p)));
        }
        if self.top_k as usize >= vocab && self.top_k != 0 {
            return Err(Error::invalid_arg(format!(
                "top_k must be below the vocabulary size ({vocab}), got {}",
                self.top_k
            )));
        }
        Ok(())
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    key: Option<Array>,
}

fn neg_inf(dtype: Dtype) -> Result<Array> {
    Array::scalar(f64::NEG_INFINITY, dtype)
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        let key = if cfg.temperature > 0.0 {
            let seed = cfg.seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
            });
            Some(Array::random_key(seed)?)
        } else {
            None
        };
        Ok(Sampler { cfg, key })
    }

    /// Temperature 0: the argmax, no randomness.
    pub fn is_greedy(&self) -> bool {
        self.cfg.temperature == 0.0
    }

    /// logprobs: [1, vocab] -> sampled ids [1] (lazy).
    pub fn sample(&mut self, logprobs: &Array) -> Result<Array> {
        let c = &self.cfg;
        if c.temperature == 0.0 {
            return logprobs.argmax(-1, false);
        }
        let mut lp = logprobs.clone();
        if c.top_p > 0.0 && c.top_p < 1.0 {
            lp = apply_top_p(&lp, c.top_p)?;
        }
        if c.min_p != 0.0 {
            lp = apply_min_p(&lp, c.min_p)?;
        }
        if c.top_k > 0 {
            lp = apply_top_k(&lp, c.top_k)?;
        }
        let key = self.key.take().expect("a sampling key exists when temperature > 0");
        let (next, sub) = key.random_split()?;
        self.key = Some(next);
        Array::categorical(&lp.mul_scalar(1.0 / c.temperature as f64)?, &sub)
    }
}

fn apply_top_k(lp: &Array, k: u32) -> Result<Array> {
    let v = lp.dim(-1);
    let idx = lp.neg()?.argpartition(k as i32 - 1, -1)?;
    let drop = idx.slice_axis(-1, k as i32, v)?;
    lp.put_along_axis(&drop, &neg_inf(lp.dtype())?, -1)
}

fn apply_min_p(lp: &Array, min_p: f32) -> Result<Array> {
    let top = lp.max_axis(-1, true)?;
    let threshold = top.add_scalar((min_p as f64).ln())?;
    let remove = lp.less(&threshold)?;
    Array::where_(&remove, &neg_inf(lp.dtype())?, lp)
}

fn apply_top_p(lp: &Array, top_p: f32) -> Result<Array> {
    let sorted = lp.sort(-1)?;
    let probs = sorted.astype(Dtype::F32)?.exp()?;
    let mass_above = probs.cumsum(-1, true, false)?;
    let total = mass_above.slice_axis(-1, 0, 1)?.add(&probs.slice_axis(-1, 0, 1)?)?;
    let dropped = mass_above
        .greater_equal(&total.mul_scalar(top_p as f64)?)?
        .sum_axis(-1, true)?;
    let threshold = sorted.take_along_axis(&dropped, -1)?;
    Array::where_(&lp.less(&threshold)?, &neg_inf(lp.dtype())?, lp)
}

/// mlx-lm's repetition penalty: over the last `context` tokens, divide
/// positive logits by `penalty` and multiply negative ones by it.
pub fn apply_repetition_penalty(logits: &Array, history: &Array, penalty: f32, context: usize) -> Result<Array> {
    let n = history.dim(0);
    if n == 0 {
        return Ok(logits.clone());
    }
    let start = (n - context as i32).max(0);
    let toks = history.slice_axis(0, start, n)?.reshape(&[1, -1])?;
    let selected = logits.take_along_axis(&toks, -1)?;
    let zero = Array::scalar(0.0, selected.dtype())?;
    let penalized = Array::where_(
        &selected.less(&zero)?,
        &selected.mul_scalar(penalty as f64)?,
        &selected.div(&Array::scalar(penalty as f64, selected.dtype())?)?,
    )?;
    logits.put_along_axis(&toks, &penalized, -1)
}
