//! Model manager: registry, budget with priority/LRU eviction, pinning,
//! fallback, in-use protection, statistics, registry file errors, selection
//! and concurrency, on tiny llama folders written here (f32, sizes chosen
//! through the vocabulary size, a four-word WordLevel tokenizer).
//!
//! MLX memory is process-wide, so the tests take one lock and run one at a time.
use cider_core::error::ErrorKind;
use cider_core::manager::*;
use cider_core::mlx::{io, memory, Array, Dtype};
use cider_core::{GenerateOptions, Model};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const MB: u64 = 1_000_000;
const H: i32 = 64;
const LAYERS: i32 = 2;

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("cider-mgr-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<eos>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<eos>":0,"hello":1,"world":2,"<unk>":3},"unk_token":"<unk>"}}"#;

/// A llama folder of about `mb` megabytes of f32 weights (tied embeddings;
/// the vocabulary size sets the size). Returns the exact tensor bytes.
fn write_model(dir: &Path, mb: f64) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let (hd, heads, kv, inter) = (H / 4, 4, 2, 2 * H);
    let per_layer = (heads * hd * H + 2 * kv * hd * H + H * heads * hd + 3 * inter * H + 2 * H) as u64 * 4;
    let fixed = per_layer * LAYERS as u64 + H as u64 * 4;
    let vocab = (((mb * 1e6) as u64).saturating_sub(fixed) / (H as u64 * 4)).max(8) as i32;
    let mut t: Vec<(String, Array)> = Vec::new();
    let mut add = |n: &str, shape: &[i32]| t.push((n.to_string(), Array::full(shape, 0.01, Dtype::F32).unwrap()));
    add("model.embed_tokens.weight", &[vocab, H]);
    add("model.norm.weight", &[H]);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        add(&format!("{p}.self_attn.q_proj.weight"), &[heads * hd, H]);
        add(&format!("{p}.self_attn.k_proj.weight"), &[kv * hd, H]);
        add(&format!("{p}.self_attn.v_proj.weight"), &[kv * hd, H]);
        add(&format!("{p}.self_attn.o_proj.weight"), &[H, heads * hd]);
        add(&format!("{p}.mlp.gate_proj.weight"), &[inter, H]);
        add(&format!("{p}.mlp.up_proj.weight"), &[inter, H]);
        add(&format!("{p}.mlp.down_proj.weight"), &[H, inter]);
        add(&format!("{p}.input_layernorm.weight"), &[H]);
        add(&format!("{p}.post_attention_layernorm.weight"), &[H]);
    }
    let bytes: u64 = t.iter().map(|(_, a)| a.nbytes() as u64).sum();
    io::save_safetensors(dir.join("model.safetensors").to_str().unwrap(), &t).unwrap();
    let cfg = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": H, "num_hidden_layers": LAYERS, "intermediate_size": inter,
        "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": 1e-5,
        "vocab_size": vocab, "max_position_embeddings": 512, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "eos_token_id": 0, "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token":"<eos>","chat_template":"{% for m in messages %}{{ m['content'] }} {% endfor %}"}"#,
    )
    .unwrap();
    bytes
}

