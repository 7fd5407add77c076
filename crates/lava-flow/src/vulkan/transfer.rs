//! Staging copies between host memory and buffers the CPU cannot map.
//!
//! One command buffer, one fence and one host-visible staging buffer per device, used under the
//! device's transfer lock. Data moves in chunks of at most [`STAGING_CHUNK`] bytes; each chunk is
//! submitted and waited for before the next, so `write` and `read` are synchronous.
//!
//! A wait can time out (`AllocatorOptions::transfer_timeout`): the submission is then still
//! queued — behind work that waits for a semaphore nobody signalled, say — and will run when the
//! queue gets to it. Until its fence has been seen signalled the context is *pending*: the
//! command buffer, the fence and the staging buffer (whose bytes the copy has yet to read) are
//! the submission's, and nothing records, submits, writes, replaces or destroys them.
//! [`Device::with_transfer`] settles a pending context before it lends it out, and
//! [`Device::release_from_transfer`] keeps the copy's buffer or image from being destroyed under
//! it.

use std::sync::atomic::Ordering;

use ash::vk;
use ash::vk::Handle;

use super::device::Device;
use super::memory::{MemoryDesc, RawMemory};
use crate::error::{Error, Result, VkResultExt};
use crate::location::MemoryLocation;

/// The largest staging buffer, and so the largest copy per submission.
pub(crate) const STAGING_CHUNK: u64 = 16 << 20;
/// The smallest staging buffer made.
const STAGING_MIN: u64 = 1 << 20;

struct Staging {
    buffer: vk::Buffer,
    memory: RawMemory,
    size: u64,
}

/// The staging context of one device.
pub(crate) struct Transfer {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    staging: Option<Staging>,
    /// `Some` while a submission that timed out may still run: the raw handle of the buffer or
    /// image it uses (0 for none). The command buffer, the fence and the staging buffer are
    /// that submission's until [`Transfer::settle`] has seen its fence signalled.
    pending: Option<u64>,
}

/// What [`Error::Timeout`] names when a call finds an earlier submission still pending.
pub(crate) const EARLIER_COPY: &str =
    "an earlier staging copy that timed out and is still queued (nothing of this call was done)";

/// Which way a copy goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToDevice,
    ToHost,
}

impl Transfer {
    pub fn new(device: &Device) -> Result<Self> {
        let d = &device.device;
        let pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(device.physical.queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: `d` is a live device; the family index is the one its queue came from.
        let pool = unsafe { d.create_command_pool(&pool_info, None) }.vk("vkCreateCommandPool")?;
        let mut transfer = Transfer {
            pool,
            cmd: vk::CommandBuffer::null(),
            fence: vk::Fence::null(),
            staging: None,
            pending: None,
        };
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool was just created on this device.
        let made =
            unsafe { d.allocate_command_buffers(&alloc) }.vk("vkAllocateCommandBuffers").and_then(|cmds| {
                transfer.cmd = cmds[0];
                // SAFETY: a plain object creation on a live device.
                unsafe { d.create_fence(&vk::FenceCreateInfo::default(), None) }.vk("vkCreateFence")
            });
        match made {
            Ok(fence) => {
                transfer.fence = fence;
                Ok(transfer)
            }
            Err(e) => {
                // SAFETY: the objects belong to `d` and were never submitted.
                unsafe { transfer.destroy(d) };
                Err(e)
            }
        }
    }

    /// Copies `data` into `dst` at `dst_offset`.
    pub fn write(&mut self, device: &Device, dst: vk::Buffer, dst_offset: u64, data: &[u8]) -> Result<()> {
        let staging = self.staging(device, data.len() as u64)?;
        for (i, chunk) in data.chunks(staging_len(staging)).enumerate() {
            let at = (i * staging_len(staging)) as u64;
            let mapped = self.mapped(device)?;
            // SAFETY: the staging mapping holds at least `chunk.len()` bytes (chunks are cut to
            // its size) and no copy is in flight (each one is waited for).
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), mapped, chunk.len()) };
            let region =
                vk::BufferCopy { src_offset: 0, dst_offset: dst_offset + at, size: chunk.len() as u64 };
            self.copy(device, Direction::ToDevice, dst, region)?;
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from `src` at `src_offset` into `out`.
    pub fn read(&mut self, device: &Device, src: vk::Buffer, src_offset: u64, out: &mut [u8]) -> Result<()> {
        let staging = self.staging(device, out.len() as u64)?;
        let step = staging_len(staging);
        for (i, chunk) in out.chunks_mut(step).enumerate() {
            let at = (i * step) as u64;
            let region =
                vk::BufferCopy { src_offset: src_offset + at, dst_offset: 0, size: chunk.len() as u64 };
            self.copy(device, Direction::ToHost, src, region)?;
            let mapped = self.mapped(device)?;
            // SAFETY: as in `write`; the copy has completed and a TRANSFER→HOST barrier made it
            // visible to the host.
            unsafe { std::ptr::copy_nonoverlapping(mapped.cast_const(), chunk.as_mut_ptr(), chunk.len()) };
        }
        Ok(())
    }

