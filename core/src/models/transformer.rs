//! The pre-norm decoder shared by the llama family: RMSNorm -> attention
//! (GQA, RoPE, optional q/k norm, optional fused qkv) -> residual -> RMSNorm
//! -> SwiGLU MLP -> residual. Written op for op like mlx-lm's model files.
use super::ArchConfig;
use crate::cache::{KvCache, StandardCache};
use crate::error::Result;
use crate::mlx::{Array, DecodeEpilogue, Dtype, Mask};
use crate::nn::{Embedding, Linear, QuantParams, RmsNorm};
use crate::rope::Rope;
use crate::weights::Weights;

mod prompt_graph;

enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    scale: f32,
}

enum Mlp {
    Separate { gate: Linear, up: Linear, down: Linear },
    Fused { gate_up: Linear, down: Linear, hidden: i32 },
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
}

/// Layers of a multi-row pass a GPU host may submit ahead of the device.
const GPU_AHEAD: usize = 2;

pub struct Transformer {
    pub config: ArchConfig,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rope: Rope,
    /// The dtype KV caches keep entries in, when narrower than the compute
    /// dtype (see StandardCache).
    kv_dtype: Option<Dtype>,
    /// Some(dtype) when every layer has the shape cider's fused GPU decode
    /// kernel handles, with projection and norm weights all of that dtype
    /// (see `hidden_fused`).
    fusable: Option<Dtype>,
    /// Whether the fused kernels for this model's shapes passed their check
    /// against MLX's ops (asked at the first fused step; see `fused_checked`).
    fused_ok: std::sync::OnceLock<bool>,
    /// Whether cider's attention + o projection kernel runs this model's
    /// fused steps (see `attn_checked`).
    attn_ok: std::sync::OnceLock<bool>,
    /// Whether cider's gemv runs the MLP's down projection in fused steps
    /// (see `down_checked`).
    down_ok: std::sync::OnceLock<bool>,
    /// Whether greedy decode steps can run as one CUDA graph, else why not
    /// (see `graph_ready`).
    graph_ok: std::sync::OnceLock<std::result::Result<(), String>>,
    /// The prompt pass as CUDA graphs (`prompt_graph.rs`): made, and checked
    /// against MLX's ops, at the first prompt that can take it; else why not.
    prompt_ok: std::sync::OnceLock<std::result::Result<(), String>>,
    prompt_graph: std::sync::Mutex<Option<crate::mlx::PromptGraph>>,
}

/// One greedy decode step built for a CUDA graph (`Transformer::graph_step`):
/// the token it samples, and what the graph's tail feeds it back through.
pub struct GraphStep {
    pub token: Array,
    /// The first layer's input (the token's embedding row).
    pub h0: Array,
    /// The step's position, 4 int32 from it (every kernel reads the first).
    pub pos: Array,
    /// The embedding table.
    pub table: Array,
}

// SAFETY: after loading, a Transformer is never mutated (but for `fused_ok`,
// `attn_ok` and `down_ok`, OnceLocks, themselves Sync); its arrays are
// evaluated, immutable MLX buffers whose handles are only cloned (an atomic
// refcount) when building graphs. Graph evaluation itself is serialised by
// `generate::mlx_lock`, so sharing the model between threads is sound.
unsafe impl Sync for Transformer {}

