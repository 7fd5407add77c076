//! [`Buffer`]: a `VkBuffer` bound to exportable memory, and what importers need to know of it.

#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(windows)]
use std::os::windows::io::OwnedHandle;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ash::vk;
use ash::vk::Handle;

use super::allocator::DeviceContext;
use super::conv;
use super::device::Device;
use super::memory::{Block, Dedicated, MemoryDesc};
use super::pending::{HostBytes, HostBytesMut, PendingTransfer};
use super::transfer::{Direction, HostRange, Target};
use crate::error::{Error, Result, VkResultExt};
use crate::handle::{ExportedMemory, ExternalHandle, MemoryDescriptor};
use crate::location::MemoryLocation;
use crate::suballoc::SubRange;

/// Where a buffer's bytes are: a block, the offset in it, and the range to give back.
pub(crate) struct Placement {
    pub block: Arc<Block>,
    pub offset: u64,
    /// `None` for dedicated and imported memory, which the buffer owns alone.
    pub range: Option<SubRange>,
}

/// A buffer of device memory that other APIs can import.
///
/// It owns a `VkBuffer` bound at [`offset`](Buffer::offset) inside a `VkDeviceMemory` of
/// [`allocation_size`](Buffer::allocation_size) bytes, which it may share with other buffers
/// (sub-allocation) or own alone ([`is_dedicated`](Buffer::is_dedicated)). Dropping it destroys
/// the `VkBuffer` and gives the range back; the memory is freed when no buffer uses it.
///
/// Exports hand out new handles to the whole `VkDeviceMemory`: importers map
/// `offset..offset + size` of it.
pub struct Buffer {
    ctx: Arc<DeviceContext>,
    buffer: vk::Buffer,
    size: u64,
    placement: Placement,
    location: Option<MemoryLocation>,
    /// Serialises `write` and `read` through the mapping: `Buffer` is `Sync`, and two threads
    /// copying into the same mapped bytes at once would be a data race.
    host_access: std::sync::Mutex<()>,
    /// The transfer-timeline value of the last asynchronous transfer (0: none), which the drop
    /// waits for.
    last_async: AtomicU64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("size", &self.size)
            .field("offset", &self.placement.offset)
            .field("allocation_size", &self.allocation_size())
            .field("memory_type_index", &self.memory_type_index())
            .field("dedicated", &self.is_dedicated())
            .field("location", &self.location)
            .finish()
    }
}

impl Buffer {
    pub(crate) fn new(
        ctx: Arc<DeviceContext>,
        buffer: vk::Buffer,
        size: u64,
        location: Option<MemoryLocation>,
        placement: Placement,
    ) -> Self {
        ctx.buffers.fetch_add(1, Ordering::Relaxed);
        if placement.range.is_none() {
            ctx.dedicated_allocations.fetch_add(1, Ordering::Relaxed);
            ctx.dedicated_bytes.fetch_add(placement.block.size, Ordering::Relaxed);
        }
        Buffer {
            ctx,
            buffer,
            size,
            placement,
            location,
            host_access: std::sync::Mutex::new(()),
            last_async: AtomicU64::new(0),
        }
    }

