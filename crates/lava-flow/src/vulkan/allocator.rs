//! [`MemoryAllocator`]: devices, exportable blocks, sub-allocation and dedicated allocations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ash::vk;

use super::buffer::{Buffer, Placement};
use super::device::Device;
use super::instance::{Instance, PhysicalDevice};
use super::memory::{Block, Dedicated, MemoryDesc};
use super::semaphore::{BinarySemaphore, Submission, TimelineSemaphore};
use super::validation::ValidationLog;
use crate::device::DeviceInfo;
use crate::error::{Error, Result, VkResultExt};
use crate::handle::{ExportedMemory, ExportedSemaphore, SemaphoreKind};
use crate::location::MemoryLocation;
use crate::suballoc::{SubAllocator, SubRange, UNIT};

/// Spare bytes after every buffer's last byte inside its `VkDeviceMemory` on CPU devices
/// (see [`DeviceInfo::dedicated_tail`](crate::DeviceInfo::dedicated_tail)): dedicated buffers'
/// `VkBuffer`s are this much larger than asked for there; and the last 256 bytes of every block
/// are never handed out, on every device.
///
/// Mesa's llvmpipe refuses a GL buffer on imported memory (`glNamedBufferStorageMemEXT`,
/// `GL_OUT_OF_MEMORY`) unless the memory is at least 48 bytes larger than the GL buffer; with the
/// tail, a GL buffer can cover any lava-flow buffer. An importer that makes its own dedicated
/// `VkBuffer` for this memory must use `size + dedicated_tail()` (lava-flow's `import_memory`
/// does).
pub const DEDICATED_TAIL: u64 = 256;

/// The default size of a sub-allocation block: 64 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 20;

/// The default [`AllocatorOptions::transfer_timeout`]: 60 s.
pub const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of a [`MemoryAllocator`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AllocatorOptions {
    /// The size of each exportable block that small buffers are placed in (default 64 MiB).
    /// Blocks on a heap smaller than this are cut to the heap's size.
    pub block_size: u64,
    /// Buffers of at least this many bytes get a dedicated allocation (default: half a block);
    /// so do smaller ones that an empty block cannot place (see [`MemoryAllocator`]'s block
    /// policy).
    pub dedicated_threshold: u64,
    /// Enable the Khronos validation layer and record its messages (default: on when the
    /// environment variable `LAVA_FLOW_VALIDATION` is `1`). See
    /// [`MemoryAllocator::validation_log`].
    pub validation: bool,
    /// At most this many bytes of new `VkDeviceMemory` per heap and device (blocks, dedicated
    /// allocations and staging; imports are not counted), or no limit (`None`, the default).
    /// Past it, allocations fail with [`Error::OutOfMemory`] as they do when the driver runs
    /// out: a way to leave room for others on a shared GPU, and to test exhaustion anywhere.
    pub heap_budget: Option<u64>,
    /// How long lava-flow waits for one of its own queue submissions — a staging copy of
    /// [`Buffer::write`]/[`read`](Buffer::read), [`Image::write_level`](super::Image::write_level)/
    /// [`read_level`](super::Image::read_level), an image's first layout change, or
    /// [`MemoryAllocator::wait_idle`] — before it fails with [`Error::Timeout`] (default 60 s).
    /// A copy waits behind everything submitted to the queue before it, so a submission that
    /// waits for a semaphore value nobody signals holds it up until the timeout.
    ///
    /// A copy that timed out is still queued and may complete later; until it has, the device's
    /// staging resources stay with it, and the next staging call first waits for it (up to this
    /// timeout again) and fails with [`Error::Timeout`] if it is still pending.
    pub transfer_timeout: Duration,
    /// Let [`Buffer::write`]/[`read`](Buffer::read) and the image level copies have the GPU copy
    /// straight from and into the caller's memory where the device can import host memory
    /// (`VK_EXT_external_memory_host`), instead of through the staging ring (default: off).
    /// Measured on an H200 (NVIDIA 580), importing pageable memory for each call moves 10–14 GB/s
    /// against 25–29 GB/s through staging, at every size from 1 MiB to 1 GiB (BENCHMARKS.md); on
    /// lavapipe the import is faster. On where your driver pins pages cheaply.
    pub host_memory_import: bool,
    /// The global priority of lava-flow's queue on each device it creates
    /// (`VK_KHR_global_priority`, or `VK_EXT_global_priority` where only that is present), or the
    /// driver's default (`None`, the default). It orders this queue's work against other
    /// processes' and APIs' queues on the same GPU where the driver schedules by it.
    ///
    /// No fallback: a device with neither extension fails its first use (the device is created
    /// then) with [`Error::Unsupported`]; a priority the driver refuses to this process (often
    /// above `Medium` without privileges) fails it with [`Error::Ffi`] naming `vkCreateDevice`
    /// and `VK_ERROR_NOT_PERMITTED_KHR`. Devices the caller made (`from_raw`) keep their queue's.
    pub queue_global_priority: Option<QueueGlobalPriority>,
}

/// A queue's global priority ([`AllocatorOptions::queue_global_priority`]), as Vulkan names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum QueueGlobalPriority {
    /// `VK_QUEUE_GLOBAL_PRIORITY_LOW_KHR`.
    Low,
    /// `VK_QUEUE_GLOBAL_PRIORITY_MEDIUM_KHR` (what queues get without the extension).
    Medium,
    /// `VK_QUEUE_GLOBAL_PRIORITY_HIGH_KHR`.
    High,
    /// `VK_QUEUE_GLOBAL_PRIORITY_REALTIME_KHR`.
    Realtime,
}

