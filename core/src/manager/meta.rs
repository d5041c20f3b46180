//! The registry file: user metadata per model (aliases, priority, task tags,
//! scores, pinned, keep-alive) plus where to look for models. JSON, documented
//! in docs/registry.md. Every error names the file and the key path
//! (`models.chat.priority`), and unknown keys are errors, so a typo never
//! silently means "default".
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Priority of a model the registry file does not mention (0 = most important).
pub const DEFAULT_PRIORITY: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelMeta {
    pub aliases: Vec<String>,
    /// 0 = most important; eviction takes the largest number first.
    pub priority: u32,
    /// Task tags: "chat", "code", "classification", "embedding", ... (free-form).
    pub tasks: Vec<String>,
    /// Free-form numeric scores ("quality", "trust", ...); `select` ranks by one.
    pub scores: BTreeMap<String, f64>,
    /// Never evicted while loaded.
    pub pinned: bool,
    /// Unload after this long idle; None = stay until evicted.
    pub keep_alive: Option<Duration>,
    pub description: Option<String>,
}

impl Default for ModelMeta {
    fn default() -> Self {
        ModelMeta {
            aliases: vec![],
            priority: DEFAULT_PRIORITY,
            tasks: vec![],
            scores: BTreeMap::new(),
            pinned: false,
            keep_alive: None,
            description: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RegistryDefaults {
    pub priority: Option<u32>,
    pub keep_alive: Option<Duration>,
    /// Tokens of KV cache counted in each model's memory estimate.
    pub context_length: Option<usize>,
}

/// One `models.<name>` entry.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    /// Absolute (resolved against the registry file's folder); None = a scanned model of this name.
    pub path: Option<PathBuf>,
    pub meta: ModelMeta,
}

#[derive(Debug, Clone, Default)]
pub struct RegistryFile {
    pub path: PathBuf,
    /// Folders to scan, absolute.
    pub scan: Vec<PathBuf>,
    pub hf_cache: bool,
    pub stats: Option<PathBuf>,
    pub budget: Option<u64>,
    pub defaults: RegistryDefaults,
    pub models: Vec<ModelSpec>,
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::invalid_arg(format!("{}: key \"{key}\" {msg}", self.file.display()))
    }
    fn check_keys(&self, prefix: &str, obj: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                let full = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                return Err(self.err(&full, format!("is not a known key (known here: {})", allowed.join(", "))));
            }
        }
        Ok(())
    }
    fn u64(&self, key: &str, v: &Value) -> Result<u64> {
        v.as_u64().ok_or_else(|| self.err(key, format!("should be a non-negative integer, found {v}")))
    }
    fn f64(&self, key: &str, v: &Value) -> Result<f64> {
        v.as_f64().ok_or_else(|| self.err(key, format!("should be a number, found {v}")))
    }
    fn bool(&self, key: &str, v: &Value) -> Result<bool> {
        v.as_bool().ok_or_else(|| self.err(key, format!("should be true or false, found {v}")))
    }
    fn str<'v>(&self, key: &str, v: &'v Value) -> Result<&'v str> {
        v.as_str().ok_or_else(|| self.err(key, format!("should be a string, found {v}")))
    }
    fn strings(&self, key: &str, v: &Value) -> Result<Vec<String>> {
        let a = v.as_array().ok_or_else(|| self.err(key, format!("should be a list of strings, found {v}")))?;
        a.iter()
            .enumerate()
            .map(|(i, x)| self.str(&format!("{key}[{i}]"), x).map(str::to_string))
            .collect()
    }
    fn object<'v>(&self, key: &str, v: &'v Value) -> Result<&'v Map<String, Value>> {
        v.as_object().ok_or_else(|| self.err(key, format!("should be an object, found {v}")))
    }
    fn seconds(&self, key: &str, v: &Value) -> Result<Option<Duration>> {
        let s = self.f64(key, v)?;
        if s < 0.0 || !s.is_finite() {
            return Err(self.err(key, format!("should be >= 0 seconds, found {v}")));
        }
        Ok(if s == 0.0 { None } else { Some(Duration::from_secs_f64(s)) })
    }
    fn bytes(&self, key: &str, v: &Value) -> Result<u64> {
        match v {
            Value::String(s) => super::budget::parse_bytes(s).map_err(|e| self.err(key, e.message)),
            _ => self.u64(key, v),
        }
    }
}

const TOP_KEYS: &[&str] = &["version", "scan", "hf_cache", "stats", "budget", "defaults", "models"];
const DEFAULT_KEYS: &[&str] = &["priority", "keep_alive_s", "context_length"];
const MODEL_KEYS: &[&str] =
    &["path", "aliases", "priority", "tasks", "scores", "pinned", "keep_alive_s", "description"];

