//! `lava_flow.Buffer` and its typed views, `lava_flow.ArrayView`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use lava_flow::cuda::{CudaBuffer, DeviceMemory};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::allocator::{CudaDevice, MemoryLocation, Shared};
use crate::dtype::DType;
use crate::errors::OrRaise;
use crate::{bytes, dlpack};

/// A buffer of GPU memory allocated through Vulkan: readable and writable from Python,
/// exportable as an fd, and shared without copies with PyTorch, CuPy and JAX (`__dlpack__`,
/// `__cuda_array_interface__`) as bytes, or typed through `as_array`. `close()` (or the end of a
/// `with` block) lets go of the memory.
#[pyclass(module = "lava_flow", frozen)]
pub struct Buffer {
    pub(crate) shared: Arc<Shared>,
    /// The Rust buffer; `None` once closed. Each use clones the `Arc`, so a `close()` on another
    /// thread never frees memory that a call is using.
    inner: RwLock<Option<Arc<lava_flow::Buffer>>>,
    /// The buffer mapped into CUDA, made on the first export and kept: every capsule shares it.
    /// Locked before `inner` wherever both are (`placement`, `close`).
    cuda: Mutex<Option<Arc<CudaBuffer<'static>>>>,
    /// Whether `__cuda_array_interface__` handed out a pointer. Its consumers hold this Python
    /// object, not the memory, so after `close()` the CUDA mapping (and through it the memory)
    /// stays until this object is freed.
    lent_by_pointer: AtomicBool,
}

/// Where a view's bytes are for DLPack: CUDA device memory, or host memory (host-visible
/// buffers).
pub enum Placement {
    /// A CUDA device pointer of this device, and the mapping that keeps it valid.
    Cuda(Arc<CudaDevice>, Arc<CudaBuffer<'static>>),
    /// The host address of the Vulkan mapping (an address, not a pointer: nothing is read
    /// through it here), and the buffer that keeps it valid.
    Host(usize, Arc<lava_flow::Buffer>),
}

impl Buffer {
    pub(crate) fn new(shared: Arc<Shared>, buffer: lava_flow::Buffer) -> Self {
        Buffer {
            shared,
            inner: RwLock::new(Some(Arc::new(buffer))),
            cuda: Mutex::new(None),
            lent_by_pointer: AtomicBool::new(false),
        }
    }

    /// The Rust buffer, or `ClosedError` after `close()`.
    pub(crate) fn inner(&self) -> PyResult<Arc<lava_flow::Buffer>> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.as_ref().map(Arc::clone).ok_or_else(|| crate::errors::closed("this Buffer"))
    }

    /// Where DLPack and the CUDA array interface find the bytes: host memory for host-visible
    /// buffers, otherwise the buffer mapped into CUDA (on first use). `ClosedError` after
    /// `close()`; lava-flow's errors as their exceptions.
    pub(crate) fn placement(&self) -> PyResult<Placement> {
        let inner = self.inner()?;
        if matches!(inner.location(), Some(lava_flow::MemoryLocation::HostVisible { .. })) {
            let ptr = inner.mapped_ptr().ok_or_else(|| {
                crate::errors::to_py(lava_flow::Error::Unsupported {
                    what: "this host-visible buffer has no host mapping".into(),
                })
            })?;
            return Ok(Placement::Host(ptr.as_ptr() as usize, inner));
        }
        let device = self.shared.cuda(inner.device_id()).or_raise()?;
        let mut cached = self.cuda.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the CUDA lock, which `close()` takes first: no mapping is cached
        // after a `close()` has emptied the cache.
        let inner = self.inner()?;
        let view = match &*cached {
            Some(view) => Arc::clone(view),
            None => {
                let view = Arc::new(device.ctx.import_buffer_owned(inner).or_raise()?);
                *cached = Some(Arc::clone(&view));
                view
            }
        };
        Ok(Placement::Cuda(device, view))
    }

    /// Notes that `__cuda_array_interface__` handed out a pointer (see `lent_by_pointer`).
    pub(crate) fn lend_by_pointer(&self) {
        self.lent_by_pointer.store(true, Ordering::Release);
    }

