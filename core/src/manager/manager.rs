//! `Manager`: loads models on demand within a memory budget, evicting idle
//! unpinned models by (priority, least recently used), falling back to a
//! smaller model of the same task when allowed, and keeping usage statistics.
use super::budget::{default_budget, format_bytes};
use super::handle::ModelHandle;
use super::meta::ModelMeta;
use super::registry::{ModelEntry, Registry};
use super::select::{rank, select, SelectQuery, Selection};
use super::state::{breakdown, lock, Inner, Slot, State};
use super::stats::{now_unix, StatsStore, UsageStats};
use crate::error::{Error, ErrorKind, Result};
use crate::generate::mlx_lock;
use crate::mlx::memory;
use crate::model::Model;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Bytes the manager may fill. None: the registry file's "budget", else `default_budget()`.
    pub budget_bytes: Option<u64>,
    /// Usage statistics file. None: the registry file's "stats", else kept in memory only.
    pub stats_path: Option<PathBuf>,
    /// Tokens of KV cache charged to the budget per loaded model. None: the
    /// registry file's `defaults.context_length`, else 0 (weights only).
    pub context_length: Option<usize>,
    /// How often idle keep-alive expiry is checked by the background thread
    /// (started only when some model has a keep-alive).
    pub reaper_interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig { budget_bytes: None, stats_path: None, context_length: None, reaper_interval: Duration::from_millis(500) }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AcquireOptions {
    /// When the model cannot fit, take the best smaller model sharing a task tag.
    pub allow_fallback: bool,
    /// The task tag a fallback must have (default: any of the requested model's tags).
    pub task: Option<String>,
    /// How long to wait for models in use to be released when only they
    /// stand in the way. None: fail at once.
    pub wait: Option<Duration>,
    /// Tokens of KV cache to charge for this model (default: the manager's).
    pub context_length: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The model handed out.
    pub name: String,
    /// False when it was already loaded.
    pub loaded_now: bool,
    /// The model asked for, when a fallback was taken instead, and why.
    pub fallback_from: Option<String>,
    pub fallback_reason: Option<String>,
    /// Header estimate of the weights plus the KV reserve.
    pub estimate_bytes: u64,
    /// MLX active memory added by the load.
    pub measured_bytes: u64,
    /// Measured weights minus header weights (the estimate's error).
    pub estimate_error_bytes: i64,
    /// What the budget is charged for this model.
    pub charged_bytes: u64,
    /// Models unloaded to make room, in eviction order.
    pub evicted: Vec<String>,
    pub load_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub name: String,
    pub path: PathBuf,
    pub charged_bytes: u64,
    pub measured_bytes: u64,
    pub estimate_bytes: u64,
    pub handles: usize,
    pub in_use: bool,
    pub pinned: bool,
    pub priority: u32,
    pub idle_seconds: f64,
    pub unload_pending: bool,
}

