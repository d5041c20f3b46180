//! `cider.Manager`: the model manager of cider_core (registry, memory budget
//! with priority/LRU eviction, fallback, task selection, usage statistics).
//! Translation only; descriptions come back as plain dicts built from the
//! core's JSON views, so Python sees the same shape as `cider models --format json`.
use crate::errors::{invalid_arg, to_py, Op};
use crate::{Model, Tokenizer, TokenizerSource};
use cider_core::manager as mgr;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::time::Duration;

/// Loads models on demand within a memory budget. `acquire` returns a `Model`;
/// while that object (or a generation from it) is alive the model is never freed.
#[pyclass(module = "cider", frozen)]
pub struct Manager {
    inner: mgr::Manager,
}

fn json_to_py(py: Python<'_>, v: impl std::fmt::Display) -> PyResult<Py<PyAny>> {
    Ok(py.import("json")?.call_method1("loads", (v.to_string(),))?.unbind())
}

fn bytes_arg(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(n) = v.extract::<u64>() {
        return Ok(n);
    }
    let s: String = v.extract().map_err(|_| invalid_arg(py, format!("{name} must be an int (bytes) or a str like \"8GB\"")))?;
    mgr::parse_bytes(&s).map_err(|e| to_py(py, e, Op::Load))
}

#[pymethods]
impl Manager {
    /// registry: a registry file (docs/registry.md); budget: bytes or "8GB" (default: 70% of
    /// system memory); stats: statistics file; scan: extra folders; hf_cache: scan the hub cache.
    #[new]
    #[pyo3(signature = (registry = None, *, budget = None, stats = None, context_length = None, scan = None, hf_cache = false))]
    fn new(
        py: Python<'_>,
        registry: Option<PathBuf>,
        budget: Option<&Bound<'_, PyAny>>,
        stats: Option<PathBuf>,
        context_length: Option<usize>,
        scan: Option<Vec<PathBuf>>,
        hf_cache: bool,
    ) -> PyResult<Self> {
        let budget_bytes = budget.map(|b| bytes_arg(py, "budget", b)).transpose()?;
        let r = py.detach(|| {
            let mut reg = match &registry {
                Some(p) => mgr::Registry::open(p)?,
                None => mgr::Registry::new(),
            };
            for d in scan.iter().flatten() {
                reg.scan_dir(d)?;
            }
            if hf_cache {
                reg.scan_hf_cache();
            }
            let cfg = mgr::ManagerConfig { budget_bytes, stats_path: stats, context_length, ..Default::default() };
            mgr::Manager::new(reg, cfg)
        });
        Ok(Manager { inner: r.map_err(|e| to_py(py, e, Op::Load))? })
    }

