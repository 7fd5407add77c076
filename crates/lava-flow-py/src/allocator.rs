//! `lava_flow.MemoryAllocator` and `lava_flow.MemoryLocation`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use lava_flow::cuda::{Context, Event, Stream};
use lava_flow::{AllocationOptions, AllocatorOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::buffer::Buffer;
use crate::errors::OrRaise;
use crate::semaphore::TimelineSemaphore;

/// Where a buffer lives, as in Rust: `MemoryLocation.GpuVulkan(device_id=0)` (device-local),
/// `MemoryLocation.GpuMappable(device_id=0)` (device-local and host-visible) or
/// `MemoryLocation.HostVisible(device_id=0)` (system memory the GPU reaches).
#[pyclass(module = "lava_flow", frozen, eq)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLocation {
    /// Device-local memory of Vulkan device `device_id`.
    #[pyo3(constructor = (device_id = 0))]
    GpuVulkan {
        /// The Vulkan device.
        device_id: u32,
    },
    /// Device-local memory the host can map, where the device has it.
    #[pyo3(constructor = (device_id = 0))]
    GpuMappable {
        /// The Vulkan device.
        device_id: u32,
    },
    /// Host memory the device reaches.
    #[pyo3(constructor = (device_id = 0))]
    HostVisible {
        /// The Vulkan device.
        device_id: u32,
    },
}

#[pymethods]
impl MemoryLocation {
    fn __repr__(&self) -> String {
        self.python_repr()
    }
}

impl MemoryLocation {
    /// How Python writes it: `MemoryLocation.GpuVulkan(device_id=0)`.
    pub fn python_repr(&self) -> String {
        let (name, id) = match self {
            MemoryLocation::GpuVulkan { device_id } => ("GpuVulkan", device_id),
            MemoryLocation::GpuMappable { device_id } => ("GpuMappable", device_id),
            MemoryLocation::HostVisible { device_id } => ("HostVisible", device_id),
        };
        format!("MemoryLocation.{name}(device_id={id})")
    }

    /// The Rust value.
    pub fn rust(self) -> lava_flow::MemoryLocation {
        match self {
            MemoryLocation::GpuVulkan { device_id } => lava_flow::MemoryLocation::GpuVulkan { device_id },
            MemoryLocation::GpuMappable { device_id } => lava_flow::MemoryLocation::GpuMappable { device_id },
            MemoryLocation::HostVisible { device_id } => lava_flow::MemoryLocation::HostVisible { device_id },
        }
    }

    /// The Python value of a Rust location (`None` for one this module does not know yet).
    pub fn from_rust(location: lava_flow::MemoryLocation) -> Option<Self> {
        match location {
            lava_flow::MemoryLocation::GpuVulkan { device_id } => {
                Some(MemoryLocation::GpuVulkan { device_id })
            }
            lava_flow::MemoryLocation::GpuMappable { device_id } => {
                Some(MemoryLocation::GpuMappable { device_id })
            }
            lava_flow::MemoryLocation::HostVisible { device_id } => {
                Some(MemoryLocation::HostVisible { device_id })
            }
            _ => None,
        }
    }
}

/// What the allocator and everything made from it share: the Rust allocator, and per device
/// the CUDA state that DLPack exports use. Buffers and semaphores hold it, so the devices live
/// as long as any of them does.
pub struct Shared {
    /// Shared by clone, without a lock: the allocator is `Send + Sync` and its clones share
    /// devices and pools.
    allocator: lava_flow::MemoryAllocator,
    cuda: Mutex<HashMap<u32, Arc<CudaDevice>>>,
}

/// A GPU's CUDA side: its primary context (the one PyTorch, CuPy and JAX use), lava-flow's own
/// stream there (where `TimelineSemaphore.cuda_wait` queues waits), and an event that orders
/// consumers' streams after that stream.
pub struct CudaDevice {
    /// The primary context.
    pub ctx: Context,
    /// The CUDA ordinal (what DLPack and torch call the device).
    pub ordinal: i32,
    /// lava-flow's stream.
    pub stream: Stream,
    event: Mutex<Event>,
}