#[derive(Debug, Clone)]
pub struct MemoryReport {
    pub budget_bytes: u64,
    /// Charged for loaded models plus reservations of loads in flight.
    pub accounted_bytes: u64,
    pub mlx_active_bytes: u64,
    pub mlx_peak_bytes: u64,
    pub mlx_cache_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadOutcome {
    Unloaded,
    /// In use: it will be unloaded when the last handle or session lets go.
    Deferred,
    NotLoaded,
}

/// Thread-safe; clone it freely (clones share one set of loaded models).
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl Manager {
    pub fn new(registry: Registry, config: ManagerConfig) -> Result<Manager> {
        let file = registry.file.clone();
        let budget = config.budget_bytes.or(file.as_ref().and_then(|f| f.budget)).unwrap_or_else(default_budget);
        let stats = match config.stats_path.clone().or(file.as_ref().and_then(|f| f.stats.clone())) {
            Some(p) => StatsStore::open(&p)?,
            None => StatsStore::in_memory(),
        };
        let context_length = config.context_length.unwrap_or(registry.default_context());
        let reaper = registry.entries.iter().any(|e| e.meta.keep_alive.is_some());
        let inner = Arc::new(Inner {
            registry: RwLock::new(registry),
            state: Mutex::new(State { budget, slots: BTreeMap::new(), loading: BTreeMap::new() }),
            cond: Condvar::new(),
            stats: Mutex::new(stats),
            last_save: Mutex::new(Instant::now()),
            context_length,
        });
        if reaper {
            spawn_reaper(Arc::downgrade(&inner), config.reaper_interval);
        }
        Ok(Manager { inner })
    }

    /// A manager over the registry file at `path` (see docs/registry.md).
    pub fn open(path: &Path, config: ManagerConfig) -> Result<Manager> {
        Self::new(Registry::open(path)?, config)
    }

    fn resolve(&self, key: &str) -> Result<ModelEntry> {
        if let Ok(e) = self.inner.registry.read().unwrap_or_else(|p| p.into_inner()).resolve(key) {
            return Ok(e.clone());
        }
        // An unregistered model folder is registered under its path.
        let p = Path::new(key);
        if p.join("config.json").is_file() {
            let mut reg = self.inner.registry.write().unwrap_or_else(|p| p.into_inner());
            return reg.add(key, p, ModelMeta::default()).cloned();
        }
        self.inner.registry.read().unwrap_or_else(|p| p.into_inner()).resolve(key).cloned()
    }

    pub fn acquire(&self, name: &str) -> Result<ModelHandle> {
        self.acquire_with(name, &AcquireOptions::default())
    }

    pub fn acquire_with(&self, name: &str, opts: &AcquireOptions) -> Result<ModelHandle> {
        let entry = self.resolve(name)?;
        let err = match self.acquire_entry(&entry, opts) {
            Err(e) if e.kind == ErrorKind::OutOfMemory && opts.allow_fallback => e,
            other => return other,
        };
        let ctx = opts.context_length.unwrap_or(self.inner.context_length);
        let tasks: Vec<String> = match &opts.task {
            Some(t) => vec![t.clone()],
            None => entry.meta.tasks.clone(),
        };
        let need = entry.estimate_bytes(ctx);
        let mut cands: Vec<ModelEntry> = self
            .entries()
            .into_iter()
            .filter(|e| e.name != entry.name && e.estimate_bytes(ctx) < need && tasks.iter().any(|t| e.has_task(t)))
            .collect();
        cands.sort_by(|a, b| rank(a, b, "quality", ctx));
        let no_wait = AcquireOptions { allow_fallback: false, ..opts.clone() };
        let mut tried = Vec::new();
        for c in &cands {
            match self.acquire_entry(c, &no_wait) {
                Ok(mut h) => {
                    h.report.fallback_from = Some(entry.name.clone());
                    h.report.fallback_reason = Some(err.message.clone());
                    return Ok(h);
                }
                Err(e) => tried.push(format!("{}: {}", c.name, e.message)),
            }
        }
        let why = if tasks.is_empty() {
            "no fallback: the model has no task tags".to_string()
        } else if cands.is_empty() {
            format!("no smaller model with task tag {} is registered", tasks.join(" or "))
        } else {
            format!("no fallback fits either ({})", tried.join("; "))
        };
        Err(Error::new(ErrorKind::OutOfMemory, format!("{}; {why}", err.message)))
    }

    fn acquire_entry(&self, entry: &ModelEntry, opts: &AcquireOptions) -> Result<ModelHandle> {
        let inner = &self.inner;
        let ctx = opts.context_length.unwrap_or(inner.context_length);
        let need = entry.estimate_bytes(ctx);
        let name = entry.name.clone();
        let deadline = opts.wait.map(|w| Instant::now() + w);
        inner.sweep();
        let mut st = lock(&inner.state);
        let victims = loop {
            if let Some(s) = st.slots.get_mut(&name) {
                s.handles += 1;
                s.last_used = Instant::now();
                s.unload_pending = false;
                let report = LoadReport {
                    name: name.clone(),
                    estimate_bytes: s.estimate,
                    measured_bytes: s.measured,
                    estimate_error_bytes: s.measured as i64 - entry.weight_bytes as i64,
                    charged_bytes: s.charged,
                    ..Default::default()
                };
                let model = s.model.clone();
                drop(st);
                let mut stats = lock(&inner.stats);
                let u = stats.entry(&name);
                u.acquires += 1;
                u.last_used_unix = now_unix();
                drop(stats);
                return Ok(ModelHandle { model: Some(model), name, inner: inner.clone(), report });
            }
            let waited = |st| inner.cond.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
            if st.loading.contains_key(&name) {
                st = waited(st);
                continue;
            }
            if need > st.budget {
                return Err(inner.too_big(entry, ctx, st.budget));
            }
            match st.plan(need, None) {
                Ok(v) => break v,
                Err((could_wait, loaded)) => {
                    if could_wait && deadline.is_some_and(|d| Instant::now() < d) {
                        // Sessions let go of models without signalling, hence the timed wait.
                        st = waited(st);
                        continue;
                    }
                    let waited_for = opts.wait.map(|w| format!(" after waiting {:.1} s", w.as_secs_f64())).unwrap_or_default();
                    return Err(Error::new(
                        ErrorKind::OutOfMemory,
                        format!(
                            "cannot load \"{name}\"{waited_for}: it needs {} ({}) and {} of the {} budget is taken by models that cannot be evicted now; {loaded}",
                            format_bytes(need),
                            breakdown(entry, ctx),
                            format_bytes(st.used()),
                            format_bytes(st.budget),
                        ),
                    ));
                }
            }
        };
        let freed: Vec<(String, Arc<Model>)> =
            victims.iter().map(|v| (v.clone(), st.slots.remove(v).expect("planned from slots").model)).collect();
        st.loading.insert(name.clone(), need);
        drop(st);
        inner.free(freed);

        let t0 = Instant::now();
        let (res, measured) = {
            let _g = mlx_lock();
            let before = memory::active();
            let r = Model::load(&entry.path);
            (r, (memory::active().saturating_sub(before)) as u64)
        };
        let load_seconds = t0.elapsed().as_secs_f64();
        let mut st = lock(&inner.state);
        st.loading.remove(&name);
        let model = match res {
            Ok(m) => {
                // Every generation on this model, through any binding, counts
                // in its usage statistics. Weak: the model must not keep the
                // manager alive.
                let weak = Arc::downgrade(inner);
                let stats_name = name.clone();
                let _ = m.usage_hook.set(Box::new(move |s| {
                    if let Some(inner) = weak.upgrade() {
                        lock(&inner.stats).entry(&stats_name).record_generation(s);
                        inner.maybe_save();
                    }
                }));
                Arc::new(m)
            }
            Err(e) => {
                drop(st);
                inner.cond.notify_all();
                return Err(e.context(format!("loading \"{name}\"")));
            }
        };
        // Allocation granularity can make the measurement exceed the header
        // sum; charge whichever is larger so the accounting never undercounts.
        let charged = measured.max(entry.weight_bytes) + entry.kv_bytes(ctx);
        st.slots.insert(
            name.clone(),
            Slot {
                model: model.clone(),
                path: entry.path.clone(),
                charged,
                measured,
                estimate: need,
                handles: 1,
                last_used: Instant::now(),
                priority: entry.meta.priority,
                pinned: entry.meta.pinned,
                keep_alive: entry.meta.keep_alive,
                unload_pending: false,
            },
        );
        let mut evicted = victims;
        let mut extra = Vec::new();
        if st.used() > st.budget {
            if let Ok(more) = st.plan(0, Some(&name)) {
                for v in more {
                    extra.push((v.clone(), st.slots.remove(&v).unwrap().model));
                    evicted.push(v);
                }
            }
        }
        drop(st);
        inner.free(extra);
        inner.cond.notify_all();
        let err = measured as i64 - entry.weight_bytes as i64;
        {
            let mut stats = lock(&inner.stats);
            let u = stats.entry(&name);
            u.loads += 1;
            u.acquires += 1;
            u.last_loaded_unix = now_unix();
            u.last_used_unix = u.last_loaded_unix;
            u.last_load_seconds = load_seconds;
            u.measured_bytes = measured;
            u.estimated_bytes = entry.weight_bytes;
            u.estimate_error_bytes = err;
        }
        inner.maybe_save();
        let report = LoadReport {
            name: name.clone(),
            loaded_now: true,
            estimate_bytes: need,
            measured_bytes: measured,
            estimate_error_bytes: err,
            charged_bytes: charged,
            evicted,
            load_seconds,
            ..Default::default()
        };
        Ok(ModelHandle { model: Some(model), name, inner: inner.clone(), report })
    }

    /// Load each model (in order) without keeping a handle; later ones may evict earlier ones.
    pub fn preload(&self, names: &[&str]) -> Result<Vec<LoadReport>> {
        names.iter().map(|n| self.acquire(n).map(|h| h.report().clone())).collect()
    }

    /// Never evict this model (it is not loaded by pinning).
    pub fn pin(&self, name: &str) -> Result<()> {
        self.set_pinned(name, true)
    }
    pub fn unpin(&self, name: &str) -> Result<()> {
        self.set_pinned(name, false)
    }
    fn set_pinned(&self, key: &str, pinned: bool) -> Result<()> {
        let name = {
            let mut reg = self.inner.registry.write().unwrap_or_else(|p| p.into_inner());
            let e = reg.resolve_mut(key)?;
            e.meta.pinned = pinned;
            e.name.clone()
        };
        if let Some(s) = lock(&self.inner.state).slots.get_mut(&name) {
            s.pinned = pinned;
        }
        Ok(())
    }

    /// Unload now if idle, else when the last handle or session lets go.
    pub fn unload(&self, key: &str) -> Result<UnloadOutcome> {
        let name = self.resolve(key)?.name;
        let mut st = lock(&self.inner.state);
        let Some(s) = st.slots.get_mut(&name) else { return Ok(UnloadOutcome::NotLoaded) };
        if s.in_use() {
            s.unload_pending = true;
            return Ok(UnloadOutcome::Deferred);
        }
        let s = st.slots.remove(&name).unwrap();
        drop(st);
        self.inner.free(vec![(name, s.model)]);
        self.inner.cond.notify_all();
        Ok(UnloadOutcome::Unloaded)
    }

    /// Unload idle models whose keep-alive has run out (also done by a
    /// background thread and at each acquire); returns their names.
    pub fn expire_idle(&self) -> Vec<String> {
        self.inner.sweep()
    }

    pub fn is_loaded(&self, key: &str) -> bool {
        let Ok(e) = self.resolve(key) else { return false };
        lock(&self.inner.state).slots.contains_key(&e.name)
    }

    /// Loaded models, sorted by name.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let st = lock(&self.inner.state);
        let now = Instant::now();
        st.slots
            .iter()
            .map(|(n, s)| LoadedModel {
                name: n.clone(),
                path: s.path.clone(),
                charged_bytes: s.charged,
                measured_bytes: s.measured,
                estimate_bytes: s.estimate,
                handles: s.handles,
                in_use: s.in_use(),
                pinned: s.pinned,
                priority: s.priority,
                idle_seconds: now.duration_since(s.last_used).as_secs_f64(),
                unload_pending: s.unload_pending,
            })
            .collect()
    }

