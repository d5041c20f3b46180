//! Per-layer key/value caches. A generation session owns its caches, so one
//! loaded model can serve many sessions at once.
use crate::error::Result;
use crate::mlx::{Array, Dtype};

pub trait KvCache: Send {
    /// Append keys/values of shape [B, kv_heads, L, head_dim] and return the
    /// full keys and values seen so far.
    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)>;
    /// Number of positions stored.
    fn offset(&self) -> i32;
    /// Forget the last `n` positions; returns how many were dropped.
    fn trim(&mut self, n: i32) -> i32;
    /// The arrays to evaluate to materialise the cache.
    fn state(&self) -> Vec<&Array>;
    fn nbytes(&self) -> usize;
    /// For one-position steps whose keys and values a kernel writes in
    /// place (cider's fused GPU decode): the buffer holding keys then values,
    /// [1, 2 * kv_heads, capacity, head_dim] of `dtype`, evaluated, with room
    /// for one more position, and that position, which counts as stored from
    /// now on. None where this cache cannot (then use `update_and_fetch`).
    /// MLX does not see those writes, so the caller must make the kernel run
    /// after `after`, and report through `joint_written` what its step
    /// computed from the buffer (reads included).
    fn joint_slot(&mut self, _kv_heads: i32, _head_dim: i32, _dtype: Dtype) -> Result<Option<JointSlot>> {
        Ok(None)
    }
    fn joint_written(&mut self, _writer: &Array) {}
    /// Makes the joint buffer (`joint_slot`) hold at least `positions`
    /// positions, so steps that write it unseen by MLX (CUDA graphs of
    /// decode steps or of a prompt) never need it to grow. Left unevaluated:
    /// the caller evaluates every cache's buffer (`joint_buffer`) at once,
    /// one wait rather than one per cache, before such a write. False where
    /// this cache has no joint buffer.
    fn joint_reserve(&mut self, _kv_heads: i32, _head_dim: i32, _dtype: Dtype, _positions: i32) -> Result<bool> {
        Ok(false)
    }
    /// Counts `n` more positions as stored: written into the joint buffer
    /// by such steps, which have all finished.
    fn joint_advance(&mut self, _n: i32) {}
    /// The joint buffer (`joint_slot`), where this cache has one.
    fn joint_buffer(&self) -> Option<&Array> {
        None
    }
}

pub struct JointSlot {
    pub buf: Array,
    pub pos: i32,
    pub after: Array,
}

/// The standard growing cache. Like mlx-lm's `KVCache`, it grows in steps
/// (256 positions; 255 on a GPU, see `step`) and writes new entries with
/// slice updates, so no step re-copies the whole history. Unlike it, the
/// first write (the prompt) is kept as it comes (compact: one copy for
/// transposed values), with no room to grow: the buffer with room is made
/// by the next write, the first decode step, with one copy of the prompt's
/// entries (the copy mlx-lm makes when a cache outgrows a step). The prompt
/// pass then runs no zero fill and no slice update per layer (kernels the
/// host pays for before the first token; the work moves after it), and
/// holds the prompt's positions instead of a whole step while its
/// activations are alive, which is where peak memory is reached on short
/// prompts.
///
/// `store` narrows what is kept: under a float32 compute dtype the cache
/// holds the checkpoint's bf16/f16, as mlx-lm's does, so it costs mlx-lm's
/// memory instead of twice it. Entries are widened back for attention.
#[derive(Default)]
pub struct StandardCache {
    keys: Option<Array>,
    values: Option<Array>,
    /// Keys and values in one buffer, keys first along axis 1 (see
    /// `joint_slot`); when set, `keys` and `values` are None.
    joint: Option<Array>,
    /// What the last step that wrote into `joint` computed from it (its
    /// attention output): everything before it, writes and reads, is done
    /// once this is.
    writer: Option<Array>,
    offset: i32,
    store: Option<Dtype>,
}