impl QueueGlobalPriority {
    /// The Vulkan value.
    pub fn to_vk(self) -> ash::vk::QueueGlobalPriorityKHR {
        use ash::vk::QueueGlobalPriorityKHR as P;
        match self {
            QueueGlobalPriority::Low => P::LOW,
            QueueGlobalPriority::Medium => P::MEDIUM,
            QueueGlobalPriority::High => P::HIGH,
            QueueGlobalPriority::Realtime => P::REALTIME,
        }
    }
}

impl Default for AllocatorOptions {
    fn default() -> Self {
        AllocatorOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            dedicated_threshold: DEFAULT_BLOCK_SIZE / 2,
            validation: std::env::var("LAVA_FLOW_VALIDATION").is_ok_and(|v| v == "1"),
            heap_budget: None,
            transfer_timeout: DEFAULT_TRANSFER_TIMEOUT,
            host_memory_import: false,
            queue_global_priority: None,
        }
    }
}

/// One memory heap's use, from [`MemoryAllocator::heap_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeapUsage {
    /// The heap's size.
    pub size: u64,
    /// Bytes of `VkDeviceMemory` lava-flow allocated on it (blocks, dedicated allocations,
    /// staging; not imports) — what [`AllocatorOptions::heap_budget`] limits.
    pub lava_flow: u64,
    /// The driver's count of this process's use (`VK_EXT_memory_budget`), where it has one.
    pub driver_usage: Option<u64>,
    /// The budget the driver grants this process (`VK_EXT_memory_budget`), where it has one.
    pub driver_budget: Option<u64>,
}

/// Whether an allocation is made exportable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Exportable {
    /// Exportable where the device can export the platform's opaque handle (an fd, an NT handle
    /// on Windows); otherwise a plain allocation whose exports return [`Error::NotExportable`].
    #[default]
    IfSupported,
    /// Exportable, or the allocation fails with [`Error::Unsupported`].
    Required,
    /// A plain allocation that cannot be exported (it can share blocks only with other
    /// non-exportable buffers).
    No,
}

/// Per-allocation settings for [`MemoryAllocator::allocate_with`].
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct AllocationOptions {
    /// Whether the memory can be exported.
    pub exportable: Exportable,
    /// Force a dedicated `VkDeviceMemory` for this buffer even if it is small.
    pub dedicated: bool,
}

impl AllocationOptions {
    /// Sets [`AllocationOptions::exportable`].
    pub fn exportable(mut self, exportable: Exportable) -> Self {
        self.exportable = exportable;
        self
    }

    /// Sets [`AllocationOptions::dedicated`].
    pub fn dedicated(mut self, dedicated: bool) -> Self {
        self.dedicated = dedicated;
        self
    }
}

/// What an allocator holds at one moment, summed over its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AllocatorStats {
    /// Live buffers (allocated and imported).
    pub buffers: u64,
    /// Sub-allocation blocks (`VkDeviceMemory`) held, empty ones included.
    pub blocks: u64,
    /// Bytes in those blocks.
    pub block_bytes: u64,
    /// Bytes of live buffers placed in blocks.
    pub suballocated_bytes: u64,
    /// Dedicated and imported `VkDeviceMemory` objects held.
    pub dedicated_allocations: u64,
    /// Bytes in those.
    pub dedicated_bytes: u64,
    /// Semaphores their owners dropped that wait to be destroyed until the submissions that
    /// used them have completed (each holds a driver fd on NVIDIA while it waits).
    pub retired_semaphores: u64,
}

