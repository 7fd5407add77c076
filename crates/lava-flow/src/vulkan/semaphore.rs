//! Timeline semaphores: host signal/wait, queue submissions, export as opaque fds (NT handles on
//! Windows).

#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(windows)]
use std::os::windows::io::OwnedHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ash::vk;

use super::device::Device;
use crate::error::{Api, Error, Result, VkResultExt};
use crate::external::{NativeHandle, Os, Payload};
use crate::handle::{ExportedSemaphore, ExternalHandle, SemaphoreDescriptor, SemaphoreKind};

/// A Vulkan timeline semaphore: a 64-bit counter that only grows, signalled and waited for by
/// the host and by queue submissions, and (where the driver can) exported to CUDA, OpenCL,
/// OpenGL or another process as an opaque fd.
///
/// # Host waits
/// [`wait`](TimelineSemaphore::wait) polls the counter with `vkGetSemaphoreCounterValue`, spinning
/// briefly and then backing off to short sleeps, instead of blocking in `vkWaitSemaphores`: on
/// NVIDIA's driver a blocking wait for a value that another API (CUDA) signals sleeps about
/// 10 ms, where polling sees the value microseconds after the signal.
pub struct TimelineSemaphore {
    raw: Raw,
}

/// A Vulkan binary semaphore, exportable as an opaque fd where the driver can: what OpenCL's
/// `cl_khr_external_semaphore` imports (it has no timelines). Only queue submissions signal and
/// wait for it ([`Submission::signal_binary`], [`Submission::wait_binary`]), and a wait must be
/// submitted after the signal it consumes — in any API — has been submitted.
pub struct BinarySemaphore {
    raw: Raw,
}

/// What both kinds of semaphore are made of.
struct Raw {
    device: Arc<Device>,
    semaphore: vk::Semaphore,
    exportable: bool,
    kind: Kind,
    /// For an imported semaphore, a duplicate of the handle it was imported from: its exports
    /// are duplicates of it, which refer to the same payload, so what arrived can be passed on.
    kept: Option<NativeHandle>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Timeline,
    Binary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Timeline => "timeline",
            Kind::Binary => "binary",
        }
    }

    fn handles(self, info: &crate::DeviceInfo) -> &crate::device::ExternalSupport {
        match self {
            Kind::Timeline => &info.timeline_semaphore_handles,
            Kind::Binary => &info.binary_semaphore_handles,
        }
    }
}

impl Raw {
    /// A semaphore of `kind` (a timeline at 0), exportable where the device can; with `import`,
    /// one that takes over the payload of that handle instead.
    fn new(device: &Arc<Device>, kind: Kind, import: Option<NativeHandle>) -> Result<Self> {
        let handles = kind.handles(&device.physical.info);
        let native = Os::HOST.opaque_handle();
        let has_extension = device.external.has_semaphore();
        let exportable = import.is_none() && has_extension && handles.can_export(native);
        if import.is_some() && (!has_extension || !handles.can_import(native)) {
            return Err(Error::Unsupported {
                what: format!(
                    "device {} ({}) cannot import {} semaphores from {native:?} handles",
                    device.physical.info.index,
                    device.physical.info.name,
                    kind.name()
                ),
            });
        }
        let semaphore = create(device, kind, exportable)?;
        let kept = match &import {
            Some(handle) => Some(crate::external::duplicate(handle)?),
            None => None,
        };
        let raw = Raw {
            device: Arc::clone(device),
            semaphore,
            exportable: exportable || kept.is_some(),
            kind,
            kept,
        };
        if let Some(handle) = import {
            crate::external::give_to_driver(Api::Vulkan, handle, Payload::Semaphore, |given| {
                // SAFETY: the semaphore is fresh and unused; `given` is open (an fd the driver
                // may keep, or a handle it references). On failure `raw` is dropped (destroyed).
                unsafe { device.external.import_semaphore(semaphore, given) }
            })?;
        }
        Ok(raw)
    }

