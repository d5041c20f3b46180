//! Every conversion between raw pointers from C and Rust values: boxing
//! handles out and back, borrowing them, reading C strings and arrays, and
//! writing malloc'd outputs. Nothing else in the crate dereferences a raw
//! pointer it got from C. Each helper checks for NULL and reports it as
//! `CIDER_STATUS_INVALID_ARGUMENT` naming the parameter.
use crate::status::{cider_status, FfiResult, Failure};
use std::ffi::{c_char, c_void, CStr};

extern "C" {
    // The C allocator, so that strings and arrays handed to C are plain C
    // allocations (valgrind and ASan track them like any other) and can be
    // released without knowing their length.
    fn malloc(size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void);
}

fn null(name: &str) -> Failure {
    Failure::invalid_arg(format!("`{name}` is NULL"))
}

/// Moves `value` to the heap and hands ownership to C.
pub(crate) fn into_raw<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes back ownership of a handle made by `into_raw` and drops it; NULL is
/// a no-op.
///
/// # Safety
/// `ptr` is NULL or came from `into_raw::<T>` and was not freed since.
pub(crate) unsafe fn free_raw<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: by the contract above, `ptr` is a live Box allocation of T.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Takes back ownership of a handle made by `into_raw` without dropping it
/// (for handles whose parts must be dropped in a certain order); None for NULL.
///
/// # Safety
/// As `free_raw`.
pub(crate) unsafe fn take_raw<T>(ptr: *mut T) -> Option<Box<T>> {
    // SAFETY: by the contract above, a non-NULL `ptr` is a live Box allocation of T.
    (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr) })
}

/// Borrows a handle for the duration of a call.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` (made by `into_raw`) that nothing
/// mutates during `'a`.
pub(crate) unsafe fn borrow<'a, T>(ptr: *const T, name: &str) -> FfiResult<&'a T> {
    // SAFETY: non-NULL pointers are live handles by the contract above.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(name))
}

/// Writes an output parameter without reading (or dropping) what was there.
///
/// # Safety
/// `ptr` is NULL or valid for writing a `T`.
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL and writable by the contract above; C memory may
        // be uninitialised, so write without dropping the old value.
        unsafe { ptr.write(value) };
    }
}

/// Fails unless an output pointer is non-NULL (checked before any work, so
/// that outputs are written only on success).
pub(crate) fn require_out<T>(ptr: *mut T, name: &str) -> FfiResult<()> {
    if ptr.is_null() {
        Err(null(name))
    } else {
        Ok(())
    }
}

/// A NUL-terminated C string as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a str> {
    let bytes = unsafe { c_bytes(ptr, name) }?;
    std::str::from_utf8(bytes).map_err(|e| Failure::invalid_arg(format!("`{name}` is not valid UTF-8: {e}")))
}

/// A NUL-terminated C string as bytes (paths need not be UTF-8).
///
/// # Safety
/// As `c_str`.
pub(crate) unsafe fn c_bytes<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a [u8]> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: non-NULL and NUL-terminated by the contract above.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// `len` elements at `ptr`; NULL is allowed when `len` is 0.
///
/// # Safety
/// When `len` > 0, `ptr` is NULL or points to `len` initialised `T`s that
/// live for `'a`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize, name: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid_arg(format!("`{name}` is NULL but its length is {len}")));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::invalid_arg(format!("length {len} of `{name}` is impossibly large")));
    }
    // SAFETY: non-NULL, `len` elements long and alive for 'a by the contract
    // above; the size was checked to fit in isize.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` writable elements at `ptr`; NULL is allowed when `len` is 0.
///
/// # Safety
/// When `len` > 0, `ptr` is NULL or points to `len` writable `T`s that
/// nothing else accesses during `'a`.
pub(crate) unsafe fn slice_out<'a, T: Copy>(ptr: *mut T, len: usize, name: &str) -> FfiResult<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::invalid_arg(format!("`{name}` is NULL but its capacity is {len}")));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::invalid_arg(format!("capacity {len} of `{name}` is impossibly large")));
    }
    // SAFETY: as above; T: Copy, so C's possibly uninitialised integers are
    // only ever overwritten. (Integers have no invalid bit patterns.)
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

fn oom(bytes: usize) -> Failure {
    Failure::new(cider_status::OutOfMemory, format!("malloc of {bytes} bytes failed"))
}

/// A malloc'd, NUL-terminated copy of `bytes`, freed by `free_c`. Interior
/// NULs are kept (lengths are returned separately where they matter).
pub(crate) fn malloc_str(bytes: &[u8]) -> FfiResult<*mut c_char> {
    let n = bytes.len() + 1;
    // SAFETY: malloc has no preconditions; the result is checked for NULL.
    let p = unsafe { malloc(n) } as *mut u8;
    if p.is_null() {
        return Err(oom(n));
    }
    // SAFETY: `p` holds n = len + 1 bytes and does not overlap `bytes`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
    }
    Ok(p as *mut c_char)
}

/// A malloc'd copy of `items` (NULL when empty), freed by `free_c`.
pub(crate) fn malloc_array<T: Copy>(items: &[T]) -> FfiResult<*mut T> {
    if items.is_empty() {
        return Ok(std::ptr::null_mut());
    }
    let n = std::mem::size_of_val(items);
    // SAFETY: malloc has no preconditions; the result is checked for NULL.
    // malloc's alignment suits any fundamental type.
    let p = unsafe { malloc(n) } as *mut T;
    if p.is_null() {
        return Err(oom(n));
    }
    // SAFETY: `p` holds items.len() elements and does not overlap `items`.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), p, items.len()) };
    Ok(p)
}

/// Frees what `malloc_str` / `malloc_array` returned; NULL is a no-op.
///
/// # Safety
/// `ptr` is NULL or came from `malloc_str` / `malloc_array` and was not
/// freed since.
pub(crate) unsafe fn free_c<T>(ptr: *mut T) {
    // SAFETY: free(NULL) is a no-op; anything else was malloc'd by us.
    unsafe { free(ptr as *mut c_void) }
}