impl Attention {
    /// x: [B * L, hidden] (rows of B sequences of L positions) -> the same,
    /// or with `last` only each sequence's last row, [B, hidden] (all L
    /// positions still go into the cache).
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, x: &Array, b: i32, l: i32, mask: &Mask, cache: &mut dyn KvCache, rope: &Rope, last: bool) -> Result<Array> {
        let (hq, hk, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let offset = cache.offset();
        // Set when q and k come out already rotated.
        let mut roped = false;
        let (q, k, v) = if l == 1 {
            // One position (every decode step): [B, H * D] -> [B, H, 1, D]
            // moves no element, so a reshape gives the attention layout with
            // no transpose, and a fused projection's heads are sliced out of
            // [B, Hq + 2 Hk, 1, D] (1 reshape + 3 slices instead of 3 slices +
            // 3 reshapes): the same values with fewer graph nodes for MLX to
            // walk per token. The q/k norms normalise each head's row alone,
            // in any layout.
            let (q, k, v) = match &self.qkv {
                Qkv::Separate { q, k, v } => (
                    q.forward(x)?.reshape(&[b, hq, 1, d])?,
                    k.forward(x)?.reshape(&[b, hk, 1, d])?,
                    v.forward(x)?.reshape(&[b, hk, 1, d])?,
                ),
                Qkv::Fused(p) => {
                    let qkv = p.forward(x)?.reshape(&[b, hq + 2 * hk, 1, d])?;
                    // Without q/k norms between, q and k heads are adjacent
                    // here and take the same rotation (one position, per
                    // head), so one RoPE kernel rotates both: one kernel
                    // fewer per layer and token, where decode is bound by
                    // MLX's host time per kernel.
                    roped = self.q_norm.is_none();
                    let qk = qkv.slice_axis(1, 0, hq + hk)?;
                    let qk = if roped { rope.forward(&qk, offset)? } else { qk };
                    (qk.slice_axis(1, 0, hq)?, qk.slice_axis(1, hq, hq + hk)?, qkv.slice_axis(1, hq + hk, hq + 2 * hk)?)
                }
            };
            match (&self.q_norm, &self.k_norm) {
                (Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?, v),
                _ => (q, k, v),
            }
        } else {
            // A prompt chunk: op for op as mlx-lm's attention.
            let (q, k, v) = match &self.qkv {
                Qkv::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
                Qkv::Fused(p) => {
                    let qkv = p.forward(x)?;
                    let (qn, kn) = (hq * d, hk * d);
                    (qkv.slice_axis(-1, 0, qn)?, qkv.slice_axis(-1, qn, qn + kn)?, qkv.slice_axis(-1, qn + kn, qn + 2 * kn)?)
                }
            };
            let mut q = q.reshape(&[b, l, hq, d])?;
            let mut k = k.reshape(&[b, l, hk, d])?;
            if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
                q = qn.forward(&q)?;
                k = kn.forward(&k)?;
            }
            (
                q.transpose(&[0, 2, 1, 3])?,
                k.transpose(&[0, 2, 1, 3])?,
                v.reshape(&[b, l, hk, d])?.transpose(&[0, 2, 1, 3])?,
            )
        };
        let k = if roped { k } else { rope.forward(&k, offset)? };
        let (k, v) = cache.update_and_fetch(&k, &v)?;
        if last && l > 1 {
            // Only the last query: the same computation as a one-position
            // step at offset + l - 1, which sees every key (no mask).
            let q = rope.forward(&q.slice_axis(2, l - 1, l)?, offset + l - 1)?;
            let o = Array::sdpa(&q, &k, &v, self.scale, &Mask::None)?;
            return self.o_proj.forward(&o.reshape(&[b, hq * d])?);
        }
        let mut q = q;
        if l > 1 && b == 1 && matches!(mask, Mask::Causal) && !roped {
            // A short prompt on an NVIDIA GPU: cider's kernel, rows ready for
            // the o projection (core/cpp/gpu_pattn.cc says why). It rotates q
            // itself, at positions keys - l + i, where the RoPE is of its kind
            // and the cache returns every earlier key (StandardCache):
            // otherwise q is rotated first.
            let fused = if k.dim(2) == offset + l { rope.fused_params(d) } else { None };
            if fused.is_none() {
                q = rope.forward(&q, offset)?;
                roped = true;
            }
            if let Some(o) = Array::sdpa_causal_rows(&q, &k, &v, self.scale, fused)? {
                return self.o_proj.forward(&o);
            }
        }
        let q = if roped { q } else { rope.forward(&q, offset)? };
        let o = Array::sdpa(&q, &k, &v, self.scale, mask)?;
        let o = if l == 1 { o.reshape(&[b, hq * d])? } else { o.transpose(&[0, 2, 1, 3])?.reshape(&[b * l, hq * d])? };
        self.o_proj.forward(&o)
    }
}

impl Mlp {
    fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Mlp::Separate { gate, up, down } => down.forward(&Array::swiglu(&gate.forward(x)?, &up.forward(x)?)?),
            Mlp::Fused { gate_up, down, hidden } => {
                let gu = gate_up.forward(x)?;
                let gate = gu.slice_axis(-1, 0, *hidden)?;
                let up = gu.slice_axis(-1, *hidden, 2 * *hidden)?;
                down.forward(&Array::swiglu(&gate, &up)?)
            }
        }
    }
}

