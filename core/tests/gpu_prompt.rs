//! A dense model's prompt pass as a CUDA graph (core/cpp/gpu_prompt.cc)
//! must be used where it applies and give the logits the op-for-op pass
//! (MLX's graph, with cider's prompt attention: the same probabilities'
//! precision) gives for the same prompt, within 2 % of the largest (sums in
//! another order), for prompts shorter than, equal to and longer than a
//! bucket (32 rows), and leave keys and values in the caches from which
//! the next step computes what it computes from the op-for-op caches.
//! (Against MLX's own attention, which rounds the probabilities to 16 bits,
//! random tiny models' large logits differed by 2.2 % of the largest.) Needs the CUDA build of MLX (mlx-cuda); skips
//! elsewhere, so CI here skips it: it is run on the lent GPU machine
//! (bench/RESULTS.md).
mod common;

use common::*;
use cider_core::mlx::{self, Array, Dtype};
use cider_core::Model;

fn close(kind: &str, got: &Array, want: &Array) {
    let g = got.astype(Dtype::F32).unwrap().to_vec_f32().unwrap();
    let w = want.astype(Dtype::F32).unwrap().to_vec_f32().unwrap();
    assert_eq!(g.len(), w.len(), "{kind}");
    let top = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= 0.02 * top, "{kind}: logit {i}: {a} against MLX's {b} (largest {top})");
    }
}

#[test]
fn gpu_prompt_graph_matches_mlx() {
    if !cuda_kernels_testable() {
        return;
    }
    // (The second with biases on every projection: added in cuBLAS's epilogue.)
    for (i, (dtype, hidden, heads, kv_heads, bias)) in [(Dtype::BF16, 256, 4, 2, false), (Dtype::F16, 384, 6, 2, true)].into_iter().enumerate() {
        let dir = tmpdir(&format!("gpu-prompt-{i}"));
        write_model(&dir, &Spec { hidden, inter: 3 * hidden, heads, kv_heads, layers: 3, dtype, bias, ..Default::default() });
        let m = Model::load(&dir).unwrap();
        // The reference: the same model with the graph off (read at its
        // first prompt).
        let reference = Model::load(&dir).unwrap();
        std::env::set_var("CIDER_GPU_PROMPT_GRAPH", "0");
        reference.forward_last(&Array::from_i32(&[1, 2], &[2]).unwrap(), &mut reference.net.make_caches()).unwrap();
        std::env::remove_var("CIDER_GPU_PROMPT_GRAPH");
        for l in [2, 31, 32, 33, 100, 300] {
            let kind = format!("{dtype:?} hidden {hidden} bias {bias}, {l} tokens");
            let ids: Vec<i32> = (0..l).map(|k| (k * 7 + 3) % WORDS.len() as i32).collect();
            let prompt = Array::from_i32(&ids, &[l]).unwrap();
            let mut mine = m.net.make_caches();
            let got = m.forward_last(&prompt, &mut mine).unwrap();
            let status = mlx::gpu_kernels_status();
            assert!(status.contains("prompt CUDA graph: on"), "{kind}: the graph was not used: {status}");
            assert_eq!(mine[0].offset(), l, "{kind}");

            let mut theirs = reference.net.make_caches();
            let want = reference.forward_last(&prompt, &mut theirs).unwrap();
            close(&kind, &got, &want);
            let next = Array::from_i32(&[5], &[1]).unwrap();
            let got = m.forward_last(&next, &mut mine).unwrap();
            let want = reference.forward_last(&next, &mut theirs).unwrap();
            close(&format!("{kind}, the next step"), &got, &want);
        }
    }
}