fn meta(priority: u32, tasks: &[&str], quality: Option<f64>) -> ModelMeta {
    let mut m = ModelMeta { priority, tasks: tasks.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    if let Some(q) = quality {
        m.scores.insert("quality".into(), q);
    }
    m
}

/// (name, size in MB, meta) -> a manager with `budget` bytes.
fn manager(tmp: &TempDir, models: &[(&str, f64, ModelMeta)], budget: u64) -> Manager {
    let mut reg = Registry::new();
    for (name, mb, m) in models {
        let dir = tmp.path().join(name);
        write_model(&dir, *mb);
        reg.add(name, &dir, m.clone()).unwrap();
    }
    let cfg = ManagerConfig { budget_bytes: Some(budget), ..Default::default() };
    Manager::new(reg, cfg).unwrap()
}

fn resident(m: &Manager) -> Vec<String> {
    m.loaded().into_iter().map(|l| l.name).collect()
}

/// MLX active memory above `base` stays within the budget.
fn check_memory(m: &Manager, base: usize) {
    let used = memory::active().saturating_sub(base) as u64;
    assert!(used <= m.budget(), "MLX holds {used} bytes above the baseline, budget {}", m.budget());
    let peak = memory::peak().saturating_sub(base) as u64;
    assert!(peak <= m.budget(), "MLX peaked at {peak} bytes above the baseline, budget {}", m.budget());
    assert!(m.memory().accounted_bytes <= m.budget());
}

#[test]
fn inspect_reads_headers_only_and_matches_load() {
    let _g = serial();
    let tmp = TempDir::new("inspect");
    let dir = tmp.path().join("m");
    let bytes = write_model(&dir, 1.0);
    let e = inspect_model(&dir, "m", Source::Folder).unwrap();
    assert_eq!(e.weight_bytes, bytes);
    assert_eq!(e.model_type, "llama");
    assert_eq!(e.dtype, "float32");
    assert_eq!(e.context_length, 512);
    assert_eq!(e.kv_bytes_per_token, 2 * 2 * 2 * 16 * 4);
    assert_eq!(e.estimate_bytes(100), bytes + 100 * 512);
    assert_eq!(e.estimate_bytes(100_000), bytes + 512 * 512, "capped at the context length");
    assert!(e.has_chat_template);
    assert!(e.quantization.is_none());
    assert!(e.disk_bytes > bytes);
    let model = Model::load(&dir).unwrap();
    assert_eq!(e.parameters, model.info.parameters);
    assert_eq!(e.weight_bytes, model.info.weight_bytes);
}

#[test]
fn eviction_order_is_priority_then_lru() {
    let _g = serial();
    let tmp = TempDir::new("evict");
    memory::clear_cache();
    let base = memory::active();
    memory::reset_peak();
    let m = manager(
        &tmp,
        &[
            ("a", 1.0, meta(0, &[], None)),
            ("b", 1.0, meta(5, &[], None)),
            ("c", 1.0, meta(5, &[], None)),
            ("d", 1.0, meta(1, &[], None)),
        ],
        (3.5 * MB as f64) as u64,
    );
    for n in ["a", "b", "c"] {
        let h = m.acquire(n).unwrap();
        assert!(h.report().loaded_now);
        let err = h.report().estimate_error_bytes;
        assert!(err.unsigned_abs() < 64 * 1024, "estimate off by {err} bytes");
        check_memory(&m, base);
    }
    assert_eq!(resident(&m), ["a", "b", "c"]);
    // b is now more recently used than c.
    assert!(!m.acquire("b").unwrap().report().loaded_now);
    let h = m.acquire("d").unwrap();
    assert_eq!(h.report().evicted, ["c"], "priority 5 before 0 and 1; c is the LRU of the two 5s");
    drop(h);
    assert_eq!(resident(&m), ["a", "b", "d"]);
    check_memory(&m, base);
    assert_eq!(m.acquire("c").unwrap().report().evicted, ["b"]);
    assert_eq!(resident(&m), ["a", "c", "d"]);
    // Among 0 and 1 (once no 5 is idle) the 1 goes, even though a is older.
    m.pin("c").unwrap();
    assert_eq!(m.acquire("b").unwrap().report().evicted, ["d"]);
    assert_eq!(resident(&m), ["a", "b", "c"]);
    check_memory(&m, base);
    drop(m);
    memory::clear_cache();
    assert!(memory::active() <= base + 64 * 1024, "models freed with the manager");
}

#[test]
fn pinned_models_are_never_evicted() {
    let _g = serial();
    let tmp = TempDir::new("pin");
    memory::clear_cache();
    let base = memory::active();
    memory::reset_peak();
    let mut pinned = meta(9, &[], None);
    pinned.pinned = true;
    let m = manager(
        &tmp,
        &[("p", 1.0, pinned), ("x", 1.0, meta(0, &[], None)), ("y", 1.0, meta(0, &[], None))],
        (2.5 * MB as f64) as u64,
    );
    m.preload(&["p", "x"]).unwrap();
    assert_eq!(m.acquire("y").unwrap().report().evicted, ["x"]);
    assert_eq!(resident(&m), ["p", "y"]);
    // Only pinned models left besides the requested: refused, not evicted.
    let big = tmp.path().join("big");
    write_model(&big, 2.0);
    m.register("big", &big, meta(0, &[], None)).unwrap();
    memory::clear_cache();
    memory::reset_peak();
    let e = m.acquire("big").unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfMemory);
    assert!(e.message.contains("p ") && e.message.contains("pinned"), "{}", e.message);
    assert!(m.is_loaded("p"));
    m.unpin("p").unwrap();
    let h = m.acquire("big").unwrap();
    assert_eq!(h.report().evicted.len(), 2);
    assert!(!m.is_loaded("p"));
    check_memory(&m, base);
}