    pub fn budget(&self) -> u64 {
        lock(&self.inner.state).budget
    }

    /// Change the budget, evicting idle unpinned models until the rest fit
    /// (models in use or pinned may keep usage above it until released).
    pub fn set_budget(&self, bytes: u64) -> Vec<String> {
        let mut st = lock(&self.inner.state);
        st.budget = bytes;
        let victims = match st.plan(0, None) {
            Ok(v) => v,
            // Evict everything evictable even though the rest stays over.
            Err(_) => st.slots.iter().filter(|(_, s)| !s.pinned && !s.in_use()).map(|(n, _)| n.clone()).collect(),
        };
        let freed: Vec<_> = victims.iter().map(|v| (v.clone(), st.slots.remove(v).unwrap().model)).collect();
        drop(st);
        self.inner.free(freed);
        victims
    }

    pub fn memory(&self) -> MemoryReport {
        let st = lock(&self.inner.state);
        MemoryReport {
            budget_bytes: st.budget,
            accounted_bytes: st.used(),
            mlx_active_bytes: memory::active() as u64,
            mlx_peak_bytes: memory::peak() as u64,
            mlx_cache_bytes: memory::cache() as u64,
        }
    }

    /// The best model for a task; `max_memory` defaults to the budget.
    pub fn select(&self, q: &SelectQuery) -> Selection {
        let mut q = q.clone();
        if q.max_memory.is_none() {
            q.max_memory = Some(self.budget());
        }
        let reg = self.inner.registry.read().unwrap_or_else(|p| p.into_inner());
        select(reg.entries.iter(), &q)
    }

