//! cider's prompt-pass kernels on NVIDIA GPUs, the 4/8-bit matmul
//! (core/cpp/gpu_qmm.cc) and the causal attention (gpu_pattn.cc), must pass
//! their self-checks, be used by a model's prompt pass, and give logits that
//! agree with those of MLX's own ops (quantized_matmul, cuDNN's attention)
//! on the same GPU to rounding (they sum in another order, so not bit for
//! bit).
//! Needs the CUDA build of MLX (mlx-cuda); skips elsewhere, so CI here skips
//! it: it is run on the lent GPU machine (bench/RESULTS.md, fifth pass).
//! One test function: the on/off switch is process-wide.
mod common;

use common::*;
use cider_core::mlx::{self, Dtype};
use cider_core::Model;

fn logits(m: &Model, prompt: &[i32]) -> (Vec<Vec<f32>>, Vec<String>) {
    let (bits, census) = logit_bits(m, prompt, &[9, 21]);
    (bits.into_iter().map(|v| v.into_iter().map(f32::from_bits).collect()).collect(), census)
}

#[test]
fn gpu_prompt_kernel_agrees_with_mlx() {
    if !mlx::device::gpu_available() || std::env::var("CIDER_GPU_KERNELS").as_deref() == Ok("0") {
        eprintln!("skipped: no GPU, or CIDER_GPU_KERNELS=0");
        return;
    }
    // 40 rows: one partial 32- or 64-row tile.
    let prompt: Vec<i32> = (0..40).map(|k| (k * 7 + 3) % WORDS.len() as i32).collect();
    // bits 16: dense weights (MLX's matmul; cider's attention).
    let kinds = [(Dtype::BF16, 4, 64), (Dtype::F16, 4, 32), (Dtype::BF16, 4, 128), (Dtype::BF16, 8, 64), (Dtype::F16, 8, 32),
        (Dtype::BF16, 16, 0), (Dtype::F16, 16, 0)];
    for (i, (dtype, bits, gs)) in kinds.into_iter().enumerate() {
        let dir = tmpdir(&format!("gpu-qmm-{i}"));
        let quant = if bits == 16 { None } else { Some((bits, gs)) };
        write_model(&dir, &Spec { hidden: 256, inter: 512, heads: 4, kv_heads: 2, dtype, quant, ..Default::default() });

        mlx::device::set_gpu(true).unwrap();
        let m = Model::load(&dir).unwrap();
        mlx::set_gpu_kernels(true);
        let (ours, census) = logits(&m, &prompt);
        let status = mlx::gpu_kernels_status();
        let ty = if dtype == Dtype::BF16 { "bfloat16" } else { "float16" };
        let kind = if bits == 16 { format!("{ty} dense") } else { format!("{ty} {bits}-bit g{gs}") };
        // 4 query heads over 2 KV heads of 64: the attention kernel's check.
        let heads = format!("{ty} 4/2 heads of 64 + q RoPE");
        if status.contains("compute capability") {
            eprintln!("skipped: {status}");
            return;
        }
        if bits != 16 {
            assert!(status.starts_with("on (") && status.contains(&kind) && !status.contains(&format!("{kind}:")), "{kind}: {status}");
        }
        // "on (a, b)" or "on (a, b); off: c: why; d: why": `heads` must be
        // an item of the "on" list (items compared whole: "float16 ..." is
        // inside "bfloat16 ...").
        let attn = status.split("prompt attention: ").nth(1).unwrap_or("").split("; decode").next().unwrap();
        let on = attn.strip_prefix("on (").and_then(|r| r.split(')').next()).unwrap_or("");
        assert!(on.split(", ").any(|item| item == heads), "{kind}: attention kernel not in use: {status}");
        assert!(census.iter().any(|p| p == "CustomKernel"), "{kind}: kernel not in the prompt pass: {census:?}");
        mlx::set_gpu_kernels(false);
        let (theirs, census) = logits(&m, &prompt);
        mlx::set_gpu_kernels(true);
        assert!(!census.iter().any(|p| p == "CustomKernel"), "{kind}: kernel used while off");
        for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let top = b.iter().fold(0f32, |t, x| t.max(x.abs()));
            let diff = a.iter().zip(b).fold(0f32, |t, (x, y)| t.max((x - y).abs()));
            // A wrong fragment layout or nibble order is off by the logits'
            // own size; rounding differences are a few bf16 steps.
            eprintln!("{kind} step {step}: max |ours - MLX's| {diff} of {top}");
            assert!(diff <= 0.02 * top, "{kind} step {step}: logits differ by {diff} (largest {top})");
        }
    }
}