    fn export_native(&self) -> Result<NativeHandle> {
        if let Some(kept) = &self.kept {
            return crate::external::duplicate(kept);
        }
        let info = &self.device.physical.info;
        let unsupported = |why: &str| Error::Unsupported {
            what: format!(
                "device {} ({}) cannot export {} semaphores as {:?} handles ({why})",
                info.index,
                info.name,
                self.kind.name(),
                Os::HOST.opaque_handle()
            ),
        };
        if !self.exportable {
            return Err(unsupported(if self.device.external.has_semaphore() {
                "vkGetPhysicalDeviceExternalSemaphoreProperties reports no export"
            } else {
                "no external-semaphore extension"
            }));
        }
        // SAFETY: the semaphore was created exportable as the platform's opaque handle.
        let exported = unsafe { self.device.external.export_semaphore(self.semaphore) };
        exported.ok_or_else(|| unsupported("no external-semaphore extension"))?
    }

    fn export(&self) -> Result<ExportedSemaphore> {
        let handle = self.export_native()?;
        let info = &self.device.physical.info;
        let descriptor = SemaphoreDescriptor {
            kind: match self.kind {
                Kind::Timeline => SemaphoreKind::Timeline,
                Kind::Binary => SemaphoreKind::Binary,
            },
            device_uuid: info.uuid,
            driver_uuid: info.driver_uuid,
        };
        Ok(ExportedSemaphore::from_parts(ExternalHandle::from_native(handle), descriptor))
    }
}

/// What timeline and binary semaphores share: creation, identity, the raw handle, export, and
/// `Debug`; written once for both.
macro_rules! semaphore_common {
    ($ty:ident, $kind:expr, $name:literal) => {
        impl $ty {
            #[doc = concat!("Creates a ", $name, " semaphore (a timeline starts at 0), exportable where the device")]
            /// can; with `import`, one that takes over the payload of that handle instead.
            pub(crate) fn new(device: &Arc<Device>, import: Option<NativeHandle>) -> Result<Self> {
                Raw::new(device, $kind, import).map(|raw| $ty { raw })
            }

            #[doc = concat!("Whether [`export`](", stringify!($ty), "::export) can succeed.")]
            pub fn is_exportable(&self) -> bool {
                self.raw.exportable
            }

            /// The UUID of the device the semaphore belongs to.
            pub fn device_uuid(&self) -> [u8; 16] {
                self.raw.device.physical.info.uuid.0
            }

            /// The UUID of that device's driver.
            pub fn driver_uuid(&self) -> [u8; 16] {
                self.raw.device.physical.info.driver_uuid.0
            }

            /// The raw `VkSemaphore`. Valid while `self` lives.
            pub fn vk_semaphore(&self) -> vk::Semaphore {
                self.raw.semaphore
            }

            /// A new opaque fd for the semaphore (`VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT`),
            /// which CUDA, OpenCL and OpenGL import (each the kinds it knows). Fails with
            #[doc = concat!("[`Error::Unsupported`] where the driver cannot export ", $name, " semaphores (Mesa's")]
            /// lavapipe, for one).
            #[cfg(unix)]
            pub fn export_fd(&self) -> Result<OwnedFd> {
                self.raw.export_native()
            }

            /// A new NT handle for the semaphore (`VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_WIN32_BIT`,
            /// `vkGetSemaphoreWin32HandleKHR`), the Windows twin of `export_fd`: the caller owns
            /// and closes it; importers only reference the semaphore.
            #[cfg(windows)]
            pub fn export_handle(&self) -> Result<OwnedHandle> {
                self.raw.export_native()
            }

            /// The platform's handle for the semaphore.
            pub(crate) fn export_native(&self) -> Result<NativeHandle> {
                self.raw.export_native()
            }

            /// A new handle (an fd, or an NT handle on Windows) with the device's identity, for
            /// an importer elsewhere.
            pub fn export(&self) -> Result<ExportedSemaphore> {
                self.raw.export()
            }

            pub(crate) fn device(&self) -> &Arc<Device> {
                &self.raw.device
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("device", &self.raw.device.physical.info.index)
                    .field("exportable", &self.raw.exportable)
                    .finish()
            }
        }
    };
}

semaphore_common!(TimelineSemaphore, Kind::Timeline, "timeline");
semaphore_common!(BinarySemaphore, Kind::Binary, "binary");

