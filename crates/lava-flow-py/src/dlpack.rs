//! DLPack capsules (through `dlpark`) and the CUDA array interface for buffers and their views.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::Arc;

use dlpark::ffi::{DLDevice, DLManagedTensor, DLManagedTensorVersioned};
use dlpark::metadata::Dynamic;
use dlpark::python::{export_dlpack, CudaStreamRequest, DlpackExporter, ExportRequest};
use dlpark::{DlpackFlags, Managed, ManagedTensorBase};
use lava_flow::cuda::{CudaBuffer, DeviceMemory, Stream};
use pyo3::exceptions::{PyAttributeError, PyBufferError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::allocator::CudaDevice;
use crate::buffer::{Buffer, Placement};
use crate::dtype::DType;
use crate::errors::{to_py, OrRaise};

/// The `stream` value of the legacy default stream, in DLPack and the CUDA array interface.
const LEGACY_DEFAULT_STREAM: usize = 1;
/// The per-thread default stream.
const PER_THREAD_DEFAULT_STREAM: usize = 2;

/// Shape, strides (in elements), element type and byte offset of a view: checked against the
/// buffer's size when made.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The element type.
    pub dtype: DType,
    /// Elements per dimension.
    pub shape: Vec<i64>,
    /// Elements between neighbours, per dimension.
    pub strides: Vec<i64>,
    /// Bytes from the buffer's start to the first element.
    pub offset: u64,
}

fn invalid(message: String) -> PyErr {
    to_py(lava_flow::Error::InvalidArgument(message))
}

impl Layout {
    /// A view of `size` bytes as `shape` elements of `dtype`, C order unless `strides` says
    /// otherwise; every element reachable lies inside the buffer.
    pub fn new(
        dtype: DType,
        shape: Vec<i64>,
        strides: Option<Vec<i64>>,
        offset: u64,
        size: u64,
    ) -> PyResult<Self> {
        if let Some(d) = shape.iter().find(|&&d| d < 0) {
            return Err(invalid(format!("shape {shape:?}: dimension {d} is negative")));
        }
        let strides = match strides {
            Some(s) if s.len() != shape.len() => {
                return Err(invalid(format!("{} strides for {} dimensions", s.len(), shape.len())))
            }
            Some(s) if s.iter().any(|&x| x < 0) => {
                return Err(invalid(format!("strides {s:?}: negative strides are not supported")))
            }
            Some(s) => s,
            None => {
                let mut s = vec![1i64; shape.len()];
                for i in (0..shape.len().saturating_sub(1)).rev() {
                    s[i] = s[i + 1].saturating_mul(shape[i + 1].max(1));
                }
                s
            }
        };
        let itemsize = dtype.itemsize();
        if !offset.is_multiple_of(itemsize) {
            return Err(invalid(format!(
                "offset {offset} is not a multiple of the {} element size ({itemsize})",
                dtype.name
            )));
        }
        // The byte after the last element reachable (the offset alone for an empty view).
        let end = if shape.contains(&0) {
            Some(u128::from(offset))
        } else {
            shape
                .iter()
                .zip(&strides)
                .try_fold(1u128, |last, (&d, &s)| {
                    (d as u128 - 1).checked_mul(s as u128).and_then(|x| x.checked_add(last))
                })
                .and_then(|elements| elements.checked_mul(u128::from(itemsize)))
                .and_then(|bytes| bytes.checked_add(u128::from(offset)))
        };
        match end {
            Some(end) if end <= u128::from(size) => Ok(Layout { dtype, shape, strides, offset }),
            _ => Err(invalid(format!(
                "a view of shape {shape:?}, strides {strides:?} (elements of {itemsize} bytes) at offset {offset} does not fit in a buffer of {size} bytes"
            ))),
        }
    }

    /// Whether the strides are C order's (so the CUDA array interface may say `None`).
    fn is_c_contiguous(&self) -> bool {
        let mut expected = 1i64;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d > 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
        true
    }
}

