//! End-to-end tests of the core on models written in-process.
mod common;

use common::*;
use cider_core::mlx::{Array, Dtype};
use cider_core::{ErrorKind, FinishReason, GenerateOptions, Model, SamplerConfig, Session, StreamEvent};
use std::sync::Arc;

fn load(name: &str, spec: &Spec) -> Arc<Model> {
    let dir = tmpdir(name);
    write_model(&dir, spec);
    Arc::new(Model::load(&dir).unwrap())
}

fn run(model: &Arc<Model>, prompt: &[u32], opts: &GenerateOptions) -> cider_core::GenerationResult {
    Session::new(model.clone()).generate(prompt, opts, &mut |_: &StreamEvent| true).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, ignore_eos: true, ..Default::default() }
}

const PROMPT: &[u32] = &[0, 3, 4, 5, 6, 3, 7, 13, 14, 15, 16];

#[test]
fn greedy_is_deterministic_and_respects_max_tokens() {
    let m = load("greedy", &Spec::default());
    let a = run(&m, PROMPT, &greedy(12));
    let b = run(&m, PROMPT, &greedy(12));
    assert_eq!(a.tokens.len(), 12);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.finish_reason, FinishReason::Length);
    assert_eq!(a.prompt_tokens, PROMPT);
    assert!(a.stats.ttft_s > 0.0 && a.stats.peak_memory_bytes > 0);
    assert_eq!(a.text, m.tokenizer.decode(&a.tokens, false).unwrap());
}

/// The cache must give the same logits as recomputing the whole sequence.
#[test]
fn kv_cache_matches_full_recompute() {
    let m = load("kvcache", &Spec::default());
    let ids: Vec<i32> = PROMPT.iter().map(|&x| x as i32).collect();
    let n = ids.len() as i32;
    let mut full_caches = m.net.make_caches();
    let full = m.forward(&Array::from_i32(&ids, &[1, n]).unwrap(), &mut full_caches).unwrap();
    let full_last = full.slice_axis(1, n - 1, n).unwrap().to_vec_f32().unwrap();

    let mut caches = m.net.make_caches();
    m.forward(&Array::from_i32(&ids[..5], &[1, 5]).unwrap(), &mut caches).unwrap();
    let mut last = None;
    for &t in &ids[5..] {
        last = Some(m.forward(&Array::from_i32(&[t], &[1, 1]).unwrap(), &mut caches).unwrap());
    }
    assert_eq!(caches[0].offset(), n);
    let inc = last.unwrap().to_vec_f32().unwrap();
    let max_diff = full_last.iter().zip(&inc).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "incremental logits differ by {max_diff}");
}

/// Prefill in small chunks (crossing the cache's 256-step growth is covered by
/// the long prompt) must give the same tokens as one chunk.
#[test]
fn chunked_prefill_gives_same_tokens() {
    let m = load("chunks", &Spec::default());
    let prompt: Vec<u32> = (0..300).map(|i| 3 + (i * 7 % 60) as u32).collect();
    let one = run(&m, &prompt, &greedy(8));
    let chunked = run(&m, &prompt, &GenerateOptions { prefill_step_size: 37, ..greedy(8) });
    assert_eq!(one.tokens, chunked.tokens);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = load("seed", &Spec::default());
    let opts = |seed| GenerateOptions {
        sampler: SamplerConfig { temperature: 1.5, seed: Some(seed), ..Default::default() },
        ..greedy(24)
    };
    let a = run(&m, PROMPT, &opts(1));
    let b = run(&m, PROMPT, &opts(1));
    let c = run(&m, PROMPT, &opts(2));
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens, "different seeds gave the same 24 tokens");
}

/// Filters that keep only the top token must reduce sampling to argmax.
#[test]
fn filters_that_keep_one_token_equal_greedy() {
    let m = load("filters", &Spec::default());
    let g = run(&m, PROMPT, &greedy(10)).tokens;
    let hot = |s: SamplerConfig| GenerateOptions { sampler: SamplerConfig { temperature: 2.0, seed: Some(3), ..s }, ..greedy(10) };
    assert_eq!(run(&m, PROMPT, &hot(SamplerConfig { top_k: 1, ..Default::default() })).tokens, g);
    assert_eq!(run(&m, PROMPT, &hot(SamplerConfig { min_p: 1.0, ..Default::default() })).tokens, g);
    assert_eq!(run(&m, PROMPT, &hot(SamplerConfig { top_p: 1e-6, ..Default::default() })).tokens, g);
}

