//! Reading JSON files with errors that name the file, the key and, for syntax
//! errors, the line and column.
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A parsed JSON object remembered with the file it came from, so every
/// missing or mistyped key can be reported as `file: key ...`.
#[derive(Clone, Debug)]
pub struct JsonFile {
    pub path: PathBuf,
    pub obj: Map<String, Value>,
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        // serde_json's message ends with its own " at line L column C".
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Error::invalid_model(format!("{}: invalid JSON at line {} column {}: {msg}", path.display(), e.line(), e.column()))
    })
}

impl JsonFile {
    pub fn open(path: &Path) -> Result<JsonFile> {
        match read_json(path)? {
            Value::Object(obj) => Ok(JsonFile { path: path.to_path_buf(), obj }),
            _ => Err(Error::invalid_model(format!("{}: expected a JSON object", path.display()))),
        }
    }
    /// Open if the file exists; `None` when it does not.
    pub fn open_optional(path: &Path) -> Result<Option<JsonFile>> {
        if path.exists() {
            Ok(Some(JsonFile::open(path)?))
        } else {
            Ok(None)
        }
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn bad(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::invalid_model(format!(
            "{}: key \"{key}\" should be {want}, found {v}",
            self.path.display()
        ))
    }
    pub fn missing(&self, key: &str) -> Error {
        Error::invalid_model(format!("{}: missing required key \"{key}\"", self.path.display()))
    }
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| self.bad(key, "a non-negative integer", v)),
        }
    }
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.bad(key, "a number", v)),
        }
    }
    pub fn req_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.bad(key, "true or false", v)),
        }
    }
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.bad(key, "a string", v)),
        }
    }
    pub fn req_str(&self, key: &str) -> Result<&str> {
        self.str(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_object().map(Some).ok_or_else(|| self.bad(key, "an object", v)),
        }
    }
    /// An integer or a list of integers (as `eos_token_id` is written).
    pub fn int_list(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32).ok_or_else(|| self.bad(key, "an integer or a list of integers", v)))
                .collect(),
            Some(v) => v.as_u64().map(|x| vec![x as u32]).ok_or_else(|| self.bad(key, "an integer or a list of integers", v)),
        }
    }
}

/// Typed access into a nested object (e.g. `rope_scaling`), naming `file: outer.key`.
pub struct Section<'a> {
    pub file: &'a Path,
    pub name: String,
    pub obj: &'a Map<String, Value>,
}

impl<'a> Section<'a> {
    fn bad(&self, key: &str, want: &str) -> Error {
        Error::invalid_model(format!(
            "{}: key \"{}.{key}\" should be {want}",
            self.file.display(),
            self.name
        ))
    }
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.bad(key, "a number")),
        }
    }
    pub fn req_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?.ok_or_else(|| self.bad(key, "present (a number)"))
    }
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.bad(key, "a string")),
        }
    }
    pub fn f32_list(&self, key: &str) -> Result<Option<Vec<f32>>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| self.bad(key, "a list of numbers")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => v.as_f64().map(|x| Some(vec![x as f32])).ok_or_else(|| self.bad(key, "a list of numbers")),
        }
    }
}