    pub fn entries(&self) -> Vec<ModelEntry> {
        self.inner.registry.read().unwrap_or_else(|p| p.into_inner()).entries.clone()
    }

    pub fn entry(&self, key: &str) -> Result<ModelEntry> {
        self.resolve(key)
    }

    /// Add every model folder under `dir` at run time (layout: docs/registry.md,
    /// *Scanning*); returns how many were added. Folders already registered
    /// (by path) are left as they are; a name already taken is skipped.
    /// New models take the registry file's `defaults`.
    pub fn scan_dir(&self, dir: &Path) -> Result<usize> {
        let mut reg = self.inner.registry.write().unwrap_or_else(|p| p.into_inner());
        let before = reg.entries.len();
        let n = reg.scan_dir(dir)?;
        apply_file_defaults(&mut reg, before);
        Ok(n)
    }

    /// Add the models in the Hugging Face hub cache (see `hf_hub_cache`); returns how many.
    pub fn scan_hf_cache(&self) -> usize {
        let mut reg = self.inner.registry.write().unwrap_or_else(|p| p.into_inner());
        let before = reg.entries.len();
        let n = reg.scan_hf_cache();
        apply_file_defaults(&mut reg, before);
        n
    }

    /// Register (or replace) a model folder at run time.
    pub fn register(&self, name: &str, path: &Path, meta: ModelMeta) -> Result<ModelEntry> {
        let mut reg = self.inner.registry.write().unwrap_or_else(|p| p.into_inner());
        reg.add(name, path, meta).cloned()
    }