impl CudaDevice {
    /// Makes `consumer` (a raw stream handle from a consumer: `1` is the legacy default stream,
    /// `2` the per-thread one) wait for everything queued so far on lava-flow's stream, with an
    /// event: no host wait.
    pub fn order_after_own_work(&self, consumer: usize) -> lava_flow::Result<()> {
        let event = self.event.lock().unwrap_or_else(PoisonError::into_inner);
        event.record(&self.stream)?;
        // SAFETY: the consumer gave this handle for this device under the DLPack / CUDA array
        // interface protocols (1 and 2 are the driver's special streams); it lives while the
        // consumer uses the tensor, longer than this call. It is never destroyed here.
        let stream = unsafe { Stream::from_raw(&self.ctx, consumer as lava_flow::cuda::sys::CUstream) };
        stream.wait_event(&event)
    }
}

impl Shared {
    /// A clone of the Rust allocator (a cheap handle sharing its devices and pools): callers on
    /// several threads allocate concurrently, none waits for another's allocation.
    pub fn allocator(&self) -> lava_flow::MemoryAllocator {
        self.allocator.clone()
    }

    /// The CUDA side of `device_id`, made on first use; the error says why there is none.
    pub fn cuda(&self, device_id: u32) -> lava_flow::Result<Arc<CudaDevice>> {
        let mut cache = self.cuda.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(device) = cache.get(&device_id) {
            return Ok(Arc::clone(device));
        }
        let (ctx, ordinal) = {
            let allocator = self.allocator();
            (
                Context::for_device(&allocator, device_id)?,
                lava_flow::cuda::ordinal_for(&allocator, device_id)?,
            )
        };
        let stream = ctx.stream()?;
        let event = ctx.event(false)?;
        let device = Arc::new(CudaDevice { ctx, ordinal, stream, event: Mutex::new(event) });
        cache.insert(device_id, Arc::clone(&device));
        Ok(device)
    }
}

/// Allocates GPU memory through Vulkan, exportable to other APIs: the Python face of
/// `lava_flow::MemoryAllocator`.
/// This process's default allocator (what `lava_flow.default_allocator()` returns, and where
/// `lava_flow.ipc.recv` and unpickled buffers import), made on first use.
pub fn default_shared(py: Python<'_>) -> PyResult<Arc<Shared>> {
    static DEFAULT: pyo3::sync::PyOnceLock<Py<MemoryAllocator>> = pyo3::sync::PyOnceLock::new();
    let allocator =
        DEFAULT.get_or_try_init(py, || Py::new(py, MemoryAllocator::new(py, None, None, true)?))?;
    Ok(Arc::clone(&allocator.get().shared))
}

/// `default_allocator()`: this process's default `MemoryAllocator` (validation as
/// `LAVA_FLOW_VALIDATION` says), made on first use: where `lava_flow.ipc.recv` and buffers
/// unpickled from another process import what they receive.
#[pyfunction]
pub fn default_allocator(py: Python<'_>) -> PyResult<MemoryAllocator> {
    Ok(MemoryAllocator { shared: default_shared(py)? })
}

#[pyclass(module = "lava_flow", frozen)]
pub struct MemoryAllocator {
    pub(crate) shared: Arc<Shared>,
}

