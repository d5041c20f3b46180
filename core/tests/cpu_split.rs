//! Projections split by output rows over several CPU streams
//! (`LoadOptions::cpu_threads`) must give exactly the logits of one stream:
//! the split is a speed-up, never a numerical change.
mod common;

use common::*;
use cider_core::mlx::{self, Dtype};
use cider_core::{ErrorKind, LoadOptions, Model};

fn load(dir: &std::path::Path, threads: usize) -> Model {
    let opts = LoadOptions { cpu_threads: Some(threads), ..Default::default() };
    Model::load_with(dir, &opts, &mut |_| true).unwrap()
}

/// Logits of a 9-token prompt pass and three decode steps, how many joins
/// (of split outputs, and the model's own) and how many matrix products
/// (one per part) the prompt pass has.
fn logits(m: &Model) -> (Vec<Vec<u32>>, usize, usize) {
    let (bits, census) = logit_bits(m, &[0, 3, 4, 5, 6, 3, 7, 13, 14], &[9, 21, 33]);
    let count = |f: &dyn Fn(&str) -> bool| census.iter().filter(|p| f(p)).count();
    let products = count(&|p| p.contains("Matmul") || p.contains("Linear") || p == "AddMM");
    (bits, count(&|p| p == "Concatenate"), products)
}

#[test]
fn split_projections_are_bit_identical() {
    mlx::device::set_gpu(false).unwrap();
    let kinds: [(Dtype, Option<(i32, i32)>, bool); 6] = [
        (Dtype::BF16, None, false),
        (Dtype::BF16, None, true),
        (Dtype::F16, None, false),
        (Dtype::F32, None, true),
        (Dtype::BF16, Some((4, 64)), true),
        (Dtype::BF16, Some((8, 32)), false),
    ];
    for (i, (dtype, quant, bias)) in kinds.into_iter().enumerate() {
        let dir = tmpdir(&format!("split-{i}"));
        // Sizes that split unevenly: the 320-row q/k/v projection over 3
        // streams is parts of 128, 128 and 64 rows.
        write_model(&dir, &Spec { hidden: 192, inter: 320, heads: 6, kv_heads: 2, dtype, quant, bias, ..Default::default() });
        let (whole, joins1, _) = logits(&load(&dir, 1));
        let mut products = vec![];
        // 2 again after 4: a model uses the streams it asked for, not every
        // stream an earlier load made.
        for threads in [2, 3, 4, 2] {
            let (split, joins, n) = logits(&load(&dir, threads));
            products.push(n);
            assert!(joins > joins1, "{threads} streams: no projection was split ({dtype:?}, {quant:?})");
            for (step, (a, b)) in whole.iter().zip(&split).enumerate() {
                let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
                assert_eq!(diff, 0, "{dtype:?} {quant:?} bias {bias}, {threads} streams: {diff} logits differ at step {step}");
            }
        }
        assert!(products[0] < products[2], "4 streams made no more parts than 2: {products:?}");
        assert_eq!(products[0], products[3], "a second 2-stream load split differently: {products:?}");
    }
}

#[test]
fn bad_cpu_thread_counts_are_refused() {
    let dir = tmpdir("split-bad");
    write_model(&dir, &Spec::default());
    for n in [0, 100_000] {
        let opts = LoadOptions { cpu_threads: Some(n), ..Default::default() };
        let e = Model::load_with(&dir, &opts, &mut |_| true).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("CPU threads"), "{}", e.message);
    }
}