    /// The staging buffer's mapping, to copy to or from: never while a submission that may
    /// still read or write it is pending.
    fn mapped(&mut self, device: &Device) -> Result<*mut u8> {
        self.settle(device, EARLIER_COPY)?;
        self.staging.as_ref().and_then(|s| s.memory.mapped).map(|m| m.0.as_ptr()).ok_or_else(|| {
            Error::Unsupported { what: format!("no mapped staging buffer on {}", device.physical.info.name) }
        })
    }

    /// Makes sure a staging buffer of at least `min(len, STAGING_CHUNK)` bytes exists.
    fn staging(&mut self, device: &Device, len: u64) -> Result<u64> {
        // Never replaced under a pending submission.
        self.settle(device, EARLIER_COPY)?;
        let want = len.clamp(STAGING_MIN, STAGING_CHUNK);
        if let Some(s) = &self.staging {
            if s.size >= want {
                return Ok(s.size);
            }
        }
        if let Some(old) = self.staging.take() {
            // SAFETY: every copy through it was waited for (nothing is pending: settled above).
            unsafe { destroy_staging(&device.device, old) };
        }
        let d = &device.device;
        let info = vk::BufferCreateInfo::default()
            .size(want)
            .usage(vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a plain object creation on a live device.
        let buffer = unsafe { d.create_buffer(&info, None) }.vk("vkCreateBuffer")?;
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let host = MemoryLocation::HostVisible { device_id: device.physical.info.index };
        let memory = device
            .physical
            .memory_type(req.memory_type_bits, host, "the staging buffer")
            .and_then(|memory_type_index| {
                let desc = MemoryDesc {
                    size: req.size,
                    memory_type_index,
                    exportable: false,
                    dedicated_to: None,
                    map: true,
                };
                RawMemory::allocate(device, desc, None)
            })
            .and_then(|memory| {
                // SAFETY: fresh buffer and memory of a type its requirements allow, offset 0.
                match unsafe { d.bind_buffer_memory(buffer, memory.memory, 0) } {
                    Ok(()) => Ok(memory),
                    // `memory` is freed by its drop: nothing is bound to it.
                    Err(e) => Err(Error::vk("vkBindBufferMemory", e)),
                }
            });
        match memory {
            Ok(memory) => {
                self.staging = Some(Staging { buffer, memory, size: want });
                Ok(want)
            }
            Err(e) => {
                // SAFETY: the buffer is unused.
                unsafe { d.destroy_buffer(buffer, None) };
                Err(e)
            }
        }
    }

    /// Records, submits and waits for one copy between the staging buffer and `buffer`.
    fn copy(
        &mut self,
        device: &Device,
        dir: Direction,
        buffer: vk::Buffer,
        region: vk::BufferCopy,
    ) -> Result<()> {
        let staging = self.staging.as_ref().map(|s| s.buffer).unwrap_or_default();
        let (src, dst) = match dir {
            Direction::ToDevice => (staging, buffer),
            Direction::ToHost => (buffer, staging),
        };
        self.run(device, buffer.as_raw(), |d, cmd| {
            // SAFETY: a recording command buffer; `src` and `dst` are live buffers of this device
            // and the region lies inside both (checked by the callers).
            unsafe { d.cmd_copy_buffer(cmd, src, dst, &[region]) };
            if dir == Direction::ToHost {
                host_read_barrier(d, cmd);
            }
        })
    }

    /// Moves every level of a fresh image from `UNDEFINED` to `GENERAL`.
    pub fn initialize_image(&mut self, device: &Device, image: vk::Image, levels: u32) -> Result<()> {
        self.run(device, image.as_raw(), |d, cmd| {
            layout_barrier(d, cmd, image, (0, levels), vk::ImageLayout::UNDEFINED, vk::ImageLayout::GENERAL);
        })
    }

    /// Uploads mip `level` (`extent` texels, tightly packed) of an image in `GENERAL` layout.
    pub fn write_image(
        &mut self,
        device: &Device,
        image: vk::Image,
        level: u32,
        extent: (u32, u32),
        texel: u32,
        data: &[u8],
    ) -> Result<()> {
        let rows = self.image_rows(device, extent, texel, data.len())?;
        let row_bytes = (extent.0 * texel) as usize;
        for (i, chunk) in data.chunks(rows as usize * row_bytes).enumerate() {
            let mapped = self.mapped(device)?;
            // SAFETY: the staging buffer holds at least `rows × row_bytes` bytes and is idle.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), mapped, chunk.len()) };
            let region = image_region(level, extent.0, i as u32 * rows, (chunk.len() / row_bytes) as u32);
            self.copy_level(device, Direction::ToDevice, image, level, region)?;
        }
        Ok(())
    }

    /// Downloads mip `level` of an image in `GENERAL` layout into `out`.
    pub fn read_image(
        &mut self,
        device: &Device,
        image: vk::Image,
        level: u32,
        extent: (u32, u32),
        texel: u32,
        out: &mut [u8],
    ) -> Result<()> {
        let rows = self.image_rows(device, extent, texel, out.len())?;
        let row_bytes = (extent.0 * texel) as usize;
        for (i, chunk) in out.chunks_mut(rows as usize * row_bytes).enumerate() {
            let region = image_region(level, extent.0, i as u32 * rows, (chunk.len() / row_bytes) as u32);
            self.copy_level(device, Direction::ToHost, image, level, region)?;
            let mapped = self.mapped(device)?;
            // SAFETY: the copy completed and was made visible to the host.
            unsafe { std::ptr::copy_nonoverlapping(mapped.cast_const(), chunk.as_mut_ptr(), chunk.len()) };
        }
        Ok(())
    }

    /// Copies `region` of mip `level` between the staging buffer and `image` (in `GENERAL`
    /// layout between copies), through the transfer layout the direction needs, and waits.
    fn copy_level(
        &mut self,
        device: &Device,
        dir: Direction,
        image: vk::Image,
        level: u32,
        region: vk::BufferImageCopy,
    ) -> Result<()> {
        let staging = self.staging.as_ref().map(|s| s.buffer).unwrap_or_default();
        self.run(device, image.as_raw(), |d, cmd| {
            let general = vk::ImageLayout::GENERAL;
            let layout = match dir {
                Direction::ToDevice => vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                Direction::ToHost => vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
            };
            layout_barrier(d, cmd, image, (level, 1), general, layout);
            match dir {
                // SAFETY: a recording command buffer; the region lies inside the level and the
                // staging buffer, and the level is in the layout the copy names.
                Direction::ToDevice => unsafe {
                    d.cmd_copy_buffer_to_image(cmd, staging, image, layout, &[region])
                },
                // SAFETY: as above.
                Direction::ToHost => unsafe {
                    d.cmd_copy_image_to_buffer(cmd, image, layout, staging, &[region])
                },
            }
            layout_barrier(d, cmd, image, (level, 1), layout, general);
            if dir == Direction::ToHost {
                host_read_barrier(d, cmd);
            }
        })
    }

    /// Makes a staging buffer for an image level and returns how many rows fit in it at once.
    fn image_rows(&mut self, device: &Device, extent: (u32, u32), texel: u32, len: usize) -> Result<u32> {
        let row_bytes = u64::from(extent.0) * u64::from(texel);
        if row_bytes > STAGING_CHUNK {
            return Err(Error::InvalidArgument(format!(
                "one row of {row_bytes} bytes exceeds the {STAGING_CHUNK}-byte staging buffer"
            )));
        }
        let size = self.staging(device, len as u64)?;
        Ok(u32::try_from(size / row_bytes).unwrap_or(u32::MAX).clamp(1, extent.1))
    }

    /// Waits until everything submitted to the queue before this call has completed: an empty
    /// batch with the fence, which signals only after every earlier batch on the queue.
    pub fn wait_idle(&mut self, device: &Device) -> Result<()> {
        self.run(device, 0, |_, _| {})
    }

    /// Records commands with `record`, submits them and waits for them. `target` is the raw
    /// handle of the buffer or image the commands use (0 for none): if the wait times out, the
    /// context stays pending on it.
    fn run(
        &mut self,
        device: &Device,
        target: u64,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        // Every caller came through `Device::with_transfer`, which settled the context; this
        // keeps the rule where the objects are reused.
        self.settle(device, EARLIER_COPY)?;
        let d = &device.device;
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the command buffer is not in use (nothing is pending: settled above) and its
        // pool allows resetting it.
        unsafe { d.begin_command_buffer(self.cmd, &begin) }.vk("vkBeginCommandBuffer")?;
        record(d, self.cmd);
        // SAFETY: as above.
        unsafe { d.end_command_buffer(self.cmd) }.vk("vkEndCommandBuffer")?;
        let cmds = [self.cmd];
        let submit = vk::SubmitInfo::default().command_buffers(&cmds);
        // SAFETY: the command buffer and fence belong to this device; the fence is unsignalled
        // and no pending submission uses it (settled above).
        unsafe { device.submit(&[submit], self.fence) }?;
        self.pending = Some(target);
        device.transfer_target.store(target, Ordering::Release);
        self.settle(device, "a staging copy")
    }

    /// Waits (up to the device's transfer timeout) for the pending submission, if any, and
    /// makes the context idle again: the fence reset, nothing pending. Fails with
    /// [`Error::Timeout`] naming `what` while the submission is still queued, leaving the context
    /// pending.
    pub fn settle(&mut self, device: &Device, what: &'static str) -> Result<()> {
        if self.pending.is_none() {
            return Ok(());
        }
        let d = &device.device;
        let timeout = u64::try_from(device.transfer_timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device.
        match unsafe { d.wait_for_fences(&[self.fence], true, timeout) } {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => return Err(Error::Timeout(device.transfer_timeout, what)),
            Err(e) => return Err(Error::vk("vkWaitForFences", e)),
        }
        // SAFETY: the fence is signalled, so the submission that used it has completed.
        unsafe { d.reset_fences(&[self.fence]) }.vk("vkResetFences")?;
        self.pending = None;
        device.transfer_target.store(0, Ordering::Release);
        Ok(())
    }

    /// The raw handle of the buffer or image a pending submission uses (`Some(0)`: none).
    pub fn pending(&self) -> Option<u64> {
        self.pending
    }

    /// Destroys every object of the context.
    ///
    /// # Safety
    /// The objects belong to `d` and none is in use (a pending submission has completed: the
    /// queue was waited idle).
    pub unsafe fn destroy(mut self, d: &ash::Device) {
        if let Some(s) = self.staging.take() {
            // SAFETY: the caller's contract.
            unsafe { destroy_staging(d, s) };
        }
        // SAFETY: the caller's contract; destroying null handles is a no-op.
        unsafe { d.destroy_fence(self.fence, None) };
        // SAFETY: as above; destroying the pool frees its command buffer.
        unsafe { d.destroy_command_pool(self.pool, None) };
    }
}

/// Makes transfer writes visible to the host.
fn host_read_barrier(d: &ash::Device, cmd: vk::CommandBuffer) {
    let barrier = vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::HOST_READ);
    // SAFETY: a recording command buffer of this device.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        )
    };
}