#[pymethods]
impl MemoryAllocator {
    /// `MemoryAllocator(validation=None, heap_budget=None, host_memory_import=False)`:
    /// `validation` turns the Khronos validation layer on (default: the `LAVA_FLOW_VALIDATION`
    /// environment variable); `heap_budget` caps lava-flow's bytes per heap (past it,
    /// `OutOfMemoryError`); `host_memory_import=True` lets the GPU copy straight from and into
    /// the caller's memory where the driver can import it, instead of through the staging ring
    /// (off by default: on NVIDIA it is slower than staging).
    #[new]
    #[pyo3(signature = (validation = None, heap_budget = None, host_memory_import = false))]
    fn new(
        py: Python<'_>,
        validation: Option<bool>,
        heap_budget: Option<u64>,
        host_memory_import: bool,
    ) -> PyResult<Self> {
        let mut options = AllocatorOptions::default();
        if let Some(v) = validation {
            options.validation = v;
        }
        options.heap_budget = heap_budget;
        options.host_memory_import = host_memory_import;
        let allocator = py.detach(|| lava_flow::MemoryAllocator::with_options(options)).or_raise()?;
        Ok(MemoryAllocator { shared: Arc::new(Shared { allocator, cuda: Mutex::default() }) })
    }

    /// Allocates `size` bytes at `location` (default: `MemoryLocation.GpuVulkan(0)`);
    /// `dedicated=True` gives the buffer a `VkDeviceMemory` of its own.
    #[pyo3(signature = (size, location = None, *, dedicated = false))]
    fn allocate(
        &self,
        py: Python<'_>,
        size: u64,
        location: Option<&Bound<'_, MemoryLocation>>,
        dedicated: bool,
    ) -> PyResult<Buffer> {
        let location = location.map_or(MemoryLocation::GpuVulkan { device_id: 0 }, |l| *l.get()).rust();
        let options = AllocationOptions::default().dedicated(dedicated);
        let shared = Arc::clone(&self.shared);
        let buffer = py.detach(|| shared.allocator().allocate_with(size, location, options)).or_raise()?;
        Ok(Buffer::new(Arc::clone(&self.shared), buffer))
    }

    /// A timeline semaphore of `device_id`, starting at 0.
    #[pyo3(signature = (device_id = 0))]
    fn timeline_semaphore(&self, device_id: u32) -> PyResult<TimelineSemaphore> {
        let semaphore = self.shared.allocator().timeline_semaphore(device_id).or_raise()?;
        Ok(TimelineSemaphore::new(Arc::clone(&self.shared), device_id, semaphore))
    }

