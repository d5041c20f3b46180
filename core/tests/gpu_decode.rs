//! cider's fused decode kernels on NVIDIA GPUs (core/cpp/gpu_decode.cc) must
//! pass their self-check, be used by a dense model's one-token steps (the
//! attention + o projection kernel where it takes the heads), and give
//! logits that agree with MLX's own ops on the same GPU to rounding (its dot
//! products sum in another order than cuBLAS, so not bit for bit).
//! Needs the CUDA build of MLX (mlx-cuda); skips elsewhere, so CI here skips
//! it: it is run on the lent GPU machine (bench/RESULTS.md).
//! One test function: the on/off switch is process-wide.
mod common;

use common::*;
use cider_core::mlx::{self, Array, Dtype};
use cider_core::Model;

/// Logits of a prompt pass and 300 decode steps (past the KV cache's first
/// growth at 255 positions; a trim of 5 positions at step 100), with the
/// graph census of one more step.
fn decode(m: &Model) -> (Vec<Vec<f32>>, Vec<String>) {
    let prompt: Vec<i32> = (0..12).map(|k| (k * 7 + 3) % WORDS.len() as i32).collect();
    let mut caches = m.net.make_caches();
    let mut out = vec![m.forward(&Array::from_i32(&prompt, &[1, prompt.len() as i32]).unwrap(), &mut caches).unwrap()];
    for step in 0..300 {
        if step == 100 {
            for c in caches.iter_mut() {
                c.trim(5);
            }
        }
        let t = (step * 13 + 5) % WORDS.len() as i32;
        out.push(m.forward(&Array::from_i32(&[t], &[1, 1]).unwrap(), &mut caches).unwrap());
    }
    let logits: Vec<Vec<f32>> = out.iter().map(|a| a.astype(Dtype::F32).unwrap().to_vec_f32().unwrap()).collect();
    // One more step, built on evaluated caches: its own graph alone.
    let next = m.forward(&Array::from_i32(&[1], &[1, 1]).unwrap(), &mut caches).unwrap();
    (logits, mlx::graph_census(&[&next]))
}

/// cider's greedy-sampling kernel picks the token MLX's logsumexp,
/// subtract and argmax pick, on real logits: a 3-token prompt's last row (a
/// view into its logits), then 20 decode steps.
fn greedy_agrees(m: &Model, kind: &str) {
    let mut caches = m.net.make_caches();
    let mut t = 1;
    let mut scratch = mlx::GreedyScratch::new().unwrap();
    for step in 0..21 {
        let l = if step == 0 {
            let logits = m.forward(&Array::from_i32(&[1, 2, 3], &[1, 3]).unwrap(), &mut caches).unwrap();
            let v = logits.dim(-1);
            logits.slice(&[0, 2, 0], &[1, 3, v]).unwrap().reshape(&[1, v]).unwrap()
        } else {
            let logits = m.forward(&Array::from_i32(&[t], &[1, 1]).unwrap(), &mut caches).unwrap();
            let v = logits.dim(-1);
            logits.reshape(&[1, v]).unwrap()
        };
        let ours = mlx::gpu_greedy(&l, &mut scratch).unwrap().astype(Dtype::I32).unwrap().to_vec_i32().unwrap();
        let theirs = l.sub(&l.logsumexp(-1, true).unwrap()).unwrap().argmax(-1, false).unwrap().astype(Dtype::I32).unwrap().to_vec_i32().unwrap();
        assert_eq!(ours, theirs, "{kind} step {step}: greedy token");
        t = ours[0];
    }
}

/// The test models below have the shapes the fused path takes (checked
/// here, on any machine).
#[test]
fn test_models_are_fusable() {
    for (i, (dtype, bias, hidden)) in KINDS.into_iter().enumerate() {
        let dir = tmpdir(&format!("gpu-decode-shape-{i}"));
        write_model(&dir, &Spec { hidden, inter: 2 * hidden, heads: hidden / 64, kv_heads: hidden / 128, dtype, bias, ..Default::default() });
        let m = Model::load(&dir).unwrap();
        assert_eq!(m.net.fused_decode_dtype(), Some(dtype), "{dtype:?} bias {bias} hidden {hidden}");
    }
}