#[test]
fn repetition_penalty_changes_output_and_is_validated() {
    let m = load("reppen", &Spec::default());
    let g = run(&m, PROMPT, &greedy(16)).tokens;
    let p = run(&m, PROMPT, &GenerateOptions { repetition_penalty: Some(50.0), ..greedy(16) }).tokens;
    assert_ne!(g, p, "a penalty of 50 left the greedy tokens unchanged");
    let e = Session::new(m.clone())
        .generate(PROMPT, &GenerateOptions { repetition_penalty: Some(-1.0), ..greedy(2) }, &mut |_: &StreamEvent| true)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

#[test]
fn callback_cancels_between_tokens() {
    let m = load("cancel", &Spec::default());
    let mut seen = 0;
    let r = Session::new(m.clone())
        .generate(PROMPT, &greedy(50), &mut |e: &StreamEvent| {
            if e.token.is_some() {
                seen += 1;
            }
            seen < 3
        })
        .unwrap();
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
    assert_eq!(r.tokens.len(), 3);
}

/// A cancel flag already set stops the generation before the prompt pass,
/// whether or not the prompt is long enough to be prefilled in chunks.
#[test]
fn cancel_flag_stops_before_the_prompt_pass() {
    let m = load("cancel-flag", &Spec::default());
    for step in [2048, 2] {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut events = 0;
        let e = Session::new(m.clone())
            .with_cancel_flag(flag)
            .generate(PROMPT, &GenerateOptions { prefill_step_size: step, ..greedy(4) }, &mut |_: &StreamEvent| {
                events += 1;
                true
            })
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled, "prefill_step_size {step}: {e}");
        assert_eq!(events, 0);
    }
}

#[test]
fn eos_stops_unless_ignored() {
    let m = load("eos", &Spec::default());
    let g = run(&m, PROMPT, &greedy(10)).tokens;
    // Declare the 4th greedy token an EOS: generation must stop before it.
    let mut m2 = Arc::try_unwrap(m).ok().unwrap();
    m2.eos_ids = vec![g[3]];
    let m2 = Arc::new(m2);
    let first = g.iter().position(|&t| t == g[3]).unwrap();
    let r = run(&m2, PROMPT, &GenerateOptions { ignore_eos: false, ..greedy(10) });
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert_eq!(r.tokens, g[..first]);
    assert_eq!(run(&m2, PROMPT, &greedy(10)).tokens, g);
}

#[test]
fn stream_pieces_concatenate_to_text_and_stop_strings_cut() {
    let m = load("stream", &Spec::default());
    let mut pieces = String::new();
    let r = Session::new(m.clone())
        .generate(PROMPT, &greedy(20), &mut |e: &StreamEvent| {
            pieces.push_str(e.text);
            true
        })
        .unwrap();
    assert_eq!(pieces, r.text);
    // Stop at the third word of the output: the text ends right before it.
    let words: Vec<&str> = r.text.split(' ').collect();
    let stop = format!(" {}", words[2]);
    let cut = r.text.find(&stop).unwrap();
    let mut pieces = String::new();
    let s = Session::new(m.clone())
        .generate(PROMPT, &GenerateOptions { stop: vec![stop.clone()], ..greedy(20) }, &mut |e: &StreamEvent| {
            pieces.push_str(e.text);
            true
        })
        .unwrap();
    assert_eq!(s.finish_reason, FinishReason::Stop);
    assert_eq!(s.text, r.text[..cut]);
    assert_eq!(pieces, s.text);
}

