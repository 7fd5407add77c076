//! `lava_flow.CudaView`: the other direction — CUDA memory that PyTorch or CuPy allocated,
//! borrowed for GPU copies to and from lava-flow buffers. It cannot go to Vulkan.

use std::sync::Arc;

use lava_flow::cuda::{DeviceBuffer, DeviceMemory, Stream};
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::allocator::Shared;
use crate::buffer::{Buffer, Placement};
use crate::errors::{to_py, OrRaise};

/// CUDA memory of another library's tensor (anything with `__cuda_array_interface__`,
/// C-contiguous), borrowed: the view keeps the tensor alive and never frees its memory. Don't
/// resize the tensor in place while the view lives (that would move its memory).
#[pyclass(module = "lava_flow", frozen)]
pub struct CudaView {
    owner: Py<PyAny>,
    device_id: u32,
    readonly: bool,
    memory: DeviceBuffer,
}

impl CudaView {
    pub(crate) fn wrap(shared: Arc<Shared>, obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let kind = obj.get_type().name()?.to_string();
        let cai = obj
            .getattr("__cuda_array_interface__")
            .map_err(|_| PyTypeError::new_err(format!("a {kind} has no __cuda_array_interface__: expected CUDA memory (a PyTorch or CuPy CUDA tensor)")))?
            .cast_into::<PyDict>()?;
        let item = |key: &str| {
            cai.get_item(key)?
                .ok_or_else(|| PyTypeError::new_err(format!("__cuda_array_interface__ without {key:?}")))
        };
        let (ptr, readonly): (u64, bool) = item("data")?.extract()?;
        let shape: Vec<u64> = item("shape")?.extract()?;
        let typestr: String = item("typestr")?.extract()?;
        let itemsize: u64 = typestr
            .get(2..)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| PyTypeError::new_err(format!("typestr {typestr:?}: no element size")))?;
        let strides: Option<Vec<i64>> = match cai.get_item("strides")? {
            Some(s) if !s.is_none() => Some(s.extract()?),
            _ => None,
        };
        if let Some(strides) = &strides {
            let mut expected = itemsize as i64;
            for (&d, &s) in shape.iter().zip(strides).rev() {
                if d > 1 && s != expected {
                    return Err(PyBufferError::new_err(format!(
                        "the {kind} must be C-contiguous (strides {strides:?})"
                    )));
                }
                expected *= d as i64;
            }
        }
        let size = shape.iter().product::<u64>() * itemsize;
        // The device: DLPack's (every CUDA tensor library has it); matched to lava-flow's by UUID.
        let (device_type, ordinal): (u32, i32) =
            obj.call_method0("__dlpack_device__").and_then(|d| d.extract()).map_err(|_| {
                PyTypeError::new_err(format!("a {kind} without __dlpack_device__: cannot tell its GPU"))
            })?;
        if device_type != 2 {
            return Err(PyTypeError::new_err(format!(
                "a {kind} on DLPack device type {device_type}, not CUDA (2)"
            )));
        }
        let device_id = lava_flow::cuda::device_id_for(&shared.allocator(), ordinal).or_raise()?;
        let device = shared.cuda(device_id).or_raise()?;
        // The producer's stream: its work on the memory is finished before ours (CAI v3).
        if let Some(stream) = cai.get_item("stream")?.filter(|s| !s.is_none()) {
            let handle: usize = stream.extract()?;
            // SAFETY: the producer's stream of this device, per the CUDA array interface; used
            // during this call only.
            let stream = unsafe { Stream::from_raw(&device.ctx, handle as lava_flow::cuda::sys::CUstream) };
            stream.synchronize().or_raise()?;
        }
        // SAFETY: the producer reports `size` bytes of CUDA memory at `ptr` on this device; the
        // view holds the producer (`owner`), which keeps that memory allocated while it lives.
        let memory = unsafe { DeviceBuffer::borrowed(&device.ctx, ptr, size) }.or_raise()?;
        Ok(CudaView { owner: obj.clone().unbind(), device_id, readonly, memory })
    }

    fn writable(&self) -> PyResult<()> {
        if self.readonly {
            return Err(to_py(lava_flow::Error::InvalidArgument(
                "the wrapped CUDA memory is read-only".into(),
            )));
        }
        Ok(())
    }
}

/// The CUDA mapping of a lava-flow buffer, for copies with a view.
fn cuda_memory(buffer: &Buffer) -> PyResult<Arc<lava_flow::cuda::CudaBuffer<'static>>> {
    match buffer.placement()? {
        Placement::Cuda(_, view) => Ok(view),
        Placement::Host(..) => Err(to_py(lava_flow::Error::Unsupported {
            what:
                "CudaView copies go to and from GPU buffers; this one is host-visible (use Buffer.write/read)"
                    .into(),
        })),
    }
}

#[pymethods]
impl CudaView {
    /// The device pointer.
    #[getter]
    fn ptr(&self) -> u64 {
        self.memory.device_ptr()
    }

    /// The size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.memory.size()
    }

    /// The lava-flow device it is on (matched by UUID).
    #[getter]
    fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The wrapped object.
    #[getter]
    fn owner(&self, py: Python<'_>) -> Py<PyAny> {
        self.owner.clone_ref(py)
    }

    /// Copies all of `buffer` (a lava-flow GPU buffer) into the view at byte `offset`, on the
    /// GPU (`cuMemcpyDtoD`, done when this returns).
    #[pyo3(signature = (buffer, offset = 0))]
    fn copy_from(&self, buffer: &Buffer, offset: u64) -> PyResult<()> {
        self.writable()?;
        let src = cuda_memory(buffer)?;
        self.memory.copy_from_device(offset, &*src).or_raise()
    }

    /// Copies all of the view into `buffer` (a lava-flow GPU buffer) at byte `offset`, on the
    /// GPU.
    #[pyo3(signature = (buffer, offset = 0))]
    fn copy_to(&self, buffer: &Buffer, offset: u64) -> PyResult<()> {
        let dst = cuda_memory(buffer)?;
        dst.copy_from_device(offset, &self.memory).or_raise()
    }

    /// Reads `size` bytes (default: to the end) from `offset` to the host.
    #[pyo3(signature = (size = None, offset = 0))]
    fn read<'py>(&self, py: Python<'py>, size: Option<u64>, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        let size = size.unwrap_or_else(|| self.memory.size().saturating_sub(offset));
        crate::bytes::new_bytes(py, size, |b| self.memory.copy_to_host(offset, b))
    }

    /// Copies `data` (bytes-like) to `offset` from the host.
    #[pyo3(signature = (data, offset = 0))]
    fn write(&self, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<()> {
        self.writable()?;
        crate::bytes::with_bytes(data, |b| self.memory.copy_from_host(offset, b))?.or_raise()
    }

    /// Always `UnsupportedError`: memory allocated by PyTorch or CuPy (`cudaMalloc`) cannot be
    /// exported to Vulkan.
    fn export_fd(&self) -> PyResult<i32> {
        Err(to_py(lava_flow::Error::Unsupported {
            what: "memory allocated by another CUDA library (cudaMalloc) cannot be exported to Vulkan: \
                   CUDA exports only memory created exportable (cuMemCreate). Allocate with \
                   lava_flow.MemoryAllocator.allocate and use it in PyTorch or CuPy through \
                   torch.from_dlpack / cupy.from_dlpack instead"
                .into(),
        }))
    }

    fn __repr__(&self) -> String {
        format!(
            "CudaView(ptr={:#x}, size={}, device_id={})",
            self.memory.device_ptr(),
            self.memory.size(),
            self.device_id
        )
    }
}
