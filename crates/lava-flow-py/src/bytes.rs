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

/// Calls `f` with the bytes of `obj`; `f` may release the GIL while it copies them.
///
/// How the bytes stay put meanwhile: the buffer export (held until `f` returns) keeps `obj`
/// alive and its memory where it is — `bytes` never change, and `bytearray`, `array.array` and
/// numpy arrays refuse to be resized while exported. What an export cannot stop is another
/// Python thread writing into a mutable object: the rule for callers (documented on the
/// methods) is not to change the source while a call that reads it runs, as for any copy that
/// releases the GIL.
pub fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let exported = Exported::new(obj, false)?;
    Ok(f(lava_flow::HostBytes::host_bytes(&exported)))
}

/// Calls `f` with the bytes of the writable `obj`, as [`with_bytes`].
pub fn with_bytes_mut<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
    let mut exported = Exported::new(obj, true)?;
    Ok(f(lava_flow::HostBytesMut::host_bytes_mut(&mut exported)))
}

/// The bytes of a Python object, exported through the buffer protocol for as long as this
/// value lives: what an asynchronous transfer owns (see [`with_bytes`] for what the export
/// guarantees, and what callers must not do).
pub struct Exported {
    /// Keeps the export (and with it the object) alive; its release needs the GIL, which
    /// pyo3's drop takes.
    buffer: PyBuffer<u8>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` points into the exported memory that `buffer` (which is `Send`) keeps alive.
unsafe impl Send for Exported {}

impl Exported {
    /// A C-contiguous byte export of `obj`, writable if asked.
    pub fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let buffer = byte_view(obj, writable)?;
        let len = buffer.item_count();
        let ptr = buffer.buf_ptr().cast::<u8>();
        Ok(Exported { buffer, ptr, len })
    }
}

// SAFETY: the exported memory stays at `ptr` (an exporter may not move or free it while an
// export is held, and `buffer` holds one) for as long as the value lives, wherever it moves.
// Other threads writing into a mutable source (or reading a destination) meanwhile is the
// Python caller's rule, documented on every method that takes one.
unsafe impl lava_flow::HostBytes for Exported {
    fn host_bytes(&self) -> &[u8] {
        let _ = &self.buffer;
        if self.len == 0 {
            return &[];
        }
        // SAFETY: a C-contiguous export of `len` bytes, held by `self.buffer`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

// SAFETY: as above; the export was checked writable (`Exported::new` with `writable`), and only
// this value hands out references to its bytes on the Rust side.
unsafe impl lava_flow::HostBytesMut for Exported {
    fn host_bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