#[test]
fn threads_share_one_model() {
    let m = load("threads", &Spec::default());
    let want = run(&m, PROMPT, &greedy(10)).tokens;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || run(&m, PROMPT, &greedy(10)).tokens)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn quantized_models_load_and_track_their_float_version() {
    for (bits, gs) in [(4, 64), (8, 32)] {
        let spec = Spec { quant: Some((bits, gs)), ..Default::default() };
        let m = load(&format!("q{bits}"), &spec);
        let q = m.info.quantization.unwrap();
        assert_eq!((q.bits, q.group_size), (bits, gs));
        let r = run(&m, PROMPT, &greedy(6));
        assert_eq!(r.tokens.len(), 6);
        assert!(m.info.weight_bytes < load(&format!("f{bits}"), &Spec::default()).info.weight_bytes);
    }
}

#[test]
fn half_precision_dtypes_load() {
    for dt in [Dtype::F16, Dtype::BF16] {
        let m = load(&format!("dt{}", dt.name()), &Spec { dtype: dt, ..Default::default() });
        assert_eq!(m.info.dtype, dt.name());
        assert_eq!(run(&m, PROMPT, &greedy(4)).tokens.len(), 4);
    }
}

#[test]
fn bad_inputs_are_clean_errors() {
    let m = load("badin", &Spec::default());
    let s = |p: &[u32], o: &GenerateOptions| Session::new(m.clone()).generate(p, o, &mut |_: &StreamEvent| true);
    assert_eq!(s(&[], &greedy(2)).unwrap_err().kind, ErrorKind::InvalidArgument);
    let e = s(&[0, 9999], &greedy(2)).unwrap_err();
    assert!(e.message.contains("9999"), "{e}");
    let bad = GenerateOptions { sampler: SamplerConfig { temperature: -1.0, ..Default::default() }, ..greedy(2) };
    assert_eq!(s(PROMPT, &bad).unwrap_err().kind, ErrorKind::InvalidArgument);
    let bad = GenerateOptions { sampler: SamplerConfig { temperature: 1.0, top_k: 100000, ..Default::default() }, ..greedy(2) };
    assert_eq!(s(PROMPT, &bad).unwrap_err().kind, ErrorKind::InvalidArgument);
}

#[test]
fn broken_folders_name_the_problem() {
    let base = tmpdir("broken-base");
    write_model(&base, &Spec::default());
    let err = |name: &str, f: &dyn Fn(&std::path::Path)| {
        let d = tmpdir(name);
        for e in std::fs::read_dir(&base).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        f(&d);
        Model::load(&d).err().unwrap_or_else(|| panic!("{name}: loaded a broken model"))
    };
    let e = err("nomt", &|d| edit_config(d, |c| c["model_type"] = "gpt-x".into()));
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("gpt-x") && e.message.contains("qwen3"), "{e}");

    let e = err("shape", &|d| edit_config(d, |c| c["intermediate_size"] = 96.into()));
    assert!(e.message.contains("model.layers.0.mlp.gate_proj.weight") && e.message.contains("[128, 64]") && e.message.contains("[96, 64]"), "{e}");

    let e = err("nokey", &|d| edit_config(d, |c| { c.as_object_mut().unwrap().remove("hidden_size"); }));
    assert!(e.message.contains("config.json") && e.message.contains("hidden_size"), "{e}");

    let e = err("layers", &|d| edit_config(d, |c| c["num_hidden_layers"] = 3.into()));
    assert!(e.message.contains("missing tensor") && e.message.contains("model.layers.2."), "{e}");

    let e = err("extra", &|d| edit_config(d, |c| c["num_hidden_layers"] = 1.into()));
    assert!(e.message.contains("unexpected") && e.message.contains("model.layers.1."), "{e}");

    let e = err("trunc", &|d| {
        let f = d.join("model.safetensors");
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 1000).unwrap();
    });
    assert!(e.message.contains("truncated") && e.message.contains("model.safetensors"), "{e}");

    let e = err("json", &|d| std::fs::write(d.join("config.json"), "{\n  \"a\": 1,\n  oops\n}").unwrap());
    assert!(e.message.contains("line 3"), "{e}");

    let e = err("quantmode", &|d| edit_config(d, |c| c["quantization"] = serde_json::json!({"bits": 4, "group_size": 64, "mode": "nf4"})));
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("nf4"), "{e}");

    let e = err("tok", &|d| std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap());
    assert!(e.message.contains("tokenizer.json"), "{e}");

    let e = Model::load(std::path::Path::new("/nonexistent/cider-model")).err().unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

