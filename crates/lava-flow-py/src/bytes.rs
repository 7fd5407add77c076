//! Bytes in and out of Python objects through the buffer protocol: `bytes`, `bytearray`,
//! `memoryview`, numpy arrays of any dtype (C-contiguous), anything that exports a buffer.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;

/// A C-contiguous byte view of `obj` (`memoryview(obj).cast("B")`), writable if asked.
fn byte_view(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<PyBuffer<u8>> {
    let py = obj.py();
    let kind = obj.get_type().name()?.to_string();
    let view = py.import("builtins")?.getattr("memoryview")?.call1((obj,)).map_err(|_| {
        PyTypeError::new_err(format!("expected a bytes-like object (the buffer protocol), got {kind}"))
    })?;
    if !view.getattr("c_contiguous")?.extract::<bool>()? {
        return Err(PyBufferError::new_err("the data must be C-contiguous"));
    }
    if writable && view.getattr("readonly")?.extract::<bool>()? {
        return Err(PyBufferError::new_err("the destination is read-only"));
    }
    let bytes = if view.getattr("format")?.extract::<String>()? == "B" {
        view
    } else {
        view.call_method1("cast", ("B",))?
    };
    PyBuffer::<u8>::get(&bytes)
}

/// A new `bytes` of `len` bytes that `fill` writes (a read from GPU memory); its error as the
/// Python exception of its kind.
pub fn new_bytes<'py>(
    py: Python<'py>,
    len: u64,
    fill: impl FnOnce(&mut [u8]) -> lava_flow::Result<()>,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let len = usize::try_from(len).map_err(|_| pyo3::exceptions::PyValueError::new_err("size too large"))?;
    let mut result = Ok(());
    let out = pyo3::types::PyBytes::new_with(py, len, |b| {
        result = fill(b);
        Ok(())
    })?;
    result.map_err(crate::errors::to_py)?;
    Ok(out)
}

/// Calls `f` with the bytes of `obj`. The GIL stays held, so no Python code changes them
/// meanwhile.
pub fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let buffer = byte_view(obj, false)?;
    let len = buffer.item_count();
    let ptr = buffer.buf_ptr().cast::<u8>().cast_const();
    // SAFETY: a C-contiguous buffer of `len` bytes, exported to us (held by `buffer`) until the
    // end of this function; with the GIL held nothing else runs Python code that could write it.
    let bytes = if len == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(ptr, len) } };
    Ok(f(bytes))
}

/// Calls `f` with the bytes of the writable `obj`, as [`with_bytes`].
pub fn with_bytes_mut<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
    let buffer = byte_view(obj, true)?;
    let len = buffer.item_count();
    let ptr = buffer.buf_ptr().cast::<u8>();
    // SAFETY: as in `with_bytes`; the buffer is writable (checked) and no other Rust reference to
    // its bytes exists.
    let bytes = if len == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(ptr, len) } };
    Ok(f(bytes))
}
