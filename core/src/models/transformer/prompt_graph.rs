//! A dense model's prompt pass as one CUDA graph per bucket of prompt
//! lengths (core/cpp/gpu_prompt.cc says why and how): for a fresh sequence
//! on an NVIDIA GPU, in place of `hidden`'s MLX graph, whose host time is
//! what a short prompt's first token waits for there.
use super::{Mlp, Qkv, Transformer};
use crate::cache::KvCache;
use crate::error::Result;
use crate::mlx::{Array, PromptGraph};
use crate::nn::Linear;

/// The self-check's prompt: not a multiple of the graph's bucket (32), so
/// the padded rows are exercised too.
const CHECK_LEN: i32 = 37;


impl Transformer {
    /// One fresh sequence's prompt through a CUDA graph: the last position's
    /// residual stream [1, hidden] (the head is the caller's), with every
    /// layer's keys and values in its cache. None where the graph does not
    /// apply (then MLX's ops run the pass).
    pub(super) fn prompt_graph_pass(&self, ids: &Array, caches: &mut [Box<dyn KvCache>]) -> Result<Option<Array>> {
        if ids.ndim() != 1 || !crate::mlx::device::is_cuda() || !crate::mlx::gpu_kernels_on() {
            return Ok(None);
        }
        let l = ids.dim(0);
        if l < 2 || l > PromptGraph::max_rows() || caches.len() != self.layers.len() || caches.iter().any(|c| c.offset() != 0) {
            return Ok(None);
        }
        if let Err(why) = self.prompt_ready() {
            PromptGraph::note(&format!("off: {why}"));
            return Ok(None);
        }
        let ids = ids.to_vec_i32()?;
        // (Ids outside the table: the op-for-op pass, as ever.)
        if ids.iter().any(|&t| t < 0 || t as usize >= self.config.vocab_size) {
            return Ok(None);
        }
        // A failure here (memory for a new bucket's graph, a CUDA error)
        // leaves the caches at offset 0, which MLX's pass then fills.
        match self.run_prompt_graph(&ids, caches) {
            Ok(Some(h)) => {
                PromptGraph::note(&format!("on (up to {} tokens, in buckets of {})", PromptGraph::max_rows(), PromptGraph::bucket()));
                Ok(Some(h))
            }
            Ok(None) => {
                PromptGraph::note("off: a KV cache cannot be written in place");
                Ok(None)
            }
            Err(e) => {
                PromptGraph::note(&format!("off for a prompt of {} tokens: {e}", ids.len()));
                Ok(None)
            }
        }
    }

    /// The pass itself (no readiness check): None where a cache cannot hold
    /// the keys and values in place.
    fn run_prompt_graph(&self, ids: &[i32], caches: &mut [Box<dyn KvCache>]) -> Result<Option<Array>> {
        let (hk, d) = (self.config.n_kv_heads as i32, self.config.head_dim as i32);
        let Some(dt) = self.fusable else { return Ok(None) };
        // Room for the padded rows too: the graph writes them (past the
        // sequence's end, where the next step's entry overwrites them).
        let b = PromptGraph::bucket();
        let rows = (ids.len() as i32 + b - 1) / b * b;
        for c in caches.iter_mut() {
            if !c.joint_reserve(hk, d, dt, rows)? {
                return Ok(None);
            }
        }
        let bufs: Vec<&Array> = caches.iter().map(|c| c.joint_buffer()).collect::<Option<_>>().ok_or_else(|| {
            crate::error::Error::backend("prompt graph: a KV cache reserved room but has no joint buffer")
        })?;
        crate::mlx::eval(&bufs)?;
        let h = {
            let mut g = self.prompt_graph.lock().unwrap_or_else(|e| e.into_inner());
            let Some(g) = g.as_mut() else { return Ok(None) };
            g.run(ids, &bufs)?
        };
        for c in caches.iter_mut() {
            c.joint_advance(ids.len() as i32);
        }
        Ok(Some(h))
    }