/// The one rule of timeline signals, for every API that signals: a value above `current` (the
/// counter, or the last value signalled through an import that cannot read the counter).
pub(crate) fn check_increasing(value: u64, current: u64) -> Result<()> {
    if value <= current {
        return Err(Error::InvalidArgument(format!(
            "timeline values must increase: a signal of {value} with the counter at {current}"
        )));
    }
    Ok(())
}

impl TimelineSemaphore {
    /// The counter's current value.
    pub fn value(&self) -> Result<u64> {
        // SAFETY: the semaphore is a live timeline semaphore of this device.
        unsafe { self.raw.device.device.get_semaphore_counter_value(self.raw.semaphore) }
            .vk("vkGetSemaphoreCounterValue")
    }

    /// Sets the counter to `value` from the host. The value must be greater than the current
    /// one (and than any pending signal: that part is the caller's to keep).
    pub fn signal(&self, value: u64) -> Result<()> {
        check_increasing(value, self.value()?)?;
        let info = vk::SemaphoreSignalInfo::default().semaphore(self.raw.semaphore).value(value);
        // SAFETY: a live timeline semaphore of this device; the value is greater than the current.
        unsafe { self.raw.device.device.signal_semaphore(&info) }.vk("vkSignalSemaphore")
    }

    /// Waits on the host until the counter reaches `value`, or fails with [`Error::Timeout`].
    ///
    /// Polls rather than blocking in `vkWaitSemaphores` (see the type's documentation): a spin of
    /// about 50 µs, then sleeps growing from 10 µs to 1 ms.
    pub fn wait(&self, value: u64, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut sleep = Duration::from_micros(10);
        loop {
            if self.value()? >= value {
                return Ok(());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(Error::Timeout(timeout, "a timeline semaphore value"));
            }
            if elapsed < Duration::from_micros(50) {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(sleep.min(timeout - elapsed));
                sleep = (sleep * 2).min(Duration::from_millis(1));
            }
        }
    }
}

fn create(device: &Device, kind: Kind, exportable: bool) -> Result<vk::Semaphore> {
    let mut type_info = vk::SemaphoreTypeCreateInfo::default()
        .semaphore_type(match kind {
            Kind::Timeline => vk::SemaphoreType::TIMELINE,
            Kind::Binary => vk::SemaphoreType::BINARY,
        })
        .initial_value(0);
    let mut export =
        vk::ExportSemaphoreCreateInfo::default().handle_types(super::external::semaphore_handle());
    let mut info = vk::SemaphoreCreateInfo::default().push_next(&mut type_info);
    if exportable {
        info = info.push_next(&mut export);
    }
    // SAFETY: `info` points at live locals; timeline semaphores were enabled on the device.
    unsafe { device.device.create_semaphore(&info, None) }.vk("vkCreateSemaphore")
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: the semaphore belongs to this device. Pending queue operations on it are the
        // user's to wait for, as with any Vulkan object.
        unsafe { self.device.device.destroy_semaphore(self.semaphore, None) };
    }
}