impl Transformer {
    pub fn load(config: ArchConfig, w: &mut Weights) -> Result<Transformer> {
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let eps = c.rms_norm_eps;
        // The checkpoint's activation dtype, as mlx-lm runs it: the
        // embedding's (its scales' when quantized).
        let stored = w.stored_dtype("model.embed_tokens.scales").or_else(|| w.stored_dtype("model.embed_tokens.weight"));
        let kv_dtype = match (w.cast, stored) {
            (Some(compute), Some(dt)) if dt.is_float() && dt.size() < compute.size() => Some(dt),
            _ => None,
        };
        let embed = w.embedding("model.embed_tokens", c.vocab_size, d)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            w.discard(&format!("{p}.self_attn.rotary_emb.inv_freq"));
            let (qd, kd) = (c.n_heads * hd, c.n_kv_heads * hd);
            let qkv = if c.fused {
                Qkv::Fused(w.linear(&format!("{p}.self_attn.qkv_proj"), d, qd + 2 * kd, c.qkv_bias)?)
            } else {
                let q = w.linear(&format!("{p}.self_attn.q_proj"), d, qd, c.qkv_bias)?;
                let k = w.linear(&format!("{p}.self_attn.k_proj"), d, kd, c.qkv_bias)?;
                let v = w.linear(&format!("{p}.self_attn.v_proj"), d, kd, c.qkv_bias)?;
                // Stacked into one projection: fewer kernels per decode step.
                match Linear::fuse(vec![q, k, v]) {
                    Ok(f) => Qkv::Fused(f),
                    Err(mut parts) => {
                        let v = parts.pop().unwrap();
                        let k = parts.pop().unwrap();
                        let q = parts.pop().unwrap();
                        Qkv::Separate { q, k, v }
                    }
                }
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(w.rms_norm(&format!("{p}.self_attn.q_norm"), hd, eps)?),
                    Some(w.rms_norm(&format!("{p}.self_attn.k_norm"), hd, eps)?),
                )
            } else {
                (None, None)
            };
            let attn = Attention {
                qkv,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), qd, d, c.o_bias)?,
                q_norm,
                k_norm,
                n_heads: c.n_heads as i32,
                n_kv_heads: c.n_kv_heads as i32,
                head_dim: hd as i32,
                scale: (hd as f64).powf(-0.5) as f32,
            };
            let im = c.intermediate_size;
            let mlp = if c.fused {
                Mlp::Fused {
                    gate_up: w.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * im, c.mlp_bias)?,
                    down: w.linear(&format!("{p}.mlp.down_proj"), im, d, c.mlp_bias)?,
                    hidden: im as i32,
                }
            } else {
                let gate = w.linear(&format!("{p}.mlp.gate_proj"), d, im, c.mlp_bias)?;
                let up = w.linear(&format!("{p}.mlp.up_proj"), d, im, c.mlp_bias)?;
                let down = w.linear(&format!("{p}.mlp.down_proj"), im, d, c.mlp_bias)?;
                match Linear::fuse(vec![gate, up]) {
                    Ok(gate_up) => Mlp::Fused { gate_up, down, hidden: im as i32 },
                    Err(mut parts) => {
                        let up = parts.pop().unwrap();
                        let gate = parts.pop().unwrap();
                        Mlp::Separate { gate, up, down }
                    }
                }
            };
            layers.push(Block {
                attn,
                mlp,
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
                post_norm: w.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
            });
        }
        let norm = w.rms_norm("model.norm", d, eps)?;
        let lm_head = if c.tie_word_embeddings {
            // mlx-lm drops a stored lm_head when the embeddings are tied.
            for n in ["weight", "scales", "biases"] {
                w.discard(&format!("lm_head.{n}"));
            }
            None
        } else {
            Some(w.linear("lm_head", d, c.vocab_size, false)?)
        };
        let rope = Rope::new(c.rope_dims, c.rope_traditional, c.rope.clone())?;
        let fused_dtype = layers.first().map(|l| l.input_norm.weight.dtype());
        let fusable = fused_dtype.filter(|&dt| {
            let dense = |x: &Linear| matches!(x, Linear::Dense { weight, split, .. } if split.is_empty() && weight.dtype() == dt);
            d % 8 == 0
                && d <= 8192
                && rope.fused_params(hd as i32).is_some()
                && layers.iter().all(|l| {
                    matches!(&l.attn.qkv, Qkv::Fused(p) if dense(p))
                        && l.attn.q_norm.is_none()
                        && matches!(&l.mlp, Mlp::Fused { gate_up, .. } if dense(gate_up))
                        && l.input_norm.weight.dtype() == dt
                        && l.post_norm.weight.dtype() == dt
                })
        });
        Ok(Transformer {
            config,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            kv_dtype,
            fusable,
            fused_ok: std::sync::OnceLock::new(),
            attn_ok: std::sync::OnceLock::new(),
            down_ok: std::sync::OnceLock::new(),
            graph_ok: std::sync::OnceLock::new(),
            prompt_ok: std::sync::OnceLock::new(),
            prompt_graph: std::sync::Mutex::new(None),
        })
    }

    /// ids: [B, L] int32 -> logits [B, L, vocab].
    pub fn forward(&self, ids: &Array, caches: &mut [Box<dyn KvCache>]) -> Result<Array> {
        let s = ids.shape();
        let (b, l) = (s[0], s[1]);
        let h = self.hidden(&ids.reshape(&[b * l])?, b, l, caches, false)?;
        let logits = self.head(&h)?;
        let v = logits.dim(-1);
        logits.reshape(&[b, l, v])
    }

    /// One sequence's ids [L] -> the logits of its last position, [1, vocab].
    /// Past the last layer's keys and values nothing depends on the other
    /// L - 1 rows, so its attention and MLP (and the head) run on the last
    /// row alone: the ops a one-position step would run, without the memory
    /// or work for rows nobody reads.
    pub fn forward_last(&self, ids: &Array, caches: &mut [Box<dyn KvCache>]) -> Result<Array> {
        if let Some(h) = self.prompt_graph_pass(ids, caches)? {
            return self.head(&h);
        }
        self.forward_last_mlx(ids, caches)
    }

    /// `forward_last` through MLX's ops (and cider's kernels in MLX's graph).
    fn forward_last_mlx(&self, ids: &Array, caches: &mut [Box<dyn KvCache>]) -> Result<Array> {
        let l = ids.dim(0);
        let h = self.hidden(ids, 1, l, caches, true)?;
        self.head(&h)
    }

    /// ids [B * L] -> the last layer's hidden states [B * L, hidden]. Rows are
    /// kept 2-d between layers: MLX multiplies a 3-d [B, L, hidden] by a
    /// weight by flattening it to 2-d and back, which is two more graph nodes
    /// per projection and the same matrix product.
    /// With `last` (one sequence), the last layer keeps only the last row.
    fn hidden(&self, ids: &Array, b: i32, l: i32, caches: &mut [Box<dyn KvCache>], last: bool) -> Result<Array> {
        // A prompt's ids were just written by the host, and MLX keeps such
        // arrays in CUDA managed memory: the first kernel to read them on
        // the GPU faults their page over. The embedding's gather, with
        // every thread reading ids, took 166 us that way on an H100 (a
        // 128-token prompt under ncu); copied first by a one-block kernel
        // (a cast to u32, the index type decode steps use) the pair costs
        // about 10 us more than ids already on the device
        // (bench/prompt_ids.py). (Metal's unified memory has no such fault.)
        let copied;
        let ids = if b * l > 1 && crate::mlx::device::is_cuda() {
            copied = ids.astype(Dtype::U32)?;
            &copied
        } else {
            ids
        };
        let mut h = self.embed.forward(ids)?;
        if b == 1
            && l == 1
            && self.fusable == Some(h.dtype())
            && crate::mlx::gpu_decode_ready(h.dtype())
            && self.fused_checked()
        {
            return self.hidden_fused(h, caches);
        }
        let mask = if l > 1 { Mask::Causal } else { Mask::None };
        let n = self.layers.len();
        let mut in_flight = std::collections::VecDeque::new();
        for (i, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            let last_rows = last && l > 1 && i + 1 == n;
            let r = layer.attn.forward(&layer.input_norm.forward(&h)?, b, l, &mask, cache.as_mut(), &self.rope, last_rows)?;
            if last_rows {
                // One sequence (forward_last): its last row.
                debug_assert_eq!(b, 1);
                h = h.slice_axis(0, l - 1, l)?;
            }
            let h2 = h.add(&r)?;
            let r = layer.mlp.forward(&layer.post_norm.forward(&h2)?)?;
            h = h2.add(&r)?;
            if l > 1 && i + 1 < n {
                // Evaluate a multi-row pass layer by layer. As one graph, MLX
                // walks all layers before its command buffers complete, and a
                // GPU buffer is only released once the kernels that read it
                // have run, so every layer's activations were alive together
                // (measured on an H100: +50 to +80 MB of peak over mlx-lm for
                // a 128-token prompt). On a GPU the submission is
                // asynchronous: waiting per layer left the device idle while
                // the host encoded the next (time to first token 1.5-2x). On
                // the CPU MLX allocates an op's output when it encodes it and
                // runs the kernel later, so an asynchronous host allocates
                // ahead of the kernels; waiting keeps about one layer alive
                // and costs one wait per layer while the host encodes the next
                // (SmolLM-135M bf16, 128 tokens: peak 279.57 -> 278.90 MB,
                // mlx-lm 278.81; bench/RESULTS.md).
                // A GPU host that submits faster than the device computes
                // (4-bit prompts on an H100) still ran ahead by many layers,
                // each holding its activations until run, so the host waits
                // for the layer GPU_AHEAD back: the device always has work
                // queued, and at most GPU_AHEAD + 1 layers are in flight.
                // (The handles kept for that wait hold one [L, hidden] row
                // block each.)
                if crate::mlx::device::is_gpu() {
                    crate::mlx::async_eval(&[&h])?;
                    in_flight.push_back(h.clone());
                    if in_flight.len() > GPU_AHEAD {
                        let done = in_flight.pop_front().unwrap();
                        crate::mlx::eval(&[&done])?;
                    }
                } else {
                    crate::mlx::eval(&[&h])?;
                }
            }
        }
        Ok(h)
    }

    /// One decode step (one sequence, one position, embedded as `h`) through
    /// cider's fused GPU kernel (core/cpp/gpu_decode.cc): per layer, one
    /// kernel for residual add + input norm + qkv projection + RoPE and one
    /// for residual add + post-attention norm + gate/up projection + SwiGLU,
    /// where the op-for-op path runs eleven nodes (five kernels, six views).
    /// The first also writes the keys and values into the cache's joint
    /// buffer in place (`KvCache::joint_slot`), which takes the two slice
    /// updates and three slices with it. The attention over the cache and the
    /// o projection are one more kernel (`gpu_attn_o`, up to its most
    /// positions; MLX's sdpa and matmul beyond), and the down projection
    /// another (`gpu_gemv`): a layer is 4 kernels where MLX's ops take 12
    /// kernels and 10 views (on an H100 both the nodes, host time, and the
    /// kernels' device time count). Each layer's MLP output is added to the
    /// residual by the next layer's kernel (by an add after the last).
    fn hidden_fused(&self, h: Array, caches: &mut [Box<dyn KvCache>]) -> Result<Array> {
        let offset = caches.first().map_or(0, |c| c.offset());
        let pos = Self::fused_pos(offset)?;
        match self.fused_layers(h, caches, &pos, None)? {
            (h, Some(r)) => h.add(&r),
            (h, None) => Ok(h),
        }
    }

    /// The position of a fused step at `offset`, made on the device (MLX's
    /// arange) and 16 bytes long though the kernels read one value: MLX's
    /// CUDA allocator puts arrays of up to 8 bytes in a small pool of
    /// managed memory that the host also writes (token ids, scalars) while
    /// the device runs, so its pages move back and forth; a one-value
    /// position (host-written or not) cost every qkv kernel about 20 us of
    /// device time on an H100 (ncu: 26-27 us against about 5 for its bytes).
    fn fused_pos(offset: i32) -> Result<Array> {
        Array::arange(offset, offset + 4, Dtype::I32)
    }

    /// `hidden_fused`'s layers at position `pos`: the last layer's residual
    /// stream and its MLP output, not yet added (None: no layers). The last
    /// down projection asks L2 for `last_next`'s first bytes.
    fn fused_layers(&self, mut h: Array, caches: &mut [Box<dyn KvCache>], pos: &Array, last_next: Option<&Array>) -> Result<(Array, Option<Array>)> {
        let caches_offset = caches.first().map_or(0, |c| c.offset());
        // Every layer has the same heads (ArchConfig), so one RoPE epilogue.
        let (hq, hk, d) = (self.config.n_heads as i32, self.config.n_kv_heads as i32, self.config.head_dim as i32);
        let (freqs, log2_base, scale) = self.rope.fused_params(d).expect("checked by `fusable` at load");
        let rope = DecodeEpilogue::Rope { rot: (hq + hk) * d, head_dim: d, pos, pos_value: caches_offset, freqs, log2_base, scale };
        // This step's attention and o projection in one kernel, where it
        // takes this many positions.
        let attn_o = caches_offset < crate::mlx::gpu_attn_o_max_positions() && self.attn_checked();
        let down_gemv = self.down_checked();
        let mut delta: Option<Array> = None;
        // Each kernel names the weights the next one reads, which it asks L2
        // for once its own are in (`l2_share` in core/cpp/gpu_decode_src.h
        // says why). The last layer's down projection names `last_next`:
        // none in MLX's steps, where binding the head's weights would add
        // 0.5 GB (a 1B model's) to MLX's byte count per graph
        // (gpu_decode.cc), a change not measured; the head in a CUDA graph's.
        fn dense(l: &Linear) -> Option<&Array> {
            match l {
                Linear::Dense { weight, .. } => Some(weight),
                _ => None,
            }
        }
        for (i, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            let a = &layer.attn;
            let next_qkv = match self.layers.get(i + 1) {
                Some(l) => match &l.attn.qkv {
                    Qkv::Fused(w) => dense(w),
                    _ => None,
                },
                None => last_next,
            };
            let (Qkv::Fused(Linear::Dense { weight: wqkv, bias: bqkv, .. }), Mlp::Fused { gate_up, down, .. }) = (&a.qkv, &layer.mlp)
            else {
                unreachable!("checked by `fusable` at load")
            };
            let Linear::Dense { weight: wgu, bias: bgu, .. } = gate_up else { unreachable!("checked by `fusable` at load") };
            let n = &layer.input_norm;
            // MLX's attention and o projection. The attention reads the
            // cache after this step's write: the next write (and any copy of
            // the buffer) waits for it.
            let attend = |q: &Array, k: &Array, v: &Array, cache: &mut Box<dyn KvCache>| -> Result<Array> {
                let o = Array::sdpa(q, k, v, a.scale, &Mask::None)?;
                cache.joint_written(&o);
                a.o_proj.forward(&o.reshape(&[1, hq * d])?)
            };
            let (h1, r) = match cache.joint_slot(hk, d, h.dtype())? {
                // Keys and values go straight into the cache: no slice
                // update, and q, k and v need no slicing out of one output.
                Some(slot) => {
                    let (buf, p) = (&slot.buf, slot.pos);
                    debug_assert_eq!(p, caches_offset);
                    let kv = Some((buf, hq * d, &slot.after));
                    let (h1, q) = crate::mlx::gpu_norm_gemv(&h, delta.as_ref(), &n.weight, n.eps, wqkv, bqkv.as_ref(), &rope, kv, dense(&a.o_proj))?;
                    if attn_o {
                        // Attention and o projection in one kernel that
                        // reads the buffer in place, after this step's write
                        // (it takes q): the next write waits for its output.
                        let Linear::Dense { weight: wo, bias: bo, .. } = &a.o_proj else { unreachable!("checked by `attn_checked`") };
                        let r = crate::mlx::gpu_attn_o(&q, buf, pos, p, wo, bo.as_ref(), a.scale, Some(wgu))?;
                        cache.joint_written(&r);
                        (h1, r)
                    } else {
                        let t = p + 1;
                        let (k, v) = (buf.slice(&[0, 0, 0, 0], &[1, hk, t, d])?, buf.slice(&[0, hk, 0, 0], &[1, 2 * hk, t, d])?);
                        (h1, attend(&q, &k, &v, cache)?)
                    }
                }
                None => {
                    let (h1, qkv) = crate::mlx::gpu_norm_gemv(&h, delta.as_ref(), &n.weight, n.eps, wqkv, bqkv.as_ref(), &rope, None, None)?;
                    let (k, v) = cache.update_and_fetch(&qkv.slice_axis(1, hq, hq + hk)?, &qkv.slice_axis(1, hq + hk, hq + 2 * hk)?)?;
                    (h1, attend(&qkv.slice_axis(1, 0, hq)?, &k, &v, cache)?)
                }
            };
            let n = &layer.post_norm;
            let (h2, act) = crate::mlx::gpu_norm_gemv(&h1, Some(&r), &n.weight, n.eps, wgu, bgu.as_ref(), &DecodeEpilogue::Swiglu, None, dense(down))?;
            delta = Some(match down {
                Linear::Dense { weight, bias, .. } if down_gemv => crate::mlx::gpu_gemv(&act, weight, bias.as_ref(), next_qkv)?,
                _ => down.forward(&act)?,
            });
            h = h2;
        }
        Ok((h, delta))
    }

    /// The head's weight as cider's kernels take it: dense, unsplit, no
    /// bias, [vocab, hidden] in `dt` (the embedding's when tied).
    fn dense_head(&self, dt: Dtype) -> Option<&Array> {
        let l = self.lm_head.as_ref().unwrap_or(&self.embed.0);
        match l {
            Linear::Dense { weight, bias: None, split, .. } if split.is_empty() && weight.dtype() == dt && weight.ndim() == 2 => Some(weight),
            _ => None,
        }
    }

    /// Whether this model's greedy decode steps can run as one CUDA graph
    /// (core/cpp/gpu_graph.cc): every layer through cider's fused kernels
    /// (q/k/v, attention + o, gate/up, down), the head as a fused norm +
    /// projection (checked here against MLX's ops, once), GPU greedy
    /// sampling, and the CUDA driver and NVRTC at hand. Err says why not.
    /// CIDER_GPU_GRAPH=0 turns it off.
    pub fn graph_ready(&self) -> std::result::Result<(), String> {
        self.graph_ok
            .get_or_init(|| {
                if std::env::var("CIDER_GPU_GRAPH").is_ok_and(|v| v == "0") {
                    return Err("turned off by CIDER_GPU_GRAPH=0".into());
                }
                let Some(dt) = self.fusable else { return Err("the model's layers do not take the fused kernels".into()) };
                if !crate::mlx::gpu_decode_ready(dt) || !self.fused_checked() || !self.attn_checked() || !self.down_checked() {
                    return Err("not every decode kernel runs this model here".into());
                }
                crate::mlx::gpu_graph_available()?;
                let Linear::Dense { weight: table, .. } = &self.embed.0 else { return Err("the embedding is quantized".into()) };
                let Some(head) = self.dense_head(dt) else { return Err("the head is not one dense [vocab, hidden] weight".into()) };
                let (v, k) = (head.dim(0), head.dim(1));
                if table.dtype() != dt || table.dim(1) != k {
                    return Err("the embedding table is not [vocab, hidden] in the activations' dtype".into());
                }
                crate::mlx::gpu_decode_check(dt, k, v, true, false, self.norm.eps, &DecodeEpilogue::Plain, 0)
                    .map_err(|e| format!("the head's kernel: {e}"))?;
                crate::mlx::gpu_greedy_check(dt, v).map_err(|e| format!("greedy sampling: {e}"))
            })
            .clone()
    }

    /// Gives every cache room for `positions` positions in place, for a
    /// CUDA graph's steps (false where a cache cannot).
    pub fn graph_reserve(&self, caches: &mut [Box<dyn KvCache>], positions: i32) -> Result<bool> {
        let (hk, d) = (self.config.n_kv_heads as i32, self.config.head_dim as i32);
        let Some(dt) = self.fusable else { return Ok(false) };
        // (Evaluated together: one wait, not one per layer.)
        for c in caches.iter_mut() {
            if !c.joint_reserve(hk, d, dt, positions)? {
                return Ok(false);
            }
        }
        let bufs: Vec<&Array> = caches.iter().filter_map(|c| c.joint_buffer()).collect();
        crate::mlx::eval(&bufs)?;
        Ok(true)
    }

    /// One greedy decode step of the token `id` ([1] uint32) with cider's
    /// kernels only, head included (`graph_ready` first): what a CUDA graph
    /// is traced from (`crate::mlx::gpu_graph_trace`), and its first step.
    pub fn graph_step(&self, id: &Array, caches: &mut [Box<dyn KvCache>], scratch: &mut crate::mlx::GreedyScratch) -> Result<GraphStep> {
        let dt = self.fusable.ok_or_else(|| crate::error::Error::backend("graph_step: the model takes no fused kernels"))?;
        let head = self.dense_head(dt).ok_or_else(|| crate::error::Error::backend("graph_step: the head is not dense"))?;
        let Linear::Dense { weight: table, .. } = &self.embed.0 else {
            return Err(crate::error::Error::backend("graph_step: the embedding is quantized"));
        };
        let h0 = self.embed.forward(id)?;
        let pos = Self::fused_pos(caches.first().map_or(0, |c| c.offset()))?;
        // Here the last down projection asks L2 for the head's first bytes,
        // and the head for the first layer's q/k/v weights (the next
        // replay's first kernel, after greedy sampling and the tail): in a
        // graph MLX's byte count per graph (see hidden_fused) is not at stake.
        let (h, delta) = self.fused_layers(h0.clone(), caches, &pos, Some(head))?;
        let delta = delta.ok_or_else(|| crate::error::Error::backend("graph_step: the model has no layers"))?;
        let first_qkv = self.layers.first().and_then(|l| match &l.attn.qkv {
            Qkv::Fused(Linear::Dense { weight, .. }) => Some(weight),
            _ => None,
        });
        let (_, logits) =
            crate::mlx::gpu_norm_gemv(&h, Some(&delta), &self.norm.weight, self.norm.eps, head, None, &DecodeEpilogue::Plain, None, first_qkv)?;
        let token = crate::mlx::gpu_greedy(&logits, scratch)?;
        Ok(GraphStep { token, h0, pos, table: table.clone() })
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether the fused kernels this model's decode steps run (q/k/v with
    /// RoPE writing the KV cache, with and without the residual add, and
    /// gate/up with SwiGLU) agree with MLX's ops on this GPU: checked once,
    /// at the first fused step, compiling only those kernels. Where they do
    /// not, steps take MLX's ops (the reason is in `gpu_kernels_status`).
    /// Runs the fused kernels' check now (compiling them) if this model's
    /// decode steps would take them, so a generation can do it before it
    /// starts measuring time and peak memory (the check allocates random
    /// weights of the model's shapes).
    pub fn prepare_decode(&self) {
        if let Some(dt) = self.fusable {
            if crate::mlx::gpu_decode_ready(dt) && self.fused_checked() {
                self.attn_checked();
                self.down_checked();
            }
        }
    }

    fn fused_checked(&self) -> bool {
        *self.fused_ok.get_or_init(|| {
            let (Some(dt), Some(layer)) = (self.fusable, self.layers.first()) else { return false };
            let (Qkv::Fused(Linear::Dense { weight: wqkv, bias: bqkv, .. }), Mlp::Fused { gate_up: Linear::Dense { weight: wgu, bias: bgu, .. }, .. }) = (&layer.attn.qkv, &layer.mlp)
            else {
                return false;
            };
            let (hq, hk, d) = (self.config.n_heads as i32, self.config.n_kv_heads as i32, self.config.head_dim as i32);
            let Some((freqs, log2_base, scale)) = self.rope.fused_params(d) else { return false };
            let k = wqkv.dim(1);
            // (The check makes its own position: `pos` is not read.)
            let rope = DecodeEpilogue::Rope { rot: (hq + hk) * d, head_dim: d, pos: wqkv, pos_value: 0, freqs, log2_base, scale };
            let (qkv_rows, eps_in, eps_post) = (wqkv.dim(0), layer.input_norm.eps, layer.post_norm.eps);
            [false, true].into_iter().all(|add| crate::mlx::gpu_decode_check(dt, k, qkv_rows, add, bqkv.is_some(), eps_in, &rope, hq * d).is_ok())
                && crate::mlx::gpu_decode_check(dt, k, wgu.dim(0), true, bgu.is_some(), eps_post, &DecodeEpilogue::Swiglu, 0).is_ok()
        })
    }

    /// Whether cider's attention + o projection kernel takes this model's
    /// fused steps: every layer's o projection dense in the activations'
    /// dtype, all with a bias or none, and the kernel's check against MLX's
    /// attention and matmul passed for these shapes. Asked once.
    fn attn_checked(&self) -> bool {
        *self.attn_ok.get_or_init(|| {
            let (Some(dt), Some(first)) = (self.fusable, self.layers.first()) else { return false };
            let Linear::Dense { weight, bias, .. } = &first.attn.o_proj else { return false };
            let same = self.layers.iter().all(|l| {
                matches!(&l.attn.o_proj, Linear::Dense { weight: w, bias: b, split, .. }
                    if split.is_empty() && w.dtype() == dt && w.shape() == weight.shape()
                        && b.is_some() == bias.is_some() && b.as_ref().is_none_or(|b| b.dtype() == dt))
                    && l.attn.scale == first.attn.scale
            });
            let (hq, hk, d) = (self.config.n_heads as i32, self.config.n_kv_heads as i32, self.config.head_dim as i32);
            same && weight.dim(1) == hq * d && crate::mlx::gpu_attn_o_check(dt, hq, hk, d, weight.dim(0), bias.is_some(), first.attn.scale).is_ok()
        })
    }

    /// Whether cider's gemv takes the MLP's down projection in this model's
    /// fused steps: every layer's down projection dense, unsplit, of one
    /// shape, in the activations' dtype, all with a bias or none, and the
    /// kernel's check against MLX's matmul passed for that shape. Asked once.
    fn down_checked(&self) -> bool {
        *self.down_ok.get_or_init(|| {
            let (Some(dt), Some(first)) = (self.fusable, self.layers.first()) else { return false };
            let Mlp::Fused { down: Linear::Dense { weight, bias, .. }, .. } = &first.mlp else { return false };
            let same = self.layers.iter().all(|l| {
                matches!(&l.mlp, Mlp::Fused { down: Linear::Dense { weight: w, bias: b, split, .. }, .. }
                    if split.is_empty() && w.dtype() == dt && w.shape() == weight.shape()
                        && b.is_some() == bias.is_some() && b.as_ref().is_none_or(|b| b.dtype() == dt && b.size() == w.dim(0) as usize))
            });
            same && crate::mlx::gpu_gemv_check(dt, weight.dim(1), weight.dim(0), bias.is_some()).is_ok()
        })
    }

    /// The activation dtype whose one-token steps can run through cider's
    /// fused GPU decode kernel (on a GPU, where its check passes: see
    /// `prepare_decode`).
    pub fn fused_decode_dtype(&self) -> Option<Dtype> {
        self.fusable
    }

    fn head(&self, h: &Array) -> Result<Array> {
        let h = self.norm.forward(h)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed.as_linear(&h),
        }
    }

    pub fn make_caches(&self) -> Vec<Box<dyn KvCache>> {
        (0..self.layers.len()).map(|_| Box::new(StandardCache::stored_as(self.kv_dtype)) as Box<dyn KvCache>).collect()
    }

    /// Cuts every projection, the tied output head included, into up to
    /// `workers` parts run on as many CPU streams (see `Linear::split_rows`).
    pub fn split_linears(&mut self, workers: usize) -> Result<()> {
        let mut v = vec![&mut self.embed.0];
        for l in &mut self.layers {
            match &mut l.attn.qkv {
                Qkv::Separate { q, k, v: vv } => v.extend([q, k, vv]),
                Qkv::Fused(p) => v.push(p),
            }
            v.push(&mut l.attn.o_proj);
            match &mut l.mlp {
                Mlp::Separate { gate, up, down } => v.extend([gate, up, down]),
                Mlp::Fused { gate_up, down, .. } => v.extend([gate_up, down]),
            }
        }
        v.extend(self.lm_head.iter_mut());
        v.into_iter().try_for_each(|l| l.split_rows(workers))
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut v = vec![&self.embed.0];
        for l in &self.layers {
            match &l.attn.qkv {
                Qkv::Separate { q, k, v: vv } => v.extend([q, k, vv]),
                Qkv::Fused(p) => v.push(p),
            }
            v.push(&l.attn.o_proj);
            match &l.mlp {
                Mlp::Separate { gate, up, down } => v.extend([gate, up, down]),
                Mlp::Fused { gate_up, down, .. } => v.extend([gate_up, down]),
            }
        }
        v.extend(self.lm_head.iter());
        v
    }

    /// Every weight array, for evaluating them once at load.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = self.linears().into_iter().flat_map(|l| l.arrays()).collect();
        v.extend(self.norms());
        v
    }

    /// Transposed views of the dense weights, evaluated after `arrays`.
    pub fn views(&self) -> Vec<&Array> {
        self.linears().into_iter().flat_map(|l| l.views()).collect()
    }

    fn norms(&self) -> Vec<&Array> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.push(&l.input_norm.weight);
            v.push(&l.post_norm.weight);
            if let Some(n) = &l.attn.q_norm {
                v.push(&n.weight);
            }
            if let Some(n) = &l.attn.k_norm {
                v.push(&n.weight);
            }
        }
        v.push(&self.norm.weight);
        v
    }

    pub fn weight_bytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }

    /// Parameter count as the checkpoint would have it unquantized.
    pub fn parameters(&self) -> u64 {
        let mut n: u64 = 0;
        for l in self.linears() {
            n += match l {
                Linear::Dense { weight, bias, .. } => weight.size() as u64 + bias.as_ref().map_or(0, |b| b.size() as u64),
                Linear::Quantized { weight, bias, q, .. } => {
                    let s = weight.shape();
                    (s[0] as u64 * s[1] as u64 * 32 / q.bits as u64) + bias.as_ref().map_or(0, |b| b.size() as u64)
                }
            };
        }
        n + self.norms().iter().map(|a| a.size() as u64).sum::<u64>()
    }

    /// Bits of the main weights: None when unquantized, else the most common width.
    pub fn quantization(&self) -> Option<QuantParams> {
        let mut counts: std::collections::HashMap<(i32, i32), usize> = Default::default();
        for l in self.linears() {
            if let Some(q) = l.quant() {
                *counts.entry((q.bits, q.group_size)).or_default() += 1;
            }
        }
        counts.into_iter().max_by_key(|(_, c)| *c).map(|((bits, group_size), _)| QuantParams { bits, group_size })
    }
}
