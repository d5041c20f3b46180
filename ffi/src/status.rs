//! Status codes, the thread-local last error message, and the panic boundary
//! that every extern body runs inside.
use cider_core::{Error, ErrorKind};
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a fallible call did. The numbers are part of the ABI: they are fixed
/// and never reused; new codes are only ever added at the end. On any status
/// but `CIDER_STATUS_OK`, `cider_last_error_message()` says what went wrong.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cider_status {
    /// Success.
    Ok = 0,
    /// A NULL or otherwise unusable argument: bad option value, text that is
    /// not UTF-8, a token id outside the vocabulary, a session already busy.
    InvalidArgument = 1,
    /// The model folder or a file it needs does not exist.
    NotFound = 2,
    /// The model folder exists but its contents are wrong: bad JSON, a
    /// missing or truncated tensor, a broken tokenizer.
    InvalidModel = 3,
    /// Well-formed but not supported: an unknown architecture or
    /// quantization, a chat template asked of a model that has none.
    Unsupported = 4,
    /// The output buffer is too small; the size needed was written.
    BufferTooSmall = 5,
    /// A callback returned false. Generation calls still fill their result.
    Cancelled = 6,
    /// MLX could not allocate memory.
    OutOfMemory = 7,
    /// MLX (or the operating system) failed: an MLX exception, an I/O error
    /// other than a missing file.
    Backend = 8,
    /// A bug in cider: an internal panic was caught. The objects involved
    /// should be freed and not used again.
    Panic = 9,
}

/// The same numbers as `cider_status`, as C passes them in: a status read
/// from C may hold any `int`, which a Rust enum must not. cbindgen prints
/// this as `cider_status` (see `[export.rename]` in cbindgen.toml).
pub type cider_status_int = c_int;

impl cider_status {
    fn from_int(v: c_int) -> Option<cider_status> {
        use cider_status::*;
        Some(match v {
            0 => Ok,
            1 => InvalidArgument,
            2 => NotFound,
            3 => InvalidModel,
            4 => Unsupported,
            5 => BufferTooSmall,
            6 => Cancelled,
            7 => OutOfMemory,
            8 => Backend,
            9 => Panic,
            _ => return None,
        })
    }

    fn name(self) -> &'static CStr {
        use cider_status::*;
        match self {
            Ok => c"CIDER_STATUS_OK",
            InvalidArgument => c"CIDER_STATUS_INVALID_ARGUMENT",
            NotFound => c"CIDER_STATUS_NOT_FOUND",
            InvalidModel => c"CIDER_STATUS_INVALID_MODEL",
            Unsupported => c"CIDER_STATUS_UNSUPPORTED",
            BufferTooSmall => c"CIDER_STATUS_BUFFER_TOO_SMALL",
            Cancelled => c"CIDER_STATUS_CANCELLED",
            OutOfMemory => c"CIDER_STATUS_OUT_OF_MEMORY",
            Backend => c"CIDER_STATUS_BACKEND",
            Panic => c"CIDER_STATUS_PANIC",
        }
    }
}

/// A failed call: the status to return and the message for
/// `cider_last_error_message()`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: cider_status,
    pub message: String,
}

pub(crate) type FfiResult<T> = Result<T, Failure>;

impl Failure {
    pub fn new(status: cider_status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }
    pub fn invalid_arg(message: impl Into<String>) -> Failure {
        Failure::new(cider_status::InvalidArgument, message)
    }
}

/// Where a core error happened, for the kinds whose status depends on it.
#[derive(Clone, Copy)]
pub(crate) enum Stage {
    /// Loading a model: a tokenizer error is a broken model folder.
    Load,
    /// Tokenizing caller text, decoding caller ids, rendering caller
    /// messages: a tokenizer error is about the caller's input.
    Input,
    /// Generating: a tokenizer error while decoding output is the model's.
    Generate,
}

/// The one conversion from a core error to a C status.
pub(crate) fn from_core(e: Error, stage: Stage) -> Failure {
    let status = match e.kind {
        ErrorKind::InvalidArgument => cider_status::InvalidArgument,
        ErrorKind::NotFound => cider_status::NotFound,
        ErrorKind::InvalidModel => cider_status::InvalidModel,
        ErrorKind::Unsupported => cider_status::Unsupported,
        ErrorKind::Tokenizer => match stage {
            Stage::Input => cider_status::InvalidArgument,
            Stage::Load | Stage::Generate => cider_status::InvalidModel,
        },
        ErrorKind::Cancelled => cider_status::Cancelled,
        ErrorKind::OutOfMemory => cider_status::OutOfMemory,
        ErrorKind::Backend | ErrorKind::Io => cider_status::Backend,
    };
    Failure::new(status, e.message)
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // A message is C text: interior NULs would cut it short, so drop them.
    let bytes: Vec<u8> = message.into_bytes().into_iter().filter(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    // try_with: a call made while the thread is being torn down just loses its message.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs the body of a fallible extern function: clears the last error,
/// catches panics, and turns failures into a status plus a message that
/// starts with the function's name.
pub(crate) fn boundary(func: &str, body: impl FnOnce() -> FfiResult<()>) -> cider_status {
    set_last_error(String::new());
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => cider_status::Ok,
        Ok(Err(f)) => {
            set_last_error(format!("{func}: {}", f.message));
            f.status
        }
        Err(payload) => {
            set_last_error(format!("{func}: internal error (panic): {}", panic_message(&*payload)));
            cider_status::Panic
        }
    }
}

/// The panic boundary for extern functions that return a value rather than a
/// status: a panic yields `fallback` (and a message) instead of unwinding
/// into C, which would abort.
pub(crate) fn boundary_value<T>(func: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(format!("{func}: internal error (panic): {}", panic_message(&*payload)));
            fallback
        }
    }
}

/// cider's version as "MAJOR.MINOR.PATCH", equal to `CIDER_VERSION_STRING`
/// of the header it was built with. Compare the two to detect a header /
/// library mismatch at run time.
///
/// Returns a static string: never NULL, never to be freed. Thread-safe.
#[no_mangle]
pub extern "C" fn cider_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the package version contains a NUL"),
    };
    VERSION.as_ptr()
}

/// The name of a status as a static string ("CIDER_STATUS_NOT_FOUND"), or
/// "CIDER_STATUS_UNKNOWN" for a number that is not a status.
///
/// Returns a static string: never NULL, never to be freed. Thread-safe.
#[no_mangle]
pub extern "C" fn cider_status_string(status: cider_status_int) -> *const c_char {
    boundary_value("cider_status_string", c"CIDER_STATUS_UNKNOWN".as_ptr(), || {
        cider_status::from_int(status).map(cider_status::name).unwrap_or(c"CIDER_STATUS_UNKNOWN").as_ptr()
    })
}

/// What went wrong in the last call on this thread that returned a status
/// other than `CIDER_STATUS_OK`: the function's name, then details such as
/// the path, key, tensor or argument involved. Empty ("") when the last
/// status-returning call on this thread succeeded.
///
/// The message is thread-local, so threads never see each other's errors.
/// Borrowed: valid until the next status-returning cider call on this
/// thread; copy it to keep it. Never NULL; never to be freed.
#[no_mangle]
pub extern "C" fn cider_last_error_message() -> *const c_char {
    boundary_value("cider_last_error_message", c"".as_ptr(), || {
        // The pointer stays valid until LAST_ERROR is replaced, which only
        // the next status-returning call on this thread does.
        LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
    })
}
