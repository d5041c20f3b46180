//! cider's CPU kernels for bf16, f16 and f32 projections (core/cpp/cpu_linear.cc)
//! must give exactly MLX's bits: whole models, dense (with and without
//! biases) and quantized at every bit width, prompt passes and decode steps, kernels on
//! and off.
//! One test function: the on/off switch is process-wide.
mod common;

use common::*;
use cider_core::mlx::{self, Dtype};
use cider_core::{LoadOptions, Model};

fn run(m: &Model) -> (Vec<Vec<u32>>, Vec<String>) {
    logit_bits(m, &[0, 3, 4, 5, 6, 3, 7, 13, 14, 40, 41], &[9, 21])
}

#[test]
fn kernels_match_mlx_bit_for_bit() {
    mlx::device::set_gpu(false).unwrap();
    let status = mlx::cpu_kernels_status();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::env::var("CIDER_CPU_KERNELS").as_deref() != Ok("0") {
        // Off here would mean the self-check found this MLX computing
        // differently. float32 goes through BLAS: another one preloaded
        // (OpenBLAS) sums differently and rightly turns that type off.
        for dtype in [Dtype::BF16, Dtype::F16] {
            assert_eq!(mlx::cpu_kernels_off_reason(dtype), "", "{dtype:?}");
        }
        if std::env::var_os("LD_PRELOAD").is_none() {
            assert_eq!(status, "on");
        }
    }
    let kinds: [(Option<(i32, i32)>, bool, usize, Dtype); 14] = [
        (None, false, 1, Dtype::BF16),
        (None, true, 2, Dtype::BF16),
        (Some((4, 64)), false, 1, Dtype::BF16),
        (Some((4, 32)), true, 3, Dtype::BF16),
        (Some((8, 64)), false, 2, Dtype::BF16),
        (None, true, 1, Dtype::F16),
        (Some((4, 64)), false, 2, Dtype::F16),
        (Some((8, 32)), true, 1, Dtype::F16),
        // 3, 5 and 6-bit values straddle 32-bit words; 2-bit ones fill them.
        (Some((3, 64)), false, 1, Dtype::BF16),
        (Some((5, 32)), true, 2, Dtype::F16),
        (Some((6, 64)), false, 2, Dtype::BF16),
        (Some((2, 64)), true, 1, Dtype::F16),
        // float32: the reference BLAS's sequential sums, bias added last.
        (None, true, 2, Dtype::F32),
        (None, false, 1, Dtype::F32),
    ];
    for (i, (quant, bias, threads, dtype)) in kinds.into_iter().enumerate() {
        let off = mlx::cpu_kernels_off_reason(dtype);
        if !off.is_empty() {
            eprintln!("skipped {dtype:?}: cider's CPU kernels are off for it: {off}");
            continue;
        }
        let dir = tmpdir(&format!("kernels-{i}"));
        // Dense: 204-wide inputs and 340-row q/k/v, 300-wide MLP: remainders
        // (not multiples of 8) in rows and depth. Quantized sizes must be
        // whole groups (the kernels' self-check covers their remainders).
        let (hidden, inter) = if quant.is_some() { (192, 320) } else { (204, 300) };
        write_model(&dir, &Spec { hidden, inter, heads: 6, kv_heads: 2, dtype, quant, bias, ..Default::default() });
        let opts = LoadOptions { cpu_threads: Some(threads), ..Default::default() };
        let m = Model::load_with(&dir, &opts, &mut |_| true).unwrap();
        mlx::set_cpu_kernels(true);
        let (ours, census) = run(&m);
        let name = if quant.is_some() { "CiderQuantizedLinear" } else { "CiderLinear" };
        assert!(census.iter().any(|p| p == name), "kernels not used: {census:?}");
        mlx::set_cpu_kernels(false);
        let (theirs, census) = run(&m);
        mlx::set_cpu_kernels(true);
        assert!(!census.iter().any(|p| p.starts_with("Cider")), "kernels used while off");
        for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(diff, 0, "{dtype:?} {quant:?} bias {bias}: {diff} logits differ from MLX's at step {step}");
        }
    }
}