/// Positions a cache grows by. mlx-lm's step (256) on the CPU. On a GPU one
/// fewer: MLX's CUDA backend sends a one-query attention over a cache whose
/// allocated length is a multiple of 256 (mlx-lm's layout, from 256
/// positions on) to cuDNN instead of its own vector kernel, which costs 20
/// instead of 6 us of host time per call on an H100 (`bench/node_cost.py`):
/// 0.2 ms per token for a 16-layer model, whose decode is bound by host time.
/// A length of 255k is a multiple of 256 only from 65280 positions on. Rows
/// stay aligned (a row is head_dim elements); memory is what mlx-lm uses.
fn step() -> i32 {
    if crate::mlx::device::is_gpu() {
        255
    } else {
        256
    }
}

impl StandardCache {
    /// Waits for the kernels that wrote into `joint` unseen by MLX (and the
    /// attention that read it), before MLX's own ops copy or slice it.
    fn settle_writes(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w.eval(),
            None => Ok(()),
        }
    }

    /// A cache that keeps entries in `store` (None: as they come).
    pub fn stored_as(store: Option<Dtype>) -> Self {
        StandardCache { store, ..Self::default() }
    }
}

/// Entries back in the compute dtype, for attention.
fn widen(k: Array, v: Array, compute: Dtype) -> Result<(Array, Array)> {
    if k.dtype() != compute {
        return Ok((k.astype(compute)?, v.astype(compute)?));
    }
    Ok((k, v))
}

impl KvCache for StandardCache {
    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        if let Some(j) = self.joint.take() {
            self.settle_writes()?;
            // Back to separate buffers (a multi-position update after fused
            // steps): views of the joint one, copied by the next write.
            let (n, h) = (j.dim(1), j.dim(1) / 2);
            self.keys = Some(j.slice_axis(1, 0, h)?);
            self.values = Some(j.slice_axis(1, h, n)?);
        }
        let compute = keys.dtype();
        let narrowed;
        let (keys, values) = match self.store {
            Some(dt) if dt != compute => {
                narrowed = (keys.astype(dt)?, values.astype(dt)?);
                (&narrowed.0, &narrowed.1)
            }
            _ => (keys, values),
        };
        let prev = self.offset;
        let ks = keys.shape();
        let vs = values.shape();
        let n = ks[2];
        let (Some(k), Some(v)) = (self.keys.take(), self.values.take()) else {
            // The first write. Stored compact: a view (of a fused projection's
            // output) would keep its whole buffer alive.
            let (k, v) = (keys.contiguous()?, values.contiguous()?);
            self.offset = n;
            self.keys = Some(k.clone());
            self.values = Some(v.clone());
            return widen(k, v, compute);
        };
        let capacity = k.dim(2);
        let (k, v) = if prev + n > capacity {
            // Grow to the next multiple of the step that holds them.
            let step = step();
            let cap = (prev + n + step - 1) / step * step;
            let new_k = Array::zeros(&[ks[0], ks[1], cap - prev, ks[3]], keys.dtype())?;
            let new_v = Array::zeros(&[vs[0], vs[1], cap - prev, vs[3]], values.dtype())?;
            // Past a trim, positions beyond the offset are stale.
            let (k, v) = if prev < capacity { (k.slice_axis(2, 0, prev)?, v.slice_axis(2, 0, prev)?) } else { (k, v) };
            (Array::concatenate(&k, &new_k, 2)?, Array::concatenate(&v, &new_v, 2)?)
        } else {
            (k, v)
        };
        self.offset += n;
        let k = k.slice_update(keys, &[0, 0, prev, 0], &[ks[0], ks[1], self.offset, ks[3]])?;
        let v = v.slice_update(values, &[0, 0, prev, 0], &[vs[0], vs[1], self.offset, vs[3]])?;
        let cap = k.dim(2);
        let out = if self.offset < cap {
            (k.slice_axis(2, 0, self.offset)?, v.slice_axis(2, 0, self.offset)?)
        } else {
            (k.clone(), v.clone())
        };
        self.keys = Some(k);
        self.values = Some(v);
        widen(out.0, out.1, compute)
    }
    fn offset(&self) -> i32 {
        self.offset
    }
    fn trim(&mut self, n: i32) -> i32 {
        let n = n.min(self.offset);
        self.offset -= n;
        n
    }
    fn state(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).chain(self.joint.iter()).collect()
    }
    fn nbytes(&self) -> usize {
        [&self.keys, &self.values, &self.joint].iter().map(|a| a.as_ref().map_or(0, |x| x.nbytes())).sum()
    }
    /// The buffer is made (from the separate keys and values, as the first
    /// decode step after a prompt) and grown by `step()` positions with
    /// MLX's ops, then evaluated, so the kernel gets a materialised buffer
    /// this cache alone holds: about once per 255 steps, a wait for the
    /// device. Positions past the offset (after a trim) are stale and
    /// overwritten.
    fn joint_slot(&mut self, kv_heads: i32, head_dim: i32, dtype: Dtype) -> Result<Option<JointSlot>> {
        if !self.grow_joint(kv_heads, head_dim, dtype, self.offset + 1, true)? {
            return Ok(None);
        }
        let pos = self.offset;
        self.offset += 1;
        let buf = self.joint.clone().unwrap();
        let after = self.writer.clone().unwrap_or_else(|| buf.clone());
        Ok(Some(JointSlot { buf, pos, after }))
    }
    fn joint_written(&mut self, writer: &Array) {
        self.writer = Some(writer.clone());
    }
    fn joint_reserve(&mut self, kv_heads: i32, head_dim: i32, dtype: Dtype, positions: i32) -> Result<bool> {
        self.grow_joint(kv_heads, head_dim, dtype, positions, false)
    }
    fn joint_buffer(&self) -> Option<&Array> {
        self.joint.as_ref()
    }
    fn joint_advance(&mut self, n: i32) {
        self.offset += n;
        // Whoever wrote last has finished: nothing for MLX to wait on.
        self.writer = None;
    }
}