    /// Whether this model's prompts run as CUDA graphs, else why not: made
    /// and checked once (CIDER_GPU_PROMPT_GRAPH=0 turns it off).
    fn prompt_ready(&self) -> std::result::Result<(), String> {
        self.prompt_ok
            .get_or_init(|| {
                let made = self.make_prompt_graph()?;
                *self.prompt_graph.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
                let checked = self.prompt_self_check().map_err(|e| e.to_string()).and_then(|r| r).map_err(|e| format!("self-check: {e}"));
                if checked.is_err() {
                    *self.prompt_graph.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                checked?;
                Ok(())
            })
            .clone()
    }

    fn make_prompt_graph(&self) -> std::result::Result<PromptGraph, String> {
        let Some(dt) = self.fusable else {
            return Err("the model's layers are not dense bf16/f16 with fused q/k/v and gate/up, without q/k norms".into());
        };
        // (weight, bias)
        fn dense(l: &Linear) -> Option<(&Array, Option<&Array>)> {
            match l {
                Linear::Dense { weight, bias, split, .. } if split.is_empty() => Some((weight, bias.as_ref())),
                _ => None,
            }
        }
        let mut w: Vec<&Array> = Vec::with_capacity(self.layers.len() * 10 + 2);
        let mut biases: Vec<&Array> = Vec::new();
        let (mut inter, mut mask) = (0, None);
        for (i, layer) in self.layers.iter().enumerate() {
            let (Qkv::Fused(qkv), Mlp::Fused { gate_up, down, hidden }) = (&layer.attn.qkv, &layer.mlp) else {
                return Err(format!("layer {i}'s projections are not fused"));
            };
            let (Some(qkv), Some(o), Some(gu), Some(down)) = (dense(qkv), dense(&layer.attn.o_proj), dense(gate_up), dense(down)) else {
                return Err(format!("layer {i} has a quantized or split projection"));
            };
            // Bits as gpu_prompt.cc takes them: 1 q/k/v, 2 o, 4 gate/up, 8 down.
            let parts = [qkv, o, gu, down];
            let bits = parts.iter().enumerate().fold(0, |m, (j, p)| m | if p.1.is_some() { 1 << j } else { 0 });
            if *mask.get_or_insert(bits) != bits {
                return Err(format!("layer {i}'s projections have biases where layer 0's have none, or the other way"));
            }
            biases.extend(parts.iter().filter_map(|p| p.1));
            if layer.input_norm.eps != self.norm.eps || layer.post_norm.eps != self.norm.eps {
                return Err("the norms' epsilons differ".into());
            }
            inter = *hidden;
            w.extend([&layer.input_norm.weight, qkv.0, o.0, &layer.post_norm.weight, gu.0, down.0]);
        }
        let Linear::Dense { weight: table, .. } = &self.embed.0 else { return Err("the embedding is quantized".into()) };
        w.push(table);
        let c = &self.config;
        let (freqs, log2_base, rope_scale) = self.rope.fused_params(c.head_dim as i32).ok_or("the RoPE is not one the kernels compute")?;
        if let Some(f) = freqs {
            w.push(f);
        }
        w.extend(biases);
        if table.dtype() != dt {
            return Err("the embedding table is not in the activations' dtype".into());
        }
        let dims = [c.hidden_size as i32, c.n_heads as i32, c.n_kv_heads as i32, c.head_dim as i32, inter, self.layers.len() as i32, table.dim(0), mask.unwrap_or(0)];
        let scale = self.layers.first().map_or(1.0, |l| l.attn.scale);
        PromptGraph::new(&w, &dims, self.norm.eps, scale, if freqs.is_some() { 2 } else { 1 }, log2_base, rope_scale).map_err(|e| e.to_string())
    }

    /// The graph's pass against MLX's ops on a prompt of CHECK_LEN ids, then
    /// one decode step on each pair of caches (which reads the keys and
    /// values the graph wrote): logits within 2 % of the largest.
    fn prompt_self_check(&self) -> Result<std::result::Result<(), String>> {
        let vocab = self.config.vocab_size as i64;
        let ids: Vec<i32> = (0..CHECK_LEN as i64).map(|i| ((i * 7919 + 13) % vocab) as i32).collect();
        let (mut mine, mut theirs) = (self.make_caches(), self.make_caches());
        let Some(h) = self.run_prompt_graph(&ids, &mut mine)? else {
            return Ok(Err("a KV cache cannot be written in place".into()));
        };
        let got = self.head(&h)?;
        let want = self.forward_last_mlx(&Array::from_i32(&ids, &[CHECK_LEN])?, &mut theirs)?;
        if let Err(e) = close(&got, &want)? {
            return Ok(Err(format!("prompt logits: {e}")));
        }
        let next = Array::from_i32(&[ids[3]], &[1])?;
        let got = self.forward_last_mlx(&next, &mut mine)?;
        let want = self.forward_last_mlx(&next, &mut theirs)?;
        Ok(close(&got, &want)?.map_err(|e| format!("the next step's logits: {e}")))
    }
}

/// Every element of `got` within 2 % of `want`'s largest magnitude.
fn close(got: &Array, want: &Array) -> Result<std::result::Result<(), String>> {
    let (g, w) = (got.to_vec_f32()?, want.to_vec_f32()?);
    if g.len() != w.len() {
        return Ok(Err(format!("{} values against {}", g.len(), w.len())));
    }
    let top = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let (mut worst, mut at) = (0f32, 0);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        if d.is_nan() {
            return Ok(Err(format!("{a} against {b} at {i}")));
        }
        if d > worst {
            (worst, at) = (d, i);
        }
    }
    if worst > 0.02 * top {
        return Ok(Err(format!("max |diff| {worst} (at {at}) of {top}")));
    }
    Ok(Ok(()))
}