    /// The whole buffer as one dimension of bytes.
    fn bytes_layout(&self) -> PyResult<dlpack::Layout> {
        Ok(dlpack::Layout {
            dtype: DType::BYTES,
            shape: vec![self.inner()?.size() as i64],
            strides: vec![1],
            offset: 0,
        })
    }
}

#[pymethods]
impl Buffer {
    /// The size in bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.inner()?.size())
    }

    /// The offset of the buffer in its `VkDeviceMemory` (what importers add).
    #[getter]
    fn offset(&self) -> PyResult<u64> {
        Ok(self.inner()?.offset())
    }

    /// The size of the `VkDeviceMemory` an export refers to.
    #[getter]
    fn allocation_size(&self) -> PyResult<u64> {
        Ok(self.inner()?.allocation_size())
    }

    /// Whether the buffer has a `VkDeviceMemory` of its own.
    #[getter]
    fn dedicated(&self) -> PyResult<bool> {
        Ok(self.inner()?.is_dedicated())
    }

    /// Whether the memory can be exported.
    #[getter]
    fn exportable(&self) -> PyResult<bool> {
        Ok(self.inner()?.is_exportable())
    }

    /// The Vulkan device.
    #[getter]
    fn device_id(&self) -> PyResult<u32> {
        Ok(self.inner()?.device_id())
    }

    /// Where the buffer was allocated.
    #[getter]
    fn location(&self) -> PyResult<Option<MemoryLocation>> {
        Ok(self.inner()?.location().and_then(MemoryLocation::from_rust))
    }

    /// Copies `data` (bytes, a numpy array, anything with the buffer protocol, C-contiguous) to
    /// `offset`; the copy has landed when this returns. The GIL is released while the bytes
    /// move: other threads must not change `data` meanwhile (it cannot be resized or freed: the
    /// call holds a buffer export of it).
    #[pyo3(signature = (data, offset = 0))]
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        let inner = self.inner()?;
        bytes::with_bytes(data, |b| py.detach(|| inner.write(offset, b)))?.or_raise()
    }

    /// Starts copying `data` to `offset` and returns a `Transfer` at once: the GPU copies while
    /// Python runs. The transfer holds a buffer export of `data` (so it cannot be resized or
    /// freed) until `Transfer.wait()`; do not change its contents before that — a `bytes` object
    /// cannot be changed at all.
    #[pyo3(signature = (data, offset = 0))]
    fn write_async(&self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<Transfer> {
        let source = bytes::Exported::new(data, false)?;
        let inner = self.inner()?;
        let pending = py.detach(|| inner.write_async(offset, source)).or_raise()?;
        Ok(Transfer::new(pending))
    }

    /// Starts reading into `out` (a writable bytes-like object) from `offset`, as many bytes as
    /// `out` holds, and returns a `Transfer` at once; `out` holds the bytes once
    /// `Transfer.wait()` returned. Do not read or change `out` before that.
    #[pyo3(signature = (out, offset = 0))]
    fn read_into_async(&self, py: Python<'_>, out: &Bound<'_, PyAny>, offset: u64) -> PyResult<Transfer> {
        let destination = bytes::Exported::new(out, true)?;
        let inner = self.inner()?;
        let pending = py.detach(|| inner.read_async(offset, destination)).or_raise()?;
        Ok(Transfer::new(pending))
    }

    /// Reads `size` bytes (default: to the end) from `offset`, as `bytes`.
    #[pyo3(signature = (size = None, offset = 0))]
    fn read<'py>(&self, py: Python<'py>, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner()?;
        let size = match size {
            Some(s) => s,
            None => inner.size().checked_sub(offset).ok_or_else(|| {
                crate::errors::to_py(lava_flow::Error::OutOfRange { offset, len: 0, size: inner.size() })
            })?,
        };
        bytes::new_bytes(py, size, |b| py.detach(|| inner.read(offset, b)))
    }

    /// Reads into `out` (a writable bytes-like object, e.g. a numpy array), from `offset`, as
    /// many bytes as `out` holds. The GIL is released while the bytes move: other threads must
    /// not use `out` meanwhile.
    #[pyo3(signature = (out, offset = 0))]
    fn read_into(&self, py: Python<'_>, out: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        let inner = self.inner()?;
        bytes::with_bytes_mut(out, |b| py.detach(|| inner.read(offset, b)))?.or_raise()
    }

    /// A new file descriptor of the buffer's whole `VkDeviceMemory` (opaque fd): yours to pass
    /// on or to close (`os.close`). Importers need `descriptor()` too.
    #[cfg(unix)]
    fn export_fd(&self) -> PyResult<i32> {
        use std::os::fd::IntoRawFd;
        Ok(self.inner()?.export_fd().or_raise()?.into_raw_fd())
    }

    /// A new NT handle of the buffer's whole `VkDeviceMemory` (Windows; the twin of `export_fd`), as an integer: yours to
    /// pass on (`DuplicateHandle`) or to close (`_winapi.CloseHandle`).
    #[cfg(windows)]
    fn export_handle(&self) -> PyResult<usize> {
        use std::os::windows::io::IntoRawHandle;
        Ok(self.inner()?.export_handle().or_raise()?.into_raw_handle() as usize)
    }

    /// What an importer needs beside the fd: `offset`, `size`, `allocation_size`,
    /// `memory_type_index`, `dedicated`, `device_uuid`, `driver_uuid`.
    fn descriptor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let desc = self.inner()?.descriptor();
        let d = PyDict::new(py);
        d.set_item("offset", desc.offset)?;
        d.set_item("size", desc.size)?;
        d.set_item("allocation_size", desc.allocation_size)?;
        d.set_item("memory_type_index", desc.memory_type_index)?;
        d.set_item("dedicated", desc.dedicated)?;
        d.set_item("device_uuid", desc.device_uuid.to_string())?;
        d.set_item("driver_uuid", desc.driver_uuid.to_string())?;
        Ok(d)
    }

    /// A typed view of the bytes: `dtype` (`"float32"`, `numpy.float32`, `torch.float32`, ...),
    /// `shape`, `strides` in elements (default: C order) and a byte `offset` (a multiple of the
    /// element size). Checked against the buffer's size; the view keeps the buffer alive.
    #[pyo3(signature = (dtype, shape, strides = None, offset = 0))]
    fn as_array(
        slf: &Bound<'_, Self>,
        dtype: &Bound<'_, PyAny>,
        shape: Vec<i64>,
        strides: Option<Vec<i64>>,
        offset: u64,
    ) -> PyResult<ArrayView> {
        let layout =
            dlpack::Layout::new(DType::from_py(dtype)?, shape, strides, offset, slf.get().inner()?.size())?;
        Ok(ArrayView { buffer: slf.clone().unbind(), layout })
    }

    /// DLPack export of the whole buffer as bytes (uint8); see `ArrayView.__dlpack__`.
    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<Bound<'_, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        dlpack::export(py, self, &self.bytes_layout()?, stream.as_ref(), max_version, dl_device, copy)
    }

    /// `(device_type, device_id)`: `(2, ordinal)` (CUDA) for GPU memory, `(1, 0)` (CPU) for
    /// host-visible memory.
    fn __dlpack_device__(&self) -> PyResult<(u32, i32)> {
        dlpack::device(self)
    }

    /// Version 3 of the CUDA array interface, of the whole buffer as bytes.
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dlpack::cuda_array_interface(py, self, &self.bytes_layout()?)
    }

    /// Pickling (through `multiprocessing`): the memory's fd travels as
    /// `multiprocessing.reduction.DupFd` with its descriptor, and the other process imports it
    /// into its `default_allocator()`.
    /// Unix only: the fd travels with `DupFd`, which Windows' `multiprocessing` has not.
    #[cfg(unix)]
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let exported = self.inner()?.export().or_raise()?;
        let (handle, descriptor) = exported.into_parts();
        crate::ipc::reduce(py, "memory", handle.into_fd(), descriptor.to_bytes())
    }

    /// Lets go of the memory now, without waiting for the garbage collector: the Vulkan buffer
    /// (and its block, when it was the last buffer there), its CUDA mapping and import are freed
    /// unless a consumer still holds them. Consumers stay safe: a tensor made through
    /// `__dlpack__` (`torch.from_dlpack`, ...) holds the memory through its capsule until it is
    /// deleted; after `__cuda_array_interface__` was read (`torch.as_tensor`, `cupy.asarray`),
    /// whose consumers hold this object rather than the memory, the memory stays until this
    /// object is freed. Afterwards every use of this buffer, and of its views, raises
    /// `ClosedError`; `close()` again does nothing.
    fn close(&self) {
        let mut cuda = self.cuda.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = self.inner.write().unwrap_or_else(PoisonError::into_inner).take();
        if !self.lent_by_pointer.load(Ordering::Acquire) {
            // Mapping first, then the buffer (the mapping holds the buffer: reverse order).
            drop(cuda.take());
            drop(inner);
        }
    }

    /// Tells lava-flow that the CUDA work queued on `stream` so far uses this buffer (an event
    /// recorded on it, no host wait): when the last holder of the buffer's CUDA mapping lets go
    /// before that work is done, the memory is released only once it is. DLPack consumers need
    /// not call it for the stream they passed to `__dlpack__` (the capsule records that one when
    /// the tensor is freed); call it for work on other streams, and for consumers of
    /// `__cuda_array_interface__`, before `close()` or the last reference goes. `stream`: an
    /// int, `torch.cuda.Stream`, `cupy.cuda.Stream` or an object with `__cuda_stream__`, of this
    /// buffer's GPU and alive now. A host-visible buffer has no CUDA mapping: `UnsupportedError`.
    fn release_after(&self, py: Python<'_>, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let handle = crate::stream::handle(stream)?;
        let (device, view) = match py.detach(|| self.placement())? {
            Placement::Cuda(device, view) => (device, view),
            Placement::Host(..) => {
                return Err(crate::errors::to_py(lava_flow::Error::Unsupported {
                    what: "release_after orders CUDA work; this buffer is host-visible host memory".into(),
                }))
            }
        };
        // SAFETY: the caller hands a live stream of this device (documented above); it is used
        // during this call only and never destroyed here.
        let stream = unsafe {
            lava_flow::cuda::Stream::from_raw(&device.ctx, handle as lava_flow::cuda::sys::CUstream)
        };
        view.release_after(&stream).or_raise()
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).is_none()
    }

    /// `with allocator.allocate(n) as buffer:` closes the buffer at the end of the block.
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().inner()?;
        Ok(slf)
    }

    /// Closes the buffer (exceptions propagate).
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.inner()?.size() as usize)
    }

    fn __repr__(&self) -> String {
        let Ok(inner) = self.inner() else { return "Buffer(closed)".into() };
        format!(
            "Buffer(size={}, offset={}, location={}, dedicated={})",
            inner.size(),
            inner.offset(),
            inner
                .location()
                .and_then(MemoryLocation::from_rust)
                .map_or("None (imported)".into(), |l| l.python_repr()),
            if inner.is_dedicated() { "True" } else { "False" }
        )
    }
}