/// What a capsule holds until its consumer lets go: the CUDA mapping (which holds the external
/// memory and the Vulkan buffer), or the Vulkan buffer whose host mapping it points into.
enum Keep {
    Cuda(#[allow(dead_code)] CudaKeep),
    Host(#[allow(dead_code)] Arc<lava_flow::Buffer>),
}

/// A capsule's hold on the CUDA mapping, and the stream its consumer named (ADR 0014).
struct CudaKeep {
    view: Arc<CudaBuffer<'static>>,
    device: Arc<CudaDevice>,
    /// The consumer's stream (`__dlpack__(stream=...)`, 1 for the legacy default stream when
    /// omitted), or `None` when it asked for no synchronization (`stream=-1`) and so named none.
    consumer: Option<usize>,
}

impl Drop for CudaKeep {
    /// The capsule's deleter: the consumer lets go of the tensor, possibly with kernels that use
    /// it still queued on its stream (PyTorch and CuPy free a tensor on the host without waiting
    /// for its stream). An event recorded on that stream now captures them; the mapping, and the
    /// memory under it, stay until it completes. With no stream named, or when recording fails
    /// (a stream destroyed before the tensor, against the protocol), the deleter waits for the
    /// whole context instead: slower, never unsafe.
    fn drop(&mut self) {
        let recorded = self.consumer.map(|handle| {
            // The per-thread default stream names the *consumer's* thread's stream, and this
            // deleter may run on another thread: record on the legacy default stream instead,
            // which waits for the work of every blocking stream of the context, each thread's
            // per-thread default stream included.
            let handle = if handle == PER_THREAD_DEFAULT_STREAM { LEGACY_DEFAULT_STREAM } else { handle };
            // SAFETY: the consumer named this stream of this device for its use of the tensor
            // (1 and 2 are the driver's special streams); the protocol has it live while the
            // tensor is, and the tensor is being freed now. It is never destroyed here.
            let stream =
                unsafe { Stream::from_raw(&self.device.ctx, handle as lava_flow::cuda::sys::CUstream) };
            self.view.release_after(&stream)
        });
        if !matches!(recorded, Some(Ok(()))) {
            if let Err(e) = self.device.ctx.synchronize() {
                // Nothing to return an error to in a deleter, and no Python to raise into.
                eprintln!("lava_flow: a DLPack capsule's deleter could not wait for CUDA work: {e}");
            }
        }
    }
}

struct Exporter<'a> {
    placement: Placement,
    layout: &'a Layout,
    /// The consumer's stream, as `prepare_export` (called first) found it.
    consumer: Cell<Option<usize>>,
}

impl Exporter<'_> {
    fn make<M: ManagedTensorBase>(&self) -> PyResult<Managed<M>> {
        let (base, keep) = match &self.placement {
            Placement::Cuda(device, view) => (
                view.device_ptr() as usize,
                Keep::Cuda(CudaKeep {
                    view: Arc::clone(view),
                    device: Arc::clone(device),
                    consumer: self.consumer.get(),
                }),
            ),
            Placement::Host(address, buffer) => (*address, Keep::Host(Arc::clone(buffer))),
        };
        let mut tensor = Dynamic::new(self.layout.shape.clone(), self.layout.strides.clone())
            .initialize_as::<M>(Box::new(keep))
            .map_err(|e| PyBufferError::new_err(format!("DLPack tensor: {e}")))?;
        // The offset goes into the pointer (as PyTorch's own exports do): every consumer
        // accepts that, not all accept a byte_offset.
        tensor
            .set_data((base + self.layout.offset as usize) as *mut c_void)
            .set_device(self.device())
            .set_dtype(self.layout.dtype.dlpack())
            .set_byte_offset(0);
        // SAFETY: the data pointer is inside memory that `keep` (the tensor's context, dropped by
        // its deleter) keeps mapped; the layout was checked against the buffer's size when made;
        // the strides are explicit; the flags (none: writable, not copied) are true of it.
        Ok(unsafe { tensor.finish() })
    }
}

