//! CUDA streams handed in from Python: an int (a raw `CUstream`; `1` and `2` are the legacy and
//! per-thread default streams), or an object that carries one (`torch.cuda.Stream.cuda_stream`,
//! `cupy.cuda.Stream.ptr`, or the `__cuda_stream__` protocol).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The raw handle `obj` stands for.
pub fn handle(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(value) = obj.extract::<isize>() {
        return usize::try_from(value)
            .map_err(|_| PyValueError::new_err(format!("stream {value}: not a stream handle")));
    }
    for attr in ["cuda_stream", "ptr"] {
        if let Ok(value) = obj.getattr(attr).and_then(|v| v.extract::<usize>()) {
            return Ok(value);
        }
    }
    if let Ok(protocol) = obj.getattr("__cuda_stream__") {
        let value = if protocol.is_callable() { protocol.call0()? } else { protocol };
        // The protocol's value is `(version, handle)`.
        if let Ok((_, handle)) = value.extract::<(usize, usize)>() {
            return Ok(handle);
        }
        if let Ok(handle) = value.extract::<usize>() {
            return Ok(handle);
        }
    }
    Err(PyTypeError::new_err(format!(
        "expected a CUDA stream (an int, torch.cuda.Stream, cupy.cuda.Stream or an object with __cuda_stream__), got {}",
        obj.get_type().name()?
    )))
}
