//! Lazily loaded safetensors through MLX. Callers validate the file first
//! (`crate::safetensors::Header`) because MLX reads the data lazily on a worker
//! thread, where a short read cannot be reported back as a clean error.
use super::ffi::ffi;
use super::Array;
use crate::error::Result;
use std::collections::HashMap;

pub fn load_safetensors(path: &str) -> Result<HashMap<String, Array>> {
    let st = ffi::load_safetensors(path)?;
    let mut out = HashMap::new();
    for k in ffi::st_keys(&st) {
        let a = ffi::st_get(&st, &k)?;
        out.insert(k, Array { inner: a });
    }
    Ok(out)
}

/// The `__metadata__` strings of a safetensors file (e.g. `format: mlx`).
pub fn safetensors_metadata(path: &str) -> Result<HashMap<String, String>> {
    let st = ffi::load_safetensors(path)?;
    let kv = ffi::st_metadata(&st);
    Ok(kv.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect())
}

pub fn save_safetensors(path: &str, tensors: &[(String, Array)]) -> Result<()> {
    let mut l = ffi::list_new();
    let mut names = Vec::new();
    for (n, a) in tensors {
        names.push(n.clone());
        ffi::list_push(l.pin_mut(), &a.inner);
    }
    ffi::save_safetensors(path, &names, &l)?;
    Ok(())
}
