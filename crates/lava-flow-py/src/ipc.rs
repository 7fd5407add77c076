//! `lava_flow.ipc`: buffers and timeline semaphores sent to another process over a Unix socket
//! (the fd with `SCM_RIGHTS`, its descriptor beside it: `lava_flow::ipc` in Rust).

use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use lava_flow::ipc::{self, Message};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::allocator::MemoryAllocator;
use crate::buffer::Buffer;
use crate::errors::OrRaise;
use crate::semaphore::TimelineSemaphore;

/// A stream on a duplicate of `sock`'s fd (`sock.fileno()`): the same connection, closed when
/// the stream is dropped; `sock` stays the caller's.
fn stream_of(sock: &Bound<'_, PyAny>) -> PyResult<UnixStream> {
    let fd: RawFd = sock.call_method0("fileno")?.extract()?;
    if fd < 0 {
        return Err(PyErr::new::<pyo3::exceptions::PyValueError, _>("the socket is closed (fileno() is -1)"));
    }
    // SAFETY: `sock` is alive for this call and `fileno()` returned its open fd; it is only
    // borrowed here, to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned()?;
    Ok(UnixStream::from(owned))
}

/// `send(sock, obj)`: sends a `Buffer` or a `TimelineSemaphore` to the process at the other end
/// of the connected Unix socket `sock` (blocking mode: no timeout). The other process calls
/// `recv`. The object stays usable here; what arrives there is the same memory or semaphore.
#[pyfunction]
fn send(py: Python<'_>, sock: &Bound<'_, PyAny>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let stream = stream_of(sock)?;
    if let Ok(buffer) = obj.cast::<Buffer>() {
        let exported = buffer.get().inner.export().or_raise()?;
        return py.detach(|| ipc::send_memory(&stream, &exported)).or_raise();
    }
    if let Ok(semaphore) = obj.cast::<TimelineSemaphore>() {
        let exported = semaphore.get().inner.export().or_raise()?;
        return py.detach(|| ipc::send_semaphore(&stream, &exported)).or_raise();
    }
    Err(PyTypeError::new_err(format!(
        "send takes a lava_flow.Buffer or TimelineSemaphore, not {}",
        obj.get_type().name()?
    )))
}

/// `recv(sock, allocator, device_id=0)`: receives what `send` sent and imports it into
/// `allocator`'s device `device_id` (the same GPU, matched by UUID): a `Buffer` (with
/// `__dlpack__`, `__cuda_array_interface__`, `as_array`, `descriptor()`, and exportable again)
/// or a `TimelineSemaphore` (host `wait`/`signal`, `cuda_wait`/`cuda_signal`).
#[pyfunction]
#[pyo3(signature = (sock, allocator, device_id = 0))]
fn recv(
    py: Python<'_>,
    sock: &Bound<'_, PyAny>,
    allocator: &MemoryAllocator,
    device_id: u32,
) -> PyResult<Py<PyAny>> {
    let stream = stream_of(sock)?;
    let message = py.detach(|| ipc::recv(&stream)).or_raise()?;
    let shared = Arc::clone(&allocator.shared);
    match message {
        Message::Memory(memory) => {
            let buffer = py.detach(|| shared.allocator().import_memory(device_id, memory)).or_raise()?;
            Ok(Py::new(py, Buffer::new(shared, buffer))?.into_any())
        }
        Message::Semaphore(semaphore) => {
            let imported = shared.allocator().import_timeline_semaphore(device_id, semaphore).or_raise()?;
            Ok(Py::new(py, TimelineSemaphore::new(shared, device_id, imported))?.into_any())
        }
        other => Err(PyTypeError::new_err(format!(
            "received {other:?}: the Python module takes buffers and timeline semaphores"
        ))),
    }
}

/// Adds the submodule `lava_flow.ipc`.
pub fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    let m = PyModule::new(py, "ipc")?;
    m.add("__doc__", "Buffers and timeline semaphores to another process over a Unix socket.")?;
    m.add_function(wrap_pyfunction!(send, &m)?)?;
    m.add_function(wrap_pyfunction!(recv, &m)?)?;
    parent.add_submodule(&m)?;
    // `import lava_flow.ipc` finds it too.
    py.import("sys")?.getattr("modules")?.set_item("lava_flow.ipc", &m)?;
    Ok(())
}