    /// Creates an unbound `VkBuffer` of `size` bytes with lava-flow's usage flags.
    pub(crate) fn create_raw(device: &Device, size: u64, external: bool) -> Result<vk::Buffer> {
        let mut external_info =
            vk::ExternalMemoryBufferCreateInfo::default().handle_types(super::external::memory_handle());
        let mut info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(conv::BUFFER_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        if external {
            info = info.push_next(&mut external_info);
        }
        // SAFETY: `info` points at live locals; the device is live.
        unsafe { device.device.create_buffer(&info, None) }.vk("vkCreateBuffer")
    }

    /// Imports `exported` into the device of `ctx` (see `MemoryAllocator::import_memory`).
    pub(crate) fn import(ctx: &Arc<DeviceContext>, exported: ExportedMemory) -> Result<Buffer> {
        let (handle, desc) = exported.into_parts();
        let device = &ctx.device;
        let info = &device.physical.info;
        info.check_same_device("the exported memory", desc.device_uuid, desc.driver_uuid)?;
        let handle_type = handle.handle_type();
        if !device.physical.has_external_memory || !info.buffer_handles.can_import(handle_type) {
            return Err(Error::Unsupported {
                what: format!(
                    "device {} ({}) cannot import buffers from {handle_type:?} handles",
                    info.index, info.name
                ),
            });
        }
        let vk_size = import_size(
            &desc,
            device.physical.memory.memory_type_count,
            device.physical.info.dedicated_tail(),
        )?;
        // The allocation must fit its memory type's heap: a typed error before the driver.
        ctx.check_heap(desc.allocation_size, desc.memory_type_index)?;
        let buffer = Self::create_raw(device, vk_size, true)?;
        match Self::bind_imported(ctx, buffer, handle, &desc) {
            Ok(placement) => Ok(Buffer::new(Arc::clone(ctx), buffer, desc.size, None, placement)),
            Err(e) => {
                // SAFETY: the buffer is unused.
                unsafe { device.device.destroy_buffer(buffer, None) };
                Err(e)
            }
        }
    }

    fn bind_imported(
        ctx: &Arc<DeviceContext>,
        buffer: vk::Buffer,
        handle: ExternalHandle,
        desc: &MemoryDescriptor,
    ) -> Result<Placement> {
        let device = &ctx.device;
        // SAFETY: the buffer is live.
        let req = unsafe { device.device.get_buffer_memory_requirements(buffer) };
        if desc.dedicated && req.size != desc.allocation_size {
            // VUID-VkMemoryDedicatedAllocateInfo-buffer-01435: a dedicated import is for a buffer
            // whose memory requirements are exactly the allocation: the exporter's buffer.
            return Err(Error::InvalidArgument(format!(
                "a dedicated allocation of {} bytes is not the memory of a {}-byte buffer, which \
                 needs {} bytes",
                desc.allocation_size, desc.size, req.size
            )));
        }
        if req.memory_type_bits & (1 << desc.memory_type_index) == 0
            || !desc.offset.is_multiple_of(req.alignment)
        {
            return Err(Error::InvalidArgument(format!(
                "memory type {} at offset {} cannot back this buffer (allowed types {:#x}, alignment {})",
                desc.memory_type_index, desc.offset, req.memory_type_bits, req.alignment
            )));
        }
        let mem = MemoryDesc {
            size: desc.allocation_size,
            memory_type_index: desc.memory_type_index,
            exportable: false,
            dedicated_to: desc.dedicated.then_some(Dedicated::Buffer(buffer)),
            map: false,
        };
        let block = Arc::new(Block::import(device, mem, handle.into_native(), desc.memory_id)?);
        // SAFETY: the memory was imported for this buffer; the offset is aligned and in range.
        unsafe { device.device.bind_buffer_memory(buffer, block.raw.memory, desc.offset) }
            .vk("vkBindBufferMemory")?;
        Ok(Placement { block, offset: desc.offset, range: None })
    }

    /// The buffer's size in bytes, as asked for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The buffer's offset inside its `VkDeviceMemory`.
    pub fn offset(&self) -> u64 {
        self.placement.offset
    }

    /// The size of the whole `VkDeviceMemory` that holds the buffer: the size CUDA, OpenGL and
    /// OpenCL must be given when they import it.
    pub fn allocation_size(&self) -> u64 {
        self.placement.block.size
    }

    /// The Vulkan memory type index of the allocation.
    pub fn memory_type_index(&self) -> u32 {
        self.placement.block.memory_type_index
    }

    /// Whether the memory is a dedicated allocation for this buffer
    /// (`VkMemoryDedicatedAllocateInfo`); importers must then say so too.
    pub fn is_dedicated(&self) -> bool {
        self.placement.block.dedicated
    }

    /// Whether the memory can be exported.
    pub fn is_exportable(&self) -> bool {
        self.placement.block.exportable
    }

    /// The location it was allocated at; `None` for imported memory.
    pub fn location(&self) -> Option<MemoryLocation> {
        self.location
    }

    /// The UUID of the device the memory belongs to.
    pub fn device_uuid(&self) -> [u8; 16] {
        self.ctx.device.physical.info.uuid.0
    }

    /// The UUID of that device's driver.
    pub fn driver_uuid(&self) -> [u8; 16] {
        self.ctx.device.physical.info.driver_uuid.0
    }

    /// The `device_id` of the device the buffer lives on, in its allocator.
    pub fn device_id(&self) -> u32 {
        self.ctx.device.physical.info.index
    }

    /// The raw `VkBuffer`, for users with their own `ash` code. Valid while `self` lives.
    pub fn vk_buffer(&self) -> vk::Buffer {
        self.buffer
    }

    /// The raw `VkDeviceMemory` holding the buffer. Valid while `self` lives; other buffers may
    /// share it, so never free or map it.
    pub fn vk_memory(&self) -> vk::DeviceMemory {
        self.placement.block.raw.memory
    }

    /// A pointer to the buffer's first byte in host address space, for host-visible locations
    /// (`GpuMappable`, `HostVisible`); `None` otherwise.
    ///
    /// It is valid for [`size`](Buffer::size) bytes while `self` lives. Reads and writes through it
    /// race with GPU work on the buffer: order them yourself (semaphores, fences).
    pub fn mapped_ptr(&self) -> Option<NonNull<u8>> {
        let base = self.placement.block.raw.mapped?;
        // SAFETY: the mapping covers the whole block and `offset + size` lies inside it.
        Some(unsafe { base.0.add(self.placement.offset as usize) })
    }

    /// Copies `data` into the buffer at `offset`: through the mapping for host-visible memory,
    /// else with a queue submission, waited for before returning.
    ///
    /// Where the device imports host memory (`VK_EXT_external_memory_host`; see
    /// [`AllocatorOptions::host_memory_import`](crate::AllocatorOptions::host_memory_import)) and
    /// the copy is large enough, the GPU copies straight from `data`; otherwise through a ring
    /// of staging chunks, the CPU filling one while the GPU copies another.
    ///
    /// The copy queues behind everything submitted before it; if a staged copy has not completed
    /// within [`AllocatorOptions::transfer_timeout`](crate::AllocatorOptions::transfer_timeout)
    /// the result is [`Error::Timeout`] and the copy stays queued: it may still complete, with
    /// the bytes given here. Until it has, staging calls on the device fail with
    /// [`Error::Timeout`] (after waiting for it once more), and dropping this buffer waits for
    /// it too (and leaks the buffer if it is still queued, rather than destroy it under the GPU).
    /// A copy straight from `data` is submitted only once the queue has drained (waiting up to
    /// the timeout for that, [`Error::Timeout`] with nothing done after it), so that it can
    /// never outlive this call.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let _guard = self.host_access.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.mapped_at(offset) {
            // SAFETY: the range was checked against the buffer's size, which the mapping covers;
            // `data` cannot alias device memory that lava-flow maps; the lock keeps other threads'
            // copies through this buffer out.
            Some(p) => unsafe { super::transfer::copy_bytes(data.as_ptr(), p, data.len()) },
            None => {
                self.ctx.device.with_transfer(|t| t.write(&self.ctx.device, self.target(offset), data))?
            }
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from the buffer at `offset` into `out` (see [`Buffer::write`]).
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let _guard = self.host_access.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.mapped_at(offset) {
            // SAFETY: as in `write`.
            Some(p) => unsafe { super::transfer::copy_bytes(p.cast_const(), out.as_mut_ptr(), out.len()) },
            None => self.ctx.device.with_transfer(|t| t.read(&self.ctx.device, self.target(offset), out))?,
        }
        Ok(())
    }