/// The sampler used for the cache trait is exercised indirectly above; here
/// make sure trimming a cache rewinds its offset.
#[test]
fn cache_trim_rewinds() {
    let m = load("trim", &Spec::default());
    let mut caches = m.net.make_caches();
    m.forward(&Array::from_i32(&[0, 3, 4, 5], &[1, 4]).unwrap(), &mut caches).unwrap();
    assert_eq!(caches[0].trim(2), 2);
    assert_eq!(caches[0].offset(), 2);
    assert_eq!(caches[0].trim(10), 2);
}

#[test]
fn compute_dtype_converts_every_float_tensor() {
    for quant in [None, Some((4, 64))] {
        let dir = tmpdir(&format!("cdt-{}", quant.is_some()));
        write_model(&dir, &Spec { dtype: Dtype::BF16, quant, ..Default::default() });
        let opts = cider_core::LoadOptions { compute_dtype: Some(Dtype::F32), ..Default::default() };
        let m = Arc::new(Model::load_with(&dir, &opts, &mut |_| true).unwrap());
        assert_eq!(m.info.dtype, "float32");
        // Norms (and dense weights) are converted; quantization scales are
        // not widened (MLX converts them per call).
        assert!(m.net.arrays().iter().filter(|a| a.ndim() == 1).all(|a| a.dtype() == Dtype::F32));
        let mut caches = m.net.make_caches();
        let logits = m.forward(&Array::from_i32(&[0, 3, 4], &[1, 3]).unwrap(), &mut caches).unwrap();
        assert_eq!(logits.dtype(), Dtype::F32);
        // The KV cache keeps the checkpoint's bf16 (mlx-lm's memory), and
        // attention gets it back in float32.
        assert!(caches.iter().flat_map(|c| c.state()).all(|a| a.dtype() == Dtype::BF16));
        let keys = Array::from_f32(&[0.5; 32], &[1, 2, 1, 16]).unwrap();
        let (k, v) = caches[0].update_and_fetch(&keys, &keys).unwrap();
        assert_eq!((k.dtype(), v.dtype(), k.dim(2)), (Dtype::F32, Dtype::F32, 4));
        assert_eq!(run(&m, PROMPT, &greedy(4)).tokens.len(), 4);
    }
    // Without a compute dtype the cache keeps what it is given.
    let dir = tmpdir("cdt-none");
    write_model(&dir, &Spec { dtype: Dtype::BF16, ..Default::default() });
    let m = Model::load(&dir).unwrap();
    let mut caches = m.net.make_caches();
    m.forward(&Array::from_i32(&[0, 3, 4], &[1, 3]).unwrap(), &mut caches).unwrap();
    assert!(caches.iter().flat_map(|c| c.state()).all(|a| a.dtype() == Dtype::BF16));
    let dir = tmpdir("cdt-bad");
    write_model(&dir, &Spec::default());
    let bad = cider_core::LoadOptions { compute_dtype: Some(Dtype::I32), ..Default::default() };
    assert_eq!(Model::load_with(&dir, &bad, &mut |_| true).err().unwrap().kind, ErrorKind::InvalidArgument);
}

/// A checkpoint larger than the machine's memory is refused before MLX
/// allocates anything (the header claims the size; the data need not exist).
#[test]
fn weights_larger_than_memory_are_refused() {
    let dir = tmpdir("huge");
    write_model(&dir, &Spec::default());
    // A sparse safetensors file whose single tensor claims 2^40 bytes.
    let n: u64 = 1 << 19; // rows and columns: 2^38 f32 elements
    let hdr = format!(r#"{{"model.extra.weight":{{"dtype":"F32","shape":[{n},{n}],"data_offsets":[0,{}]}}}}"#, n * n * 4);
    let f = dir.join("model-huge.safetensors");
    let mut bytes = (hdr.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(hdr.as_bytes());
    std::fs::write(&f, &bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(8 + hdr.len() as u64 + n * n * 4).unwrap();
    let e = Model::load(&dir).err().unwrap();
    assert_eq!(e.kind, ErrorKind::OutOfMemory, "{e}");
    assert!(e.message.contains("memory"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
