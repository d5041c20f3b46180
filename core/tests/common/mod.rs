//! Tiny model folders written in-process (no Python, no fixtures): a
//! llama-shaped network with deterministic pseudo-random weights and a
//! word-level tokenizer.
#![allow(dead_code)]
use cider_core::mlx::{io, Array, Dtype};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const WORDS: &[&str] = &[
    "<s>", "</s>", "<unk>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park", "and", "then", "it",
    "was", "happy", "sad", "big", "small", "red", "blue", "green", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "ten", "hello", "world", "apple", "cider", "tree", "house", "sun", "moon", "star", "sky",
    "sea", "fish", "bird", "song", "rain", "snow", "wind", "fire", "stone", "road", "city", "king", "queen", "book",
    "pen", "cup", "tea", "milk", "bread", "cake",
];

pub struct Lcg(u64);
impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407))
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn array(&mut self, shape: &[i32], scale: f32) -> Array {
        let n: i32 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next_f32() * scale).collect();
        Array::from_f32(&v, shape).unwrap()
    }
}

pub struct Spec {
    pub hidden: i32,
    pub layers: i32,
    pub inter: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub dtype: Dtype,
    /// (bits, group_size) to quantize every linear and the embedding.
    pub quant: Option<(i32, i32)>,
    pub seed: u64,
    /// Biases on every projection (`attention_bias` and `mlp_bias`).
    pub bias: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec { hidden: 64, layers: 2, inter: 128, heads: 4, kv_heads: 2, dtype: Dtype::F32, quant: None, seed: 7, bias: false }
    }
}

pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cider-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn write_tokenizer(dir: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> =
        WORDS.iter().enumerate().map(|(i, w)| (w.to_string(), json!(i))).collect();
    let special = |id: usize, s: &str| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
    };
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<s>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok).unwrap()).unwrap();
    let cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant{% endif %}"});
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
}

/// Write a model folder and return its path.
pub fn write_model(dir: &Path, spec: &Spec) -> PathBuf {
    let mut r = Lcg::new(spec.seed);
    let (d, v) = (spec.hidden, WORDS.len() as i32);
    let hd = d / spec.heads;
    let mut t: Vec<(String, Array)> = Vec::new();
    let lin = |t: &mut Vec<(String, Array)>, r: &mut Lcg, name: &str, o: i32, i: i32, scale: f32| {
        let w = r.array(&[o, i], scale).astype(spec.dtype).unwrap();
        match spec.quant {
            None => t.push((format!("{name}.weight"), w)),
            Some((bits, gs)) => {
                let q = w.quantize(gs, bits, "affine").unwrap();
                t.push((format!("{name}.weight"), q[0].clone()));
                t.push((format!("{name}.scales"), q[1].clone()));
                t.push((format!("{name}.biases"), q[2].clone()));
            }
        }
        if spec.bias && !name.ends_with("embed_tokens") && name != "lm_head" {
            t.push((format!("{name}.bias"), r.array(&[o], scale).astype(spec.dtype).unwrap()));
        }
    };
    lin(&mut t, &mut r, "model.embed_tokens", v, d, 1.0);
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        lin(&mut t, &mut r, &format!("{p}.self_attn.q_proj"), spec.heads * hd, d, 0.2);
        lin(&mut t, &mut r, &format!("{p}.self_attn.k_proj"), spec.kv_heads * hd, d, 0.2);
        lin(&mut t, &mut r, &format!("{p}.self_attn.v_proj"), spec.kv_heads * hd, d, 0.2);
        lin(&mut t, &mut r, &format!("{p}.self_attn.o_proj"), d, spec.heads * hd, 0.2);
        lin(&mut t, &mut r, &format!("{p}.mlp.gate_proj"), spec.inter, d, 0.2);
        lin(&mut t, &mut r, &format!("{p}.mlp.up_proj"), spec.inter, d, 0.2);
        lin(&mut t, &mut r, &format!("{p}.mlp.down_proj"), d, spec.inter, 0.2);
        for n in ["input_layernorm", "post_attention_layernorm"] {
            t.push((format!("{p}.{n}.weight"), Array::full(&[d], 1.0, spec.dtype).unwrap()));
        }
    }
    t.push(("model.norm.weight".into(), Array::full(&[d], 1.0, spec.dtype).unwrap()));
    // A large output projection gives wide argmax margins, so greedy tokens
    // do not flip on rounding differences between equivalent computations.
    lin(&mut t, &mut r, "lm_head", v, d, 4.0);
    io::save_safetensors(dir.join("model.safetensors").to_str().unwrap(), &t).unwrap();
    let mut cfg = json!({
        "model_type": "llama", "hidden_size": d, "num_hidden_layers": spec.layers,
        "intermediate_size": spec.inter, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "rms_norm_eps": 1e-5, "vocab_size": v,
        "rope_theta": 10000.0, "tie_word_embeddings": false, "max_position_embeddings": 512,
        "eos_token_id": 1, "bos_token_id": 0
    });
    if spec.bias {
        cfg["attention_bias"] = json!(true);
        cfg["mlp_bias"] = json!(true);
    }
    if let Some((bits, gs)) = spec.quant {
        cfg["quantization"] = json!({"bits": bits, "group_size": gs, "mode": "affine"});
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    write_tokenizer(dir);
    dir.to_path_buf()
}

pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Logits (as f32 bits) of a prompt pass over `prompt` and then one-token
/// steps over `steps`, and the MLX primitives of the prompt pass's graph:
/// for tests that demand two ways of computing give exactly the same bits.
pub fn logit_bits(m: &cider_core::Model, prompt: &[i32], steps: &[i32]) -> (Vec<Vec<u32>>, Vec<String>) {
    let mut caches = m.net.make_caches();
    let first = m.forward(&Array::from_i32(prompt, &[1, prompt.len() as i32]).unwrap(), &mut caches).unwrap();
    let census = cider_core::mlx::graph_census(&[&first]);
    let mut out = vec![first];
    for &t in steps {
        out.push(m.forward(&Array::from_i32(&[t], &[1, 1]).unwrap(), &mut caches).unwrap());
    }
    let bits = out.iter().map(|a| a.astype(Dtype::F32).unwrap().to_vec_f32().unwrap().iter().map(|x| x.to_bits()).collect()).collect();
    (bits, census)
}

/// For the tests of cider's CUDA graphs: true (the GPU made the default
/// device) on a CUDA build of MLX with cider's kernels on; else says why
/// the test is skipped.
pub fn cuda_kernels_testable() -> bool {
    use cider_core::mlx::device;
    if !device::is_cuda() || std::env::var("CIDER_GPU_KERNELS").as_deref() == Ok("0") {
        eprintln!("skipped: no CUDA GPU, or CIDER_GPU_KERNELS=0");
        return false;
    }
    device::set_gpu(true).unwrap();
    true
}
