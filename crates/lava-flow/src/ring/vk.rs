//! A ring seen from another Vulkan device: a second allocator of the same physical device (as
//! another library or process would have), or a second `VkDevice`.

use std::time::Duration;

use super::{End, FrameStep, Ring};
use crate::error::{Error, Result};
use crate::vulkan::{Buffer, MemoryAllocator, Submission, TimelineSemaphore};

/// How long the host fallback waits for a timeline value.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// A buffer [`Ring`] imported into another Vulkan device ([`Ring::import_vulkan`]): the slots as
/// that device's [`Buffer`]s and the two timelines as its semaphores, so that its submissions
/// wait and signal on the GPU.
///
/// Where the ring's device cannot export timelines (lavapipe), [`submit`](VulkanRing::submit)
/// orders through the host: it waits for the step's value on the host before submitting, and
/// after a submission that signals, waits for it (through a timeline of this device) and signals
/// the ring's timeline from the host. [`is_gpu_ordered`](VulkanRing::is_gpu_ordered) says which.
///
/// Drop it before the ring. Its drop waits for this device's queue to be idle, so that no
/// submission still uses the imported slots when they go.
pub struct VulkanRing<'r> {
    ring: &'r Ring,
    allocator: MemoryAllocator,
    device_id: u32,
    buffers: Vec<Buffer>,
    /// `(written, released)` imported here, or `None` for the host fallback.
    timelines: Option<(TimelineSemaphore, TimelineSemaphore)>,
    /// This device's own timeline, which the host fallback waits on.
    done: TimelineSemaphore,
    next_done: std::cell::Cell<u64>,
}

impl std::fmt::Debug for VulkanRing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanRing")
            .field("device_id", &self.device_id)
            .field("slots", &self.buffers.len())
            .field("gpu_ordered", &self.timelines.is_some())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Imports this buffer ring into `allocator`'s device `device_id` (the same physical
    /// device, compared by UUID): each slot once, and the timelines where the device exports
    /// them. Errors: [`Error::Unsupported`] for an image ring (lava-flow has no Vulkan image
    /// import yet; GL, CUDA and OpenCL import image rings); [`Error::DeviceMismatch`]; Vulkan
    /// errors.
    pub fn import_vulkan(&self, allocator: &MemoryAllocator, device_id: u32) -> Result<VulkanRing<'_>> {
        if !self.images().is_empty() {
            return Err(Error::Unsupported {
                what: "importing an image ring into another Vulkan device (buffer rings only)".into(),
            });
        }
        let mut allocator = allocator.clone();
        let buffers = self
            .buffers()
            .iter()
            .map(|b| allocator.import_memory(device_id, b.export()?))
            .collect::<Result<Vec<_>>>()?;
        let timelines = if self.is_exportable() {
            let written = allocator.import_timeline_semaphore(device_id, self.written().export()?)?;
            let released = allocator.import_timeline_semaphore(device_id, self.released().export()?)?;
            Some((written, released))
        } else {
            None
        };
        let done = allocator.timeline_semaphore(device_id)?;
        Ok(VulkanRing {
            ring: self,
            allocator,
            device_id,
            buffers,
            timelines,
            done,
            next_done: Default::default(),
        })
    }
}

impl VulkanRing<'_> {
    /// The slots, as buffers of this device.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// Whether waits and signals happen on the GPU (`false`: the host fallback).
    pub fn is_gpu_ordered(&self) -> bool {
        self.timelines.is_some()
    }

    /// Submits `submission` (command buffers and whatever else the caller added) to this device
    /// with `step`'s wait before it and its signal after. Errors: a step of another ring
    /// ([`Error::Ring`]); [`Error::Timeout`] when the host fallback waits in vain; Vulkan errors.
    pub fn submit<'s>(&'s self, step: &FrameStep, submission: Submission<'s>) -> Result<()> {
        self.ring.check_step(step)?;
        if let Some((written, released)) = &self.timelines {
            let (wait_on, signal_on) = match step.end {
                End::Producer => (released, written),
                End::Consumer => (written, released),
            };
            let mut s = submission;
            if let Some(v) = step.wait {
                s = s.wait(wait_on, v);
            }
            if let Some(v) = step.signal {
                s = s.signal(signal_on, v);
            }
            return self.allocator.submit(self.device_id, &s);
        }
        if let Some(v) = step.wait {
            self.ring.wait_timeline(step.end).wait(v, FALLBACK_TIMEOUT)?;
        }
        let Some(v) = step.signal else {
            return self.allocator.submit(self.device_id, &submission);
        };
        let done = self.next_done.get() + 1;
        self.next_done.set(done);
        self.allocator.submit(self.device_id, &submission.signal(&self.done, done))?;
        self.done.wait(done, FALLBACK_TIMEOUT)?;
        self.ring.signal_timeline(step.end).signal(v)
    }

    /// Waits until this device's queue is idle (a fenced wait, which also tells the validation
    /// layer that the work waiting for the ring's values is done).
    pub fn wait_idle(&self) -> Result<()> {
        self.allocator.wait_idle(self.device_id)
    }

    /// The allocator of this device (a clone of the one given to [`Ring::import_vulkan`]).
    pub fn allocator(&self) -> &MemoryAllocator {
        &self.allocator
    }

    /// The device id in [`allocator`](VulkanRing::allocator).
    pub fn device_id(&self) -> u32 {
        self.device_id
    }
}

impl Drop for VulkanRing<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.allocator.wait_idle(self.device_id) {
            log::error!("VulkanRing: waiting for the device before releasing the imported slots: {e}");
        }
    }
}
