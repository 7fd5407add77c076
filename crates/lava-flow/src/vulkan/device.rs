//! A logical Vulkan device: one queue, the external-handle extension loaders, a staging context.

use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ash::vk;

use super::external::{self, Loaders};
use super::instance::{Instance, PhysicalDevice};
use super::transfer::{Transfer, EARLIER_COPY};
use crate::error::{Result, VkResultExt};
use crate::external::Os;

/// A `VkDevice` made for lava-flow, shared by every object created on it.
pub(crate) struct Device {
    /// Keeps the instance alive until the device is destroyed.
    instance: Arc<Instance>,
    pub physical: PhysicalDevice,
    pub device: ash::Device,
    /// The export and import calls of the platform's external-memory and -semaphore extensions
    /// (fd on Unix, win32 on Windows), where the device has them.
    pub external: Loaders,
    /// The one queue; `vkQueueSubmit` needs external synchronisation.
    queue: Mutex<vk::Queue>,
    /// Staging resources for `Buffer::write`/`read`, made on first use.
    transfer: Mutex<Option<Transfer>>,
    /// The raw handle of the buffer or image a timed-out staging submission still uses, 0 when
    /// none (written by the transfer context under its lock): drops read it without the lock and
    /// take the lock only when it names what they destroy.
    pub transfer_target: AtomicU64,
    /// `AllocatorOptions::heap_budget`.
    pub heap_budget: Option<u64>,
    /// `AllocatorOptions::transfer_timeout`: how long the staging context waits for a fence.
    pub transfer_timeout: Duration,
    /// Bytes of each heap held by memory lava-flow allocated (not imported) on this device.
    pub heap_used: Arc<[std::sync::atomic::AtomicU64]>,
}

impl Device {
    /// Creates the logical device with timeline semaphores and the fd extensions it has.
    pub fn new(
        instance: Arc<Instance>,
        physical: PhysicalDevice,
        heap_budget: Option<u64>,
        transfer_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(physical.queue_family)
            .queue_priorities(&priorities)];
        let mut extensions: Vec<*const c_char> = Vec::new();
        let (memory_extension, semaphore_extension) = external::extension_names(Os::HOST);
        if physical.has_external_memory {
            extensions.push(memory_extension.as_ptr());
        }
        if physical.has_external_semaphore {
            extensions.push(semaphore_extension.as_ptr());
        }
        let mut features12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_info)
            .enabled_extension_names(&extensions)
            .push_next(&mut features12);
        // SAFETY: the physical device belongs to `instance`; `info` points at live locals.
        let device =
            unsafe { instance.instance.create_device(physical.handle, &info, None) }.vk("vkCreateDevice")?;
        // SAFETY: the family was created with one queue.
        let queue = unsafe { device.get_device_queue(physical.queue_family, 0) };
        let external = Loaders::new(
            &instance.instance,
            &device,
            physical.has_external_memory,
            physical.has_external_semaphore,
        );
        Ok(Arc::new(Device {
            instance,
            device,
            external,
            queue: Mutex::new(queue),
            transfer: Mutex::new(None),
            transfer_target: AtomicU64::new(0),
            heap_budget,
            transfer_timeout,
            heap_used: (0..physical.memory.memory_heap_count).map(|_| Default::default()).collect(),
            physical,
        }))
    }

    /// The instance's functions (physical-device queries).
    pub fn instance_fns(&self) -> &ash::Instance {
        &self.instance.instance
    }

    /// Submits batches to the queue, holding its lock for the call only.
    ///
    /// # Safety
    /// Every handle in `submits` must belong to this device and be valid until the work is done.
    pub unsafe fn submit(&self, submits: &[vk::SubmitInfo<'_>], fence: vk::Fence) -> Result<()> {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the queue is externally synchronised by the lock; the caller vouches for the
        // handles.
        unsafe { self.device.queue_submit(*queue, submits, fence) }.vk("vkQueueSubmit")
    }

    /// Runs `f` with exclusive use of the staging context, created on first use, and idle: a
    /// submission of an earlier call that timed out is waited for first (up to the transfer
    /// timeout), and while it is still queued `f` does not run and the result is
    /// [`Error::Timeout`](crate::Error::Timeout) naming it.
    pub fn with_transfer<R>(&self, f: impl FnOnce(&mut Transfer) -> Result<R>) -> Result<R> {
        let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
        let transfer = match slot.as_mut() {
            Some(t) => t,
            None => slot.insert(Transfer::new(self)?),
        };
        transfer.settle(self, EARLIER_COPY)?;
        f(transfer)
    }

    /// Called by a buffer or image (`object`: its raw handle) before it is destroyed: if a
    /// staging submission that timed out still uses it, waits for that (up to the transfer
    /// timeout). `false` if it is still queued: the object, and the memory under it, must then
    /// be leaked rather than destroyed under the GPU (the error is logged).
    pub fn release_from_transfer(&self, object: u64) -> bool {
        if object == 0 || self.transfer_target.load(Ordering::Acquire) != object {
            return true;
        }
        let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(transfer) = slot.as_mut() else { return true };
        if transfer.pending() != Some(object) {
            return true;
        }
        match transfer.settle(self, "a staging copy into an object being dropped") {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "{e}: the buffer or image (and its memory) is leaked, not destroyed while the GPU may \
                     still use it"
                );
                false
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let queue = self.queue.get_mut().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: no other reference to the device exists (this is its drop); waiting makes
        // sure nothing still runs before the objects below are destroyed.
        if let Err(e) = unsafe { self.device.queue_wait_idle(*queue) } {
            log::error!("vkQueueWaitIdle failed while destroying a device: {e}");
        }
        if let Some(transfer) = self.transfer.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            // SAFETY: the transfer's objects belong to this device and are idle.
            unsafe { transfer.destroy(&self.device) };
        }
        // SAFETY: every buffer, block and semaphore holds an `Arc<Device>`, so none is left.
        unsafe { self.device.destroy_device(None) };
    }
}
