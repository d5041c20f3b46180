//! The manager's shared state: loaded slots, in-flight loads, the eviction
//! plan, and freeing models. Lock order: `registry` before `state` before
//! `stats`; nothing takes `mlx_lock` while holding `state`.
use super::budget::format_bytes;
use super::registry::{ModelEntry, Registry};
use super::stats::{now_unix, StatsStore};
use crate::error::{Error, ErrorKind};
use crate::generate::mlx_lock;
use crate::mlx::memory;
use crate::model::Model;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub(crate) struct Slot {
    pub model: Arc<Model>,
    pub path: PathBuf,
    /// What the budget is charged: max(measured, header estimate) + KV reserve.
    pub charged: u64,
    pub measured: u64,
    pub estimate: u64,
    /// Live `ModelHandle`s (sessions holding the Arc count as in use too).
    pub handles: usize,
    pub last_used: Instant,
    pub priority: u32,
    pub pinned: bool,
    pub keep_alive: Option<Duration>,
    pub unload_pending: bool,
}

impl Slot {
    /// In use while anything besides the slot holds the model: handles,
    /// sessions, or Arcs cloned out of a handle.
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.model) > 1
    }
}

pub(crate) struct State {
    pub budget: u64,
    pub slots: BTreeMap<String, Slot>,
    /// In-flight loads and the bytes reserved for each.
    pub loading: BTreeMap<String, u64>,
}

impl State {
    pub fn used(&self) -> u64 {
        self.slots.values().map(|s| s.charged).sum::<u64>() + self.loading.values().sum::<u64>()
    }

    /// Which idle, unpinned models to evict so that `need` more bytes fit:
    /// least important (largest priority number) first, then least recently
    /// used. Err carries whether waiting could help (something in use or
    /// loading holds the room) and a description of what is loaded.
    pub fn plan(&self, need: u64, exclude: Option<&str>) -> Result<Vec<String>, (bool, String)> {
        let used = self.used();
        if used + need <= self.budget {
            return Ok(vec![]);
        }
        let mut idle: Vec<(&String, &Slot)> = self
            .slots
            .iter()
            .filter(|(n, s)| !s.pinned && !s.in_use() && Some(n.as_str()) != exclude)
            .collect();
        idle.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then(a.1.last_used.cmp(&b.1.last_used)));
        let mut freed = 0u64;
        let mut victims = Vec::new();
        for (n, s) in idle {
            if used - freed + need <= self.budget {
                break;
            }
            victims.push(n.clone());
            freed += s.charged;
        }
        if used - freed + need <= self.budget {
            return Ok(victims);
        }
        let pinned: u64 = self.slots.values().filter(|s| s.pinned).map(|s| s.charged).sum();
        let could_wait = pinned + need <= self.budget;
        Err((could_wait, self.describe()))
    }

    pub fn describe(&self) -> String {
        if self.slots.is_empty() && self.loading.is_empty() {
            return "nothing is loaded".into();
        }
        let mut parts: Vec<String> = self
            .slots
            .iter()
            .map(|(n, s)| {
                let what = if s.pinned {
                    "pinned".to_string()
                } else if s.in_use() {
                    format!("in use, {} handle(s)", s.handles)
                } else {
                    format!("idle, priority {}", s.priority)
                };
                format!("{n} {} ({what})", format_bytes(s.charged))
            })
            .collect();
        parts.extend(self.loading.iter().map(|(n, b)| format!("{n} {} (loading)", format_bytes(*b))));
        format!("loaded: {}", parts.join(", "))
    }

    /// Remove idle unpinned slots that are marked for unload or whose keep-alive ran out.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(String, Arc<Model>)> {
        let names: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                !s.in_use()
                    && (s.unload_pending
                        || (!s.pinned && s.keep_alive.is_some_and(|k| now.duration_since(s.last_used) >= k)))
            })
            .map(|(n, _)| n.clone())
            .collect();
        names.into_iter().map(|n| { let s = self.slots.remove(&n).unwrap(); (n, s.model) }).collect()
    }
}

pub(crate) struct Inner {
    pub registry: RwLock<Registry>,
    pub state: Mutex<State>,
    /// Signalled when a handle is released or a load finishes.
    pub cond: Condvar,
    pub stats: Mutex<StatsStore>,
    pub last_save: Mutex<Instant>,
    /// KV tokens charged per loaded model unless an acquire says otherwise.
    pub context_length: usize,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Drop models (under the MLX lock, so the memory measured around a
    /// concurrent load is not disturbed) and hand their buffers back.
    pub fn free(&self, models: Vec<(String, Arc<Model>)>) {
        if models.is_empty() {
            return;
        }
        let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
        {
            let _g = mlx_lock();
            drop(models);
            memory::clear_cache();
        }
        let mut st = lock(&self.stats);
        for n in names {
            st.entry(&n).unloads += 1;
        }
        drop(st);
        self.maybe_save();
    }

    pub fn sweep(&self) -> Vec<String> {
        let expired = lock(&self.state).take_expired(Instant::now());
        let names = expired.iter().map(|(n, _)| n.clone()).collect();
        self.free(expired);
        self.cond.notify_all();
        names
    }

    /// Called when a handle goes away (its Arc already dropped).
    pub fn release(&self, name: &str) {
        let mut st = lock(&self.state);
        let mut gone = Vec::new();
        if let Some(s) = st.slots.get_mut(name) {
            s.handles = s.handles.saturating_sub(1);
            s.last_used = Instant::now();
            if s.unload_pending && !s.in_use() {
                let s = st.slots.remove(name).unwrap();
                gone.push((name.to_string(), s.model));
            }
        }
        drop(st);
        lock(&self.stats).entry(name).last_used_unix = now_unix();
        self.free(gone);
        self.cond.notify_all();
    }

    /// Save statistics if something changed and the last save is a while ago.
    pub fn maybe_save(&self) {
        let mut last = lock(&self.last_save);
        if last.elapsed() >= Duration::from_secs(2) {
            let mut s = lock(&self.stats);
            if s.is_dirty() {
                // Best effort here; `Manager::save_stats` reports errors.
                let _ = s.save();
            }
            *last = Instant::now();
        }
    }

    pub fn too_big(&self, e: &ModelEntry, ctx: usize, budget: u64) -> Error {
        Error::new(
            ErrorKind::OutOfMemory,
            format!(
                "model \"{}\" needs {} ({}), more than the whole memory budget of {}",
                e.name,
                format_bytes(e.estimate_bytes(ctx)),
                breakdown(e, ctx),
                format_bytes(budget)
            ),
        )
    }
}

pub(crate) fn breakdown(e: &ModelEntry, ctx: usize) -> String {
    format!(
        "weights {} + KV cache {} for {} tokens",
        format_bytes(e.weight_bytes),
        format_bytes(e.kv_bytes(ctx)),
        ctx.min(e.context_length)
    )
}

impl Drop for Inner {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut lock(&self.state).slots);
        let models: Vec<(String, Arc<Model>)> = slots.into_iter().map(|(n, s)| (n, s.model)).collect();
        if !models.is_empty() {
            let _g = mlx_lock();
            drop(models);
            memory::clear_cache();
        }
        let _ = lock(&self.stats).save();
    }
}