    /// Starts copying `data` into the buffer at `offset` and returns at once: the GPU copies
    /// while the caller works. `data` is the transfer's until
    /// [`PendingTransfer::wait`] gives it back, so it cannot be changed or freed meanwhile.
    ///
    /// Where the device imports host memory, the GPU copies straight from `data`; otherwise
    /// every byte of `data` is copied into staging before this returns, and the last GPU copies
    /// are in flight: from 1 MiB on by the copy threads, streamed through the whole staging
    /// buffer as [`Buffer::write`] does (the call waits first for earlier transfers still using
    /// staging); below, through the staging ring's slots (waiting for slots as a synchronous
    /// write does, when it needs more of them than are free). A transfer through staging right
    /// after a streamed one waits until its copies have left staging. A host-visible buffer is
    /// written through its mapping at once. See [`PendingTransfer`] for
    /// timeouts, and [`Buffer::write`] for the order of copies.
    pub fn write_async<S: HostBytes>(&self, offset: u64, data: S) -> Result<PendingTransfer<S>> {
        let range = HostRange::source(data.host_bytes());
        self.check_range(offset, range.len)?;
        if range.len == 0 || self.mapped_ptr().is_some() {
            self.write(offset, data.host_bytes())?;
            return Ok(PendingTransfer::done(&self.ctx.device, data, range));
        }
        self.start(Direction::ToDevice, offset, data, range)
    }

