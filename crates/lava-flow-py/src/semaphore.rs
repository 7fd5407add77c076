//! `lava_flow.TimelineSemaphore`: signalled and waited for by the host, by Vulkan, and by CUDA
//! streams (PyTorch's, CuPy's, lava-flow's own).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lava_flow::cuda::{CudaTimeline, Stream};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::allocator::{CudaDevice, Shared};
use crate::errors::OrRaise;

/// A Vulkan timeline semaphore (a 64-bit counter that only grows), exportable as an fd.
#[pyclass(module = "lava_flow", frozen)]
pub struct TimelineSemaphore {
    shared: Arc<Shared>,
    device_id: u32,
    pub(crate) inner: Arc<lava_flow::TimelineSemaphore>,
    /// Its CUDA import, made on first use.
    cuda: Mutex<Option<CudaTimeline<'static>>>,
}

impl TimelineSemaphore {
    pub(crate) fn new(shared: Arc<Shared>, device_id: u32, semaphore: lava_flow::TimelineSemaphore) -> Self {
        TimelineSemaphore { shared, device_id, inner: Arc::new(semaphore), cuda: Mutex::new(None) }
    }

    /// Runs `f` with the CUDA import and the CUDA side of the device, making them on first use.
    fn with_cuda<R>(
        &self,
        f: impl FnOnce(&CudaTimeline<'static>, &CudaDevice) -> lava_flow::Result<R>,
    ) -> PyResult<R> {
        let device = self.shared.cuda(self.device_id).or_raise()?;
        let mut cached = self.cuda.lock().unwrap_or_else(PoisonError::into_inner);
        let timeline = match &mut *cached {
            Some(timeline) => timeline,
            slot @ None => slot.insert(device.ctx.import_timeline_owned(Arc::clone(&self.inner)).or_raise()?),
        };
        f(timeline, &device).or_raise()
    }
}

impl TimelineSemaphore {
    /// `cuda_wait` (also for `Ring.cuda_wait`).
    pub(crate) fn cuda_wait_value(&self, value: u64, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let stream = stream.map(crate::stream::handle).transpose()?;
        self.with_cuda(|timeline, device| on_stream(device, stream, |s| timeline.wait(value, s)))
    }

    /// `cuda_signal` (also for `Ring.cuda_signal`).
    pub(crate) fn cuda_signal_value(&self, value: u64, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let stream = Some(crate::stream::handle(stream)?);
        self.with_cuda(|timeline, device| on_stream(device, stream, |s| timeline.signal(value, s)))
    }
}

/// `stream` of the device, or lava-flow's own stream for `None`.
fn on_stream<R>(
    device: &CudaDevice,
    stream: Option<usize>,
    f: impl FnOnce(&Stream) -> lava_flow::Result<R>,
) -> lava_flow::Result<R> {
    match stream {
        None => f(&device.stream),
        Some(handle) => {
            // SAFETY: a stream handle the caller passed for this device (as DLPack and the CUDA
            // stream protocols do); used during this call only, never destroyed here.
            let stream = unsafe { Stream::from_raw(&device.ctx, handle as lava_flow::cuda::sys::CUstream) };
            f(&stream)
        }
    }
}

#[pymethods]
impl TimelineSemaphore {
    /// Pickling (through `multiprocessing`): the semaphore's fd travels as
    /// `multiprocessing.reduction.DupFd` with its descriptor, and the other process imports it
    /// into its `default_allocator()`.
    /// Unix only: the fd travels with `DupFd`, which Windows' `multiprocessing` has not.
    #[cfg(unix)]
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let exported = self.inner.export().or_raise()?;
        let (handle, descriptor) = exported.into_parts();
        crate::ipc::reduce(py, "semaphore", handle.into_fd(), descriptor.to_bytes())
    }

    /// The counter's value now.
    #[getter]
    fn value(&self) -> PyResult<u64> {
        self.inner.value().or_raise()
    }

    /// The Vulkan device.
    #[getter]
    fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Sets the counter to `value` from the host (it must grow).
    fn signal(&self, value: u64) -> PyResult<()> {
        self.inner.signal(value).or_raise()
    }

    /// Waits on the host until the counter reaches `value`; `timeout` in seconds (default: no
    /// limit). Other Python threads run meanwhile. `TimeoutError` when it runs out.
    #[pyo3(signature = (value, timeout = None))]
    fn wait(&self, py: Python<'_>, value: u64, timeout: Option<f64>) -> PyResult<()> {
        let timeout = match timeout {
            None => Duration::from_secs(u64::from(u32::MAX)),
            Some(t) => Duration::try_from_secs_f64(t)
                .map_err(|e| PyValueError::new_err(format!("timeout {t}: {e}")))?,
        };
        let inner = Arc::clone(&self.inner);
        py.detach(move || inner.wait(value, timeout)).or_raise()
    }

    /// A new file descriptor of the semaphore (opaque fd): yours to pass on or to close.
    #[cfg(unix)]
    fn export_fd(&self) -> PyResult<i32> {
        use std::os::fd::IntoRawFd;
        Ok(self.inner.export_fd().or_raise()?.into_raw_fd())
    }

    /// A new NT handle of the semaphore (Windows; the twin of `export_fd`), as an integer: yours to
    /// pass on (`DuplicateHandle`) or to close (`_winapi.CloseHandle`).
    #[cfg(windows)]
    fn export_handle(&self) -> PyResult<usize> {
        use std::os::windows::io::IntoRawHandle;
        Ok(self.inner.export_handle().or_raise()?.into_raw_handle() as usize)
    }

    /// Makes CUDA work queued on `stream` after this call wait until the counter reaches
    /// `value`, on the GPU. With no stream, lava-flow's own stream waits: every later DLPack
    /// export of this device's buffers orders its consumer after it.
    #[pyo3(signature = (value, stream = None))]
    fn cuda_wait(&self, value: u64, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.cuda_wait_value(value, stream)
    }

    /// Sets the counter to `value` once the CUDA work queued on `stream` so far is done.
    fn cuda_signal(&self, value: u64, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        self.cuda_signal_value(value, stream)
    }

    fn __repr__(&self) -> String {
        format!("TimelineSemaphore(device_id={}, value={:?})", self.device_id, self.inner.value().ok())
    }
}
