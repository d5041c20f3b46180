//! Reading safetensors headers ourselves. This serves two purposes: the model
//! registry needs shapes and dtypes without loading weights, and MLX loads
//! data lazily on a worker thread where a truncated file could not be turned
//! into a clean error, so every file is checked here before MLX sees it.
use crate::error::{Error, Result};
use crate::mlx::Dtype;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    pub nbytes: u64,
}

#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Headers larger than this are not real safetensors files.
const MAX_HEADER: u64 = 100 * 1024 * 1024;

impl Header {
    pub fn read(path: &Path) -> Result<Header> {
        let bad = |msg: String| Error::invalid_model(format!("{}: {msg}", path.display()));
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        if file_len < 8 {
            return Err(bad(format!("truncated safetensors file ({file_len} bytes, no header)")));
        }
        let mut len_buf = [0u8; 8];
        f.read_exact(&mut len_buf).map_err(|e| Error::io(path, e))?;
        let n = u64::from_le_bytes(len_buf);
        if n > MAX_HEADER || 8 + n > file_len {
            return Err(bad(format!(
                "truncated or corrupt safetensors file: header claims {n} bytes but the file has {file_len}"
            )));
        }
        let mut hdr = vec![0u8; n as usize];
        f.read_exact(&mut hdr).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&hdr)
            .map_err(|e| bad(format!("safetensors header is not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("safetensors header is not a JSON object".into()))?;
        let data_len = file_len - 8 - n;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in obj {
            if name == "__metadata__" {
                if let Some(m) = entry.as_object() {
                    for (k, v) in m {
                        metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
                continue;
            }
            let t = |msg: &str| bad(format!("tensor \"{name}\": {msg}"));
            let dt = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| t("no dtype"))?;
            let dtype = Dtype::parse(dt).ok_or_else(|| t(&format!("unsupported dtype {dt}")))?;
            let shape: Vec<i64> = entry
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| t("no shape"))?
                .iter()
                .map(|d| d.as_i64().filter(|&x| x >= 0))
                .collect::<Option<_>>()
                .ok_or_else(|| t("bad shape"))?;
            let offs = entry
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .filter(|o| o.len() == 2)
                .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
                .ok_or_else(|| t("bad data_offsets"))?;
            let want = shape.iter().product::<i64>() as u64 * dtype.size() as u64;
            if offs.1 < offs.0 || offs.1 - offs.0 != want {
                return Err(t(&format!(
                    "data_offsets {:?} hold {} bytes but shape {:?} of {} needs {want}",
                    offs,
                    offs.1.saturating_sub(offs.0),
                    shape,
                    dtype.name()
                )));
            }
            if offs.1 > data_len {
                return Err(bad(format!(
                    "truncated safetensors file: tensor \"{name}\" ends at byte {} of the data but only {data_len} bytes are present",
                    offs.1
                )));
            }
            tensors.insert(name.clone(), TensorInfo { dtype, shape, nbytes: want });
        }
        Ok(Header { path: path.to_path_buf(), tensors, metadata })
    }
}

/// The weight files of a model folder: the shards named by
/// `model.safetensors.index.json` when present, else `model*.safetensors`
/// (what mlx-lm globs), sorted for a stable order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = crate::json::read_json(&index)?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            Error::invalid_model(format!("{}: missing object \"weight_map\"", index.display()))
        })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (tensor, file) in map {
            let f = file.as_str().ok_or_else(|| {
                Error::invalid_model(format!("{}: weight_map[\"{tensor}\"] is not a file name", index.display()))
            })?;
            let p = dir.join(f);
            if !files.contains(&p) {
                if !p.exists() {
                    return Err(Error::not_found(format!(
                        "{}: shard {f} (holding {tensor}) does not exist",
                        index.display()
                    )));
                }
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("model") && n.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::not_found(format!(
            "{}: no model*.safetensors weight files (and no model.safetensors.index.json)",
            dir.display()
        )));
    }
    Ok(files)
}
