//! A logical Vulkan device: one queue, the external-handle extension loaders, a staging context.

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use ash::vk;

use super::external::{self, Loaders};
use super::instance::{Instance, PhysicalDevice};
use super::transfer::{Transfer, EARLIER_COPY, FENCE_SPIN};
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
    /// `VK_EXT_external_memory_host`, where the device has it and
    /// `AllocatorOptions::host_memory_import` allows it: transfers copy straight from and into
    /// the caller's memory.
    pub host_import: Option<HostImportExt>,
    /// How many batches were submitted to the queue (counted under its lock): a transfer that
    /// drained the queue submits its copy only if nothing was queued after the drain.
    submitted: AtomicU64,
    /// The timeline the asynchronous transfers signal (`vk::Semaphore` of the staging context,
    /// set once that context exists): drops wait on it without the context's lock.
    pub transfer_timeline: OnceLock<vk::Semaphore>,
    /// Transfers copied straight from or into imported host memory, and through staging.
    pub imported_transfers: AtomicU64,
    pub staged_transfers: AtomicU64,
    /// Bytes of each heap held by memory lava-flow allocated (not imported) on this device.
    pub heap_used: Arc<[std::sync::atomic::AtomicU64]>,
    /// `false` for the caller's device (`MemoryAllocator::from_raw`): lava-flow destroys what it
    /// made on it, never the device.
    owned: bool,
    /// A timeline only lava-flow uses: every [`Submission`](crate::Submission) also signals it
    /// with its own number, so the device knows which submissions have completed.
    progress: vk::Semaphore,
    /// The submissions numbered so far, and the semaphores dropped while one may still use them.
    tracker: Mutex<Tracker>,
}

/// How a device is wrapped ([`Device::wrap`]).
struct Settings {
    heap_budget: Option<u64>,
    transfer_timeout: Duration,
    host_alignment: Option<u64>,
    owned: bool,
}

/// What [`Device::submit_tracked`] and the semaphores' drops share.
#[derive(Default)]
struct Tracker {
    /// The number of the last tracked submission (the value it signals on `progress`).
    submitted: u64,
    /// Semaphores dropped while a submission could still use them: destroyed once `progress`
    /// reaches their last use.
    deferred: Vec<Retired>,
}

/// A semaphore its owner dropped, kept until the submissions that use it have completed.
pub(crate) struct Retired {
    pub semaphore: vk::Semaphore,
    /// The number of the last tracked submission that uses it.
    pub last_use: u64,
    /// For a timeline: the highest value a submission waits for, and the values submissions
    /// will signal — what the device's drop needs to release waits nobody will satisfy.
    pub timeline: Option<(u64, Vec<u64>)>,
}

/// The queue, held for one tracked submission: [`Device::submit_tracked`].
pub(crate) struct TrackedQueue<'d> {
    device: &'d Device,
    queue: vk::Queue,
    /// The device's progress timeline: the submission must signal it with `number`.
    pub progress: vk::Semaphore,
    /// This submission's number.
    pub number: u64,
}

impl TrackedQueue<'_> {
    /// Submits the batch.
    ///
    /// # Safety
    /// As [`Device::submit_counted`]; the batch signals `progress` with `number`.
    pub unsafe fn submit(&self, submit: vk::SubmitInfo<'_>, fence: vk::Fence) -> Result<()> {
        // SAFETY: the queue is held by the caller of `submit_tracked`; the caller vouches for the
        // handles.
        unsafe { self.device.device.queue_submit(self.queue, &[submit], fence) }.vk("vkQueueSubmit")
    }
}