#[test]
fn too_big_is_refused_with_a_clear_message() {
    let _g = serial();
    let tmp = TempDir::new("big");
    let m = manager(&tmp, &[("huge", 3.0, meta(0, &["chat"], None)), ("s", 1.0, meta(0, &[], None))], 2 * MB);
    let _s = m.acquire("s").unwrap();
    let e = m.acquire("huge").unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfMemory);
    assert!(e.message.contains("\"huge\" needs 3.0"), "{}", e.message);
    assert!(e.message.contains("budget of 2.00 MB"), "{}", e.message);
    assert!(m.is_loaded("s"), "a refused load evicts nothing");
    // With a fallback allowed but no smaller model of that task, the reason is given.
    let e = m.acquire_with("huge", &AcquireOptions { allow_fallback: true, ..Default::default() }).unwrap_err();
    assert!(e.message.contains("no smaller model with task tag chat"), "{}", e.message);
    let e = m.acquire("nope").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("huge, s"), "{}", e.message);
}

#[test]
fn fallback_takes_best_smaller_model_of_the_task() {
    let _g = serial();
    let tmp = TempDir::new("fallback");
    let m = manager(
        &tmp,
        &[
            ("big-chat", 4.0, meta(0, &["chat"], Some(0.99))),
            ("small-chat", 1.0, meta(1, &["chat"], Some(0.5))),
            ("mid-chat", 1.5, meta(1, &["chat"], Some(0.9))),
            ("unimportant-chat", 1.0, meta(3, &["chat"], Some(1.0))),
            ("coder", 1.0, meta(0, &["code"], Some(1.0))),
        ],
        3 * MB,
    );
    assert!(m.acquire("big-chat").is_err());
    let h = m.acquire_with("big-chat", &AcquireOptions { allow_fallback: true, ..Default::default() }).unwrap();
    assert_eq!(h.name(), "mid-chat", "priority 1 ties, quality 0.9 beats 0.5; coder has the wrong task");
    assert_eq!(h.report().fallback_from.as_deref(), Some("big-chat"));
    assert!(h.report().fallback_reason.as_deref().unwrap().contains("budget"));
    // A task given explicitly.
    let opts = AcquireOptions { allow_fallback: true, task: Some("code".into()), ..Default::default() };
    assert_eq!(m.acquire_with("big-chat", &opts).unwrap().name(), "coder");
}

#[test]
fn models_in_use_are_not_freed() {
    let _g = serial();
    let tmp = TempDir::new("inuse");
    memory::clear_cache();
    let base = memory::active();
    memory::reset_peak();
    let m = manager(
        &tmp,
        &[("a", 1.0, meta(9, &[], None)), ("b", 1.0, meta(0, &[], None)), ("c", 1.0, meta(0, &[], None))],
        (2.5 * MB as f64) as u64,
    );
    let ha = m.acquire("a").unwrap();
    m.acquire("b").unwrap();
    // a has the worst priority but is in use: b goes.
    assert_eq!(m.acquire("c").unwrap().report().evicted, ["b"]);
    let hc = m.acquire("c").unwrap();
    let e = m.acquire("b").unwrap_err();
    assert!(e.message.contains("in use"), "{}", e.message);
    assert_eq!(resident(&m), ["a", "c"]);
    // Waiting: the holder lets go after a moment.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(hc);
    });
    let opts = AcquireOptions { wait: Some(Duration::from_secs(20)), ..Default::default() };
    let hb = m.acquire_with("b", &opts).unwrap();
    t.join().unwrap();
    assert_eq!(hb.report().evicted, ["c"]);
    check_memory(&m, base);
    // unload while in use is deferred until the last holder (here a session) lets go.
    let session = ha.session();
    drop(ha);
    assert_eq!(m.unload("a").unwrap(), UnloadOutcome::Deferred);
    assert!(m.is_loaded("a"));
    assert_eq!(session.model.info.model_type, "llama", "still usable");
    drop(session);
    assert_eq!(m.expire_idle(), ["a"]);
    assert!(!m.is_loaded("a"));
    drop(hb);
    assert_eq!(m.unload("b").unwrap(), UnloadOutcome::Unloaded);
    assert_eq!(m.unload("b").unwrap(), UnloadOutcome::NotLoaded);
}

