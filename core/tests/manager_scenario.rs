//! The acceptance scenario on folders written by mlx-lm (tests/python/models.py):
//! three models of different sizes under a budget, acquired in sequence,
//! checking residency, `select`, and that MLX's measured memory (active and
//! peak) stays under the budget. Skipped without the test virtualenv.
use cider_core::manager::*;
use cider_core::mlx::memory;
use std::path::{Path, PathBuf};
use std::process::Command;

fn make(py: &Path, root: &Path, out: &Path, hidden: u32, quant: Option<&str>) {
    let mut c = Command::new(py);
    c.arg(root.join("tests/python/models.py")).arg(out).args(["--arch", "llama", "--set"]);
    c.arg(format!("hidden_size={hidden}"));
    if let Some(q) = quant {
        c.args(["--quant", q]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn budget_scenario_on_mlx_lm_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join(".venv/bin/python");
    if !py.exists() {
        println!("skipped: no .venv");
        return;
    }
    let tmp: PathBuf = std::env::temp_dir().join(format!("cider-mgr-scenario-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    make(&py, &root, &tmp.join("small"), 32, None);
    make(&py, &root, &tmp.join("mid"), 64, None);
    make(&py, &root, &tmp.join("big"), 128, Some("q8g32"));
    let reg_path = tmp.join("registry.json");
    std::fs::write(
        &reg_path,
        r#"{"models": {
  "small": {"path": "small", "priority": 2, "tasks": ["chat"], "scores": {"quality": 0.3}},
  "mid":   {"path": "mid",   "priority": 1, "tasks": ["chat"], "scores": {"quality": 0.6}},
  "big":   {"path": "big",   "priority": 0, "tasks": ["chat", "code"], "scores": {"quality": 0.9}}
}}"#,
    )
    .unwrap();
    let reg = Registry::open(&reg_path).unwrap();
    let size = |n: &str| reg.resolve(n).unwrap().weight_bytes;
    let (s, m, b) = (size("small"), size("mid"), size("big"));
    assert!(s < m && m < b, "{s} {m} {b}");
    // Room for big + mid, not all three.
    let budget = b + m + s / 2;
    memory::clear_cache();
    let base = memory::active();
    memory::reset_peak();
    let mgr = Manager::new(reg, ManagerConfig { budget_bytes: Some(budget), ..Default::default() }).unwrap();
    let names = |mgr: &Manager| mgr.loaded().into_iter().map(|l| l.name).collect::<Vec<_>>();
    let check = |mgr: &Manager| {
        let active = memory::active().saturating_sub(base) as u64;
        let peak = memory::peak().saturating_sub(base) as u64;
        assert!(active <= budget && peak <= budget, "active {active} peak {peak} budget {budget}");
        assert!(mgr.memory().accounted_bytes <= budget);
    };
    drop(mgr.acquire("small").unwrap());
    check(&mgr);
    drop(mgr.acquire("mid").unwrap());
    check(&mgr);
    assert_eq!(names(&mgr), ["mid", "small"]);
    let h = mgr.acquire("big").unwrap();
    assert_eq!(h.report().evicted, ["small"], "priority 2 goes first");
    assert!(h.report().estimate_error_bytes.unsigned_abs() < 64 * 1024);
    drop(h);
    check(&mgr);
    assert_eq!(names(&mgr), ["big", "mid"]);
    let h = mgr.acquire("small").unwrap();
    assert_eq!(h.report().evicted, ["mid"]);
    check(&mgr);
    let sel = mgr.select(&SelectQuery { task: Some("chat".into()), ..Default::default() });
    assert_eq!(sel.chosen.as_deref(), Some("big"), "{}", sel.explain());
    let sel = mgr.select(&SelectQuery { task: Some("chat".into()), max_memory: Some(m + 1), ..Default::default() });
    assert_eq!(sel.chosen.as_deref(), Some("mid"), "{}", sel.explain());
    drop(h);
    drop(mgr);
    let _ = std::fs::remove_dir_all(&tmp);
}