/// How many host transfers ([`Buffer::write`], [`Buffer::read`], image levels and their
/// asynchronous forms, to and from device-local memory) took which path so far, summed over the
/// allocator's devices: [`MemoryAllocator::transfer_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TransferStats {
    /// Copied by the GPU straight from or into the caller's memory (imported host memory).
    pub imported: u64,
    /// Copied through staging.
    pub staged: u64,
    /// Copies not yet seen complete, now: staging-ring slots still being copied (or holding an
    /// asynchronous read's bytes not yet handed over), and asynchronous transfers whose waits
    /// timed out that the device keeps until they complete. 0 once everything submitted has
    /// completed and been waited for.
    pub in_flight: u64,
}

/// Allocates exportable Vulkan memory on every Vulkan device of the machine.
///
/// A cheap handle: clones share the same devices and blocks. Methods that create objects take
/// `&mut self`; to allocate from several threads, give each thread a clone (the allocator is
/// `Send + Sync`, and clones allocate concurrently).
///
/// # Block policy
/// Buffers smaller than [`AllocatorOptions::dedicated_threshold`] are placed in blocks of
/// [`AllocatorOptions::block_size`] bytes, one pool of blocks per (memory type, exportable), if
/// an empty block can hold them: the sub-allocator rounds sizes up to size classes (by up to an
/// eighth), so a buffer close to the block size (62 MiB of a 64 MiB block, say) gets a dedicated
/// allocation even below the threshold. A
/// freed range is reused at once. When a block becomes empty it is kept if it is its pool's only
/// empty block (so that allocate/free loops do not allocate and free device memory each time),
/// and released otherwise; [`MemoryAllocator::trim`] releases every empty block.
#[derive(Clone)]
pub struct MemoryAllocator {
    shared: Arc<Shared>,
}

struct Shared {
    /// Dropped after the device slots (field order), though devices hold their own `Arc`.
    devices: Vec<DeviceSlot>,
    instance: Arc<Instance>,
    options: AllocatorOptions,
}

struct DeviceSlot {
    physical: PhysicalDevice,
    context: Mutex<Option<Arc<DeviceContext>>>,
}

/// A created device and its pools.
pub(crate) struct DeviceContext {
    pub device: Arc<Device>,
    pools: Mutex<HashMap<PoolKey, Vec<PoolBlock>>>,
    options: AllocatorOptions,
    pub buffers: AtomicU64,
    pub dedicated_allocations: AtomicU64,
    pub dedicated_bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    memory_type_index: u32,
    exportable: bool,
    /// Whether the pool's blocks are mapped: a host-visible location's buffer must not land in
    /// an unmapped block of the same memory type (on lavapipe every type is host-visible).
    mapped: bool,
}

struct PoolBlock {
    block: Arc<Block>,
    sub: SubAllocator,
}

impl std::fmt::Debug for MemoryAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAllocator")
            .field("devices", &self.shared.devices.iter().map(|d| &d.physical.info.name).collect::<Vec<_>>())
            .field("options", &self.shared.options)
            .finish()
    }
}

impl MemoryAllocator {
    /// Loads Vulkan, creates an instance and probes every device once, with default options.
    ///
    /// Logical devices are created on first use of a `device_id`.
    pub fn new() -> Result<Self> {
        Self::with_options(AllocatorOptions::default())
    }

    /// Like [`MemoryAllocator::new`], with explicit options.
    pub fn with_options(options: AllocatorOptions) -> Result<Self> {
        Self::check_options(&options)?;
        let instance = Arc::new(Instance::new(options.validation)?);
        let devices = instance
            .probe_devices()?
            .into_iter()
            .map(|physical| DeviceSlot { physical, context: Mutex::new(None) })
            .collect();
        Ok(MemoryAllocator { shared: Arc::new(Shared { devices, instance, options }) })
    }

