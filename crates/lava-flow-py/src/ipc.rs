//! `lava_flow.ipc`: buffers and timeline semaphores sent to another process over a Unix socket
//! (the fd with `SCM_RIGHTS`, its descriptor beside it: `lava_flow::ipc` in Rust).

use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use lava_flow::ipc::{self, Message};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::allocator::{MemoryAllocator, Shared};
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
        let exported = buffer.get().inner()?.export().or_raise()?;
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

/// `recv(sock, allocator=None, device_id=None)`: receives what `send` sent and imports it: a
/// `Buffer` (with `__dlpack__`, `__cuda_array_interface__`, `as_array`, `descriptor()`, and
/// exportable again) or a `TimelineSemaphore` (host `wait`/`signal`, `cuda_wait`/`cuda_signal`).
/// Into `allocator` (default: this process's `lava_flow.default_allocator()`), on `device_id`
/// (default: the device whose UUID the sender's descriptor names).
#[pyfunction]
#[pyo3(signature = (sock, allocator = None, device_id = None))]
fn recv(
    py: Python<'_>,
    sock: &Bound<'_, PyAny>,
    allocator: Option<&MemoryAllocator>,
    device_id: Option<u32>,
) -> PyResult<Py<PyAny>> {
    let stream = stream_of(sock)?;
    let message = py.detach(|| ipc::recv(&stream)).or_raise()?;
    let shared = match allocator {
        Some(a) => Arc::clone(&a.shared),
        None => crate::allocator::default_shared(py)?,
    };
    import(py, shared, message, device_id)
}

/// The device of `shared` to import into: `device_id`, or the one with `uuid`.
fn device_for(shared: &Shared, uuid: lava_flow::Uuid, device_id: Option<u32>) -> PyResult<u32> {
    if let Some(id) = device_id {
        return Ok(id);
    }
    let devices = shared.allocator().devices();
    devices
        .iter()
        .find(|d| d.uuid == uuid)
        .map(|d| d.index)
        .ok_or_else(|| lava_flow::Error::Unsupported {
            what: format!("no Vulkan device of this process has the sender's device UUID {uuid}"),
        })
        .or_raise()
}

/// Imports what arrived (one place, for `recv` and unpickling).
fn import(
    py: Python<'_>,
    shared: Arc<Shared>,
    message: Message,
    device_id: Option<u32>,
) -> PyResult<Py<PyAny>> {
    match message {
        Message::Memory(memory) => {
            let id = device_for(&shared, memory.descriptor().device_uuid, device_id)?;
            let buffer = py.detach(|| shared.allocator().import_memory(id, memory)).or_raise()?;
            Ok(Py::new(py, Buffer::new(shared, buffer))?.into_any())
        }
        Message::Semaphore(semaphore) => {
            let id = device_for(&shared, semaphore.descriptor().device_uuid, device_id)?;
            let imported = shared.allocator().import_timeline_semaphore(id, semaphore).or_raise()?;
            Ok(Py::new(py, TimelineSemaphore::new(shared, id, imported))?.into_any())
        }
        other => Err(PyTypeError::new_err(format!(
            "received {other:?}: the Python module takes buffers and timeline semaphores"
        ))),
    }
}

/// What `__reduce__` returns for an exported buffer or semaphore: `_rebuild` with the fd as
/// `multiprocessing.reduction.DupFd` (which `multiprocessing` sends to the other process: with
/// `SCM_RIGHTS`, or by the spawning process handing it over), and the descriptor's bytes.
pub fn reduce<'py>(
    py: Python<'py>,
    kind: &'static str,
    fd: std::os::fd::OwnedFd,
    descriptor: Vec<u8>,
) -> PyResult<Bound<'py, PyAny>> {
    use std::os::fd::AsRawFd;
    let dup = py.import("multiprocessing.reduction")?.getattr("DupFd")?.call1((fd.as_raw_fd(),))?;
    drop(fd); // DupFd made its own duplicate
    let rebuild = py.import("lava_flow.ipc")?.getattr("_rebuild")?;
    (rebuild, (kind, dup, pyo3::types::PyBytes::new(py, &descriptor))).into_pyobject(py).map(|t| t.into_any())
}

/// `_rebuild(kind, dup_fd, descriptor)`: the other half of pickling (see `reduce`): imports into
/// this process's `default_allocator()`, on the device with the sender's UUID.
#[pyfunction]
fn _rebuild(py: Python<'_>, kind: &str, dup: &Bound<'_, PyAny>, descriptor: &[u8]) -> PyResult<Py<PyAny>> {
    use std::os::fd::FromRawFd;
    let raw: RawFd = dup.call_method0("detach")?.extract()?;
    if raw < 0 {
        return Err(PyErr::new::<pyo3::exceptions::PyValueError, _>("DupFd.detach() gave no fd"));
    }
    // SAFETY: `detach()` hands over a new fd that its caller owns (multiprocessing's contract).
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let handle = lava_flow::ExternalHandle::OpaqueFd(fd);
    let message = match kind {
        "memory" => Message::Memory(lava_flow::ExportedMemory::from_parts(
            handle,
            lava_flow::MemoryDescriptor::from_bytes(descriptor).or_raise()?,
        )),
        "semaphore" => Message::Semaphore(lava_flow::ExportedSemaphore::from_parts(
            handle,
            lava_flow::SemaphoreDescriptor::from_bytes(descriptor).or_raise()?,
        )),
        other => return Err(PyTypeError::new_err(format!("unknown kind {other:?}"))),
    };
    import(py, crate::allocator::default_shared(py)?, message, None)
}

/// Adds the submodule `lava_flow.ipc`.
pub fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    // Named in full, so that its functions pickle by reference (`lava_flow.ipc._rebuild`).
    let m = PyModule::new(py, "lava_flow.ipc")?;
    m.setattr("__doc__", "Buffers and timeline semaphores to another process over a Unix socket.")?;
    m.add_function(wrap_pyfunction!(send, &m)?)?;
    m.add_function(wrap_pyfunction!(recv, &m)?)?;
    m.add_function(wrap_pyfunction!(_rebuild, &m)?)?;
    // What `from lava_flow.ipc import *` gives: not `_rebuild`, which is pickling's.
    m.setattr("__all__", ["send", "recv"])?;
    parent.add("ipc", &m)?;
    // `import lava_flow.ipc` finds it too.
    py.import("sys")?.getattr("modules")?.set_item("lava_flow.ipc", &m)?;
    Ok(())
}