impl StandardCache {
    /// Makes the joint buffer hold at least `want` positions (false where
    /// this cache keeps another dtype).
    /// (Evaluated with `eval`.)
    fn grow_joint(&mut self, kv_heads: i32, head_dim: i32, dtype: Dtype, want: i32, eval: bool) -> Result<bool> {
        if self.store.is_some_and(|s| s != dtype) {
            return Ok(false);
        }
        let pos = self.offset;
        let cap = self.joint.as_ref().map_or(0, |j| j.dim(2));
        if want > cap {
            self.settle_writes()?;
            let old = match (self.joint.take(), self.keys.take(), self.values.take()) {
                (Some(j), ..) => Some(j.slice_axis(2, 0, pos)?),
                (None, Some(k), Some(v)) => {
                    Some(Array::concatenate(&k.slice_axis(2, 0, pos)?, &v.slice_axis(2, 0, pos)?, 1)?)
                }
                _ => None,
            };
            if let Some(o) = &old {
                let s = o.shape();
                if o.dtype() != dtype || s[0] != 1 || s[1] != 2 * kv_heads || s[3] != head_dim {
                    return Err(crate::error::Error::backend(format!(
                        "KV cache holds {:?} {:?}, a fused decode step needs [1, {}, _, {}] {:?}",
                        o.dtype(),
                        s,
                        2 * kv_heads,
                        head_dim,
                        dtype
                    )));
                }
            }
            let step = step();
            let new_cap = (want.max(pos + 1) + step - 1) / step * step;
            let fresh = Array::zeros(&[1, 2 * kv_heads, new_cap - pos, head_dim], dtype)?;
            let j = match old {
                Some(o) if pos > 0 => Array::concatenate(&o, &fresh, 2)?,
                _ => fresh.contiguous()?,
            };
            if eval {
                j.eval()?;
            }
            self.joint = Some(j);
        }
        Ok(true)
    }
}
