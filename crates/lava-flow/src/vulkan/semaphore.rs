//! Timeline semaphores: host signal/wait, queue submissions, export as opaque fds (NT handles on
//! Windows).

#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(windows)]
use std::os::windows::io::OwnedHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ash::vk;

use super::device::{Device, Retired};
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
///
/// # Signals in flight
/// Signals through this object must increase in the order they are made: a queue signal must
/// be above the counter and above every queue signal submitted before it, and a host signal
/// ([`signal`](TimelineSemaphore::signal)) above the counter and below every queue signal still
/// pending (Vulkan's rules, checked: [`Error::InvalidArgument`] otherwise). Signals made by other
/// APIs or through other imports of the same payload are seen only once they have happened.
///
/// # Dropping
/// Dropping a semaphore that a submission still waits on or will signal is safe: lava-flow
/// destroys it once that submission has completed, and the drop does not wait.
pub struct TimelineSemaphore {
    raw: Raw,
}

/// A Vulkan binary semaphore, exportable as an opaque fd where the driver can: what OpenCL's
/// `cl_khr_external_semaphore` imports (it has no timelines). Only queue submissions signal and
/// wait for it ([`Submission::signal_binary`], [`Submission::wait_binary`]), and a wait must be
/// submitted after the signal it consumes — in any API — has been submitted.
///
/// # Checked signals and waits
/// A binary semaphore is signalled once, then consumed by one wait. lava-flow follows its state
/// while every signal and wait of its payload goes through lava-flow in this process — the
/// semaphore itself, Vulkan imports of its [`export`](BinarySemaphore::export) here, and OpenCL
/// imports ([`opencl::Context::import_semaphore`](crate::opencl::Context::import_semaphore)) —
/// and refuses, with [`Error::InvalidArgument`], a wait with no signal submitted before it (it
/// would never complete: Mesa's `vkQueueSubmit` does not even return) and a second signal before
/// a wait consumed the first. Once its handle leaves lava-flow ([`export_fd`](BinarySemaphore::export_fd),
/// [`Exported::handle`](crate::Exported::handle) or
/// [`into_parts`](crate::Exported::into_parts), sending it to another process) or for a semaphore
/// imported from another process, lava-flow cannot see the other side's signals: the checked
/// forms then refuse, and the `unsafe` ones ([`Submission::wait_binary_unchecked`],
/// [`Submission::signal_binary_unchecked`]) put the rule in the caller's hands.
///
/// Dropping one that a submission still uses is safe, as for [`TimelineSemaphore`].
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
    /// The number of the last tracked submission that waits on or signals it (0: none), which
    /// must complete before the semaphore is destroyed.
    last_use: AtomicU64,
    /// Timeline values that submissions will signal and the counter has not reached yet,
    /// ascending (queue signals must increase, so they are submitted in order).
    pending: Mutex<Vec<u64>>,
    /// The highest timeline value a submission waits for.
    wait_max: AtomicU64,
    /// A binary semaphore's signal state, shared by the lava-flow objects of its payload.
    binary: Option<Arc<BinaryState>>,
}

/// What lava-flow knows of a binary semaphore's payload: shared by the semaphore, its Vulkan
/// imports in this process and its OpenCL imports.
#[derive(Debug)]
pub(crate) struct BinaryState {
    /// Every signal and wait of the payload goes through lava-flow objects of this process.
    known: AtomicBool,
    /// A signal has been submitted that no wait has consumed yet.
    signalled: AtomicBool,
}

/// Makes the check-and-apply of binary operations (one submission's, in any API) atomic.
static BINARY_OPS: Mutex<()> = Mutex::new(());

impl BinaryState {
    /// A payload lava-flow made here and no one else has seen: unsignalled, followed.
    pub(crate) fn known() -> Arc<Self> {
        Arc::new(BinaryState { known: AtomicBool::new(true), signalled: AtomicBool::new(false) })
    }

    /// A payload that came from elsewhere: not followed.
    pub(crate) fn unknown() -> Arc<Self> {
        Arc::new(BinaryState { known: AtomicBool::new(false), signalled: AtomicBool::new(false) })
    }