    /// Starts copying `out.host_bytes().len()` bytes of the buffer from `offset` into `out`;
    /// [`PendingTransfer::wait`] returns it filled (see [`Buffer::write_async`]).
    ///
    /// Through staging (where the device does not import `out`'s pages), the call reads what it
    /// must to queue every GPU copy and returns with the last ones in flight: the bytes those
    /// bring (at most the staging buffer's worth, 48 MiB by default; all of them for a read that
    /// fits) stay in staging and are copied into `out` when the transfer is waited for (or by the
    /// next transfer through staging, which waits for them first); the wait copies them out as
    /// they arrive. A read larger than the ring goes through the streamed pipeline, as
    /// [`Buffer::read`]'s pieces do; a smaller one through the ring's slots.
    pub fn read_async<D: HostBytesMut>(&self, offset: u64, mut out: D) -> Result<PendingTransfer<D>> {
        let range = HostRange::destination(out.host_bytes_mut());
        self.check_range(offset, range.len)?;
        if range.len == 0 || self.mapped_ptr().is_some() {
            self.read(offset, out.host_bytes_mut())?;
            return Ok(PendingTransfer::done(&self.ctx.device, out, range));
        }
        self.start(Direction::ToHost, offset, out, range)
    }

    fn start<S: HostBytes>(
        &self,
        dir: Direction,
        offset: u64,
        host: S,
        range: HostRange,
    ) -> Result<PendingTransfer<S>> {
        PendingTransfer::start(&self.ctx.device, &self.last_async, dir, self.target(offset), host, range)
    }

    /// The device and the transfer target of byte `offset` (for the bench's probes).
    pub(crate) fn transfer_target(&self, offset: u64) -> (&Arc<super::device::Device>, Target) {
        (&self.ctx.device, self.target(offset))
    }

    fn target(&self, offset: u64) -> Target {
        Target::Buffer { buffer: self.buffer, offset }
    }

    /// The host address of byte `offset` (range-checked by the caller) of mapped memory.
    fn mapped_at(&self, offset: u64) -> Option<*mut u8> {
        self.mapped_ptr().map(|p| p.as_ptr().wrapping_add(offset as usize))
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        Error::check_range(offset, len, self.size)
    }

    /// A new file descriptor for the whole `VkDeviceMemory` holding this buffer
    /// (`VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT`). Each call returns a fresh fd, which the
    /// caller owns.
    ///
    /// Importers also need [`offset`](Buffer::offset), [`size`](Buffer::size),
    /// [`allocation_size`](Buffer::allocation_size) and [`is_dedicated`](Buffer::is_dedicated):
    /// [`export`](Buffer::export) returns all of it in one value.
    ///
    /// A buffer made by [`MemoryAllocator::import_memory`](crate::MemoryAllocator::import_memory)
    /// exports too: a duplicate of the fd it was imported from, with the same descriptor (and
    /// [`MemoryId`](crate::MemoryId)), so what arrived from elsewhere can be passed on to CUDA,
    /// OpenGL, OpenCL or another process.
    #[cfg(unix)]
    pub fn export_fd(&self) -> Result<OwnedFd> {
        self.export_native()
    }

    /// A new NT handle for the whole `VkDeviceMemory` holding this buffer
    /// (`VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32_BIT`, `vkGetMemoryWin32HandleKHR`): the
    /// Windows twin of `export_fd`, with the same rules. Each call returns a new handle, which
    /// the caller owns and closes (dropping it); CUDA, OpenGL, OpenCL and Vulkan imports only
    /// reference the memory, so the handle may be closed as soon as they return.
    #[cfg(windows)]
    pub fn export_handle(&self) -> Result<OwnedHandle> {
        self.export_native()
    }

    /// The platform's handle for the memory: `export_fd` or `export_handle`.
    pub(crate) fn export_native(&self) -> Result<crate::external::NativeHandle> {
        self.placement.block.export().map_err(|e| match e {
            Error::NotExportable { .. } => Error::NotExportable {
                reason: format!(
                    "this buffer was allocated without export (Exportable::No, or device {} cannot \
                     export buffers as {:?} handles)",
                    self.device_id(),
                    crate::external::Os::HOST.opaque_handle()
                ),
            },
            other => other,
        })
    }

    /// A new handle (an fd on Unix, an NT handle on Windows) and everything an importer needs:
    /// see [`MemoryDescriptor`].
    pub fn export(&self) -> Result<ExportedMemory> {
        let handle = self.export_native()?;
        Ok(ExportedMemory::from_parts(ExternalHandle::from_native(handle), self.descriptor()))
    }

    /// The metadata an importer needs, without a handle.
    pub fn descriptor(&self) -> MemoryDescriptor {
        let info = &self.ctx.device.physical.info;
        MemoryDescriptor {
            size: self.size,
            offset: self.offset(),
            allocation_size: self.allocation_size(),
            memory_type_index: self.memory_type_index(),
            dedicated: self.is_dedicated(),
            device_uuid: info.uuid,
            driver_uuid: info.driver_uuid,
            memory_id: self.placement.block.id,
        }
    }
}

