//! The Python exception hierarchy and the one conversion from
//! `cider_core::Error` to it. Classes whose Python users expect a builtin
//! (`except ValueError`, `except FileNotFoundError`, `except MemoryError`)
//! also derive from it, so they are made with `type(name, bases, ns)`.
use cider_core::{Error, ErrorKind};
use pyo3::exceptions::{PyFileNotFoundError, PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

pub struct Classes {
    pub cider: Py<PyType>,
    pub invalid_argument: Py<PyType>,
    pub model_load: Py<PyType>,
    pub model_not_found: Py<PyType>,
    pub invalid_model: Py<PyType>,
    pub unsupported_model: Py<PyType>,
    pub tokenizer: Py<PyType>,
    pub generation: Py<PyType>,
    pub cancelled: Py<PyType>,
    pub out_of_memory: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make(py: Python<'_>, name: &str, doc: &str, bases: &[&Bound<'_, PyType>]) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "cider")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let t = py.get_type::<PyType>().call1((name, bases, ns))?;
    Ok(t.cast_into::<PyType>()?.unbind())
}

fn build(py: Python<'_>) -> PyResult<Classes> {
    let exc = py.get_type::<pyo3::exceptions::PyException>();
    let cider = make(py, "CiderError", "Base class of every error cider raises; the message is the core's.", &[&exc])?;
    let c = cider.bind(py);
    let model_load = make(py, "ModelLoadError", "The model folder could not be loaded.", &[c])?;
    let ml = model_load.bind(py);
    let generation = make(py, "GenerationError", "Generation failed in the backend.", &[c])?;
    Ok(Classes {
        invalid_argument: make(
            py,
            "InvalidArgumentError",
            "An argument has an unusable value (also a ValueError).",
            &[c, &py.get_type::<PyValueError>()],
        )?,
        model_not_found: make(
            py,
            "ModelNotFoundError",
            "The model folder or one of its files does not exist (also a FileNotFoundError).",
            &[ml, &py.get_type::<PyFileNotFoundError>()],
        )?,
        invalid_model: make(
            py,
            "InvalidModelError",
            "The model folder's contents are malformed (JSON, tensors, shapes).",
            &[ml],
        )?,
        unsupported_model: make(
            py,
            "UnsupportedModelError",
            "Well-formed, but an architecture or quantization cider does not support.",
            &[ml],
        )?,
        tokenizer: make(py, "TokenizerError", "Tokenizing, detokenizing or rendering a chat template failed.", &[c])?,
        cancelled: make(py, "CancelledError", "The caller cancelled (a progress callback returned False).", &[c])?,
        out_of_memory: make(
            py,
            "OutOfMemoryError",
            "MLX could not allocate memory (also a MemoryError).",
            &[c, &py.get_type::<PyMemoryError>()],
        )?,
        cider,
        model_load,
        generation,
    })
}

pub fn classes(py: Python<'_>) -> &'static Classes {
    CLASSES
        .get_or_try_init(py, || build(py))
        .expect("creating cider's exception classes (type() with builtin bases) cannot fail")
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let c = classes(py);
    for (name, t) in [
        ("CiderError", &c.cider),
        ("InvalidArgumentError", &c.invalid_argument),
        ("ModelLoadError", &c.model_load),
        ("ModelNotFoundError", &c.model_not_found),
        ("InvalidModelError", &c.invalid_model),
        ("UnsupportedModelError", &c.unsupported_model),
        ("TokenizerError", &c.tokenizer),
        ("GenerationError", &c.generation),
        ("CancelledError", &c.cancelled),
        ("OutOfMemoryError", &c.out_of_memory),
    ] {
        m.add(name, t.clone_ref(py))?;
    }
    Ok(())
}

/// What the failing call was doing; decides the class of errors whose kind
/// alone does not (a backend failure while loading is a ModelLoadError).
#[derive(Clone, Copy)]
pub enum Op {
    Load,
    Tokenize,
    Generate,
}

/// The one conversion from a core error to a Python exception.
pub fn to_py(py: Python<'_>, e: Error, op: Op) -> PyErr {
    let c = classes(py);
    let t = match e.kind {
        ErrorKind::InvalidArgument => &c.invalid_argument,
        ErrorKind::NotFound => &c.model_not_found,
        ErrorKind::InvalidModel => &c.invalid_model,
        ErrorKind::Unsupported => &c.unsupported_model,
        ErrorKind::Tokenizer => &c.tokenizer,
        ErrorKind::Cancelled => &c.cancelled,
        ErrorKind::OutOfMemory => &c.out_of_memory,
        ErrorKind::Backend | ErrorKind::Io => match op {
            Op::Load => &c.model_load,
            Op::Tokenize => &c.tokenizer,
            Op::Generate => &c.generation,
        },
    };
    PyErr::from_type(t.bind(py).clone(), e.message)
}

/// A bad argument found by the binding itself (same class as the core's).
pub fn invalid_arg(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    to_py(py, Error::invalid_arg(msg), Op::Generate)
}

/// A generation worker that vanished without a result: a bug, not user error.
pub fn worker_lost(py: Python<'_>) -> PyErr {
    let t = classes(py).generation.bind(py).clone();
    PyErr::from_type(t, "the generation thread ended without a result (internal error)")
}