impl Device {
    /// Creates the logical device with timeline semaphores and the fd extensions it has.
    pub fn new(
        instance: Arc<Instance>,
        physical: PhysicalDevice,
        heap_budget: Option<u64>,
        transfer_timeout: Duration,
        host_memory_import: bool,
        global_priority: Option<super::QueueGlobalPriority>,
    ) -> Result<Arc<Self>> {
        let priorities = [1.0f32];
        let mut extensions: Vec<*const c_char> = Vec::new();
        let mut global = vk::DeviceQueueGlobalPriorityCreateInfoKHR::default();
        let mut queue_info = vk::DeviceQueueCreateInfo::default()
            .queue_family_index(physical.queue_family)
            .queue_priorities(&priorities);
        if let Some(priority) = global_priority {
            extensions.push(global_priority_extension(&instance, &physical)?.as_ptr());
            global = global.global_priority(priority.to_vk());
            queue_info = queue_info.push_next(&mut global);
        }
        let queue_info = [queue_info];
        let (memory_extension, semaphore_extension) = external::extension_names(Os::HOST);
        if physical.has_external_memory {
            extensions.push(memory_extension.as_ptr());
        }
        if physical.has_external_semaphore {
            extensions.push(semaphore_extension.as_ptr());
        }
        let host_alignment =
            if host_memory_import { host_import_alignment(&instance, &physical)? } else { None };
        if host_alignment.is_some() {
            extensions.push(ash::ext::external_memory_host::NAME.as_ptr());
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
        let settings = Settings { heap_budget, transfer_timeout, host_alignment, owned: true };
        // SAFETY: the device was just made from `instance` and `physical` with timeline semaphores
        // and the extensions `physical` says it has; the queue is its only one.
        unsafe { Self::wrap(instance, physical, device, queue, settings) }
    }

    /// Wraps a device the caller created (see `MemoryAllocator::from_raw`): never destroyed
    /// here. `queue` is null when lava-flow may submit nothing; `host_memory_import` is honoured
    /// only where the caller enabled `VK_EXT_external_memory_host`.
    ///
    /// # Safety
    /// `device` was created from `physical` of `instance` with timeline semaphores and every
    /// extension `physical` says it has; `queue` (if not null) belongs to it, in family
    /// `physical.queue_family`, and only lava-flow uses it while this device lives.
    pub unsafe fn from_caller(
        instance: Arc<Instance>,
        physical: PhysicalDevice,
        device: ash::Device,
        queue: vk::Queue,
        host_import_enabled: bool,
        options: (Option<u64>, Duration, bool),
    ) -> Result<Arc<Self>> {
        let (heap_budget, transfer_timeout, host_memory_import) = options;
        let host_alignment = if host_memory_import && host_import_enabled {
            host_import_alignment(&instance, &physical)?
        } else {
            None
        };
        let settings = Settings { heap_budget, transfer_timeout, host_alignment, owned: false };
        // SAFETY: the caller's contract.
        unsafe { Self::wrap(instance, physical, device, queue, settings) }
    }

    /// Makes the device's own objects (the progress timeline) and the loaders.
    ///
    /// # Safety
    /// As for [`Device::from_caller`]; an owned device is destroyed if this fails.
    unsafe fn wrap(
        instance: Arc<Instance>,
        physical: PhysicalDevice,
        device: ash::Device,
        queue: vk::Queue,
        settings: Settings,
    ) -> Result<Arc<Self>> {
        let external = Loaders::new(
            &instance.instance,
            &device,
            physical.has_external_memory,
            physical.has_external_semaphore,
        );
        let mut timeline = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let progress_info = vk::SemaphoreCreateInfo::default().push_next(&mut timeline);
        // SAFETY: a live device with timeline semaphores enabled; `progress_info` points at locals.
        let progress = match unsafe { device.create_semaphore(&progress_info, None) }.vk("vkCreateSemaphore")
        {
            Ok(s) => s,
            Err(e) => {
                if settings.owned {
                    // SAFETY: nothing was made on the device yet.
                    unsafe { device.destroy_device(None) };
                }
                return Err(e);
            }
        };
        let host_import = settings.host_alignment.map(|alignment| HostImportExt {
            loader: ash::ext::external_memory_host::Device::new(&instance.instance, &device),
            alignment,
        });
        Ok(Arc::new(Device {
            instance,
            device,
            external,
            queue: Mutex::new(queue),
            transfer: Mutex::new(None),
            transfer_target: AtomicU64::new(0),
            heap_budget: settings.heap_budget,
            transfer_timeout: settings.transfer_timeout,
            host_import,
            submitted: AtomicU64::new(0),
            transfer_timeline: OnceLock::new(),
            imported_transfers: AtomicU64::new(0),
            staged_transfers: AtomicU64::new(0),
            heap_used: (0..physical.memory.memory_heap_count).map(|_| Default::default()).collect(),
            physical,
            progress,
            tracker: Mutex::new(Tracker::default()),
            owned: settings.owned,
        }))
    }

    /// The queue, locked, or [`Error::NoQueue`](crate::Error::NoQueue) naming `what` on a device
    /// adopted without one.
    fn lock_queue(&self, what: &'static str) -> Result<MutexGuard<'_, vk::Queue>> {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if *queue == vk::Queue::null() {
            return Err(crate::Error::NoQueue { what, device: self.physical.info.name.clone() });
        }
        Ok(queue)
    }

    /// How far the device's tracked submissions have got: every one numbered up to this value
    /// has completed.
    fn progress_value(&self) -> Result<u64> {
        // SAFETY: `progress` is a live timeline semaphore of this device.
        unsafe { self.device.get_semaphore_counter_value(self.progress) }.vk("vkGetSemaphoreCounterValue")
    }

    /// Runs `submit` with the queue held and the next submission number, which the batch must
    /// signal on the progress timeline. Returns that number once the submission has been made;
    /// on error nothing was submitted and the number is not used. Semaphores dropped earlier
    /// whose submissions have completed are destroyed here.
    pub fn submit_tracked(&self, submit: impl FnOnce(&TrackedQueue<'_>) -> Result<()>) -> Result<u64> {
        let queue = self.lock_queue("MemoryAllocator::submit")?;
        let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        let number = tracker.submitted + 1;
        submit(&TrackedQueue { device: self, queue: *queue, progress: self.progress, number })?;
        tracker.submitted = number;
        // Counted with every batch too: a transfer that drained the queue sees it.
        self.submitted.fetch_add(1, Ordering::Relaxed);
        drop(queue);
        self.destroy_completed(&mut tracker);
        Ok(number)
    }

    /// Runs `f` with the queue held: no submission is made meanwhile (host signals check pending
    /// queue signals this way).
    pub fn with_queue_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let _queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        f()
    }

    /// Called by a semaphore's drop: destroys it now if no tracked submission that may use it
    /// (`last_use`, 0 for none) is still pending, else once that one has completed (the next
    /// submission, or the device's drop, destroys it). A semaphore is never destroyed while a
    /// submission waits on it or will signal it (VUID-vkDestroySemaphore-semaphore-01137), and
    /// dropping one never waits for the GPU.
    pub fn retire_semaphore(&self, retired: Retired) {
        let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        tracker.deferred.push(retired);
        self.destroy_completed(&mut tracker);
    }

    /// How many dropped semaphores wait to be destroyed (see [`Device::retire_semaphore`]);
    /// those whose submissions have completed are destroyed first.
    pub fn retired_semaphores(&self) -> u64 {
        let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        self.destroy_completed(&mut tracker);
        tracker.deferred.len() as u64
    }

    fn destroy_completed(&self, tracker: &mut Tracker) {
        if tracker.deferred.is_empty() {
            return;
        }
        let done = match self.progress_value() {
            Ok(v) => v,
            Err(e) => {
                log::error!("{e}: semaphores dropped on this device are kept until it is dropped");
                return;
            }
        };
        tracker.deferred.retain(|retired| {
            // Strictly below: `progress` reaching a batch's number says that batch's signal of
            // `progress` happened, not that its other signals did (Vulkan does not order the
            // signal operations of one batch; Mesa's queue thread was seen signalling the others
            // after it, into a semaphore already destroyed). A later batch's completion is
            // reached only once the queue has finished the earlier one.
            // `last_use` 0: no tracked submission used it (the first is number 1), so nothing
            // queued can. Kept until `done` passed 0 instead, a semaphore of a device that never
            // submitted stayed until the device's drop — on NVIDIA with the fd each exportable or
            // imported semaphore holds (`attack_ring`: 3 fds per ring imported into a second
            // device that never submitted).
            if retired.last_use != 0 && retired.last_use >= done {
                return true;
            }
            // SAFETY: the semaphore belongs to this device, its owner has dropped it, and every
            // submission that used it has completed (`progress` passed its number).
            unsafe { self.device.destroy_semaphore(retired.semaphore, None) };
            false
        });
    }

    /// The instance's functions (physical-device queries).
    pub fn instance_fns(&self) -> &ash::Instance {
        &self.instance.instance
    }

    /// Submits batches to the queue, holding its lock for the call only; returns how many
    /// batches the queue had received once these were submitted (see [`Device::submit_if_last`]).
    ///
    /// # Safety
    /// Every handle in `submits` must belong to this device and be valid until the work is done.
    pub unsafe fn submit_counted(&self, submits: &[vk::SubmitInfo<'_>], fence: vk::Fence) -> Result<u64> {
        let queue = self.lock_queue("a staging copy")?;
        // SAFETY: the queue is externally synchronised by the lock; the caller vouches for the
        // handles.
        unsafe { self.device.queue_submit(*queue, submits, fence) }.vk("vkQueueSubmit")?;
        Ok(self.submitted.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Submits `submits` only if the queue has received nothing since the submission that
    /// [`Device::submit_counted`] numbered `last`; `false` (nothing submitted) otherwise.
    ///
    /// # Safety
    /// As for [`Device::submit_counted`].
    pub unsafe fn submit_if_last(
        &self,
        last: u64,
        submits: &[vk::SubmitInfo<'_>],
        fence: vk::Fence,
    ) -> Result<bool> {
        let queue = self.lock_queue("a staging copy")?;
        if self.submitted.load(Ordering::Relaxed) != last {
            return Ok(false);
        }
        // SAFETY: as in `submit_counted`.
        unsafe { self.device.queue_submit(*queue, submits, fence) }.vk("vkQueueSubmit")?;
        self.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Runs `f` with exclusive use of the staging context, created on first use, and idle: a
    /// submission of an earlier call that timed out is waited for first (up to the transfer
    /// timeout), and while it is still queued `f` does not run and the result is
    /// [`Error::Timeout`](crate::Error::Timeout) naming it.
    pub fn with_transfer<R>(&self, f: impl FnOnce(&mut Transfer) -> Result<R>) -> Result<R> {
        drop(self.lock_queue("a staging copy, an image's first layout change or wait_idle")?);
        let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
        let transfer = match slot.as_mut() {
            Some(t) => t,
            None => slot.insert(Transfer::new(self)?),
        };
        let freed = transfer.reap(self);
        let result = transfer.settle(self, EARLIER_COPY).and_then(|()| f(transfer));
        // Freed once the lock is released: see `Transfer::reap`.
        drop(slot);
        drop(freed);
        result
    }

    /// Keeps an asynchronous transfer's job whose wait failed, and the host memory it owns,
    /// until it completes (see [`Transfer::adopt`]).
    pub fn adopt(&self, job: super::transfer::Job, host: Box<dyn Send>) {
        let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(transfer) => transfer.adopt(job, host),
            // Unreachable: the job came from the context. Leaked rather than destroyed in use.
            None => std::mem::forget((job, host)),
        }
    }

    /// Completes an asynchronous transfer through the staging ring whose value was reached (see
    /// [`Transfer::finish_ring`]); the context's lock only, no settling.
    pub fn finish_ring(&self, value: u64) {
        let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(transfer) = slot.as_mut() {
            transfer.finish_ring(value);
        }
    }

    /// Copies an asynchronous read's held bytes (transfer value `value`) out as their GPU
    /// copies complete, the first while the GPU still brings the rest, up to the transfer
    /// timeout in all. The context's lock is held only to copy what has arrived
    /// ([`Transfer::drain_ready`]), never across a wait: other threads' transfers, and what they
    /// may signal that this read's queue waits for, go on meanwhile. Each wait polls the
    /// timeline's counter for [`FENCE_SPIN`] and then blocks in `vkWaitSemaphores` (a form that
    /// polled without end hung on NVIDIA: docs/RELIABILITY.md). On a timeout or another error the
    /// rest stays held.
    pub fn drain_held(&self, value: u64) -> crate::Result<()> {
        let deadline = std::time::Instant::now().checked_add(self.transfer_timeout);
        loop {
            let next = {
                let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
                match slot.as_mut() {
                    Some(transfer) => transfer.drain_ready(self, value)?,
                    None => None,
                }
            };
            let Some(next) = next else { return Ok(()) };
            let Some(&timeline) = self.transfer_timeline.get() else { return Ok(()) };
            // Poll briefly first, as a slot's settling does (`FENCE_SPIN`): a piece lands within
            // microseconds, and waking from a blocking wait costs more on some drivers. The
            // counter is read without the context's lock.
            let spin = std::time::Instant::now();
            while spin.elapsed() < FENCE_SPIN {
                // SAFETY: the transfer timeline is a live timeline semaphore of this device.
                let now = unsafe { self.device.get_semaphore_counter_value(timeline) }
                    .vk("vkGetSemaphoreCounterValue")?;
                if now >= next {
                    break;
                }
                std::hint::spin_loop();
            }
            let left =
                deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(std::time::Instant::now()));
            match self.wait_timeline(timeline, next, left) {
                Ok(()) => {}
                Err(vk::Result::TIMEOUT) => {
                    return Err(crate::Error::Timeout(self.transfer_timeout, "an asynchronous transfer"))
                }
                Err(e) => return Err(crate::Error::vk("vkWaitSemaphores", e)),
            }
        }
    }

    /// Copies of host transfers still in flight on this device (see [`Transfer::in_flight`]).
    pub fn transfers_in_flight(&self) -> u64 {
        let mut slot = self.transfer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(transfer) = slot.as_mut() else { return 0 };
        let freed = transfer.reap(self);
        let count = transfer.in_flight(self);
        // Freed once the lock is released: see `Transfer::reap`.
        drop(slot);
        drop(freed);
        count
    }

    /// Called by a buffer or image (`object`: its raw handle) before it is destroyed: if a
    /// staging submission that timed out still uses it, waits for that (up to the transfer
    /// timeout). `false` if it is still queued: the object, and the memory under it, must then
    /// be leaked rather than destroyed under the GPU (the error is logged).
    ///
    /// `async_value` is the transfer-timeline value of the object's last asynchronous transfer
    /// (0 for none): it is waited for too, with the same rule.
    pub fn release_from_transfer(&self, object: u64, async_value: u64) -> bool {
        if async_value != 0 {
            if let Err(e) = self.wait_transfer_value(async_value) {
                log::error!(
                    "{e}: the buffer or image (and its memory) is leaked, not destroyed while an \
                     asynchronous transfer may still use it"
                );
                return false;
            }
        }
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

impl Device {
    /// Waits up to `timeout` for every tracked submission to complete.
    fn wait_for_submissions(&self, submitted: u64, timeout: Duration) -> Result<()> {
        self.wait_timeline(self.progress, submitted, timeout).vk("vkWaitSemaphores")
    }

    /// Blocks in `vkWaitSemaphores` until `semaphore` (a timeline of this device that lava-flow
    /// made and keeps for the device's life) reaches `value`, or `timeout` passes
    /// (`VK_TIMEOUT`).
    fn wait_timeline(
        &self,
        semaphore: vk::Semaphore,
        value: u64,
        timeout: Duration,
    ) -> ash::prelude::VkResult<()> {
        let semaphores = [semaphore];
        let values = [value];
        let wait = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the caller's semaphore is a live timeline semaphore of this device.
        unsafe { self.device.wait_semaphores(&wait, timeout) }
    }

    /// For the device's drop, when submissions still wait after the timeout: every semaphore
    /// they use has been dropped by its owner (each holds the device), so nobody in this process
    /// can signal them any more. Signals each dropped timeline from the host up to the highest
    /// value a submission waits for — or just below a pending signal at or under it, which its
    /// own submission will make — so that the queued work can run and complete. Returns whether
    /// any value was signalled.
    fn release_waits(deferred: &[Retired], device: &ash::Device) -> bool {
        let mut signalled = false;
        for retired in deferred {
            let Some((wait_max, pending)) = &retired.timeline else { continue };
            // SAFETY: a live timeline semaphore of this device.
            let Ok(current) = (unsafe { device.get_semaphore_counter_value(retired.semaphore) }) else {
                continue;
            };
            let value = match pending.iter().copied().filter(|&p| p > current).min() {
                Some(p) if p <= *wait_max => p - 1,
                _ => *wait_max,
            };
            if value <= current {
                continue;
            }
            let info = vk::SemaphoreSignalInfo::default().semaphore(retired.semaphore).value(value);
            // SAFETY: a live timeline semaphore of this device; the value is above the counter and
            // below every pending signal.
            match unsafe { device.signal_semaphore(&info) } {
                Ok(()) => signalled = true,
                Err(e) => log::error!("vkSignalSemaphore failed while releasing a wait: {e}"),
            }
        }
        signalled
    }
}

impl Device {
    /// Waits (up to the transfer timeout) until the transfer timeline reaches `value`, the value
    /// of an asynchronous transfer.
    pub fn wait_transfer_value(&self, value: u64) -> Result<()> {
        self.wait_transfer_value_of(value, "an asynchronous transfer")
    }

    /// [`wait_transfer_value`](Device::wait_transfer_value) for the value of `what`, which a
    /// timeout names.
    pub fn wait_transfer_value_of(&self, value: u64, what: &'static str) -> Result<()> {
        let Some(&timeline) = self.transfer_timeline.get() else {
            // Nothing was ever submitted with a value on this device.
            return Ok(());
        };
        match self.wait_timeline(timeline, value, self.transfer_timeout) {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => Err(crate::Error::Timeout(self.transfer_timeout, what)),
            Err(e) => Err(crate::Error::vk("vkWaitSemaphores", e)),
        }
    }

    /// Whether the transfer timeline has reached `value`.
    pub fn transfer_value_reached(&self, value: u64) -> Result<bool> {
        let Some(&timeline) = self.transfer_timeline.get() else { return Ok(true) };
        // SAFETY: as in `wait_transfer_value`.
        let now =
            unsafe { self.device.get_semaphore_counter_value(timeline) }.vk("vkGetSemaphoreCounterValue")?;
        Ok(now >= value)
    }
}

/// `VK_EXT_external_memory_host` on a device.
pub(crate) struct HostImportExt {
    pub loader: ash::ext::external_memory_host::Device,
    /// `minImportedHostPointerAlignment`: imports start and end at multiples of it.
    pub alignment: u64,
}

/// `minImportedHostPointerAlignment` where the device has `VK_EXT_external_memory_host` and the
/// alignment is at most the host's page size (imports are rounded out to it, and only within
/// the pages that hold the caller's bytes is memory sure to be mapped); `None` otherwise.
fn host_import_alignment(instance: &Instance, physical: &PhysicalDevice) -> Result<Option<u64>> {
    let inst = &instance.instance;
    // SAFETY: the physical device belongs to this instance.
    let extensions = unsafe { inst.enumerate_device_extension_properties(physical.handle) }
        .vk("vkEnumerateDeviceExtensionProperties")?;
    let name = ash::ext::external_memory_host::NAME;
    if !extensions.iter().any(|e| e.extension_name_as_c_str().ok() == Some(name)) {
        return Ok(None);
    }
    // The import's buffer: transfer source and destination, bound to host memory.
    let buffer_info = vk::PhysicalDeviceExternalBufferInfo::default()
        .usage(super::transfer::HOST_BUFFER_USAGE)
        .handle_type(vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT);
    let mut buffer_props = vk::ExternalBufferProperties::default();
    // SAFETY: as above; `buffer_info` and `buffer_props` outlive the call.
    unsafe {
        inst.get_physical_device_external_buffer_properties(physical.handle, &buffer_info, &mut buffer_props)
    };
    let features = buffer_props.external_memory_properties.external_memory_features;
    if !features.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE) {
        log::info!("{}: host allocations cannot back transfer buffers: transfers stage", physical.info.name);
        return Ok(None);
    }
    let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
    // SAFETY: as above; the chained struct outlives the call.
    unsafe { inst.get_physical_device_properties2(physical.handle, &mut props) };
    let alignment = host.min_imported_host_pointer_alignment;
    let page = page_size();
    if alignment == 0 || !alignment.is_power_of_two() || alignment > page {
        log::info!(
            "{}: minImportedHostPointerAlignment {alignment} (page size {page}): transfers stage",
            physical.info.name
        );
        return Ok(None);
    }
    Ok(Some(alignment))
}

#[cfg(unix)]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).unwrap_or(0)
}

#[cfg(not(unix))]
fn page_size() -> u64 {
    0
}

impl Drop for Device {
    fn drop(&mut self) {
        // Submissions may wait for values nobody will signal (the process that would is gone,
        // or the caller dropped the semaphore): wait for them up to the transfer timeout; then
        // release those waits from the host (`release_waits`) and wait again, a few rounds. Only
        // if work is still queued after that (a binary wait made unchecked with no signal) is the
        // device leaked, rather than block in `vkQueueWaitIdle` forever or destroy objects under
        // the GPU.
        let submitted = self.tracker.get_mut().unwrap_or_else(PoisonError::into_inner).submitted;
        let mut waited = self.wait_for_submissions(submitted, self.transfer_timeout);
        let mut rounds = 0;
        while waited.is_err() && rounds < 8 {
            rounds += 1;
            let tracker = self.tracker.get_mut().unwrap_or_else(PoisonError::into_inner);
            if !Self::release_waits(&tracker.deferred, &self.device) {
                break;
            }
            waited = self.wait_for_submissions(submitted, Duration::from_millis(250));
        }
        if rounds > 0 {
            log::warn!(
                "device {} ({}) was dropped while submissions still waited after {:?} for values \
                 nobody signalled: their dropped timelines were signalled from the host ({} round(s)) \
                 so that the work could complete{}",
                self.physical.info.index,
                self.physical.info.name,
                self.transfer_timeout,
                rounds,
                if waited.is_ok() { "" } else { ", in vain" }
            );
        }
        if let Err(e) = waited {
            log::error!(
                "{e} while dropping device {} ({}): {} submission(s) still queued; the device and its \
                 objects are leaked, not destroyed under the GPU",
                self.physical.info.index,
                self.physical.info.name,
                submitted.saturating_sub(self.progress_value().unwrap_or(0)),
            );
            // The instance must outlive the device that is never destroyed.
            std::mem::forget(Arc::clone(&self.instance));
            return;
        }
        let queue = *self.queue.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Without a queue lava-flow submitted nothing.
        if queue != vk::Queue::null() {
            // SAFETY: no other reference to the device exists (this is its drop), and lava-flow's
            // queue is its own (an adopted one too: `from_raw`'s contract); waiting makes sure
            // nothing still runs — the last batch's other semaphore signals included — before
            // the objects below are destroyed.
            if let Err(e) = unsafe { self.device.queue_wait_idle(queue) } {
                log::error!("vkQueueWaitIdle failed while destroying a device: {e}");
            }
        }
        let tracker = self.tracker.get_mut().unwrap_or_else(PoisonError::into_inner);
        for retired in tracker.deferred.drain(..) {
            // SAFETY: every tracked submission has completed and the queue is idle (waited for
            // above).
            unsafe { self.device.destroy_semaphore(retired.semaphore, None) };
        }
        if let Some(transfer) = self.transfer.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            // SAFETY: the transfer's objects belong to this device and are idle.
            unsafe { transfer.destroy(&self.device) };
        }
        // SAFETY: the queue is idle; no submission uses the progress timeline.
        unsafe { self.device.destroy_semaphore(self.progress, None) };
        if !self.owned {
            // The caller's device: theirs to destroy once the instance's owner guard is dropped.
            return;
        }
        let device = self.device.clone();
        let instance = Arc::clone(&self.instance);
        let avoid_gl = crate::teardown::driver_deadlocks_with_gl(self.physical.info.vendor_id);
        crate::teardown::destroy_device(avoid_gl, move || {
            // SAFETY: every buffer, block and semaphore holds an `Arc<Device>`, so none is left;
            // `instance` keeps the instance alive until the device is gone.
            unsafe { device.destroy_device(None) };
            drop(instance);
        });
    }
}

/// `VK_KHR_global_priority`, else `VK_EXT_global_priority` (the same structure and values), or
/// [`Error::Unsupported`] where the device has neither.
fn global_priority_extension(instance: &Instance, physical: &PhysicalDevice) -> Result<&'static CStr> {
    // SAFETY: the physical device belongs to `instance`.
    let extensions = unsafe { instance.instance.enumerate_device_extension_properties(physical.handle) }
        .vk("vkEnumerateDeviceExtensionProperties")?;
    let has = |name: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str().ok() == Some(name));
    [ash::khr::global_priority::NAME, ash::ext::global_priority::NAME]
        .into_iter()
        .find(|n| has(n))
        .ok_or_else(|| crate::Error::Unsupported {
            what: format!(
                "a queue global priority: {} has neither VK_KHR_global_priority nor VK_EXT_global_priority",
                physical.info.name
            ),
        })
}