    pub fn stats(&self, key: &str) -> Result<UsageStats> {
        let name = self.resolve(key)?.name;
        Ok(lock(&self.inner.stats).get(&name))
    }

    pub fn all_stats(&self) -> BTreeMap<String, UsageStats> {
        lock(&self.inner.stats).models.clone()
    }

    /// Write the statistics file now (it is also written every few seconds
    /// while things change, and when the manager is dropped).
    pub fn save_stats(&self) -> Result<()> {
        lock(&self.inner.stats).save()
    }
}

/// Scanned entries from index `from` on take the registry file's defaults, as
/// scanned models do when the file is opened.
fn apply_file_defaults(reg: &mut Registry, from: usize) {
    let Some(d) = reg.file.as_ref().map(|f| f.defaults.clone()) else { return };
    for e in reg.entries.iter_mut().skip(from) {
        if let Some(p) = d.priority {
            e.meta.priority = p;
        }
        e.meta.keep_alive = d.keep_alive;
    }
}

fn spawn_reaper(weak: Weak<Inner>, every: Duration) {
    let every = every.max(Duration::from_millis(10));
    let _ = std::thread::Builder::new().name("cider-keepalive".into()).spawn(move || loop {
        std::thread::sleep(every);
        let Some(inner) = weak.upgrade() else { break };
        inner.sweep();
    });
}
