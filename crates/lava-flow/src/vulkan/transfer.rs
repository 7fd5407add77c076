//! Staging copies between host memory and buffers the CPU cannot map.
//!
//! One command buffer, one fence and one host-visible staging buffer per device, used under the
//! device's transfer lock. Data moves in chunks of at most [`STAGING_CHUNK`] bytes; each chunk is
//! submitted and waited for before the next, so `write` and `read` are synchronous.

use std::time::Duration;

use ash::vk;

use super::conv;
use super::device::Device;
use super::memory::{MemoryDesc, RawMemory};
use crate::error::{Error, Result, VkResultExt};
use crate::location::MemoryLocation;

/// The largest staging buffer, and so the largest copy per submission.
pub(crate) const STAGING_CHUNK: u64 = 16 << 20;
/// The smallest staging buffer made.
const STAGING_MIN: u64 = 1 << 20;
/// How long one chunk's copy may take before the transfer is reported as hung.
const FENCE_TIMEOUT: Duration = Duration::from_secs(60);

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
}

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
        let mut transfer =
            Transfer { pool, cmd: vk::CommandBuffer::null(), fence: vk::Fence::null(), staging: None };
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

    fn mapped(&self, device: &Device) -> Result<*mut u8> {
        self.staging.as_ref().and_then(|s| s.memory.mapped).map(|m| m.0.as_ptr()).ok_or_else(|| {
            Error::Unsupported { what: format!("no mapped staging buffer on {}", device.physical.info.name) }
        })
    }

    /// Makes sure a staging buffer of at least `min(len, STAGING_CHUNK)` bytes exists.
    fn staging(&mut self, device: &Device, len: u64) -> Result<u64> {
        let want = len.clamp(STAGING_MIN, STAGING_CHUNK);
        if let Some(s) = &self.staging {
            if s.size >= want {
                return Ok(s.size);
            }
        }
        if let Some(old) = self.staging.take() {
            // SAFETY: every copy through it was waited for.
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
        let memory = conv::choose_memory_type(
            &device.physical.memory,
            req.memory_type_bits,
            host,
            device.physical.info.device_type,
        )
        .ok_or_else(|| Error::LocationUnavailable {
            location: host.to_string(),
            reason: format!("staging buffer: {}", conv::location_requirement(host)),
        })
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
                Err(e) => {
                    // SAFETY: nothing is bound to the memory.
                    unsafe { memory.free(device) };
                    Err(Error::vk("vkBindBufferMemory", e))
                }
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
        let d = &device.device;
        let staging = self.staging.as_ref().map(|s| s.buffer).unwrap_or_default();
        let (src, dst) = match dir {
            Direction::ToDevice => (staging, buffer),
            Direction::ToHost => (buffer, staging),
        };
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the command buffer is not in use (the last submission was waited for) and its
        // pool allows resetting it; `src` and `dst` are live buffers of this device.
        unsafe { d.begin_command_buffer(self.cmd, &begin) }.vk("vkBeginCommandBuffer")?;
        // SAFETY: as above; the region lies inside both buffers (checked by the callers).
        unsafe { d.cmd_copy_buffer(self.cmd, src, dst, &[region]) };
        if dir == Direction::ToHost {
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ);
            // SAFETY: a recording command buffer of this device.
            unsafe {
                d.cmd_pipeline_barrier(
                    self.cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &[barrier],
                    &[],
                    &[],
                )
            };
        }
        // SAFETY: as above.
        unsafe { d.end_command_buffer(self.cmd) }.vk("vkEndCommandBuffer")?;
        let cmds = [self.cmd];
        let submit = vk::SubmitInfo::default().command_buffers(&cmds);
        // SAFETY: the command buffer and fence belong to this device; the fence is unsignalled.
        unsafe { device.submit(&[submit], self.fence) }?;
        let timeout = u64::try_from(FENCE_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device.
        let waited = unsafe { d.wait_for_fences(&[self.fence], true, timeout) };
        match waited {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => return Err(Error::Timeout(FENCE_TIMEOUT, "a staging copy")),
            Err(e) => return Err(Error::vk("vkWaitForFences", e)),
        }
        // SAFETY: the fence is signalled and no longer in use.
        unsafe { d.reset_fences(&[self.fence]) }.vk("vkResetFences")
    }

    /// Destroys every object of the context.
    ///
    /// # Safety
    /// The objects belong to `d` and none is in use.
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

fn staging_len(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// # Safety
/// The staging buffer belongs to `d` and is not in use.
unsafe fn destroy_staging(d: &ash::Device, s: Staging) {
    // SAFETY: the caller's contract.
    unsafe { d.destroy_buffer(s.buffer, None) };
    // SAFETY: the caller's contract; the buffer bound to it is gone.
    unsafe { d.free_memory(s.memory.memory, None) };
}