/// A typed view of a `Buffer` (`Buffer.as_array`): what DLPack and the CUDA array interface
/// describe to consumers. It keeps the buffer alive.
#[pyclass(module = "lava_flow", frozen)]
pub struct ArrayView {
    buffer: Py<Buffer>,
    layout: dlpack::Layout,
}

#[pymethods]
impl ArrayView {
    /// The buffer viewed.
    #[getter]
    fn buffer(&self, py: Python<'_>) -> Py<Buffer> {
        self.buffer.clone_ref(py)
    }

    /// The element type's name.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.layout.dtype.name
    }

    /// The shape.
    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.layout.shape.clone()
    }

    /// The strides, in elements.
    #[getter]
    fn strides(&self) -> Vec<i64> {
        self.layout.strides.clone()
    }

    /// The byte offset in the buffer.
    #[getter]
    fn offset(&self) -> u64 {
        self.layout.offset
    }

    /// A DLPack capsule of the view, per the Python array API: `max_version` of `(1, x)` or more
    /// gets a versioned capsule (`dltensor_versioned`), otherwise the legacy one (`dltensor`).
    /// `stream` (CUDA): `None` orders the legacy default stream after lava-flow's pending work
    /// (`TimelineSemaphore.cuda_wait` with no stream), `-1` orders nothing, `0` is refused, any
    /// other value is a stream made to wait for that work with an event. The capsule keeps the
    /// CUDA mapping, the external memory and the Vulkan memory alive until its consumer lets go.
    /// Without CUDA (for GPU memory) it raises `BufferError` saying why.
    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<Bound<'_, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(u32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        dlpack::export(py, self.buffer.get(), &self.layout, stream.as_ref(), max_version, dl_device, copy)
    }

    /// As `Buffer.__dlpack_device__`.
    fn __dlpack_device__(&self) -> PyResult<(u32, i32)> {
        dlpack::device(self.buffer.get())
    }

    /// Version 3 of the CUDA array interface: the device pointer, shape, `typestr`, strides in
    /// bytes (`None` when C-contiguous) and `stream`: lava-flow's stream, which the consumer
    /// synchronizes with. `AttributeError` (so `hasattr` is false) for host memory or without
    /// CUDA, saying why.
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dlpack::cuda_array_interface(py, self.buffer.get(), &self.layout)
    }

    fn __repr__(&self) -> String {
        format!(
            "ArrayView(dtype={}, shape={:?}, strides={:?}, offset={})",
            self.layout.dtype.name, self.layout.shape, self.layout.strides, self.layout.offset
        )
    }
}

