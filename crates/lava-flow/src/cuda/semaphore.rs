//! lava-flow timeline semaphores waited for and signalled on CUDA streams.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::sys;

use super::context::{Context, Stream};
use super::raw::check;
use super::release::{lock, CudaFence, CudaUses, Release};
use crate::external::NativeHandle;

use crate::error::{Api, Error, Result};
use crate::external::Payload;
use crate::handle::{ExportedSemaphore, SemaphoreKind};
use crate::vulkan::TimelineSemaphore;

/// A lava-flow [`TimelineSemaphore`] imported into CUDA
/// (`CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD`): streams wait for and signal its
/// values with no host involvement. It borrows the semaphore ([`Context::import_timeline`]) or
/// holds an `Arc` of it ([`Context::import_timeline_owned`], a `CudaTimeline<'static>`). It may
/// move to another thread, but is used from one thread at a time (`!Sync`).
pub struct CudaTimeline<'a> {
    ctx: Context,
    semaphore: Holder<'a>,
    external: sys::CUexternalSemaphore,
    /// The last value signalled through this import, for the increasing-values rule where
    /// there is no Vulkan semaphore to read the counter from.
    last_signal: std::cell::Cell<u64>,
    /// The waits and signals queued through it that may not have completed: the import is
    /// destroyed only after them (the driver's rule for `cuDestroyExternalSemaphore`).
    uses: CudaUses,
    /// A wait or signal was queued but its fence could not be recorded: the import's drop then
    /// leaks it rather than destroy it under that work.
    unfenced: std::cell::Cell<bool>,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// How a [`CudaTimeline`] keeps its semaphore alive.
enum Holder<'a> {
    Borrowed(&'a TimelineSemaphore),
    Shared(Arc<TimelineSemaphore>),
    /// Imported from an exported handle: CUDA's import holds the payload; no Vulkan object
    /// here to read the counter from.
    Handle,
}

impl Holder<'_> {
    fn vulkan(&self) -> Option<&TimelineSemaphore> {
        match self {
            Holder::Borrowed(s) => Some(s),
            Holder::Shared(s) => Some(s),
            Holder::Handle => None,
        }
    }
}

// SAFETY: the imported semaphore is a driver handle usable from any thread: every call binds the
// context first. `Sync` stays off (`_not_sync`): one thread at a time.
unsafe impl Send for CudaTimeline<'_> {}

impl std::fmt::Debug for CudaTimeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTimeline").field("external", &self.external).finish()
    }
}

impl Context {
    /// Imports `semaphore` into this context. Errors: [`Error::DeviceMismatch`];
    /// [`Error::Unsupported`] if the Vulkan driver cannot export it; CUDA errors.
    pub fn import_timeline<'a>(&self, semaphore: &'a TimelineSemaphore) -> Result<CudaTimeline<'a>> {
        self.import_held(semaphore, Holder::Borrowed(semaphore))
    }

    /// As [`import_timeline`](Context::import_timeline), for a semaphore shared through an
    /// `Arc`: the import keeps it alive and has no lifetime to outlive.
    pub fn import_timeline_owned(&self, semaphore: Arc<TimelineSemaphore>) -> Result<CudaTimeline<'static>> {
        self.import_held(&semaphore, Holder::Shared(Arc::clone(&semaphore)))
    }

    /// Imports an exported timeline semaphore — from this process or another — with no Vulkan
    /// object needed here: CUDA's import holds the payload. Errors: [`Error::DeviceMismatch`];
    /// [`Error::InvalidArgument`] for a binary semaphore (this imports timelines); CUDA errors.
    ///
    /// [`signal`](CudaTimeline::signal) then checks its values against the last value signalled
    /// through this import (there is no counter to read here); ordering signals made elsewhere
    /// is the caller's part.
    pub fn import_exported_semaphore(&self, exported: ExportedSemaphore) -> Result<CudaTimeline<'static>> {
        let (handle, desc) = exported.into_parts();
        let fd = handle.into_native();
        self.check_device("the timeline semaphore", desc.device_uuid)?;
        if desc.kind != SemaphoreKind::Timeline {
            return Err(Error::InvalidArgument(format!(
                "CUDA imports timeline semaphores here; this one is {:?}",
                desc.kind
            )));
        }
        self.timeline_of(Holder::Handle, fd)
    }

    /// Imports `semaphore`, which `holder` keeps alive.
    fn import_held<'a>(&self, semaphore: &TimelineSemaphore, holder: Holder<'a>) -> Result<CudaTimeline<'a>> {
        self.check_device("the timeline semaphore", crate::Uuid(semaphore.device_uuid()))?;
        self.timeline_of(holder, semaphore.export_native()?)
    }

    fn timeline_of<'a>(&self, semaphore: Holder<'a>, fd: NativeHandle) -> Result<CudaTimeline<'a>> {
        self.bind()?;
        let mut external = std::ptr::null_mut();
        crate::external::give_to_driver(Api::Cuda, fd, Payload::Semaphore, |raw| {
            let desc = super::external::timeline_desc(raw);
            // SAFETY: the context is current; `raw` is an opaque handle of a timeline semaphore
            // of this GPU; CUDA owns an fd on success and references an NT handle.
            crate::external::spec_rule(check("cuImportExternalSemaphore", unsafe {
                sys::cuImportExternalSemaphore(&mut external, &desc)
            }))
        })?;
        Ok(CudaTimeline {
            ctx: self.clone(),
            semaphore,
            external,
            last_signal: std::cell::Cell::new(0),
            uses: CudaUses::default(),
            unfenced: std::cell::Cell::new(false),
            _not_sync: PhantomData,
        })
    }
}