impl RegistryFile {
    pub fn open(path: &Path) -> Result<RegistryFile> {
        let v = crate::json::read_json(path)?;
        Self::parse(path, &v)
    }

    /// Parse a registry document; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, v: &Value) -> Result<RegistryFile> {
        let c = Ctx { file: path };
        let top = v.as_object().ok_or_else(|| Error::invalid_arg(format!("{}: expected a JSON object", path.display())))?;
        c.check_keys("", top, TOP_KEYS)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let abs = |p: &str| -> PathBuf {
            let p = expand_home(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let mut rf = RegistryFile { path: path.to_path_buf(), ..Default::default() };
        if let Some(ver) = top.get("version") {
            let n = c.u64("version", ver)?;
            if n != 1 {
                return Err(c.err("version", format!("is {n}; this cider reads version 1")));
            }
        }
        if let Some(s) = top.get("scan") {
            rf.scan = c.strings("scan", s)?.iter().map(|p| abs(p)).collect();
        }
        if let Some(h) = top.get("hf_cache") {
            rf.hf_cache = c.bool("hf_cache", h)?;
        }
        if let Some(s) = top.get("stats") {
            rf.stats = Some(abs(c.str("stats", s)?));
        }
        if let Some(b) = top.get("budget") {
            rf.budget = Some(c.bytes("budget", b)?);
        }
        if let Some(d) = top.get("defaults") {
            let d = c.object("defaults", d)?;
            c.check_keys("defaults", d, DEFAULT_KEYS)?;
            if let Some(p) = d.get("priority") {
                rf.defaults.priority = Some(priority(&c, "defaults.priority", p)?);
            }
            if let Some(k) = d.get("keep_alive_s") {
                rf.defaults.keep_alive = c.seconds("defaults.keep_alive_s", k)?;
            }
            if let Some(n) = d.get("context_length") {
                rf.defaults.context_length = Some(c.u64("defaults.context_length", n)? as usize);
            }
        }
        if let Some(m) = top.get("models") {
            let m = c.object("models", m)?;
            for (name, spec) in m {
                let k = format!("models.{name}");
                if name.is_empty() {
                    return Err(c.err("models", "has an entry with an empty name"));
                }
                let o = c.object(&k, spec)?;
                c.check_keys(&k, o, MODEL_KEYS)?;
                let mut meta = ModelMeta::default();
                if let Some(p) = rf.defaults.priority {
                    meta.priority = p;
                }
                meta.keep_alive = rf.defaults.keep_alive;
                let mut path = None;
                for (key, val) in o {
                    let kk = format!("{k}.{key}");
                    match key.as_str() {
                        "path" => path = Some(abs(c.str(&kk, val)?)),
                        "aliases" => meta.aliases = c.strings(&kk, val)?,
                        "priority" => meta.priority = priority(&c, &kk, val)?,
                        "tasks" => meta.tasks = c.strings(&kk, val)?,
                        "scores" => {
                            for (sk, sv) in c.object(&kk, val)? {
                                meta.scores.insert(sk.clone(), c.f64(&format!("{kk}.{sk}"), sv)?);
                            }
                        }
                        "pinned" => meta.pinned = c.bool(&kk, val)?,
                        "keep_alive_s" => meta.keep_alive = c.seconds(&kk, val)?,
                        "description" => meta.description = Some(c.str(&kk, val)?.to_string()),
                        _ => unreachable!("checked above"),
                    }
                }
                rf.models.push(ModelSpec { name: name.clone(), path, meta });
            }
        }
        // Names and aliases must identify one model each.
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        for m in &rf.models {
            for (i, n) in std::iter::once(&m.name).chain(m.meta.aliases.iter()).enumerate() {
                let key = if i == 0 { format!("models.{}", m.name) } else { format!("models.{}.aliases", m.name) };
                if let Some(prev) = seen.insert(n.as_str(), key.clone()) {
                    return Err(c.err(&key, format!("uses the name \"{n}\" already used by {prev}")));
                }
            }
        }
        Ok(rf)
    }
}

fn priority(c: &Ctx, key: &str, v: &Value) -> Result<u32> {
    let n = c.u64(key, v)?;
    u32::try_from(n).map_err(|_| c.err(key, format!("is too large ({n})")))
}

/// `~/x` -> `$HOME/x`.
pub(crate) fn expand_home(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(h) = std::env::var_os("HOME") {
            return PathBuf::from(h).join(rest);
        }
    }
    PathBuf::from(p)
}