#[test]
fn statistics_survive_a_restart() {
    let _g = serial();
    let tmp = TempDir::new("stats");
    let dir = tmp.path().join("m");
    write_model(&dir, 0.5);
    let stats_path = tmp.path().join("state").join("stats.json");
    let make = || {
        let mut reg = Registry::new();
        reg.add("m", &dir, ModelMeta::default()).unwrap();
        let cfg = ManagerConfig { budget_bytes: Some(10 * MB), stats_path: Some(stats_path.clone()), ..Default::default() };
        Manager::new(reg, cfg).unwrap()
    };
    {
        let m = make();
        let h = m.acquire("m").unwrap();
        let opts = GenerateOptions { max_tokens: 4, ignore_eos: true, ..Default::default() };
        let r = h.generate(&[1, 2, 1], &opts, &mut |_| true).unwrap();
        assert_eq!(r.stats.generation_tokens, 4);
        let s = m.stats("m").unwrap();
        assert_eq!((s.loads, s.generations, s.tokens_generated), (1, 1, 4));
        // A plain session on the managed model (what the C and Python bindings
        // run) counts as well.
        cider_core::Session::new(h.model().clone()).generate(&[1, 2], &opts, &mut |_| true).unwrap();
        let s = m.stats("m").unwrap();
        assert_eq!((s.generations, s.tokens_generated), (2, 8));
        cider_core::Session::new(h.model().clone()).generate(&[1], &GenerateOptions { max_tokens: 0, ..opts.clone() }, &mut |_| true).unwrap();
        assert_eq!(m.stats("m").unwrap().generations, 3);
    }
    assert!(stats_path.is_file(), "written when the manager goes away");
    let leftovers: Vec<_> = std::fs::read_dir(stats_path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    let m = make();
    let s = m.stats("m").unwrap();
    assert_eq!((s.loads, s.generations, s.tokens_generated, s.prompt_tokens), (1, 3, 8, 6));
    assert!(s.last_used_unix > 1.6e9 && s.avg_tokens_per_s > 0.0 && s.avg_ttft_s > 0.0);
    assert!(s.measured_bytes > 0 && s.estimated_bytes > 0);
    m.acquire("m").unwrap();
    m.save_stats().unwrap();
    let m2 = make();
    assert_eq!(m2.stats("m").unwrap().loads, 2);
    // A corrupt file is reported, naming it.
    std::fs::write(&stats_path, "{ nope").unwrap();
    let mut reg = Registry::new();
    reg.add("m", &dir, ModelMeta::default()).unwrap();
    let cfg = ManagerConfig { stats_path: Some(stats_path.clone()), ..Default::default() };
    let e = Manager::new(reg, cfg).err().unwrap();
    assert!(e.message.contains("stats.json"), "{}", e.message);
}

fn registry_error(tmp: &TempDir, doc: &str) -> String {
    let p = tmp.path().join("registry.json");
    std::fs::write(&p, doc).unwrap();
    let e = Registry::open(&p).expect_err("should fail");
    assert!(e.message.contains(&p.display().to_string()), "names the file: {}", e.message);
    e.message
}

#[test]
fn registry_file_errors_name_file_and_key() {
    let _g = serial();
    let tmp = TempDir::new("regerr");
    write_model(&tmp.path().join("models").join("m"), 0.3);
    let e = registry_error(&tmp, r#"{"models": {"m": {"path": "models/m", "priority": "high"}}}"#);
    assert!(e.contains("\"models.m.priority\" should be a non-negative integer"), "{e}");
    let e = registry_error(&tmp, r#"{"models": {"m": {"path": "models/m", "pinnned": true}}}"#);
    assert!(e.contains("\"models.m.pinnned\" is not a known key"), "{e}");
    let e = registry_error(&tmp, r#"{"models": {"m": {"path": "models/m", "scores": {"quality": "good"}}}}"#);
    assert!(e.contains("\"models.m.scores.quality\" should be a number"), "{e}");
    let e = registry_error(&tmp, r#"{"models": {"m": {"path": "models/m", "tasks": ["chat", 3]}}}"#);
    assert!(e.contains("\"models.m.tasks[1]\""), "{e}");
    let e = registry_error(&tmp, "{\"models\": {\n  \"m\": {,}}}");
    assert!(e.contains("line 2"), "{e}");
    let e = registry_error(&tmp, r#"{"models": {"ghost": {"priority": 1}}}"#);
    assert!(e.contains("\"models.ghost\"") && e.contains("no scanned model"), "{e}");
    let e = registry_error(&tmp, r#"{"models": {"m": {"path": "models/nowhere"}}}"#);
    assert!(e.contains("\"models.m\"") && e.contains("nowhere"), "{e}");
    let e = registry_error(
        &tmp,
        r#"{"models": {"m": {"path": "models/m", "aliases": ["x"]}, "n": {"path": "models/m", "aliases": ["x"]}}}"#,
    );
    assert!(e.contains("\"models.n.aliases\"") && e.contains("\"x\""), "{e}");
    let e = registry_error(&tmp, r#"{"budget": "lots"}"#);
    assert!(e.contains("\"budget\""), "{e}");
    let e = registry_error(&tmp, r#"{"scan": ["does-not-exist"]}"#);
    assert!(e.contains("\"scan\"") && e.contains("does-not-exist"), "{e}");
}

#[test]
fn registry_file_scan_metadata_and_resolution() {
    let _g = serial();
    let tmp = TempDir::new("regok");
    write_model(&tmp.path().join("models").join("alpha"), 0.3);
    write_model(&tmp.path().join("models").join("org").join("beta"), 0.6);
    std::fs::create_dir_all(tmp.path().join("models").join("broken")).unwrap();
    std::fs::write(tmp.path().join("models").join("broken").join("config.json"), "{}").unwrap();
    let p = tmp.path().join("registry.json");
    std::fs::write(
        &p,
        r#"{
  "version": 1,
  "scan": ["models"],
  "budget": "5MB",
  "stats": "stats.json",
  "defaults": {"priority": 7, "context_length": 64},
  "models": {
    "alpha": {"aliases": ["a"], "priority": 0, "tasks": ["chat"], "scores": {"quality": 0.4}, "pinned": true, "keep_alive_s": 30}
  }
}"#,
    )
    .unwrap();
    let reg = Registry::open(&p).unwrap();
    let names: Vec<&str> = reg.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["alpha", "org/beta"]);
    assert_eq!(reg.skipped.len(), 1);
    assert!(reg.skipped[0].reason.contains("model_type"), "{}", reg.skipped[0].reason);
    let a = reg.resolve("a").unwrap();
    assert_eq!(a.name, "alpha");
    assert!(a.meta.pinned && a.meta.tasks == ["chat"] && a.meta.keep_alive == Some(Duration::from_secs(30)));
    assert_eq!(reg.resolve("org/beta").unwrap().meta.priority, 7, "defaults apply to unlisted models");
    let by_path = tmp.path().join("models").join("org").join("beta");
    assert_eq!(reg.resolve(by_path.to_str().unwrap()).unwrap().name, "org/beta");
    let m = Manager::new(reg, ManagerConfig::default()).unwrap();
    assert_eq!(m.budget(), 5 * MB);
    let h = m.acquire("a").unwrap();
    assert_eq!(h.report().charged_bytes, h.report().measured_bytes.max(m.entry("a").unwrap().weight_bytes) + 64 * 512);
    drop(h);
    m.save_stats().unwrap();
    assert!(tmp.path().join("stats.json").is_file());
}

#[test]
fn hf_hub_cache_layout() {
    let _g = serial();
    let tmp = TempDir::new("hf");
    let repo = tmp.path().join("hub").join("models--org--tiny");
    write_model(&repo.join("snapshots").join("old"), 0.3);
    write_model(&repo.join("snapshots").join("abc123"), 0.3);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
    std::fs::create_dir_all(tmp.path().join("hub").join("datasets--x--y")).unwrap();
    let old = (std::env::var_os("HF_HUB_CACHE"), std::env::var_os("HF_HOME"));
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", tmp.path());
    assert_eq!(hf_hub_cache().unwrap(), tmp.path().join("hub"));
    let mut reg = Registry::new();
    assert_eq!(reg.scan_hf_cache(), 1);
    std::env::set_var("HF_HUB_CACHE", tmp.path().join("elsewhere"));
    assert_eq!(hf_hub_cache().unwrap(), tmp.path().join("elsewhere"));
    match old.0 {
        Some(v) => std::env::set_var("HF_HUB_CACHE", v),
        None => std::env::remove_var("HF_HUB_CACHE"),
    }
    match old.1 {
        Some(v) => std::env::set_var("HF_HOME", v),
        None => std::env::remove_var("HF_HOME"),
    }
    let e = reg.resolve("org/tiny").unwrap();
    assert_eq!(e.source, Source::HfCache { repo: "org/tiny".into(), revision: "abc123".into() });
    assert!(e.path.ends_with("abc123"));
}

#[test]
fn select_ranks_and_explains() {
    let _g = serial();
    let tmp = TempDir::new("select");
    let m = manager(
        &tmp,
        &[
            ("chat-big", 3.0, meta(0, &["chat"], Some(0.9))),
            ("chat-a", 1.0, meta(1, &["chat"], Some(0.6))),
            ("chat-b", 1.0, meta(1, &["chat"], Some(0.8))),
            ("chat-c", 0.5, meta(2, &["chat"], None)),
            ("code", 1.0, meta(0, &["code"], Some(1.0))),
        ],
        2 * MB,
    );
    let s = m.select(&SelectQuery { task: Some("chat".into()), ..Default::default() });
    assert_eq!(s.chosen.as_deref(), Some("chat-b"), "{}", s.explain());
    let order: Vec<&str> = s.candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(order, ["chat-b", "chat-a", "chat-c", "chat-big", "code"]);
    let why = s.explain();
    assert!(why.contains("chat-big: skipped: needs 3.0"), "{why}");
    assert!(why.contains("code: skipped: no task tag \"chat\""), "{why}");
    assert!(why.contains("chat-a: eligible, ranked #2"), "{why}");
    let big = m.select(&SelectQuery { task: Some("chat".into()), max_memory: Some(10 * MB), ..Default::default() });
    assert_eq!(big.chosen.as_deref(), Some("chat-big"));
    let q = SelectQuery { task: Some("chat".into()), min_score: Some(0.7), ..Default::default() };
    let s = m.select(&q);
    assert_eq!(s.chosen.as_deref(), Some("chat-b"));
    assert!(s.explain().contains("chat-a: skipped: quality 0.6 < min_score 0.7"), "{}", s.explain());
    assert!(m.select(&SelectQuery { task: Some("embedding".into()), ..Default::default() }).chosen.is_none());
}

#[test]
fn keep_alive_expires_idle_models() {
    let _g = serial();
    let tmp = TempDir::new("keepalive");
    let mut short = meta(0, &[], None);
    short.keep_alive = Some(Duration::from_millis(100));
    let mut reg = Registry::new();
    write_model(&tmp.path().join("k"), 0.3);
    write_model(&tmp.path().join("f"), 0.3);
    reg.add("k", &tmp.path().join("k"), short).unwrap();
    reg.add("f", &tmp.path().join("f"), meta(0, &[], None)).unwrap();
    let cfg = ManagerConfig { budget_bytes: Some(10 * MB), reaper_interval: Duration::from_millis(20), ..Default::default() };
    let m = Manager::new(reg, cfg).unwrap();
    let h = m.acquire("k").unwrap();
    m.acquire("f").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(m.is_loaded("k"), "in use: kept past its keep-alive");
    drop(h);
    let t0 = std::time::Instant::now();
    while m.is_loaded("k") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!m.is_loaded("k"), "expired by the background thread");
    assert!(m.is_loaded("f"), "no keep-alive: stays");
}

#[test]
fn eight_threads_hammering_acquire_and_release() {
    let _g = serial();
    let tmp = TempDir::new("hammer");
    let base = memory::active();
    let names = ["h0", "h1", "h2", "h3", "h4"];
    let models: Vec<(&str, f64, ModelMeta)> =
        names.iter().enumerate().map(|(i, n)| (*n, 0.5, meta(i as u32 % 3, &["chat"], None))).collect();
    let m = manager(&tmp, &models, (1.6 * MB as f64) as u64);
    let (tx, rx) = std::sync::mpsc::channel();
    let m2 = m.clone();
    std::thread::spawn(move || {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let m = m2.clone();
                std::thread::spawn(move || {
                    let opts = AcquireOptions { wait: Some(Duration::from_secs(60)), ..Default::default() };
                    let mut loads = 0;
                    for i in 0..25 {
                        let name = names[(t * 7 + i * 3) % names.len()];
                        let h = m.acquire_with(name, &opts).unwrap();
                        assert_eq!(h.name(), name);
                        assert!(m.memory().accounted_bytes <= m.budget());
                        if i % 5 == 0 {
                            let opts = GenerateOptions { max_tokens: 2, ignore_eos: true, ..Default::default() };
                            h.generate(&[1, 2], &opts, &mut |_| true).unwrap();
                        }
                        loads += h.report().loaded_now as usize;
                        if i % 7 == 3 {
                            let h2 = h.clone();
                            drop(h);
                            drop(h2);
                        }
                    }
                    loads
                })
            })
            .collect();
        let loads: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // Let go of the manager before reporting, so the leak check below sees it gone.
        drop(m2);
        tx.send(loads).unwrap();
    });
    let loads = rx.recv_timeout(Duration::from_secs(300)).expect("deadlock: the threads did not finish");
    assert!(loads >= 3);
    for l in m.loaded() {
        assert_eq!(l.handles, 0, "{} still has handles", l.name);
        assert!(!l.in_use);
    }
    // Generations ran too, so only active memory (not the peak) is held to the budget here.
    assert!((memory::active().saturating_sub(base) as u64) <= m.budget());
    let total: u64 = m.all_stats().values().map(|s| s.acquires).sum();
    assert_eq!(total, 8 * 25);
    let gens: u64 = m.all_stats().values().map(|s| s.generations).sum();
    assert_eq!(gens, 8 * 5);
    drop(m);
    memory::clear_cache();
    assert!(memory::active() <= base + 64 * 1024, "leak: {} bytes above baseline", memory::active() - base);
}

#[test]
fn quantized_mixed_model_from_mlx_lm() {
    // Needs the test virtualenv (scripts/setup.sh --test); skipped without it.
    let _g = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join(".venv/bin/python");
    if !py.exists() {
        println!("skipped: no .venv");
        return;
    }
    let tmp = TempDir::new("quant");
    let out = tmp.path().join("q");
    let st = std::process::Command::new(&py)
        .arg(root.join("tests/python/models.py"))
        .args([out.to_str().unwrap(), "--arch", "llama", "--quant", "mixed"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let e = inspect_model(&out, "q", Source::Folder).unwrap();
    let q = e.quantization.clone().unwrap();
    assert_eq!((q.bits, q.group_size, q.mixed), (4, 64, true));
    assert_eq!(q.overrides.get("model.embed_tokens").unwrap().unwrap().bits, 6);
    assert_eq!(q.unquantized, ["model.layers.1.self_attn.o_proj"]);
    let model = Model::load(&out).unwrap();
    assert_eq!(e.parameters, model.info.parameters);
    assert_eq!(e.weight_bytes, model.info.weight_bytes);
}
