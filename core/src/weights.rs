//! Loading a folder's tensors and handing them to layers by checkpoint name,
//! with shape checks that name the tensor, the expected and the actual shape.
use crate::error::{Error, Result};
use crate::json::JsonFile;
use crate::mlx::{io, Array};
use crate::nn::{Embedding, Linear, QuantParams, RmsNorm};
use crate::safetensors::{weight_files, Header};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// MLX quantization settings from config.json: a default plus per-module
/// overrides keyed by module path (`model.layers.0.mlp.down_proj`), where
/// `false` means "left unquantized".
#[derive(Debug, Clone, Default)]
pub struct QuantConfig {
    pub default: Option<QuantParams>,
    pub overrides: BTreeMap<String, Option<QuantParams>>,
}

const SUPPORTED_MODES: &[&str] = &["affine"];

impl QuantConfig {
    pub fn from_config(cfg: &JsonFile) -> Result<QuantConfig> {
        let key = if cfg.get("quantization").is_some() { "quantization" } else { "quantization_config" };
        let Some(obj) = cfg.object(key)? else { return Ok(QuantConfig::default()) };
        let file = cfg.path.display();
        if let Some(m) = obj.get("quant_method").and_then(|v| v.as_str()) {
            if obj.get("bits").is_none() {
                return Err(Error::unsupported(format!(
                    "{file}: {key}.quant_method \"{m}\" is not MLX quantization; cider loads MLX affine-quantized weights (convert the model with mlx_lm.convert)"
                )));
            }
        }
        let parse = |name: &str, v: &serde_json::Map<String, serde_json::Value>| -> Result<QuantParams> {
            let mode = v.get("mode").and_then(|m| m.as_str()).unwrap_or("affine");
            if !SUPPORTED_MODES.contains(&mode) {
                return Err(Error::unsupported(format!(
                    "{file}: {name}.mode \"{mode}\" is not supported (supported: {})",
                    SUPPORTED_MODES.join(", ")
                )));
            }
            // A missing or null field takes MLX's default for the mode (affine:
            // group 64, 4 bits), as mlx.nn.quantize does; mlx_lm.convert's mixed
            // recipes write `"group_size": null` per layer.
            let get = |k: &str, default: i64| match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x.as_i64().ok_or_else(|| {
                    Error::invalid_model(format!("{file}: {name}.{k} must be an integer, found {x}"))
                }),
            };
            let bits = get("bits", 4)? as i32;
            let group_size = get("group_size", 64)? as i32;
            check_params(&format!("{file}: {name}"), bits, group_size)?;
            Ok(QuantParams { group_size, bits })
        };
        let default = Some(parse(key, obj)?);
        let mut overrides = BTreeMap::new();
        for (k, v) in obj {
            match v {
                serde_json::Value::Object(o) => {
                    overrides.insert(k.clone(), Some(parse(&format!("{key}.{k}"), o)?));
                }
                serde_json::Value::Bool(false) => {
                    overrides.insert(k.clone(), None);
                }
                _ => {}
            }
        }
        Ok(QuantConfig { default, overrides })
    }
}

fn check_params(ctx: &str, bits: i32, group_size: i32) -> Result<()> {
    if ![2, 3, 4, 5, 6, 8].contains(&bits) {
        return Err(Error::unsupported(format!("{ctx}: {bits}-bit quantization is not supported (2, 3, 4, 5, 6, 8)")));
    }
    if ![32, 64, 128].contains(&group_size) {
        return Err(Error::unsupported(format!("{ctx}: group size {group_size} is not supported (32, 64, 128)")));
    }
    Ok(())
}

pub struct Weights {
    tensors: HashMap<String, Array>,
    shapes: HashMap<String, Vec<i64>>,
    files: HashMap<String, std::path::PathBuf>,
    pub quant: QuantConfig,
    pub headers: Vec<Header>,
    /// Convert float tensors to this dtype as they are taken (LoadOptions::compute_dtype).
    pub cast: Option<crate::mlx::Dtype>,
}

