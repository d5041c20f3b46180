//! A generation returns with nothing left running in MLX. Work left in flight
//! outlives the call, and a host that exits right after it crashed (exit
//! tears MLX's allocator down under the stream thread). Its own test binary:
//! MLX's task count is process-wide, and other tests generate in parallel.
mod common;

use common::*;
use cider_core::mlx::active_tasks;
use cider_core::{FinishReason, GenerateOptions, Model, Session, StreamEvent};
use std::sync::Arc;

const PROMPT: &[u32] = &[0, 3, 4, 5, 6, 3, 7, 13, 14, 15, 16];

#[test]
fn every_way_out_of_generate_leaves_no_work_running_and_the_first_token_waits_for_no_step() {
    // On the CPU a task counts as finished when its kernel returns; a GPU
    // backend may report completion from a callback after the stream is
    // already idle, which would make the count racy.
    cider_core::mlx::device::set_gpu(false).unwrap();
    // Wide enough that one decode step takes a few milliseconds on the CPU,
    // far longer than the return path: a step left running is still running
    // when it is counted.
    let spec = Spec { hidden: 512, layers: 4, inter: 2048, heads: 8, kv_heads: 4, ..Spec::default() };
    let dir = tmpdir("drain");
    write_model(&dir, &spec);
    let model = Arc::new(Model::load(&dir).unwrap());
    let opts = GenerateOptions { max_tokens: 6, ignore_eos: true, ..Default::default() };

    let r = Session::new(model.clone()).generate(PROMPT, &opts, &mut |_: &StreamEvent| true).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!(active_tasks(), 0, "max_tokens reached");

    // The callback stops it after the second token: the third step was
    // already submitted.
    let mut seen = 0;
    let r = Session::new(model.clone())
        .generate(PROMPT, &opts, &mut |e: &StreamEvent| {
            seen += e.token.is_some() as usize;
            seen < 2
        })
        .unwrap();
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
    assert_eq!(active_tasks(), 0, "stopped by the callback");

    // The first token reaches the caller before any decode step is
    // submitted (its latency would otherwise include building one); later
    // tokens arrive with the next step already submitted.
    let mut running_at_first = None;
    Session::new(model.clone())
        .generate(PROMPT, &opts, &mut |e: &StreamEvent| {
            if e.token.is_some() && running_at_first.is_none() {
                running_at_first = Some(active_tasks());
            }
            true
        })
        .unwrap();
    assert_eq!(running_at_first, Some(0), "MLX work in flight when the first token was handed out");

    // An EOS: the step after it was already submitted.
    let mut m = Arc::try_unwrap(model).ok().unwrap();
    // (Token 1 must not also be token 0, or the EOS would end it at once.)
    assert_ne!(r.tokens[0], r.tokens[1]);
    m.eos_ids = vec![r.tokens[1]];
    let r = Session::new(Arc::new(m)).generate(PROMPT, &GenerateOptions { ignore_eos: false, ..opts }, &mut |_: &StreamEvent| true).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert_eq!(active_tasks(), 0, "stopped at an EOS");
}
