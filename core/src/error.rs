//! One error type for the whole core. Every binding maps `ErrorKind` to its own
//! vocabulary (C status codes, Python exception classes), so the kind must say
//! what went wrong in terms a host can act on, and the message must name the
//! file, key, tensor or position involved.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller passed something unusable (bad option value, bad UTF-8, ...).
    InvalidArgument,
    /// A file or folder that should exist does not.
    NotFound,
    /// The model folder exists but its contents are wrong (bad JSON, missing
    /// tensor, wrong shape, truncated safetensors, ...).
    InvalidModel,
    /// Well-formed but not something cider supports (unknown model_type,
    /// quantization mode, ...).
    Unsupported,
    /// Tokenizer or chat template failure.
    Tokenizer,
    /// The host asked to stop.
    Cancelled,
    /// MLX could not allocate.
    OutOfMemory,
    /// An MLX (C++) exception or other backend failure.
    Backend,
    /// Filesystem or other I/O failure that is not a missing file.
    Io,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    pub fn invalid_arg(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn invalid_model(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidModel, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn tokenizer(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Tokenizer, message)
    }
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Backend, message)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "cancelled by the caller")
    }
    /// An I/O error on `path`; a missing file becomes `NotFound`.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Self::new(kind, format!("{}: {}", path.display(), e))
    }
    /// Prefix the message with context (e.g. the file being read).
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// MLX exceptions arrive through cxx as `cxx::Exception` carrying `what()`.
impl From<cxx::Exception> for Error {
    fn from(e: cxx::Exception) -> Self {
        let msg = e.what().to_string();
        let kind = if msg.contains("[malloc]") || msg.contains("out of memory") || msg.contains("Out of memory") {
            ErrorKind::OutOfMemory
        } else {
            ErrorKind::Backend
        };
        Error::new(kind, format!("MLX: {msg}"))
    }
}