fn shape_str(s: &[i64]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

impl Weights {
    /// Validate every weight file's header, then map the tensors lazily
    /// through MLX (data is read once, when the model is evaluated).
    pub fn load(dir: &Path, quant: QuantConfig, cast: Option<crate::mlx::Dtype>) -> Result<Weights> {
        let mut tensors = HashMap::new();
        let mut shapes = HashMap::new();
        let mut headers = Vec::new();
        let mut files = HashMap::new();
        let all: Vec<(std::path::PathBuf, Header)> =
            weight_files(dir)?.into_iter().map(|f| Header::read(&f).map(|h| (f, h))).collect::<Result<_>>()?;
        check_fits(dir, all.iter().map(|(_, h)| h), cast)?;
        for (f, h) in all {
            let path = f.to_str().ok_or_else(|| Error::invalid_arg(format!("{}: path is not UTF-8", f.display())))?;
            let loaded = io::load_safetensors(path).map_err(|e| e.context(f.display()))?;
            for (name, info) in &h.tensors {
                shapes.insert(name.clone(), info.shape.clone());
                files.insert(name.clone(), f.clone());
            }
            tensors.extend(loaded);
            headers.push(h);
        }
        Ok(Weights { tensors, shapes, files, quant, headers, cast })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    /// The dtype a tensor not yet taken is stored in (before any cast).
    pub fn stored_dtype(&self, name: &str) -> Option<crate::mlx::Dtype> {
        self.tensors.get(name).map(|a| a.dtype())
    }
    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.shapes.get(name).map(|s| s.as_slice())
    }

    /// Take a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Array> {
        let Some(actual) = self.shapes.get(name) else {
            return Err(Error::invalid_model(format!(
                "missing tensor \"{name}\" (expected shape {})",
                shape_str(shape)
            )));
        };
        if actual.as_slice() != shape {
            return Err(Error::invalid_model(format!(
                "{}: tensor \"{name}\" has shape {} but config.json implies {}",
                self.files[name].display(),
                shape_str(actual),
                shape_str(shape)
            )));
        }
        let a = self.tensors.remove(name).expect("shape and tensor maps agree");
        // Lazy: the stored dtype is read and converted in the one load pass.
        a.astype(kept_dtype(name, a.dtype(), self.cast))
    }

    pub fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Array>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Drop a tensor the model does not use (e.g. precomputed rotary tables).
    pub fn discard(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// The quantization of module `prefix`: the per-module override when the
    /// config names it, else inferred from the stored shapes as mlx-lm does
    /// when `{prefix}.scales` exists, else none.
    fn quant_for(&self, prefix: &str, in_dim: i64) -> Result<Option<QuantParams>> {
        if let Some(o) = self.quant.overrides.get(prefix) {
            return Ok(*o);
        }
        let sname = format!("{prefix}.scales");
        let Some(scales) = self.shapes.get(&sname) else { return Ok(None) };
        if self.quant.default.is_none() {
            return Err(Error::invalid_model(format!(
                "tensor \"{sname}\" exists but config.json has no \"quantization\" block"
            )));
        }
        let wname = format!("{prefix}.weight");
        let w = self.shapes.get(&wname).ok_or_else(|| {
            Error::invalid_model(format!("missing tensor \"{wname}\" (quantized, next to \"{sname}\")"))
        })?;
        let (Some(&ng), Some(&packed)) = (scales.last(), w.last()) else {
            return Err(Error::invalid_model(format!("tensor \"{sname}\" has an empty shape")));
        };
        if ng == 0 || in_dim % ng != 0 || (packed * 32) % in_dim != 0 {
            return Err(Error::invalid_model(format!(
                "quantized tensors of \"{prefix}\" have shapes {} and {} that do not fit an input size of {in_dim}",
                shape_str(w),
                shape_str(scales)
            )));
        }
        let q = QuantParams { group_size: (in_dim / ng) as i32, bits: (packed * 32 / in_dim) as i32 };
        check_params(&format!("tensor \"{wname}\""), q.bits, q.group_size)?;
        Ok(Some(q))
    }

    fn quantized_parts(&mut self, prefix: &str, rows: i64, in_dim: i64, q: QuantParams) -> Result<(Array, Array, Array)> {
        let packed = in_dim * q.bits as i64 / 32;
        let groups = in_dim / q.group_size as i64;
        let weight = self.take(&format!("{prefix}.weight"), &[rows, packed])?;
        let scales = self.take(&format!("{prefix}.scales"), &[rows, groups])?;
        let biases = self.take(&format!("{prefix}.biases"), &[rows, groups])?;
        Ok((weight, scales, biases))
    }

    pub fn linear(&mut self, prefix: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let (i, o) = (in_dim as i64, out_dim as i64);
        // Kept as a [1, out] row: see `Linear`.
        let b = if bias { Some(self.take(&format!("{prefix}.bias"), &[o])?.reshape(&[1, out_dim as i32])?) } else { None };
        match self.quant_for(prefix, i)? {
            None => Linear::dense(self.take(&format!("{prefix}.weight"), &[o, i])?, b),
            Some(q) => {
                let (weight, scales, biases) = self.quantized_parts(prefix, o, i, q)?;
                Ok(Linear::Quantized { weight, scales, biases, bias: b, q, split: Vec::new() })
            }
        }
    }

    pub fn embedding(&mut self, prefix: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        let cast = self.cast;
        self.linear(prefix, dim, vocab, false).map(|l| Embedding(l, cast))
    }

    pub fn rms_norm(&mut self, prefix: &str, dim: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.take(&format!("{prefix}.weight"), &[dim as i64])?, eps })
    }

    /// Every tensor must have been used: an unexpected one means the config
    /// and the checkpoint disagree (mlx-lm's strict loading does the same).
    pub fn finish(self) -> Result<()> {
        let mut left: Vec<&String> = self.tensors.keys().collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        let shown: Vec<String> = left.iter().take(5).map(|s| format!("\"{s}\"")).collect();
        Err(Error::invalid_model(format!(
            "{} unexpected tensor(s) not used by the model: {}{}",
            left.len(),
            shown.join(", "),
            if left.len() > 5 { ", ..." } else { "" }
        )))
    }
}