#[cfg(feature = "wgpu")]
impl Buffer {
    /// The device the buffer is on.
    pub(crate) fn device(&self) -> &Arc<Device> {
        &self.ctx.device
    }

    /// The memory the buffer is bound to (kept alive by the `Arc`) and its offset in it.
    pub(crate) fn memory(&self) -> (Arc<Block>, u64) {
        (Arc::clone(&self.placement.block), self.placement.offset)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let last_async = *self.last_async.get_mut();
        if !self.ctx.device.release_from_transfer(self.buffer.as_raw(), last_async) {
            // A staging copy that timed out still uses the buffer: destroying it, freeing its
            // memory or giving its range to another buffer would let the GPU write into them.
            // The buffer, its range and its memory (and with it the device) are leaked.
            std::mem::forget(Arc::clone(&self.placement.block));
            return;
        }
        // SAFETY: the buffer belongs to this device. lava-flow's own copies have completed (a
        // timed-out one was waited for above); the user owns the ordering of their own GPU work.
        unsafe { self.ctx.device.device.destroy_buffer(self.buffer, None) };
        self.ctx.buffers.fetch_sub(1, Ordering::Relaxed);
        match self.placement.range.take() {
            Some(range) => self.ctx.release(&self.placement.block, range),
            None => {
                self.ctx.dedicated_allocations.fetch_sub(1, Ordering::Relaxed);
                self.ctx.dedicated_bytes.fetch_sub(self.placement.block.size, Ordering::Relaxed);
            }
        }
    }
}

/// The `VkBuffer` size an import of `desc` needs, after checking that the descriptor describes a
/// buffer inside its allocation: at least 1 byte, inside the allocation, of one of `type_count`
/// memory types, and — for a dedicated allocation, which must be imported for a buffer identical
/// to the exporter's, padded by the device's `tail` — with room for the tail. Checked arithmetic
/// throughout: descriptors may come from another process.
pub(crate) fn import_size(desc: &crate::MemoryDescriptor, type_count: u32, tail: u64) -> Result<u64> {
    desc.check_layout()?;
    if desc.memory_type_index >= type_count {
        return Err(Error::InvalidArgument(format!(
            "memory descriptor names memory type {} of {type_count}",
            desc.memory_type_index
        )));
    }
    if !desc.dedicated {
        return Ok(desc.size);
    }
    match desc.size.checked_add(tail) {
        Some(vk_size) if vk_size <= desc.allocation_size => Ok(vk_size),
        _ => Err(Error::InvalidArgument(format!(
            "a dedicated allocation of {} bytes cannot hold a lava-flow buffer of {} bytes (plus its \
             {tail}-byte tail)",
            desc.allocation_size, desc.size
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::import_size;
    use crate::{MemoryDescriptor, Uuid};
    use proptest::prelude::*;

    fn sizes() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(256),
            Just(u64::MAX),
            Just(u64::MAX - 255),
            any::<u64>(),
            0u64..1 << 30
        ]
    }

    proptest! {
        /// Any descriptor, however absurd: no panic or overflow, and accepted exactly when it
        /// describes a buffer inside its allocation (with room for the tail when dedicated).
        #[test]
        fn descriptors_are_checked_without_overflow(
            size in sizes(), offset in sizes(), allocation_size in sizes(),
            memory_type_index in 0u32..40, dedicated in any::<bool>(), tail in prop_oneof![Just(0u64), Just(256)],
        ) {
            let desc = MemoryDescriptor {
                size, offset, allocation_size, memory_type_index, dedicated,
                device_uuid: Uuid([0; 16]), driver_uuid: Uuid([0; 16]), memory_id: crate::MemoryId(7),
            };
            let end = u128::from(offset) + u128::from(size) + if dedicated { u128::from(tail) } else { 0 };
            let valid = size > 0 && memory_type_index < 32 && end <= u128::from(allocation_size)
                && (!dedicated || offset == 0);
            match import_size(&desc, 32, tail) {
                Ok(vk_size) => {
                    prop_assert!(valid, "accepted {desc:?}");
                    prop_assert_eq!(u128::from(vk_size), u128::from(size) + if dedicated { u128::from(tail) } else { 0 });
                }
                Err(e) => {
                    prop_assert!(!valid, "refused {desc:?}: {e}");
                    prop_assert!(matches!(e, crate::Error::InvalidArgument(_)));
                }
            }
        }
    }
}