impl CudaTimeline<'_> {
    /// The CUDA context the timeline was imported into.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Makes work queued on `stream` after this call wait until the timeline reaches `value`.
    pub fn wait(&self, value: u64, stream: &Stream) -> Result<()> {
        self.ctx.check_device("the stream", stream.ctx.uuid())?;
        self.ctx.bind()?;
        // SAFETY: an all-zero parameter block is valid; the fence value is set below.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: one imported semaphore and one parameter block; the stream is of this context.
        check("cuWaitExternalSemaphoresAsync", unsafe {
            sys::cuWaitExternalSemaphoresAsync(&self.external, &params, 1, stream.stream)
        })?;
        // Until the wait has passed, lava-flow's releases (whose `cuMemFree` would wait for it)
        // are held back, and so is this import's.
        self.fenced(super::release::note_wait(&self.ctx, stream))
    }

    /// Sets the timeline to `value` once the work queued on `stream` so far is done. The value
    /// must be above the current one.
    pub fn signal(&self, value: u64, stream: &Stream) -> Result<()> {
        self.ctx.check_device("the stream", stream.ctx.uuid())?;
        let current = match self.semaphore.vulkan() {
            Some(vulkan) => vulkan.value()?,
            None => self.last_signal.get(),
        };
        crate::vulkan::check_increasing(value, current)?;
        self.ctx.bind()?;
        // SAFETY: as in `wait`.
        let mut params: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS = unsafe { std::mem::zeroed() };
        params.params.fence.value = value;
        // SAFETY: as in `wait`.
        check("cuSignalExternalSemaphoresAsync", unsafe {
            sys::cuSignalExternalSemaphoresAsync(&self.external, &params, 1, stream.stream)
        })?;
        self.last_signal.set(value);
        // The import outlives the signal (see `Drop`).
        self.fenced(CudaFence::record(&self.ctx, stream))
    }

    /// Keeps the fence of a wait or signal just queued; where it could not be recorded, the
    /// import is marked to be leaked, and the error returned.
    fn fenced(&self, fence: Result<Arc<CudaFence>>) -> Result<()> {
        match fence {
            Ok(fence) => {
                lock(&self.uses).add(fence);
                Ok(())
            }
            Err(e) => {
                self.unfenced.set(true);
                Err(e)
            }
        }
    }
}

impl Drop for CudaTimeline<'_> {
    /// Destroys the import once the waits and signals queued through it have completed (on a
    /// later call into the context, or at its end: ADR 0014), never under them; the drop itself
    /// does not wait. The semaphore it borrows or holds may go at once: CUDA's import holds
    /// the payload.
    fn drop(&mut self) {
        if self.unfenced.get() {
            log::error!(
                "a CUDA timeline import is leaked: a wait or signal was queued through it whose \
                 completion could not be tracked"
            );
            return;
        }
        let pending = self.uses.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take_pending();
        self.ctx.release_after_fences(pending, Release::Semaphore(self.external));
    }
}