    /// Every Vulkan device, indexed by `device_id` (see [`crate::device`] for the order).
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.shared.devices.iter().map(|d| d.physical.info.clone()).collect()
    }

    /// One device's description.
    pub fn device(&self, device_id: u32) -> Result<&DeviceInfo> {
        Ok(&self.slot(device_id)?.physical.info)
    }

    /// The validation layer's record, if validation is on. It outlives the allocator.
    pub fn validation_log(&self) -> Option<ValidationLog> {
        self.shared.instance.log.clone()
    }

    /// Allocates `size` bytes at `location`: exportable where the device allows it, placed in a
    /// shared block or, for large buffers, in a dedicated allocation.
    ///
    /// ```
    /// # fn main() -> lava_flow::Result<()> {
    /// use lava_flow::{MemoryAllocator, MemoryLocation};
    /// let mut allocator = MemoryAllocator::new()?;
    /// let buffer = allocator.allocate(1_000_000, MemoryLocation::GpuVulkan { device_id: 0 })?;
    /// assert_eq!(buffer.size(), 1_000_000);
    /// # Ok(()) }
    /// ```
    pub fn allocate(&mut self, size: u64, location: MemoryLocation) -> Result<Buffer> {
        self.allocate_with(size, location, AllocationOptions::default())
    }

    /// Allocates with explicit [`AllocationOptions`].
    pub fn allocate_with(
        &mut self,
        size: u64,
        location: MemoryLocation,
        options: AllocationOptions,
    ) -> Result<Buffer> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let ctx = self.context(location.device_id())?;
        ctx.allocate(size, location, options)
    }

    /// Allocates an exportable 2D image on `device_id`, in a dedicated allocation, in
    /// `VK_IMAGE_LAYOUT_GENERAL`. Errors: [`Error::Unsupported`] for a format, tiling or size the
    /// driver cannot make (or export); [`Error::ZeroSize`]; [`Error::InvalidArgument`] for
    /// impossible mip counts.
    pub fn allocate_image(&mut self, device_id: u32, desc: super::ImageDesc) -> Result<super::Image> {
        let ctx = self.context(device_id)?;
        ctx.allocate_image(desc)
    }

    /// Imports memory exported by lava-flow (in this process or another) as a [`Buffer`] on
    /// `device_id`, which must be the same physical device and driver (compared by UUID).
    ///
    /// The handle is owned by the driver once the import succeeds and closed if it fails. The
    /// buffer refers to the same bytes as the exporter's: writes on either side are seen by the
    /// other once the work that made them has completed.
    pub fn import_memory(&mut self, device_id: u32, exported: ExportedMemory) -> Result<Buffer> {
        let ctx = self.context(device_id)?;
        Buffer::import(&ctx, exported)
    }

    /// Creates a timeline semaphore with value 0, exportable where the device allows it.
    pub fn timeline_semaphore(&mut self, device_id: u32) -> Result<TimelineSemaphore> {
        let ctx = self.context(device_id)?;
        TimelineSemaphore::new(&ctx.device, None)
    }

    /// Creates a binary semaphore, exportable where the device allows it (what OpenCL imports).
    pub fn binary_semaphore(&mut self, device_id: u32) -> Result<BinarySemaphore> {
        let ctx = self.context(device_id)?;
        BinarySemaphore::new(&ctx.device, None)
    }

    /// Imports a binary semaphore exported by lava-flow (here or in another process). Waiting
    /// through an imported handle is also how Vulkan waits for another API's signal without the
    /// validation layer calling the wait unsignalled: it knows it cannot follow imported payloads.
    pub fn import_binary_semaphore(
        &mut self,
        device_id: u32,
        exported: ExportedSemaphore,
    ) -> Result<BinarySemaphore> {
        let ctx = self.context(device_id)?;
        let (fd, state) = check_semaphore(&ctx, exported, SemaphoreKind::Binary)?;
        BinarySemaphore::import(&ctx.device, fd, state)
    }

    /// Imports a timeline semaphore exported by lava-flow (here or in another process).
    pub fn import_timeline_semaphore(
        &mut self,
        device_id: u32,
        exported: ExportedSemaphore,
    ) -> Result<TimelineSemaphore> {
        let ctx = self.context(device_id)?;
        let (fd, _) = check_semaphore(&ctx, exported, SemaphoreKind::Timeline)?;
        TimelineSemaphore::new(&ctx.device, Some(fd))
    }

    /// Submits a batch to `device_id`'s queue: wait for semaphore values, run command buffers,
    /// signal values. Returns without waiting for the GPU.
    pub fn submit(&self, device_id: u32, submission: &Submission<'_>) -> Result<()> {
        let ctx = self.context(device_id)?;
        submission.submit(&ctx.device)
    }

    /// Waits until all work submitted to `device_id`'s queue so far has completed, for at most
    /// [`AllocatorOptions::transfer_timeout`] (60 s by default; [`Error::Timeout`] after that,
    /// e.g. when a submission waits for a value nobody signals). It submits an empty batch with a fence and waits for the fence, so the
    /// validation layer, too, knows that the earlier work is done — waiting for a timeline value
    /// that another API signalled does not tell it that. Call it before dropping semaphores or
    /// command buffers whose last use was only observed by CUDA, GL or OpenCL.
    pub fn wait_idle(&self, device_id: u32) -> Result<()> {
        let ctx = self.context(device_id)?;
        ctx.device.with_transfer(|t| t.wait_idle(&ctx.device))
    }

    /// The `ash` device behind `device_id` and its queue family, for users who record their own
    /// command buffers (submit them with [`MemoryAllocator::submit`]).
    pub fn ash_device(&self, device_id: u32) -> Result<(ash::Device, u32)> {
        let ctx = self.context(device_id)?;
        Ok((ctx.device.device.clone(), ctx.device.physical.queue_family))
    }

    /// The memory type lava-flow uses for buffers at `location` (importers of foreign memory,
    /// such as CUDA's, need it for the descriptor).
    pub fn memory_type_index(&self, location: MemoryLocation) -> Result<u32> {
        self.slot(location.device_id())?.physical.memory_type(!0, location, "buffers")
    }

    /// The `ash` instance lava-flow created, for loading extension functions in users' own code.
    pub fn ash_instance(&self) -> ash::Instance {
        self.shared.instance.instance.clone()
    }

    /// Releases every empty block.
    pub fn trim(&self) {
        for slot in &self.shared.devices {
            if let Some(ctx) = slot.context.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                let mut pools = ctx.pools.lock().unwrap_or_else(PoisonError::into_inner);
                for blocks in pools.values_mut() {
                    blocks.retain(|b| !b.sub.is_empty());
                }
            }
        }
    }

    /// Each memory heap of `device_id`: its size, what lava-flow's own allocations hold of it,
    /// and — where the driver has `VK_EXT_memory_budget` — the driver's count of the whole
    /// process's use and the budget it grants (other processes' use lowers it).
    pub fn heap_usage(&self, device_id: u32) -> Result<Vec<HeapUsage>> {
        let ctx = self.context(device_id)?;
        let device = &ctx.device;
        let physical = &device.physical;
        let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let driver = physical.has_memory_budget.then(|| {
            let mut props = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
            // SAFETY: the physical device belongs to the instance, which has Vulkan 1.1+; the
            // chained structure's extension is supported (checked when probing).
            unsafe {
                device.instance_fns().get_physical_device_memory_properties2(physical.handle, &mut props)
            };
        });
        Ok((0..physical.memory.memory_heap_count as usize)
            .map(|i| HeapUsage {
                size: physical.memory.memory_heaps[i].size,
                lava_flow: device.heap_used[i].load(Ordering::Relaxed),
                driver_usage: driver.map(|()| budget.heap_usage[i]),
                driver_budget: driver.map(|()| budget.heap_budget[i]),
            })
            .collect())
    }

    /// Counts of what is held now, over all devices.
    pub fn stats(&self) -> AllocatorStats {
        let mut s = AllocatorStats::default();
        for slot in &self.shared.devices {
            let Some(ctx) = slot.context.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
                continue;
            };
            s.buffers += ctx.buffers.load(Ordering::Relaxed);
            s.dedicated_allocations += ctx.dedicated_allocations.load(Ordering::Relaxed);
            s.dedicated_bytes += ctx.dedicated_bytes.load(Ordering::Relaxed);
            s.retired_semaphores += ctx.device.retired_semaphores();
            let pools = ctx.pools.lock().unwrap_or_else(PoisonError::into_inner);
            for b in pools.values().flatten() {
                s.blocks += 1;
                s.block_bytes += b.block.size;
                s.suballocated_bytes += b.sub.used();
            }
        }
        s
    }

    /// How many host transfers took which path so far (see [`TransferStats`]).
    pub fn transfer_stats(&self) -> TransferStats {
        let mut s = TransferStats::default();
        for slot in &self.shared.devices {
            let Some(ctx) = slot.context.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
                continue;
            };
            s.imported += ctx.device.imported_transfers.load(Ordering::Relaxed);
            s.staged += ctx.device.staged_transfers.load(Ordering::Relaxed);
            s.in_flight += ctx.device.transfers_in_flight();
        }
        s
    }

    fn slot(&self, device_id: u32) -> Result<&DeviceSlot> {
        self.shared
            .devices
            .get(device_id as usize)
            .ok_or(Error::UnknownDevice { device_id, device_count: self.shared.devices.len() as u32 })
    }

    pub(crate) fn context(&self, device_id: u32) -> Result<Arc<DeviceContext>> {
        let slot = self.slot(device_id)?;
        let mut guard = slot.context.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ctx) = guard.as_ref() {
            return Ok(Arc::clone(ctx));
        }
        let device = Device::new(
            Arc::clone(&self.shared.instance),
            slot.physical.clone(),
            self.shared.options.heap_budget,
            self.shared.options.transfer_timeout,
            self.shared.options.host_memory_import,
            self.shared.options.queue_global_priority,
        )?;
        let ctx = DeviceContext::new(device, &self.shared.options);
        *guard = Some(Arc::clone(&ctx));
        Ok(ctx)
    }

    /// An allocator over one device the caller made (`from_raw`): `device_id` 0.
    pub(super) fn adopted(instance: Arc<Instance>, device: Arc<Device>, options: AllocatorOptions) -> Self {
        let physical = device.physical.clone();
        let ctx = DeviceContext::new(device, &options);
        let devices = vec![DeviceSlot { physical, context: Mutex::new(Some(ctx)) }];
        MemoryAllocator { shared: Arc::new(Shared { devices, instance, options }) }
    }

    /// Checks the options every constructor takes.
    pub(super) fn check_options(options: &AllocatorOptions) -> Result<()> {
        if options.block_size < 2 * UNIT || options.dedicated_threshold == 0 {
            return Err(Error::InvalidArgument(format!(
                "block_size must be at least {} bytes and dedicated_threshold at least 1 (got {} and {})",
                2 * UNIT,
                options.block_size,
                options.dedicated_threshold
            )));
        }
        Ok(())
    }
}