/// The dtype a stored tensor is kept in when loading with the compute dtype
/// `cast`: float tensors are converted, except that quantization scales and
/// biases (`*.scales`, `*.biases`) are never widened. Widening them (bf16 ->
/// float32 compute) would cost memory in every layer; MLX's quantized matmul
/// converts them to the input's dtype itself, per call, one layer at a time.
fn kept_dtype(name: &str, stored: crate::mlx::Dtype, cast: Option<crate::mlx::Dtype>) -> crate::mlx::Dtype {
    match cast {
        Some(dt) if stored.is_float() => {
            let quant_param = name.ends_with(".scales") || name.ends_with(".biases");
            if quant_param && dt.size() > stored.size() {
                stored
            } else {
                dt
            }
        }
        _ => stored,
    }
}

/// Refuse weights that cannot fit in this machine's memory before MLX tries:
/// an allocation failure inside MLX's evaluation thread could not be
/// reported as an error.
fn check_fits<'a>(dir: &Path, headers: impl Iterator<Item = &'a Header>, cast: Option<crate::mlx::Dtype>) -> Result<()> {
    let Some(total) = crate::manager::budget::system_memory() else { return Ok(()) };
    let need: u64 = headers
        .flat_map(|h| h.tensors.iter())
        .map(|(name, t)| match kept_dtype(name, t.dtype, cast) {
            dt if dt == t.dtype => t.nbytes,
            dt => t.shape.iter().product::<i64>() as u64 * dt.size() as u64,
        })
        .sum();
    if need > total {
        return Err(Error::new(
            crate::error::ErrorKind::OutOfMemory,
            format!(
                "{}: the weights need {} but this machine has {} of memory",
                dir.display(),
                crate::manager::budget::format_bytes(need),
                crate::manager::budget::format_bytes(total)
            ),
        ));
    }
    Ok(())
}