/// Moves mip levels `base..base + count` between layouts, making all earlier memory access available to all later.
fn layout_barrier(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    image: vk::Image,
    (base_mip_level, level_count): (u32, u32),
    from: vk::ImageLayout,
    to: vk::ImageLayout,
) {
    let barrier = vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
        .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
        .old_layout(from)
        .new_layout(to)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(image)
        .subresource_range(vk::ImageSubresourceRange {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            base_mip_level,
            level_count,
            base_array_layer: 0,
            layer_count: 1,
        });
    // SAFETY: a recording command buffer of this device; the image is live.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &[barrier],
        )
    };
}

/// `rows` rows of mip `level`, starting at row `first_row`, tightly packed from staging offset 0.
fn image_region(level: u32, width: u32, first_row: u32, rows: u32) -> vk::BufferImageCopy {
    vk::BufferImageCopy {
        buffer_offset: 0,
        buffer_row_length: 0,
        buffer_image_height: 0,
        image_subresource: vk::ImageSubresourceLayers {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            mip_level: level,
            base_array_layer: 0,
            layer_count: 1,
        },
        image_offset: vk::Offset3D { x: 0, y: first_row as i32, z: 0 },
        image_extent: vk::Extent3D { width, height: rows, depth: 1 },
    }
}

fn staging_len(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// # Safety
/// The staging buffer belongs to `d` and is not in use.
unsafe fn destroy_staging(d: &ash::Device, s: Staging) {
    // SAFETY: the caller's contract.
    unsafe { d.destroy_buffer(s.buffer, None) };
    // The memory is freed (and uncharged) by its drop, now that its buffer is gone.
    drop(s.memory);
}