/// One queue submission: wait for timeline values (and binary semaphores), run command buffers,
/// signal timeline values (and binary semaphores).
///
/// ```
/// # fn main() -> lava_flow::Result<()> {
/// use lava_flow::{MemoryAllocator, Submission};
/// let mut allocator = MemoryAllocator::new()?;
/// let ready = allocator.timeline_semaphore(0)?;
/// let done = allocator.timeline_semaphore(0)?;
/// // The GPU waits for `ready` to reach 1, then sets `done` to 1.
/// allocator.submit(0, &Submission::new().wait(&ready, 1).signal(&done, 1))?;
/// ready.signal(1)?;
/// done.wait(1, std::time::Duration::from_secs(5))?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Submission<'a> {
    waits: Vec<(&'a TimelineSemaphore, u64)>,
    signals: Vec<(&'a TimelineSemaphore, u64)>,
    binary_waits: Vec<&'a BinarySemaphore>,
    binary_signals: Vec<&'a BinarySemaphore>,
    command_buffers: Vec<vk::CommandBuffer>,
    fence: vk::Fence,
}

impl<'a> Submission<'a> {
    /// An empty submission.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits (at all pipeline stages) until `semaphore` reaches `value`.
    pub fn wait(mut self, semaphore: &'a TimelineSemaphore, value: u64) -> Self {
        self.waits.push((semaphore, value));
        self
    }

    /// Sets `semaphore` to `value` once the submission's work is done.
    pub fn signal(mut self, semaphore: &'a TimelineSemaphore, value: u64) -> Self {
        self.signals.push((semaphore, value));
        self
    }

    /// Waits (at all pipeline stages) for `semaphore`'s signal, which must have been submitted
    /// already — by Vulkan or by the API that signals it (OpenCL: enqueued and flushed).
    pub fn wait_binary(mut self, semaphore: &'a BinarySemaphore) -> Self {
        self.binary_waits.push(semaphore);
        self
    }

    /// Signals `semaphore` once the submission's work is done.
    pub fn signal_binary(mut self, semaphore: &'a BinarySemaphore) -> Self {
        self.binary_signals.push(semaphore);
        self
    }

    /// Adds command buffers recorded on the same device (see `MemoryAllocator::ash_device`).
    ///
    /// # Safety
    /// Each must be a valid, executable primary command buffer of the submission's device, and
    /// stay valid, with everything it uses, until the submission's work has completed.
    pub unsafe fn command_buffers(mut self, command_buffers: &[vk::CommandBuffer]) -> Self {
        self.command_buffers.extend_from_slice(command_buffers);
        self
    }

    /// Also signals `fence` when the submission's work is done: the usual way to know that its
    /// command buffers may be recorded again. (Waiting for a timeline value orders the work just
    /// as well, but the Khronos validation layer cannot always tell from it that a command buffer
    /// has completed — for one, when the submission waited for a value another API signalled.)
    ///
    /// # Safety
    /// `fence` must be an unsignalled fence of the submission's device, not used by another
    /// pending submission, and stay valid until the work has completed.
    pub unsafe fn fence(mut self, fence: vk::Fence) -> Self {
        self.fence = fence;
        self
    }

    pub(crate) fn submit(&self, device: &Arc<Device>) -> Result<()> {
        for (sem, value) in self.waits.iter().chain(&self.signals) {
            if !Arc::ptr_eq(sem.device(), device) {
                return Err(Error::InvalidArgument(format!(
                    "a semaphore of device {} was submitted to device {}",
                    sem.device().physical.info.index,
                    device.physical.info.index
                )));
            }
            if *value == 0 {
                return Err(Error::InvalidArgument(
                    "timeline value 0 is the initial value: wait for or signal 1 or more".into(),
                ));
            }
        }
        for (sem, value) in &self.signals {
            check_increasing(*value, sem.value()?)?;
        }
        for sem in self.binary_waits.iter().chain(&self.binary_signals) {
            if !Arc::ptr_eq(sem.device(), device) {
                return Err(Error::InvalidArgument(format!(
                    "a binary semaphore of device {} was submitted to device {}",
                    sem.device().physical.info.index,
                    device.physical.info.index
                )));
            }
        }
        // Timeline entries first, then binary ones, whose values Vulkan ignores.
        let wait_sems: Vec<vk::Semaphore> = (self.waits.iter().map(|(s, _)| s.raw.semaphore))
            .chain(self.binary_waits.iter().map(|s| s.raw.semaphore))
            .collect();
        let wait_values: Vec<u64> =
            self.waits.iter().map(|(_, v)| *v).chain(self.binary_waits.iter().map(|_| 0)).collect();
        let wait_stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; wait_sems.len()];
        let signal_sems: Vec<vk::Semaphore> = (self.signals.iter().map(|(s, _)| s.raw.semaphore))
            .chain(self.binary_signals.iter().map(|s| s.raw.semaphore))
            .collect();
        let signal_values: Vec<u64> =
            self.signals.iter().map(|(_, v)| *v).chain(self.binary_signals.iter().map(|_| 0)).collect();
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let submit = vk::SubmitInfo::default()
            .wait_semaphores(&wait_sems)
            .wait_dst_stage_mask(&wait_stages)
            .command_buffers(&self.command_buffers)
            .signal_semaphores(&signal_sems)
            .push_next(&mut timeline);
        // SAFETY: the semaphores belong to `device` (checked above) and are borrowed for 'a; the
        // command buffers and the fence are the caller's promise (both setters are unsafe).
        unsafe { device.submit(&[submit], self.fence) }
    }
}
