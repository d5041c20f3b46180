//! Usage statistics per model, kept across runs in a JSON file written
//! atomically (a temporary file in the same folder, then rename).
use crate::error::{Error, Result};
use crate::generate::Stats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageStats {
    pub loads: u64,
    pub unloads: u64,
    /// Handles handed out (acquire calls that succeeded).
    pub acquires: u64,
    /// Seconds since the Unix epoch; 0 = never.
    pub last_used_unix: f64,
    pub last_loaded_unix: f64,
    pub last_load_seconds: f64,
    pub generations: u64,
    pub prompt_tokens: u64,
    pub tokens_generated: u64,
    /// Tokens after the first of each generation, and the time they took:
    /// their ratio is the average decode speed.
    pub decode_tokens: u64,
    pub decode_seconds: f64,
    pub avg_tokens_per_s: f64,
    pub ttft_total_s: f64,
    pub avg_ttft_s: f64,
    /// MLX active memory added by the last load, its header estimate, and
    /// measured minus estimated.
    pub measured_bytes: u64,
    pub estimated_bytes: u64,
    pub estimate_error_bytes: i64,
}

pub(crate) fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl UsageStats {
    pub fn record_generation(&mut self, s: &Stats) {
        self.generations += 1;
        self.prompt_tokens += s.prompt_tokens as u64;
        self.tokens_generated += s.generation_tokens as u64;
        let decode = s.generation_tokens.saturating_sub(1) as u64;
        if decode > 0 && s.generation_tps > 0.0 {
            self.decode_tokens += decode;
            self.decode_seconds += decode as f64 / s.generation_tps;
        }
        if self.decode_seconds > 0.0 {
            self.avg_tokens_per_s = self.decode_tokens as f64 / self.decode_seconds;
        }
        self.ttft_total_s += s.ttft_s;
        self.avg_ttft_s = self.ttft_total_s / self.generations as f64;
        self.last_used_unix = now_unix();
    }
}

#[derive(Serialize, Deserialize)]
struct StatsFileV1 {
    version: u32,
    models: BTreeMap<String, UsageStats>,
}

/// Statistics by model name, optionally backed by a file.
#[derive(Debug, Default)]
pub struct StatsStore {
    pub path: Option<PathBuf>,
    pub models: BTreeMap<String, UsageStats>,
    dirty: bool,
}

impl StatsStore {
    pub fn in_memory() -> StatsStore {
        StatsStore::default()
    }

    /// Open `path`; a missing file starts empty. A corrupt one is an error
    /// naming the file (rather than silently discarding history).
    pub fn open(path: &Path) -> Result<StatsStore> {
        let mut s = StatsStore { path: Some(path.to_path_buf()), ..Default::default() };
        if path.exists() {
            let v = crate::json::read_json(path)?;
            let f: StatsFileV1 = serde_json::from_value(v)
                .map_err(|e| Error::invalid_arg(format!("{}: not a cider stats file: {e}", path.display())))?;
            if f.version != 1 {
                return Err(Error::unsupported(format!(
                    "{}: key \"version\" is {}; this cider reads version 1",
                    path.display(),
                    f.version
                )));
            }
            s.models = f.models;
        }
        Ok(s)
    }

    pub fn get(&self, name: &str) -> UsageStats {
        self.models.get(name).cloned().unwrap_or_default()
    }

    pub fn entry(&mut self, name: &str) -> &mut UsageStats {
        self.dirty = true;
        self.models.entry(name.to_string()).or_default()
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Write the file (when there is one) atomically: readers see the old or
    /// the new contents, never a torn write.
    pub fn save(&mut self) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let doc = StatsFileV1 { version: 1, models: self.models.clone() };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::backend(format!("serializing stats: {e}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp.{}.{n}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })?;
        self.dirty = false;
        Ok(())
    }
}
