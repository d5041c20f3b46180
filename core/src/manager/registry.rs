//! What is on disk: model entries described from headers, with user metadata
//! from the registry file merged in, resolvable by name, alias or path.
use super::meta::{ModelMeta, RegistryFile};
use super::scan::{hf_hub_cache, inspect_model, scan_dir, scan_hf_cache};
use crate::error::{Error, Result};
use crate::nn::QuantParams;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder given directly, found by a scan, or named in the registry file.
    Folder,
    /// A Hugging Face hub cache snapshot.
    HfCache { repo: String, revision: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantSummary {
    /// The default for modules without an override.
    pub bits: i32,
    pub group_size: i32,
    /// Some module differs from the default (a per-layer mix).
    pub mixed: bool,
    /// Per-module settings from config.json; None = left unquantized.
    pub overrides: BTreeMap<String, Option<QuantParams>>,
    /// 2-D weights stored in float although the model is quantized.
    pub unquantized: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub name: String,
    pub path: PathBuf,
    pub source: Source,
    pub model_type: String,
    /// Parameter count as the checkpoint would have it unquantized.
    pub parameters: u64,
    pub quantization: Option<QuantSummary>,
    /// Floating-point dtype of the weights (KV cache dtype too).
    pub dtype: String,
    /// Size of the folder's files.
    pub disk_bytes: u64,
    /// Bytes of tensors in the safetensors headers: what MLX will hold once loaded.
    pub weight_bytes: u64,
    pub context_length: usize,
    /// 2 (K and V) x layers x KV heads x head_dim x dtype size.
    pub kv_bytes_per_token: u64,
    pub has_chat_template: bool,
    pub meta: ModelMeta,
}

impl ModelEntry {
    /// Weights plus a KV cache for `context` tokens (capped at the model's context length).
    pub fn estimate_bytes(&self, context: usize) -> u64 {
        self.weight_bytes + self.kv_bytes(context)
    }
    pub fn kv_bytes(&self, context: usize) -> u64 {
        self.kv_bytes_per_token * context.min(self.context_length) as u64
    }
    pub fn has_task(&self, task: &str) -> bool {
        self.meta.tasks.iter().any(|t| t == task)
    }
    pub fn score(&self, key: &str) -> Option<f64> {
        self.meta.scores.get(key).copied()
    }
}

/// A folder that looked like a model but could not be described, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub entries: Vec<ModelEntry>,
    pub skipped: Vec<Skipped>,
    /// The registry file this came from, if any.
    pub file: Option<RegistryFile>,
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Read a registry file, scan what it names, and apply its metadata.
    pub fn open(path: &Path) -> Result<Registry> {
        let rf = RegistryFile::open(path)?;
        Self::from_file(rf)
    }

    pub fn from_file(rf: RegistryFile) -> Result<Registry> {
        let mut r = Registry::new();
        for dir in &rf.scan {
            r.scan_dir(dir).map_err(|e| e.context(format!("{}: key \"scan\"", rf.path.display())))?;
        }
        if rf.hf_cache {
            r.scan_hf_cache();
        }
        for spec in &rf.models {
            let key = format!("{}: key \"models.{}\"", rf.path.display(), spec.name);
            match &spec.path {
                Some(p) => {
                    let mut e = inspect_model(p, &spec.name, Source::Folder).map_err(|e| e.context(&key))?;
                    e.meta = spec.meta.clone();
                    r.entries.retain(|x| x.name != spec.name && !same_path(&x.path, p));
                    r.entries.push(e);
                }
                None => {
                    let e = r.entries.iter_mut().find(|x| x.name == spec.name).ok_or_else(|| {
                        Error::not_found(format!(
                            "{key}: no scanned model is named \"{}\" (give its \"path\", or scan its folder)",
                            spec.name
                        ))
                    })?;
                    e.meta = spec.meta.clone();
                }
            }
        }
        // Scanned models the file does not mention still take its defaults.
        for e in r.entries.iter_mut() {
            if !rf.models.iter().any(|m| m.name == e.name) {
                if let Some(p) = rf.defaults.priority {
                    e.meta.priority = p;
                }
                e.meta.keep_alive = rf.defaults.keep_alive;
            }
        }
        r.check_unique()?;
        r.file = Some(rf);
        Ok(r)
    }

    /// Add every model folder under `dir` (see `scan` for the layout); returns how many.
    pub fn scan_dir(&mut self, dir: &Path) -> Result<usize> {
        let (found, skipped) = scan_dir(dir)?;
        self.skipped.extend(skipped);
        Ok(self.merge(found))
    }

    /// Add the models in the Hugging Face hub cache (see `hf_hub_cache`).
    pub fn scan_hf_cache(&mut self) -> usize {
        match hf_hub_cache() {
            Some(c) if c.is_dir() => self.scan_hf_cache_at(&c),
            _ => 0,
        }
    }

    pub fn scan_hf_cache_at(&mut self, cache: &Path) -> usize {
        let (found, skipped) = scan_hf_cache(cache);
        self.skipped.extend(skipped);
        self.merge(found)
    }

    fn merge(&mut self, found: Vec<ModelEntry>) -> usize {
        let mut n = 0;
        for e in found {
            if self.entries.iter().any(|x| same_path(&x.path, &e.path)) {
                continue;
            }
            if let Some(x) = self.entries.iter().find(|x| x.name == e.name) {
                self.skipped.push(Skipped {
                    path: e.path.clone(),
                    reason: format!("the name \"{}\" is already taken by {}", e.name, x.path.display()),
                });
                continue;
            }
            self.entries.push(e);
            n += 1;
        }
        n
    }

    /// Add one model folder under `name` with `meta`, replacing an entry of that name.
    pub fn add(&mut self, name: &str, path: &Path, meta: ModelMeta) -> Result<&ModelEntry> {
        let mut e = inspect_model(path, name, Source::Folder)?;
        e.meta = meta;
        self.entries.retain(|x| x.name != name);
        self.entries.push(e);
        self.check_unique()?;
        Ok(self.entries.last().unwrap())
    }

    fn check_unique(&self) -> Result<()> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for e in &self.entries {
            for n in std::iter::once(&e.name).chain(e.meta.aliases.iter()) {
                if let Some(prev) = seen.insert(n, &e.name) {
                    if prev != e.name {
                        return Err(Error::invalid_arg(format!(
                            "the name \"{n}\" refers to both \"{prev}\" and \"{}\"",
                            e.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// By name, then alias, then folder path.
    pub fn resolve(&self, key: &str) -> Result<&ModelEntry> {
        if let Some(e) = self.entries.iter().find(|e| e.name == key) {
            return Ok(e);
        }
        if let Some(e) = self.entries.iter().find(|e| e.meta.aliases.iter().any(|a| a == key)) {
            return Ok(e);
        }
        let p = Path::new(key);
        if p.exists() {
            if let Some(e) = self.entries.iter().find(|e| same_path(&e.path, p)) {
                return Ok(e);
            }
        }
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        names.sort();
        Err(Error::not_found(format!(
            "no model named \"{key}\" in the registry (by name, alias or path); known: {}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )))
    }

    pub fn resolve_mut(&mut self, key: &str) -> Result<&mut ModelEntry> {
        let name = self.resolve(key)?.name.clone();
        Ok(self.entries.iter_mut().find(|e| e.name == name).unwrap())
    }

    /// Tokens of KV cache the registry file asks estimates to include (0 when unset).
    pub fn default_context(&self) -> usize {
        self.file.as_ref().and_then(|f| f.defaults.context_length).unwrap_or(0)
    }
}