// hidden 384: one full and one partial 256-wide chunk per row.
const KINDS: [(Dtype, bool, i32); 3] = [(Dtype::BF16, false, 256), (Dtype::F16, true, 384), (Dtype::BF16, true, 512)];

#[test]
fn gpu_decode_kernel_agrees_with_mlx() {
    if !mlx::device::gpu_available() || std::env::var("CIDER_GPU_KERNELS").as_deref() == Ok("0") {
        eprintln!("skipped: no GPU, or CIDER_GPU_KERNELS=0");
        return;
    }
    // The kernels' edge cases (every split, partial chunks, greedy slices),
    // which a model's own check does not compile.
    mlx::device::set_gpu(true).unwrap();
    for dt in [Dtype::BF16, Dtype::F16] {
        mlx::gpu_decode_self_test(dt).unwrap_or_else(|e| panic!("{dt:?} self-test: {e}"));
    }
    for (i, (dtype, bias, hidden)) in KINDS.into_iter().enumerate() {
        let dir = tmpdir(&format!("gpu-decode-{i}"));
        write_model(&dir, &Spec { hidden, inter: 2 * hidden, heads: hidden / 64, kv_heads: hidden / 128, dtype, bias, ..Default::default() });
        mlx::device::set_gpu(true).unwrap();
        let m = Model::load(&dir).unwrap();
        let kind = format!("{} bias {bias} hidden {hidden}", if dtype == Dtype::BF16 { "bfloat16" } else { "float16" });
        mlx::set_gpu_kernels(true);
        let (ours, census) = decode(&m);
        greedy_agrees(&m, &kind);
        let status = mlx::gpu_kernels_status();
        // (", " or ": " before: "bfloat16 on" contains "float16 on".)
        let on = if dtype == Dtype::BF16 { "bfloat16 on" } else { "float16 on" };
        let on = [format!(": {on}"), format!(", {on}")];
        assert!(status.contains("decode: ") && on.iter().any(|o| status.contains(o.as_str())), "{kind}: {status}");
        // Per layer the q/k/v and gate/up kernels, the down projection's
        // (unless CIDER_GPU_GEMV=0), and the attention + o projection kernel
        // where heads x head_dim is a multiple of 256 (hidden 384: MLX's
        // attention and matmul instead) unless CIDER_GPU_ATTN=0.
        let kernels = census.iter().filter(|p| *p == "CustomKernel").count();
        let enabled = |var: &str| std::env::var(var).as_deref() != Ok("0");
        let per_layer = 2 + usize::from(enabled("CIDER_GPU_GEMV")) + usize::from(hidden % 256 == 0 && enabled("CIDER_GPU_ATTN"));
        assert_eq!(kernels, per_layer * m.net.config.num_layers, "{kind}: custom kernels in the decode step: {census:?}");
        mlx::set_gpu_kernels(false);
        let (theirs, census) = decode(&m);
        mlx::set_gpu_kernels(true);
        assert!(!census.iter().any(|p| p == "CustomKernel"), "{kind}: kernel used while off");
        for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let top = b.iter().fold(0f32, |t, x| t.max(x.abs()));
            let diff = a.iter().zip(b).fold(0f32, |t, (x, y)| t.max((x - y).abs()));
            // A wrong row, pair or rotation is off by the logits' own size;
            // rounding differences are a few bf16 steps.
            if step % 50 == 0 {
                eprintln!("{kind} step {step}: max |ours - MLX's| {diff} of {top}");
            }
            assert!(diff <= 0.02 * top, "{kind} step {step}: logits differ by {diff} (largest {top})");
        }
    }
}