    /// The payload's handle has left lava-flow: its signals can no longer be followed.
    pub(crate) fn escape(&self) {
        self.known.store(false, Ordering::Release);
    }
}

/// One binary operation for [`binary_ops`]: the payload's state, and whether to check it
/// (`false` for the `unsafe` unchecked forms, whose callers vouch for the rule).
pub(crate) type BinaryOp<'s> = (&'s BinaryState, bool);

/// Checks one submission's binary waits (each consumes a pending signal) and then its signals
/// (each needs none pending), runs `submit`, and records the new states — all under one
/// process-wide lock, so that operations of other threads and APIs on the same payloads do not
/// interleave. Nothing is recorded if a check or `submit` fails. `call` names the operation in
/// errors.
pub(crate) fn binary_ops<R>(
    call: &str,
    waits: &[BinaryOp<'_>],
    signals: &[BinaryOp<'_>],
    submit: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if waits.is_empty() && signals.is_empty() {
        return submit();
    }
    let _ops = BINARY_OPS.lock().unwrap_or_else(PoisonError::into_inner);
    // The states as this operation leaves them, checked in order (a wait and a signal of one
    // payload in one submission: the wait consumes, then the signal signals).
    let mut after: Vec<(*const BinaryState, bool)> = Vec::new();
    let state_of = |state: &BinaryState, after: &mut Vec<(*const BinaryState, bool)>| -> usize {
        let ptr: *const BinaryState = state;
        match after.iter().position(|(p, _)| *p == ptr) {
            Some(i) => i,
            None => {
                after.push((ptr, state.signalled.load(Ordering::Acquire)));
                after.len() - 1
            }
        }
    };
    let unknown = |what: &str| {
        Error::InvalidArgument(format!(
            "{call}: lava-flow cannot check this {what} of a binary semaphore whose handle has left it \
             (exported fd or handle, sent to or imported from another process): use the unsafe \
             unchecked form, whose rule (a wait only after its signal has been submitted, one signal \
             per wait) is then the caller's"
        ))
    };
    for &(state, checked) in waits {
        let i = state_of(state, &mut after);
        if checked {
            if !state.known.load(Ordering::Acquire) {
                return Err(unknown("wait"));
            }
            if !after[i].1 {
                return Err(Error::InvalidArgument(format!(
                    "{call}: a wait for a binary semaphore with no signal submitted before it would \
                     never complete (submit its signal first, in any API)"
                )));
            }
        }
        after[i].1 = false;
    }
    for &(state, checked) in signals {
        let i = state_of(state, &mut after);
        if checked {
            if !state.known.load(Ordering::Acquire) {
                return Err(unknown("signal"));
            }
            if after[i].1 {
                return Err(Error::InvalidArgument(format!(
                    "{call}: a binary semaphore signalled again before a wait consumed its earlier \
                     signal (a binary semaphore holds one signal)"
                )));
            }
        }
        after[i].1 = true;
    }
    let result = submit()?;
    for &(state, _) in waits.iter().chain(signals) {
        let ptr: *const BinaryState = state;
        if let Some((_, signalled)) = after.iter().find(|(p, _)| *p == ptr) {
            state.signalled.store(*signalled, Ordering::Release);
        }
    }
    Ok(result)
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
    fn new(
        device: &Arc<Device>,
        kind: Kind,
        import: Option<NativeHandle>,
        binary: Option<Arc<BinaryState>>,
    ) -> Result<Self> {
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
        let binary = (kind == Kind::Binary).then(|| match (binary, &import) {
            (Some(state), _) => state,
            (None, Some(_)) => BinaryState::unknown(),
            (None, None) => BinaryState::known(),
        });
        let raw = Raw {
            device: Arc::clone(device),
            semaphore,
            exportable: exportable || kept.is_some(),
            kind,
            kept,
            last_use: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            wait_max: AtomicU64::new(0),
            binary,
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
        let exported = ExportedSemaphore::from_parts(ExternalHandle::from_native(handle), descriptor);
        Ok(match &self.binary {
            Some(state) => exported.with_binary_state(Arc::clone(state)),
            None => exported,
        })
    }

    /// A new handle that leaves lava-flow: a binary semaphore's signals are no longer followed.
    fn export_escaping(&self) -> Result<NativeHandle> {
        let handle = self.export_native()?;
        if let Some(state) = &self.binary {
            state.escape();
        }
        Ok(handle)
    }

    /// The lowest value a queue signal may have now: above the counter and every pending signal.
    /// Call with the device's queue held, so that no submission changes the pending ones.
    fn signal_floor(&self) -> Result<(u64, Option<u64>)> {
        let current = self.counter()?;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|&v| v > current);
        Ok((current, pending.last().copied()))
    }

    fn counter(&self) -> Result<u64> {
        // SAFETY: the semaphore is a live timeline semaphore of this device.
        unsafe { self.device.device.get_semaphore_counter_value(self.semaphore) }
            .vk("vkGetSemaphoreCounterValue")
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
                Raw::new(device, $kind, import, None).map(|raw| $ty { raw })
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
            ///
            /// For a binary semaphore the fd leaves lava-flow's sight: its signals and waits are
            /// no longer checked (see [`BinarySemaphore`]).
            #[cfg(unix)]
            pub fn export_fd(&self) -> Result<OwnedFd> {
                self.raw.export_escaping()
            }

            /// A new NT handle for the semaphore (`VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_WIN32_BIT`,
            /// `vkGetSemaphoreWin32HandleKHR`), the Windows twin of `export_fd`: the caller owns
            /// and closes it; importers only reference the semaphore.
            /// For a binary semaphore the handle leaves lava-flow's sight, as for `export_fd`.
            #[cfg(windows)]
            pub fn export_handle(&self) -> Result<OwnedHandle> {
                self.raw.export_escaping()
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

impl BinarySemaphore {
    /// Imports the payload of `handle`; `state` is what lava-flow knows of it (an export of this
    /// process that has not left lava-flow), `None` for one from elsewhere.
    pub(crate) fn import(
        device: &Arc<Device>,
        handle: NativeHandle,
        state: Option<Arc<BinaryState>>,
    ) -> Result<Self> {
        Raw::new(device, Kind::Binary, Some(handle), state).map(|raw| BinarySemaphore { raw })
    }

    /// For an OpenCL import in this process: a new fd that stays within lava-flow, and the
    /// payload's state.
    #[cfg(feature = "opencl")]
    pub(crate) fn export_tracked(&self) -> Result<(NativeHandle, Arc<BinaryState>)> {
        let state = self.raw.binary.clone().unwrap_or_else(BinaryState::unknown);
        Ok((self.raw.export_native()?, state))
    }
}

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
    /// The platform's handle for the semaphore, for lava-flow's own imports (CUDA, OpenGL).
    #[cfg(any(feature = "cuda", feature = "opengl"))]
    pub(crate) fn export_native(&self) -> Result<NativeHandle> {
        self.raw.export_native()
    }

    /// The counter's current value.
    pub fn value(&self) -> Result<u64> {
        self.raw.counter()
    }

    /// Sets the counter to `value` from the host. The value must be greater than the current
    /// one and less than every queue signal of this semaphore still pending (a host signal
    /// happens now, before them): [`Error::InvalidArgument`] otherwise.
    pub fn signal(&self, value: u64) -> Result<()> {
        self.raw.device.with_queue_held(|| {
            let current = self.raw.counter()?;
            check_increasing(value, current)?;
            let pending = self.raw.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(&first) = pending.iter().find(|&&v| v > current) {
                if value >= first {
                    return Err(Error::InvalidArgument(format!(
                        "a host signal of {value} while a queue signal of {first} is still pending: \
                         the host signal happens first, so it must be below {first}"
                    )));
                }
            }
            let info = vk::SemaphoreSignalInfo::default().semaphore(self.raw.semaphore).value(value);
            // SAFETY: a live timeline semaphore of this device; the value is above the counter and
            // below every pending signal, and no submission is made meanwhile (queue held).
            unsafe { self.raw.device.device.signal_semaphore(&info) }.vk("vkSignalSemaphore")
        })
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
        // Destroyed now, or once the last submission that uses it has completed.
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(PoisonError::into_inner));
        self.device.retire_semaphore(Retired {
            semaphore: self.semaphore,
            last_use: *self.last_use.get_mut(),
            timeline: (self.kind == Kind::Timeline).then(|| (*self.wait_max.get_mut(), pending)),
        });
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
    /// Binary semaphores, each with whether its state is checked (not for the unchecked forms).
    binary_waits: Vec<(&'a BinarySemaphore, bool)>,
    binary_signals: Vec<(&'a BinarySemaphore, bool)>,
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
    /// already — by Vulkan or by the API that signals it (OpenCL: enqueued and flushed). Checked
    /// at submission ([`BinarySemaphore`] says how): a wait with no signal submitted before it,
    /// or on a semaphore whose handle has left lava-flow, is refused.
    pub fn wait_binary(mut self, semaphore: &'a BinarySemaphore) -> Self {
        self.binary_waits.push((semaphore, true));
        self
    }

    /// Signals `semaphore` once the submission's work is done. Checked at submission: a second
    /// signal before a wait consumed the first, or a semaphore whose handle has left
    /// lava-flow, is refused.
    pub fn signal_binary(mut self, semaphore: &'a BinarySemaphore) -> Self {
        self.binary_signals.push((semaphore, true));
        self
    }

    /// [`wait_binary`](Submission::wait_binary) without the check, for a semaphore whose
    /// signals lava-flow cannot see (its handle went to another process, or came from one).
    ///
    /// # Safety
    /// A signal of the semaphore that no other wait consumes must have been submitted before
    /// this submission (in any API, any process); otherwise the wait never completes, and on
    /// some drivers (Mesa) `vkQueueSubmit` never returns.
    pub unsafe fn wait_binary_unchecked(mut self, semaphore: &'a BinarySemaphore) -> Self {
        self.binary_waits.push((semaphore, false));
        self
    }

    /// [`signal_binary`](Submission::signal_binary) without the check.
    ///
    /// # Safety
    /// When the signal executes, the semaphore must be unsignalled with no other signal
    /// pending: every earlier signal has been consumed by a wait submitted before this one.
    pub unsafe fn signal_binary_unchecked(mut self, semaphore: &'a BinarySemaphore) -> Self {
        self.binary_signals.push((semaphore, false));
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
        for (sem, _) in self.binary_waits.iter().chain(&self.binary_signals) {
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
            .chain(self.binary_waits.iter().map(|(s, _)| s.raw.semaphore))
            .collect();
        let wait_values: Vec<u64> =
            self.waits.iter().map(|(_, v)| *v).chain(self.binary_waits.iter().map(|_| 0)).collect();
        let wait_stages = vec![vk::PipelineStageFlags::ALL_COMMANDS; wait_sems.len()];
        let mut signal_sems: Vec<vk::Semaphore> = (self.signals.iter().map(|(s, _)| s.raw.semaphore))
            .chain(self.binary_signals.iter().map(|(s, _)| s.raw.semaphore))
            .collect();
        let mut signal_values: Vec<u64> =
            self.signals.iter().map(|(_, v)| *v).chain(self.binary_signals.iter().map(|_| 0)).collect();
        fn state<'s>(ops: &'s [(&BinarySemaphore, bool)]) -> Vec<BinaryOp<'s>> {
            ops.iter().filter_map(|(s, checked)| s.raw.binary.as_deref().map(|b| (b, *checked))).collect()
        }
        let (binary_waits, binary_signals) = (state(&self.binary_waits), state(&self.binary_signals));
        device.submit_tracked(|queue| {
            // With the queue held, no other submission or host signal changes what is pending.
            self.check_signals()?;
            signal_sems.push(queue.progress);
            signal_values.push(queue.number);
            let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
                .wait_semaphore_values(&wait_values)
                .signal_semaphore_values(&signal_values);
            let submit = vk::SubmitInfo::default()
                .wait_semaphores(&wait_sems)
                .wait_dst_stage_mask(&wait_stages)
                .command_buffers(&self.command_buffers)
                .signal_semaphores(&signal_sems)
                .push_next(&mut timeline);
            binary_ops("vkQueueSubmit", &binary_waits, &binary_signals, || {
                // SAFETY: the semaphores belong to `device` (checked above) and are borrowed for
                // 'a, and each is destroyed only after this submission's number is reached on the
                // progress timeline (below); the command buffers and the fence are the caller's
                // promise (both setters are unsafe).
                unsafe { queue.submit(submit, self.fence) }
            })?;
            for (sem, value) in &self.signals {
                sem.raw.pending.lock().unwrap_or_else(PoisonError::into_inner).push(*value);
            }
            for (sem, value) in &self.waits {
                sem.raw.wait_max.fetch_max(*value, Ordering::AcqRel);
            }
            let raws = (self.waits.iter().chain(&self.signals).map(|(s, _)| &s.raw))
                .chain(self.binary_waits.iter().chain(&self.binary_signals).map(|(s, _)| &s.raw));
            for raw in raws {
                raw.last_use.fetch_max(queue.number, Ordering::AcqRel);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Each timeline signal must be above the counter and above every signal submitted before
    /// it (those of this submission included), or it could run below the counter.
    fn check_signals(&self) -> Result<()> {
        for (i, (sem, value)) in self.signals.iter().enumerate() {
            let (current, pending) = sem.raw.signal_floor()?;
            check_increasing(*value, current)?;
            let earlier =
                self.signals[..i].iter().filter(|(s, _)| std::ptr::eq(&s.raw, &sem.raw)).map(|(_, v)| *v);
            if let Some(before) = pending.into_iter().chain(earlier).max() {
                if *value <= before {
                    return Err(Error::InvalidArgument(format!(
                        "timeline values must increase: a signal of {value} after a signal of {before} \
                         that is still pending"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{binary_ops, BinaryState};
    use crate::Error;

    fn ok() -> crate::Result<()> {
        Ok(())
    }

    /// The binary rules on their own: one signal per wait, all or nothing, and a payload whose
    /// handle left lava-flow accepted only by the unchecked forms (which still record its state).
    #[test]
    fn binary_operations_are_checked_applied_together_or_not_at_all() {
        let a = BinaryState::known();
        let b = BinaryState::known();
        let refused = |r: crate::Result<()>| assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        refused(binary_ops("wait", &[(&a, true)], &[], ok));
        binary_ops("signal a", &[], &[(&a, true)], ok).expect("signal a");
        // A wait for a and a second signal of a together: the wait consumes, then a may signal.
        binary_ops("wait a, signal a", &[(&a, true)], &[(&a, true)], ok).expect("consume, then signal");
        // b has no signal: the whole submission is refused and a stays signalled.
        refused(binary_ops("wait a and b", &[(&a, true), (&b, true)], &[], ok));
        refused(binary_ops("signal a", &[], &[(&a, true)], ok));
        // A failing submission records nothing either.
        let failed =
            binary_ops("wait a", &[(&a, true)], &[], || Err(Error::InvalidArgument("driver".into())));
        refused(failed);
        binary_ops("wait a", &[(&a, true)], &[], ok).expect("a was still signalled");
        refused(binary_ops("wait a", &[(&a, true)], &[], ok));

        a.escape();
        refused(binary_ops("signal", &[], &[(&a, true)], ok));
        binary_ops("unchecked signal", &[], &[(&a, false)], ok).expect("unchecked");
        binary_ops("unchecked wait", &[(&a, false)], &[], ok).expect("unchecked");
        let unknown = BinaryState::unknown();
        refused(binary_ops("wait", &[(&unknown, true)], &[], ok));
        refused(binary_ops("signal", &[], &[(&unknown, true)], ok));
    }
}