    /// The Vulkan devices, as dictionaries: `device_id`, `name`, `uuid` and `driver_uuid` (hex
    /// strings, what APIs match devices by), `device_type`, `driver`, `api_version`, `heaps`
    /// (sizes in bytes).
    fn devices<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let infos = self.shared.allocator().devices();
        infos
            .iter()
            .map(|info| {
                let d = PyDict::new(py);
                d.set_item("device_id", info.index)?;
                d.set_item("name", &info.name)?;
                d.set_item("uuid", info.uuid.to_string())?;
                d.set_item("driver_uuid", info.driver_uuid.to_string())?;
                d.set_item("device_type", format!("{:?}", info.device_type))?;
                d.set_item("driver", format!("{} {}", info.driver_name, info.driver_info))?;
                d.set_item("api_version", info.api_version)?;
                d.set_item("heaps", info.heaps.iter().map(|h| h.size).collect::<Vec<u64>>())?;
                Ok(d)
            })
            .collect()
    }

    /// The `device_id` of the Vulkan device that is CUDA device `ordinal` (`cuda:ordinal` in
    /// torch), matched by UUID: the two orders differ on hosts with several GPUs, so
    /// `MemoryLocation.GpuVulkan(device_id=allocator.device_for_cuda(1))` is memory on the GPU
    /// torch calls `cuda:1`. `CUDA_VISIBLE_DEVICES` renumbers the ordinals, as in torch.
    fn device_for_cuda(&self, py: Python<'_>, ordinal: i32) -> PyResult<u32> {
        let shared = Arc::clone(&self.shared);
        py.detach(|| lava_flow::cuda::device_id_for(&shared.allocator(), ordinal)).or_raise()
    }

    /// The `device_id` of the Vulkan device with this UUID: a hex string as `devices()` prints
    /// it, or as `nvidia-smi -L` does (`GPU-…`), or 16 bytes. Loads no CUDA.
    fn device_for_uuid(&self, uuid: &Bound<'_, PyAny>) -> PyResult<u32> {
        let uuid = if let Ok(bytes) = uuid.extract::<Vec<u8>>() {
            let bytes: [u8; 16] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| {
                    lava_flow::Error::InvalidArgument(format!(
                        "a device UUID has 16 bytes, not {}",
                        bytes.len()
                    ))
                })
                .or_raise()?;
            lava_flow::Uuid(bytes)
        } else {
            let text: String = uuid.str()?.extract()?;
            text.parse::<lava_flow::Uuid>().or_raise()?
        };
        let devices = self.shared.allocator().devices();
        lava_flow::device::find_by_uuid(&devices, uuid)
            .map(|d| d.index)
            .ok_or_else(|| {
                let listed: Vec<String> = devices.iter().map(|d| format!("{} {}", d.index, d.uuid)).collect();
                lava_flow::Error::Unsupported {
                    what: format!(
                        "no Vulkan device has the UUID {uuid}; Vulkan devices: {}",
                        listed.join("; ")
                    ),
                }
            })
            .or_raise()
    }

    /// The CUDA ordinal of Vulkan device `device_id` (the `n` of torch's `cuda:n`), matched by
    /// UUID.
    #[pyo3(signature = (device_id = 0))]
    fn cuda_ordinal(&self, py: Python<'_>, device_id: u32) -> PyResult<i32> {
        let shared = Arc::clone(&self.shared);
        py.detach(|| lava_flow::cuda::ordinal_for(&shared.allocator(), device_id)).or_raise()
    }

    /// What the allocator holds now: `buffers`, `blocks`, `block_bytes`, `suballocated_bytes`,
    /// `dedicated_allocations`, `dedicated_bytes`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.shared.allocator().stats();
        let d = PyDict::new(py);
        d.set_item("buffers", s.buffers)?;
        d.set_item("blocks", s.blocks)?;
        d.set_item("block_bytes", s.block_bytes)?;
        d.set_item("suballocated_bytes", s.suballocated_bytes)?;
        d.set_item("dedicated_allocations", s.dedicated_allocations)?;
        d.set_item("dedicated_bytes", s.dedicated_bytes)?;
        Ok(d)
    }

    /// How many host transfers so far went straight from or into the caller's memory
    /// (`imported`) or through staging (`staged`).
    fn transfer_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.shared.allocator().transfer_stats();
        let d = PyDict::new(py);
        d.set_item("imported", s.imported)?;
        d.set_item("staged", s.staged)?;
        Ok(d)
    }

    /// The validation layer's warnings and errors since the last call (empty without
    /// validation).
    fn validation_messages(&self) -> Vec<String> {
        self.shared.allocator().validation_log().map(|log| log.take()).unwrap_or_default()
    }

    /// Waits until the Vulkan queue of `device_id` is idle.
    #[pyo3(signature = (device_id = 0))]
    fn wait_idle(&self, py: Python<'_>, device_id: u32) -> PyResult<()> {
        let shared = Arc::clone(&self.shared);
        py.detach(|| shared.allocator().wait_idle(device_id)).or_raise()
    }

    /// Wraps the CUDA memory of a PyTorch or CuPy tensor (anything with
    /// `__cuda_array_interface__`, C-contiguous) as a borrowed `CudaView`: copies between it and
    /// lava-flow buffers run on the GPU. The view keeps the tensor alive; it cannot be exported
    /// to Vulkan (`export_fd` raises `UnsupportedError` and says what to do instead).
    fn wrap_cuda(&self, obj: &Bound<'_, PyAny>) -> PyResult<crate::cuda_view::CudaView> {
        crate::cuda_view::CudaView::wrap(Arc::clone(&self.shared), obj)
    }

    fn __repr__(&self) -> String {
        let names: Vec<String> = self.shared.allocator().devices().iter().map(|d| d.name.clone()).collect();
        format!("MemoryAllocator(devices={names:?})")
    }
}
