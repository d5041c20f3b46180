//! Finding model folders and describing them from config.json and
//! safetensors headers alone: no weights are read.
use super::meta::ModelMeta;
use super::registry::{ModelEntry, QuantSummary, Skipped, Source};
use crate::error::{Error, Result};
use crate::json::JsonFile;
use crate::models::arch_config;
use crate::safetensors::{weight_files, Header};
use crate::weights::QuantConfig;
use std::path::{Path, PathBuf};

/// Describe the model folder `dir` (named `name`) without loading weights.
pub fn inspect_model(dir: &Path, name: &str, source: Source) -> Result<ModelEntry> {
    let cfg = JsonFile::open(&dir.join("config.json"))?;
    let arch = arch_config(&cfg)?;
    let quant = QuantConfig::from_config(&cfg)?;
    let mut weight_bytes = 0u64;
    let mut parameters = 0u64;
    let mut float_dtype: Option<String> = None;
    let mut unquantized: Vec<String> = Vec::new();
    for f in weight_files(dir)? {
        let h = Header::read(&f)?;
        for (tname, t) in &h.tensors {
            weight_bytes += t.nbytes;
            let elems: u64 = t.shape.iter().map(|&d| d as u64).product();
            if t.dtype.is_float() && float_dtype.is_none() {
                float_dtype = Some(t.dtype.name().to_string());
            }
            // Quantized modules store packed `weight` plus `scales`/`biases`;
            // count the weight as unpacked parameters and skip the rest.
            let module = tname.rsplit_once('.').map(|(m, _)| m).unwrap_or(tname);
            let quantized = h.tensors.contains_key(&format!("{module}.scales"));
            if quantized {
                if tname.ends_with(".scales") || tname.ends_with(".biases") {
                    continue;
                }
                if tname.ends_with(".weight") {
                    let bits = match quant.overrides.get(module) {
                        Some(Some(q)) => q.bits,
                        _ => quant.default.map(|q| q.bits).unwrap_or(32),
                    };
                    parameters += elems * 32 / bits.max(1) as u64;
                    continue;
                }
            }
            if quant.default.is_some() && t.shape.len() == 2 && tname.ends_with(".weight") {
                unquantized.push(module.to_string());
            }
            parameters += elems;
        }
    }
    let dtype = float_dtype.unwrap_or_else(|| "float32".into());
    let dsize: u64 = match dtype.as_str() {
        "float32" => 4,
        _ => 2,
    };
    let kv_bytes_per_token = 2 * arch.num_layers as u64 * arch.n_kv_heads as u64 * arch.head_dim as u64 * dsize;
    let quantization = quant.default.map(|d| {
        let mixed = !unquantized.is_empty() || quant.overrides.values().any(|o| *o != Some(d));
        QuantSummary { bits: d.bits, group_size: d.group_size, mixed, overrides: quant.overrides.clone(), unquantized }
    });
    Ok(ModelEntry {
        name: name.to_string(),
        path: dir.to_path_buf(),
        source,
        model_type: arch.model_type.clone(),
        parameters,
        quantization,
        dtype,
        disk_bytes: disk_bytes(dir),
        weight_bytes,
        context_length: arch.context_length,
        kv_bytes_per_token,
        has_chat_template: has_chat_template(dir),
        meta: ModelMeta::default(),
    })
}

/// Total size of the folder's files, following symlinks (hub snapshots link into blobs/).
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Looked up the way the tokenizer loader looks (chat_template.jinja,
/// chat_template.json, tokenizer_config.json's "chat_template"), without parsing it.
fn has_chat_template(dir: &Path) -> bool {
    if dir.join("chat_template.jinja").is_file() || dir.join("chat_template.json").is_file() {
        return true;
    }
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("chat_template").is_some_and(|c| !c.is_null()))
}

fn is_model_dir(p: &Path) -> bool {
    p.join("config.json").is_file()
}

/// Model folders under `root`: `root` itself, or folders up to two levels
/// below it (`root/name` and `root/org/name`). Named by their path relative
/// to `root` (`org/name`), or by the folder name when `root` is the model.
pub(crate) fn scan_dir(root: &Path) -> Result<(Vec<ModelEntry>, Vec<Skipped>)> {
    if !root.is_dir() {
        return Err(Error::not_found(format!("scan folder {} does not exist", root.display())));
    }
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    if is_model_dir(root) {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        found.push((root.to_path_buf(), name));
    } else {
        for a in sorted_subdirs(root) {
            let an = a.file_name().unwrap().to_string_lossy().into_owned();
            if an.starts_with('.') {
                continue;
            }
            if is_model_dir(&a) {
                found.push((a, an));
            } else {
                for b in sorted_subdirs(&a) {
                    if is_model_dir(&b) {
                        let bn = b.file_name().unwrap().to_string_lossy().into_owned();
                        found.push((b, format!("{an}/{bn}")));
                    }
                }
            }
        }
    }
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for (dir, name) in found {
        match inspect_model(&dir, &name, Source::Folder) {
            Ok(e) => entries.push(e),
            Err(e) => skipped.push(Skipped { path: dir, reason: e.message }),
        }
    }
    Ok((entries, skipped))
}

fn sorted_subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The hub cache folder, as huggingface_hub decides it: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var("HF_HUB_CACHE") {
        return Some(p);
    }
    if let Some(p) = var("HF_HOME") {
        return Some(p.join("hub"));
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return Some(p.join("huggingface").join("hub"));
    }
    var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// Models in a hub cache: `models--org--name/snapshots/<rev>/`, taking the
/// revision `refs/main` names, else the most recently modified snapshot.
/// Repos without a config.json (datasets, tokenizer-only repos) are skipped quietly.
pub(crate) fn scan_hf_cache(cache: &Path) -> (Vec<ModelEntry>, Vec<Skipped>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for repo_dir in sorted_subdirs(cache) {
        let dn = repo_dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(rest) = dn.strip_prefix("models--") else { continue };
        let repo = rest.replacen("--", "/", 1);
        let snaps = repo_dir.join("snapshots");
        let main = std::fs::read_to_string(repo_dir.join("refs").join("main")).ok().map(|s| s.trim().to_string());
        let snap = match main.map(|r| snaps.join(r)).filter(|p| p.is_dir()) {
            Some(p) => Some(p),
            None => sorted_subdirs(&snaps)
                .into_iter()
                .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()),
        };
        let Some(snap) = snap else { continue };
        if !is_model_dir(&snap) {
            continue;
        }
        let revision = snap.file_name().unwrap().to_string_lossy().into_owned();
        match inspect_model(&snap, &repo, Source::HfCache { repo: repo.clone(), revision }) {
            Ok(e) => entries.push(e),
            Err(e) => skipped.push(Skipped { path: snap, reason: e.message }),
        }
    }
    (entries, skipped)
}