/// A write or read started by `Buffer.write_async` / `Buffer.read_into_async`: the GPU may still
/// be copying. It holds a buffer export of the Python object whose bytes move (which keeps it
/// alive and un-resizable) until `wait()`.
#[pyclass(module = "lava_flow", frozen)]
pub struct Transfer {
    /// `None` once finished. Locked without the GIL only (a waiter holds it for as long as it
    /// waits, so that a second waiter returns only once the first one finished the transfer);
    /// `done()` and `__repr__` only try it.
    pending: Mutex<Option<lava_flow::PendingTransfer<bytes::Exported>>>,
}

impl Transfer {
    fn new(pending: lava_flow::PendingTransfer<bytes::Exported>) -> Self {
        Transfer { pending: Mutex::new(Some(pending)) }
    }
}

#[pymethods]
impl Transfer {
    /// Waits (with the GIL released) until the copy has completed; after a read, the
    /// destination holds the bytes. Raises `TimeoutError` after the allocator's transfer
    /// timeout, leaving the transfer as it was (the object exported): `wait()` may be called
    /// again. Once a wait returned, waiting again returns at once; a wait on another thread
    /// meanwhile returns once the first one has finished the transfer.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let exported = py
            .detach(|| {
                let mut slot = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(pending) = slot.as_ref() else { return Ok(None) };
                // A timeout leaves the transfer here, exported, to be waited for again.
                pending.wait_done()?;
                slot.take().map(lava_flow::PendingTransfer::wait).transpose()
            })
            .or_raise()?;
        // The export is released here, with the GIL held.
        drop(exported);
        Ok(())
    }

    /// Whether the copy has completed and been finished (`wait()` then returns at once).
    fn done(&self) -> PyResult<bool> {
        let slot = match self.pending.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(slot)) => slot.into_inner(),
            // Another thread is waiting for it: not finished until that wait returns.
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        match &*slot {
            Some(pending) => pending.is_done().or_raise(),
            None => Ok(true),
        }
    }

    fn __repr__(&self) -> String {
        match self.pending.try_lock() {
            Ok(slot) => match &*slot {
                Some(pending) => format!("Transfer({pending:?})"),
                None => "Transfer(waited)".into(),
            },
            Err(_) => "Transfer(being waited for)".into(),
        }
    }
}
