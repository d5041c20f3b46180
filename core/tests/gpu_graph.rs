//! Greedy decode steps replayed as one CUDA graph (core/cpp/gpu_graph.cc)
//! must be used where they apply and pick, at every step, a token that is
//! the argmax of the logits MLX's own ops give for that history (checked by
//! feeding the graph's tokens back through the model step by step: a wrong
//! position, cache slot or fed-back token picks tokens those logits do not
//! favour). Rounding may order near-ties differently (the graph's head is
//! cider's kernel, MLX's path a cuBLAS matmul), so a pick within 2 % of the
//! largest logit's size of the maximum counts as the argmax.
//! Needs the CUDA build of MLX (mlx-cuda); skips elsewhere, so CI here skips
//! it: it is run on the lent GPU machine (bench/RESULTS.md).
mod common;

use common::*;
use cider_core::mlx::{self, Array, Dtype};
use cider_core::{GenerateOptions, Model, Session, StreamEvent};
use std::sync::Arc;

#[test]
fn gpu_graph_steps_pick_mlx_argmax() {
    if !cuda_kernels_testable() {
        return;
    }
    for (i, (dtype, bias, hidden)) in [(Dtype::BF16, false, 256), (Dtype::F16, true, 512)].into_iter().enumerate() {
        let dir = tmpdir(&format!("gpu-graph-{i}"));
        write_model(&dir, &Spec { hidden, inter: 2 * hidden, heads: hidden / 64, kv_heads: hidden / 128, dtype, bias, ..Default::default() });
        let m = Arc::new(Model::load(&dir).unwrap());
        let kind = format!("{dtype:?} bias {bias} hidden {hidden}");
        let prompt: Vec<u32> = (0..12).map(|k| ((k * 7 + 3) % WORDS.len()) as u32).collect();
        let opts = GenerateOptions { max_tokens: 300, ignore_eos: true, ..Default::default() };
        let r = Session::new(m.clone()).generate(&prompt, &opts, &mut |_: &StreamEvent| true).unwrap();
        let status = mlx::gpu_kernels_status();
        assert!(status.contains("decode CUDA graph: on"), "{kind}: the graph was not used: {status}");
        assert_eq!(r.tokens.len(), 300, "{kind}");

        // The same history through MLX's ops (cider's kernels off), one
        // step at a time.
        mlx::set_gpu_kernels(false);
        let mut caches = m.net.make_caches();
        let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
        let mut logits = m.forward(&Array::from_i32(&ids, &[1, ids.len() as i32]).unwrap(), &mut caches).unwrap();
        for (step, &t) in r.tokens.iter().enumerate() {
            let l = logits.astype(Dtype::F32).unwrap().to_vec_f32().unwrap();
            let v = l.len() / logits.dim(1) as usize;
            let row = &l[l.len() - v..];
            let (top, max) = row.iter().fold((0f32, f32::MIN), |(a, m), &x| (a.max(x.abs()), m.max(x)));
            assert!(
                row[t as usize] >= max - 0.02 * top,
                "{kind} step {step}: picked {t} (logit {}) where MLX's largest is {max}",
                row[t as usize]
            );
            logits = m.forward(&Array::from_i32(&[t as i32], &[1, 1]).unwrap(), &mut caches).unwrap();
        }
        mlx::set_gpu_kernels(true);
    }
}