impl DeviceContext {
    fn new(device: Arc<Device>, options: &AllocatorOptions) -> Arc<Self> {
        Arc::new(DeviceContext {
            device,
            pools: Mutex::new(HashMap::new()),
            options: options.clone(),
            buffers: AtomicU64::new(0),
            dedicated_allocations: AtomicU64::new(0),
            dedicated_bytes: AtomicU64::new(0),
        })
    }
}

impl DeviceContext {
    fn allocate(
        self: &Arc<Self>,
        size: u64,
        location: MemoryLocation,
        options: AllocationOptions,
    ) -> Result<Buffer> {
        let physical = &self.device.physical;
        let info = &physical.info;
        // Check the location's heap before creating anything, so that absurd sizes are refused
        // with the heap's size instead of a driver error.
        self.check_heap(size, physical.memory_type(!0, location, "buffers")?)?;
        let exportable = match options.exportable {
            Exportable::No => false,
            Exportable::IfSupported => physical.can_export_buffers(),
            Exportable::Required if physical.can_export_buffers() => true,
            Exportable::Required => {
                return Err(Error::Unsupported {
                    what: format!(
                        "device {} ({}) cannot export buffers as {:?} handles",
                        info.index,
                        info.name,
                        crate::external::Os::HOST.opaque_handle()
                    ),
                })
            }
        };
        // Dedicated buffers get the device's `dedicated_tail()` spare bytes. Whether a buffer is
        // dedicated is known for sure only from its memory requirements, so a buffer that turns
        // out to need it after all is made again, padded.
        let mut padded = options.dedicated
            || (exportable && physical.export_needs_dedicated())
            || size >= self.options.dedicated_threshold;
        loop {
            let vk_size = if padded { size.saturating_add(physical.info.dedicated_tail()) } else { size };
            let buffer = Buffer::create_raw(&self.device, vk_size, exportable)?;
            // From here on, `buffer` must be destroyed on every path that does not keep it.
            match self.place(buffer, location, exportable, padded) {
                Ok(Some(placement)) => {
                    return Ok(Buffer::new(Arc::clone(self), buffer, size, Some(location), placement))
                }
                result => {
                    // SAFETY: the buffer is unused and bound to nothing that outlives it.
                    unsafe { self.device.device.destroy_buffer(buffer, None) };
                    match result {
                        Ok(_) if !padded => padded = true,
                        Ok(_) => {
                            return Err(Error::InvalidArgument(
                                "a padded buffer was refused a dedicated allocation".into(),
                            ))
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Refuses `size` bytes of memory type `memory_type_index` with [`Error::SizeExceedsHeap`]
    /// (naming the heap and its size) when they exceed that type's heap: the one check between
    /// every buffer and image lava-flow makes and `vkAllocateMemory`, which must not be asked
    /// for more than the heap holds (VUID-vkAllocateMemory-pAllocateInfo-01713). Buffers are
    /// checked with their size before anything is created and with their memory requirements
    /// before a dedicated allocation; images with their memory requirements. (Blocks are never
    /// larger than their heap.)
    pub(crate) fn check_heap(&self, size: u64, memory_type_index: u32) -> Result<()> {
        let physical = &self.device.physical;
        let heap_index = physical.memory.memory_types[memory_type_index as usize].heap_index;
        let heap_size = physical.memory.memory_heaps[heap_index as usize].size;
        if size > heap_size {
            return Err(Error::SizeExceedsHeap {
                requested: size,
                device_id: physical.info.index,
                heap_index,
                heap_size,
            });
        }
        Ok(())
    }

    /// Finds memory for `buffer` and binds it. `Ok(None)`: the buffer needs a dedicated
    /// allocation but was not made `padded`; make it again with the tail.
    fn place(
        self: &Arc<Self>,
        buffer: vk::Buffer,
        location: MemoryLocation,
        exportable: bool,
        padded: bool,
    ) -> Result<Option<Placement>> {
        let d = &self.device.device;
        let physical = &self.device.physical;
        let mut dedicated_req = vk::MemoryDedicatedRequirements::default();
        let mut req2 = vk::MemoryRequirements2::default().push_next(&mut dedicated_req);
        let req_info = vk::BufferMemoryRequirementsInfo2::default().buffer(buffer);
        // SAFETY: the buffer is live; the out-structs outlive the call.
        unsafe { d.get_buffer_memory_requirements2(&req_info, &mut req2) };
        let req = req2.memory_requirements;
        let memory_type_index = physical.memory_type(req.memory_type_bits, location, "this buffer")?;
        let heap = physical.memory.memory_types[memory_type_index as usize].heap_index;
        let block_size = self.options.block_size.min(physical.memory.memory_heaps[heap as usize].size);
        let dedicated = padded
            || dedicated_req.requires_dedicated_allocation == vk::TRUE
            || dedicated_req.prefers_dedicated_allocation == vk::TRUE
            || (exportable && physical.export_needs_dedicated())
            || !goes_to_block(req.size, req.alignment, block_size, self.options.dedicated_threshold);
        if dedicated && !padded {
            return Ok(None);
        }
        let map = location.is_host_visible();
        if dedicated {
            self.check_heap(req.size, memory_type_index)?;
            let desc = MemoryDesc {
                size: req.size,
                memory_type_index,
                exportable,
                dedicated_to: Some(Dedicated::Buffer(buffer)),
                map,
            };
            let block = Arc::new(Block::new(&self.device, desc)?);
            // SAFETY: fresh buffer, memory made for it, offset 0.
            unsafe { d.bind_buffer_memory(buffer, block.raw.memory, 0) }.vk("vkBindBufferMemory")?;
            return Ok(Some(Placement { block, offset: 0, range: None }));
        }
        let key = PoolKey { memory_type_index, exportable, mapped: map };
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let blocks = pools.entry(key).or_default();
        let found = blocks
            .iter_mut()
            .find_map(|b| b.sub.allocate(req.size, req.alignment).map(|r| (Arc::clone(&b.block), r)));
        let (block, range) = match found {
            Some(found) => found,
            None => {
                let desc =
                    MemoryDesc { size: block_size, memory_type_index, exportable, dedicated_to: None, map };
                let block = Arc::new(Block::new(&self.device, desc)?);
                // `goes_to_block` sent the buffer here only if a fresh block places it, so
                // neither error below can happen; they guard the invariant.
                let mut sub = SubAllocator::new(block_capacity(block_size)).ok_or_else(|| {
                    Error::InvalidArgument(format!("block size {block_size} cannot be sub-allocated"))
                })?;
                let range = sub.allocate(req.size, req.alignment).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "the block policy sent {} bytes aligned to {} to a fresh block of {block_size} \
                         bytes, which cannot place them",
                        req.size, req.alignment
                    ))
                })?;
                blocks.push(PoolBlock { block: Arc::clone(&block), sub });
                (block, range)
            }
        };
        let offset = range.offset;
        // SAFETY: the range lies inside the block, is aligned as the buffer requires, and the
        // block's memory type is allowed by the buffer's requirements.
        match unsafe { d.bind_buffer_memory(buffer, block.raw.memory, offset) } {
            Ok(()) => Ok(Some(Placement { block, offset, range: Some(range) })),
            Err(e) => {
                release_range(blocks, &block, range);
                Err(Error::vk("vkBindBufferMemory", e))
            }
        }
    }

    /// Gives a buffer's range back to its block (the buffer is already destroyed).
    pub(crate) fn release(&self, block: &Arc<Block>, range: SubRange) {
        let key = PoolKey {
            memory_type_index: block.memory_type_index,
            exportable: block.exportable,
            mapped: block.raw.mapped.is_some(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(blocks) = pools.get_mut(&key) {
            release_range(blocks, block, range);
        }
    }
}

/// What a block of `block_size` bytes gives its sub-allocator: all but its last unit, which is
/// never handed out (see [`DEDICATED_TAIL`]).
fn block_capacity(block_size: u64) -> u64 {
    block_size.saturating_sub(UNIT)
}

/// The block policy for a buffer whose memory requirements are `size` bytes at `alignment`:
/// whether it goes to a block of `block_size` bytes rather than a dedicated allocation. It must
/// be below `dedicated_threshold` and placeable in a *fresh* block
/// ([`SubAllocator::fits_empty`]: the sub-allocator's size classes round requests up, so sizes
/// close to the capacity may not be), so that every buffer sent to a block can be placed — in a
/// block that exists or, failing that, in a new one.
fn goes_to_block(size: u64, alignment: u64, block_size: u64, dedicated_threshold: u64) -> bool {
    size < dedicated_threshold && SubAllocator::fits_empty(block_capacity(block_size), size, alignment)
}

/// Frees `range` in `block` and applies the block policy: an empty block is released unless it
/// is the pool's only empty one.
fn release_range(blocks: &mut Vec<PoolBlock>, block: &Arc<Block>, range: SubRange) {
    let Some(i) = blocks.iter().position(|b| Arc::ptr_eq(&b.block, block)) else {
        log::error!("a buffer's block is missing from its pool; its range is lost");
        return;
    };
    blocks[i].sub.free(range);
    if blocks[i].sub.is_empty() && blocks.iter().filter(|b| b.sub.is_empty()).count() > 1 {
        // The memory is freed when the last `Arc<Block>` (this one, or a live clone) drops.
        blocks.swap_remove(i);
    }
}

/// The handle of an exported semaphore of `kind` for `ctx`'s device and driver (closed if not),
/// and a binary semaphore's state where the export was made in this process and has not left
/// lava-flow.
fn check_semaphore(
    ctx: &DeviceContext,
    exported: ExportedSemaphore,
    kind: SemaphoreKind,
) -> Result<(crate::external::NativeHandle, Option<Arc<super::BinaryState>>)> {
    let (handle, desc, state) = exported.into_tracked_parts();
    let info = &ctx.device.physical.info;
    info.check_same_device("the exported semaphore", desc.device_uuid, desc.driver_uuid)?;
    if desc.kind != kind {
        return Err(Error::InvalidArgument(format!(
            "the exported semaphore is a {:?} semaphore, not a {kind:?} one",
            desc.kind
        )));
    }
    Ok((handle.into_native(), state))
}

#[cfg(test)]
mod tests {
    use super::{block_capacity, goes_to_block};
    use crate::suballoc::{SubAllocator, UNIT};
    use proptest::prelude::*;

    /// Block sizes from the smallest allowed to 4 GiB (not only multiples of the unit),
    /// thresholds anywhere (often around the block size), sizes up to twice the block, the
    /// alignments drivers report.
    fn policy_case() -> impl Strategy<Value = (u64, u64, u64, u64)> {
        (2 * UNIT..=4u64 << 30, 0u32..17).prop_flat_map(|(block, align_log2)| {
            let thresholds =
                prop_oneof![1..=2 * block, block / 2..=block + UNIT, Just(u64::MAX), Just(block / 2)];
            let sizes = prop_oneof![1..=2 * block, block - block / 6..=block, Just(block_capacity(block))];
            (Just(block), thresholds, sizes, Just(1u64 << align_log2))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every buffer the policy sends to a block is placed by a fresh block of that size,
        /// aligned and clear of the block's last unit; and the policy sends every buffer below
        /// the threshold that a fresh block places there (dedicated allocations only when
        /// needed).
        #[test]
        fn every_size_sent_to_a_block_fits_a_fresh_one((block, threshold, size, alignment) in policy_case()) {
            let to_block = goes_to_block(size, alignment, block, threshold);
            let fresh = SubAllocator::new(block_capacity(block)).and_then(|mut s| s.allocate(size, alignment));
            if to_block {
                let range = fresh.as_ref();
                prop_assert!(range.is_some(), "{} bytes at {} sent to a {}-byte block that cannot place them", size, alignment, block);
                let range = range.expect("checked");
                prop_assert_eq!(range.offset % alignment, 0);
                prop_assert!(range.offset + size <= block - UNIT);
            } else if size < threshold {
                prop_assert!(fresh.is_none(), "{} bytes at {} fit a fresh {}-byte block but were made dedicated", size, alignment, block);
            }
        }
    }
}