    /// Register (or replace) a model folder under `name` with its metadata.
    #[pyo3(signature = (name, path, *, aliases = None, priority = 10, tasks = None, scores = None, pinned = false, keep_alive = None))]
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        py: Python<'_>,
        name: &str,
        path: PathBuf,
        aliases: Option<Vec<String>>,
        priority: u32,
        tasks: Option<Vec<String>>,
        scores: Option<std::collections::BTreeMap<String, f64>>,
        pinned: bool,
        keep_alive: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let meta = mgr::ModelMeta {
            aliases: aliases.unwrap_or_default(),
            priority,
            tasks: tasks.unwrap_or_default(),
            scores: scores.unwrap_or_default(),
            pinned,
            keep_alive: keep_alive.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
            description: None,
        };
        let e = py.detach(|| self.inner.register(name, &path, meta)).map_err(|e| to_py(py, e, Op::Load))?;
        json_to_py(py, mgr::entry_json(&e, 0))
    }

    /// The loaded model `name` (name, alias or path), loading it (and evicting idle models) if
    /// needed. allow_fallback: take the best smaller model with the same task instead of
    /// failing; wait: seconds to wait for models in use to be released.
    #[pyo3(signature = (name, *, allow_fallback = false, task = None, wait = None, context_length = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        name: &str,
        allow_fallback: bool,
        task: Option<String>,
        wait: Option<f64>,
        context_length: Option<usize>,
    ) -> PyResult<Model> {
        let opts = mgr::AcquireOptions {
            allow_fallback,
            task,
            wait: wait.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
            context_length,
        };
        let h = py.detach(|| self.inner.acquire_with(name, &opts)).map_err(|e| to_py(py, e, Op::Load))?;
        // The returned Model holds the Arc: it keeps the model in use until collected.
        let inner = h.model().clone();
        let tokenizer = Py::new(py, Tokenizer { source: TokenizerSource::Model(inner.clone()) })?;
        Ok(Model { inner, tokenizer })
    }

    /// Load several models in order (later ones may evict earlier ones); returns their load reports.
    fn preload(&self, py: Python<'_>, names: Vec<String>) -> PyResult<Py<PyAny>> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = py.detach(|| self.inner.preload(&refs)).map_err(|e| to_py(py, e, Op::Load))?;
        json_to_py(py, mgr::reports_json(&r))
    }

    fn pin(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.inner.pin(name).map_err(|e| to_py(py, e, Op::Load))
    }

    fn unpin(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.inner.unpin(name).map_err(|e| to_py(py, e, Op::Load))
    }

    /// "unloaded", "deferred" (in use: unloaded when released) or "not_loaded".
    fn unload(&self, py: Python<'_>, name: &str) -> PyResult<&'static str> {
        Ok(match py.detach(|| self.inner.unload(name)).map_err(|e| to_py(py, e, Op::Load))? {
            mgr::UnloadOutcome::Unloaded => "unloaded",
            mgr::UnloadOutcome::Deferred => "deferred",
            mgr::UnloadOutcome::NotLoaded => "not_loaded",
        })
    }

    fn expire_idle(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.inner.expire_idle())
    }

    /// {"chosen": name or None, "candidates": [{"name", "eligible", "chosen", "reason", ...}]}.
    #[pyo3(signature = (task = None, *, max_memory = None, min_score = None, score_key = "quality", context_length = 0))]
    fn select(
        &self,
        py: Python<'_>,
        task: Option<String>,
        max_memory: Option<&Bound<'_, PyAny>>,
        min_score: Option<f64>,
        score_key: &str,
        context_length: usize,
    ) -> PyResult<Py<PyAny>> {
        let max_memory = max_memory.map(|b| bytes_arg(py, "max_memory", b)).transpose()?;
        let q = mgr::SelectQuery { task, max_memory, min_score, score_key: score_key.to_string(), context_length };
        json_to_py(py, mgr::selection_json(&self.inner.select(&q)))
    }

    /// Registered models (no weights loaded), as dicts.
    fn models(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, mgr::entries_json(&self.inner.entries(), 0))
    }

    fn info(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        let e = self.inner.entry(name).map_err(|e| to_py(py, e, Op::Load))?;
        json_to_py(py, mgr::entry_json(&e, 0))
    }

    fn loaded(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, mgr::loaded_list_json(&self.inner.loaded()))
    }

    fn memory(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, mgr::memory_json(&self.inner.memory()))
    }

    /// Usage statistics of one model, or {name: stats} for all.
    #[pyo3(signature = (name = None))]
    fn stats(&self, py: Python<'_>, name: Option<&str>) -> PyResult<Py<PyAny>> {
        match name {
            Some(n) => json_to_py(py, mgr::stats_json(&self.inner.stats(n).map_err(|e| to_py(py, e, Op::Load))?)),
            None => json_to_py(py, mgr::all_stats_json(&self.inner.all_stats())),
        }
    }

    fn save_stats(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.save_stats().map_err(|e| to_py(py, e, Op::Load))
    }

    /// The budget in bytes; setting it evicts idle models until the rest fit.
    #[getter]
    fn budget(&self) -> u64 {
        self.inner.budget()
    }

    #[setter]
    fn set_budget(&self, py: Python<'_>, bytes: u64) {
        py.detach(|| self.inner.set_budget(bytes));
    }

    fn __repr__(&self) -> String {
        format!("Manager(budget={}, loaded={})", mgr::format_bytes(self.inner.budget()), self.inner.loaded().len())
    }
}