impl DlpackExporter for Exporter<'_> {
    fn device(&self) -> DLDevice {
        match &self.placement {
            Placement::Cuda(device, _) => DLDevice::cuda(device.ordinal),
            Placement::Host(..) => DLDevice::CPU,
        }
    }

    fn flags(&self) -> DlpackFlags {
        DlpackFlags::empty()
    }

    fn prepare_export(&self, _py: Python<'_>, request: &ExportRequest<'_>) -> PyResult<()> {
        let Placement::Cuda(device, _) = &self.placement else { return Ok(()) };
        let stream = match request.cuda_stream()? {
            CudaStreamRequest::NoSync => {
                self.consumer.set(None);
                return Ok(());
            }
            CudaStreamRequest::Omitted | CudaStreamRequest::LegacyDefault => LEGACY_DEFAULT_STREAM,
            CudaStreamRequest::PerThreadDefault => PER_THREAD_DEFAULT_STREAM,
            CudaStreamRequest::Pointer(p) => p,
        };
        self.consumer.set(Some(stream));
        device.order_after_own_work(stream).or_raise()
    }

    fn export_legacy(&self, _py: Python<'_>) -> PyResult<Managed<DLManagedTensor>> {
        self.make()
    }

    fn export_versioned(&self, _py: Python<'_>) -> PyResult<Managed<DLManagedTensorVersioned>> {
        self.make()
    }
}

/// `__dlpack__` of `layout` over `buffer`.
pub fn export(
    py: Python<'_>,
    buffer: &Buffer,
    layout: &Layout,
    stream: Option<&Bound<'_, PyAny>>,
    max_version: Option<(u32, u32)>,
    dl_device: Option<(u32, i32)>,
    copy: Option<bool>,
) -> PyResult<Py<PyAny>> {
    let request = ExportRequest::parse(stream, max_version, dl_device, copy)?;
    // The first export maps the buffer into CUDA, which may wait for the GPU: without the GIL,
    // so that a Python thread that signals what the GPU waits for can run.
    let placement = py.detach(|| buffer.placement()).map_err(|e| {
        if Python::attach(|py| e.is_instance(py, &crate::errors::closed_type(py))) {
            return e; // ClosedError as it is: the buffer was closed, nothing else is wrong
        }
        PyBufferError::new_err(format!("lava_flow cannot export this buffer through DLPack: {e}"))
    })?;
    let consumer = Cell::new(Some(LEGACY_DEFAULT_STREAM));
    export_dlpack(&Exporter { placement, layout, consumer }, py, request)
}

/// `__dlpack_device__` of `buffer`.
pub fn device(buffer: &Buffer) -> PyResult<(u32, i32)> {
    let inner = buffer.inner()?;
    if matches!(inner.location(), Some(lava_flow::MemoryLocation::HostVisible { .. })) {
        return Ok((DLDevice::CPU.device_type.0, 0));
    }
    let device = buffer.shared.cuda(inner.device_id()).map_err(|e| {
        PyBufferError::new_err(format!("lava_flow buffers of GPU memory are CUDA tensors: {e}"))
    })?;
    Ok((DLDevice::cuda(0).device_type.0, device.ordinal))
}

/// `__cuda_array_interface__` (version 3) of `layout` over `buffer`.
pub fn cuda_array_interface<'py>(
    py: Python<'py>,
    buffer: &Buffer,
    layout: &Layout,
) -> PyResult<Bound<'py, PyDict>> {
    let no = |why: String| PyAttributeError::new_err(format!("no __cuda_array_interface__: {why}"));
    // A closed buffer is `ClosedError`, not a missing attribute.
    buffer.inner()?;
    let (device, view) = match py.detach(|| buffer.placement()) {
        Ok(Placement::Cuda(device, view)) => (device, view),
        Ok(Placement::Host(..)) => {
            return Err(no(
                "this buffer is host-visible host memory; use __dlpack__ (numpy.from_dlpack)".into()
            ))
        }
        Err(e) => return Err(no(e.to_string())),
    };
    let typestr = layout.dtype.typestr.ok_or_else(|| {
        no(format!("{} has no type string in the CUDA array interface; use __dlpack__", layout.dtype.name))
    })?;
    let d = PyDict::new(py);
    d.set_item("version", 3)?;
    d.set_item("shape", PyTuple::new(py, &layout.shape)?)?;
    d.set_item("typestr", typestr)?;
    d.set_item("data", (view.device_ptr() + layout.offset, false))?;
    if layout.is_c_contiguous() {
        d.set_item("strides", py.None())?;
    } else {
        let itemsize = layout.dtype.itemsize() as i64;
        let bytes: Vec<i64> = layout.strides.iter().map(|s| s * itemsize).collect();
        d.set_item("strides", PyTuple::new(py, bytes)?)?;
    }
    // Consumers synchronize with lava-flow's stream (where cuda_wait queues its waits).
    d.set_item("stream", device.stream.raw() as usize)?;
    buffer.lend_by_pointer();
    Ok(d)
}
