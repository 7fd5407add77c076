//! Releases behind queued CUDA work (ADR 0014): the fence (an event recorded on a stream that
//! uses the memory), what a dropped view or import leaves to release, and the context's list of
//! them.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use cudarc::driver::sys;

use super::context::{Context, Inner, Stream};
use super::raw::check;
use crate::deferred::{poll_until, Fence, PendingWaits, ReleaseList, Uses};
use crate::error::Result;

/// An event recorded on a stream that uses some memory: complete once the work queued there
/// before it is. Holds the raw context and a weak reference to it (not a [`Context`]: the
/// context's own list of deferred releases holds fences, and must not keep the context alive).
/// The event is one of the context's spares, given back when the fence goes.
pub(crate) struct CudaFence {
    context: sys::CUcontext,
    /// Where the event goes back to, while the context lives.
    owner: Weak<Inner>,
    /// The [`Stream::id`] it was recorded on; `None` for the per-thread default stream, which is
    /// another stream on each thread that records on it.
    stream: Option<u64>,
    event: sys::CUevent,
}

// SAFETY: a CUevent is a driver handle usable from any thread; every call here makes its
// context current first.
unsafe impl Send for CudaFence {}
// SAFETY: as above; the driver's event calls are thread-safe.
unsafe impl Sync for CudaFence {}

impl CudaFence {
    /// An event recorded on `stream` now (`cuEventRecord` of a spare event of `ctx`, created
    /// without timing where there is none).
    pub fn record(ctx: &Context, stream: &Stream) -> Result<Arc<Self>> {
        ctx.check_device("the stream", stream.ctx.uuid())?;
        ctx.bind()?;
        let event = ctx.spare_event()?;
        // From here the fence owns the event (its drop gives it back or destroys it).
        let fence = CudaFence {
            context: ctx.raw(),
            owner: Arc::downgrade(&ctx.inner),
            stream: queue_of(stream),
            event,
        };
        // SAFETY: event and stream belong to the same context, which is current.
        check("cuEventRecord", unsafe { sys::cuEventRecord(event, stream.stream) })?;
        Ok(Arc::new(fence))
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: the context outlives every fence (they are held by objects that hold the
        // context, or by the context's own list, emptied before it is released).
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.context) })
    }
}

/// The raw handle that names each thread's own default stream (`CU_STREAM_PER_THREAD`).
const PER_THREAD_STREAM: usize = 2;

/// Which queue a fence recorded on `stream` marks, for [`Fence::supersedes`]: the stream's id,
/// or `None` for the per-thread default stream (one [`Stream`] value of it, being `Sync`, may
/// queue on several threads' streams).
fn queue_of(stream: &Stream) -> Option<u64> {
    (stream.stream as usize != PER_THREAD_STREAM).then_some(stream.id)
}

impl Fence for CudaFence {
    fn is_done(&self) -> Result<bool> {
        self.bind()?;
        // SAFETY: our own live event; its context is current.
        match unsafe { sys::cuEventQuery(self.event) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            other => check("cuEventQuery", other).map(|()| false),
        }
    }

    fn wait(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: as above.
        check("cuEventSynchronize", unsafe { sys::cuEventSynchronize(self.event) })
    }

    /// A later fence of the same stream completes after this one: stream order.
    fn supersedes(&self, older: &Self) -> bool {
        self.stream.is_some() && self.stream == older.stream
    }
}

impl Drop for CudaFence {
    fn drop(&mut self) {
        // Nothing queries or waits for the event any more: a spare of its context (recording
        // it again is allowed while its work is queued), as long as the context lives.
        if let Some(owner) = self.owner.upgrade() {
            super::event::give_back(&owner, self.event);
            return;
        }
        // The context is ending (its drop releases its deferred objects, and their fences, before
        // the context itself).
        // SAFETY: our own event, destroyed once (destroying a recorded event is allowed: the
        // driver releases it once its work completes).
        let destroyed = self
            .bind()
            .and_then(|()| check("cuEventDestroy_v2", unsafe { sys::cuEventDestroy_v2(self.event) }));
        if let Err(e) = destroyed {
            log::error!("{e}");
        }
    }
}

/// The uses of one view or import, behind a lock (views are `Sync`).
pub(crate) type CudaUses = Mutex<Uses<CudaFence>>;

/// Locks `uses`; a panic elsewhere while it was held leaves a usable list.
pub(crate) fn lock(uses: &CudaUses) -> std::sync::MutexGuard<'_, Uses<CudaFence>> {
    uses.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a view or import dropped under queued work leaves to release, in its context.
pub(crate) enum Release {
    /// A buffer mapping and the import it maps (`cuMemFree`, then `cuDestroyExternalMemory`).
    Mapping { base: sys::CUdeviceptr, external: sys::CUexternalMemory },
    /// An image's mipmapped array and its import.
    Array { mipmapped: sys::CUmipmappedArray, external: sys::CUexternalMemory },
    /// Device memory of `cuMemAlloc`.
    Free(sys::CUdeviceptr),
    /// Memory of the virtual memory API: unmapped (`cuMemUnmap`), its range freed and its
    /// physical allocation released. (Made by `ExportableAllocation`, which exports fds: Unix.)
    #[cfg_attr(not(unix), allow(dead_code))]
    Virtual { ptr: sys::CUdeviceptr, bytes: usize, handle: sys::CUmemGenericAllocationHandle },
    /// An imported semaphore (`cuDestroyExternalSemaphore`): the driver requires the waits and
    /// signals queued on it to have completed first.
    Semaphore(sys::CUexternalSemaphore),
    /// A loaded module (`cuModuleUnload`).
    Module(sys::CUmodule),
    /// A surface object (`cuSurfObjectDestroy`).
    Surface(sys::CUsurfObject),
    /// A texture object (`cuTexObjectDestroy`).
    Texture(sys::CUtexObject),
    /// Something kept alive (the Vulkan buffer an owned view held): its drop is the release.
    Keep(Box<dyn Send>),
}

// SAFETY: raw driver handles, released with their context made current first; `Keep` is Send.
unsafe impl Send for Release {}

/// The driver call `f`, with `context` made current first; a failure is logged (it runs where
/// nothing can return it).
pub(crate) fn release_in(context: sys::CUcontext, call: &'static str, f: impl FnOnce() -> sys::CUresult) {
    // SAFETY: `context` is live (the caller is its `Inner`, or holds it).
    let bound = check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(context) });
    if let Err(e) = bound.and_then(|()| check(call, f())) {
        log::error!("{e}");
    }
}

impl Release {
    /// Releases it in `context`, now that the work that used it has completed.
    pub(crate) fn run(self, context: sys::CUcontext) {
        match self {
            Release::Mapping { base, external } => {
                // SAFETY: the mapping of `external`, freed once, nothing queued uses it any more.
                release_in(context, "cuMemFree_v2", || unsafe { sys::cuMemFree_v2(base) });
                // SAFETY: the import, destroyed once, after its mapping.
                release_in(context, "cuDestroyExternalMemory", || unsafe {
                    sys::cuDestroyExternalMemory(external)
                });
            }
            Release::Array { mipmapped, external } => {
                // SAFETY: as above, for the image's array and its import.
                release_in(context, "cuMipmappedArrayDestroy", || unsafe {
                    sys::cuMipmappedArrayDestroy(mipmapped)
                });
                // SAFETY: the import, destroyed once, after its array.
                release_in(context, "cuDestroyExternalMemory", || unsafe {
                    sys::cuDestroyExternalMemory(external)
                });
            }
            // SAFETY: memory of `cuMemAlloc` in `context`, freed once, unused by queued work.
            Release::Free(ptr) => release_in(context, "cuMemFree_v2", || unsafe { sys::cuMemFree_v2(ptr) }),
            Release::Virtual { ptr, bytes, handle } => {
                // SAFETY: the range was reserved (and maybe mapped) by `alloc_exportable`;
                // unmapping an unmapped range fails harmlessly and is logged.
                release_in(context, "cuMemUnmap", || unsafe { sys::cuMemUnmap(ptr, bytes) });
                // SAFETY: reserved by `alloc_exportable`, freed once.
                release_in(context, "cuMemAddressFree", || unsafe { sys::cuMemAddressFree(ptr, bytes) });
                // SAFETY: created by `alloc_exportable`, released once; Vulkan imports hold their
                // own reference to the memory.
                release_in(context, "cuMemRelease", || unsafe { sys::cuMemRelease(handle) });
            }
            Release::Semaphore(external) => {
                // SAFETY: imported by `CudaTimeline`, destroyed once, its queued waits and
                // signals complete.
                release_in(context, "cuDestroyExternalSemaphore", || unsafe {
                    sys::cuDestroyExternalSemaphore(external)
                });
            }
            Release::Module(module) => {
                // SAFETY: loaded by `load_ptx`, unloaded once.
                release_in(context, "cuModuleUnload", || unsafe { sys::cuModuleUnload(module) });
            }
            Release::Surface(object) => {
                // SAFETY: created by `CudaImage::surface`, destroyed once.
                release_in(context, "cuSurfObjectDestroy", || unsafe { sys::cuSurfObjectDestroy(object) });
            }
            Release::Texture(object) => {
                // SAFETY: created by `CudaImage::texture`, destroyed once.
                release_in(context, "cuTexObjectDestroy", || unsafe { sys::cuTexObjectDestroy(object) });
            }
            Release::Keep(kept) => drop(kept),
        }
    }

    /// Gives up on releasing it: the work that used it could not be waited for, so it may
    /// still run. Raw handles are simply not released; a kept object is leaked.
    fn leak(self) {
        log::error!("a CUDA object dropped under queued work is leaked: that work could not be waited for");
        if let Release::Keep(kept) = self {
            std::mem::forget(kept);
        }
    }
}

/// A context's releases waiting for their work.
pub(crate) type Releases = Mutex<ReleaseList<CudaFence, Release>>;

/// Semaphore waits queued through lava-flow ([`CudaTimeline::wait`](super::CudaTimeline::wait))
/// that may not have passed yet, per CUDA context (raw handle): a fence recorded after each.
///
/// While one is queued, lava-flow runs no release: `cuMemFree` waits for every stream of the
/// context, that wait included, and while it waits every other CUDA call of the process in that
/// context waits too (measured on the H200: RELIABILITY.md). A thread that queued a wait for a
/// value it signals only after more CUDA calls (creating an event, dropping a buffer) would
/// block on its own wait for ever. Process-wide: every [`Context`] of one primary context
/// shares the driver's.
static WAITS: Mutex<PendingWaits<CudaFence>> = Mutex::new(PendingWaits::new());

/// Notes a wait queued on `stream` of `ctx`: returns the fence recorded after it.
pub(crate) fn note_wait(ctx: &Context, stream: &Stream) -> Result<Arc<CudaFence>> {
    let fence = CudaFence::record(ctx, stream)?;
    let mut gone = Vec::new();
    WAITS.lock().unwrap_or_else(PoisonError::into_inner).note(
        ctx.raw() as usize,
        Arc::clone(&fence),
        &mut gone,
    );
    // Dropped with the list unlocked: a fence's drop may end its context, whose end locks it.
    drop(gone);
    Ok(fence)
}

/// Whether a wait noted for `context` may still be pending ([`PendingWaits::pending`]).
fn waits_pending(context: sys::CUcontext) -> bool {
    let mut gone = Vec::new();
    let pending = WAITS.lock().unwrap_or_else(PoisonError::into_inner).pending(context as usize, &mut gone);
    // As in `note_wait`.
    drop(gone);
    pending
}

/// Waits until no semaphore wait noted for `context` may be pending, polling until `deadline`;
/// whether that came.
fn settle_waits(context: sys::CUcontext, deadline: Instant) -> bool {
    matches!(poll_until(deadline, || Ok(!waits_pending(context))), Ok(true))
}

impl Context {
    /// Releases `what` once every fence of `fences` is complete: now if there are none (or all
    /// are complete) and no semaphore wait queued through lava-flow may still be pending in
    /// this context, otherwise on a later call into this context or at its end. Never waits.
    ///
    /// What was deferred earlier and is ready goes first, so that objects dropped in order (a
    /// texture object held back by a wait, then its image's array) are released in that order.
    pub(crate) fn release_after_fences(&self, fences: Vec<Arc<CudaFence>>, what: Release) {
        let (_, waits) = self.reclaim_ready();
        if fences.is_empty() && !waits {
            what.run(self.raw());
        } else {
            self.inner.deferred.lock().unwrap_or_else(PoisonError::into_inner).defer(fences, what);
        }
    }

    /// Waits, up to `limit`, until no semaphore wait queued through lava-flow may be pending in
    /// this context (for those who must then synchronise it: `cuCtxSynchronize` would wait for
    /// such a wait for ever); whether that came.
    pub(crate) fn settle_waits(&self, limit: Duration) -> bool {
        settle_waits(self.raw(), Instant::now() + limit)
    }

    /// Releases `what`, which no recorded work uses, now — or, while a semaphore wait queued
    /// through lava-flow may be pending in this context, once it has passed (ADR 0017).
    pub(crate) fn release_later(&self, what: Release) {
        self.release_after_fences(Vec::new(), what);
    }

    /// Releases what was dropped under work that has since completed, and returns how many
    /// dropped objects still wait for theirs. lava-flow calls it on every import, allocation,
    /// stream and event creation of this context; call it yourself where a program holds
    /// memory for long without calling into lava-flow's CUDA side. Never waits, and releases
    /// nothing while a semaphore wait queued through lava-flow
    /// ([`CudaTimeline::wait`](super::CudaTimeline::wait)) may still be pending in the context:
    /// `cuMemFree` would wait for it, and hold every other CUDA call of the context meanwhile.
    pub fn reclaim(&self) -> usize {
        self.reclaim_ready().0
    }

    /// [`reclaim`](Context::reclaim), and whether a wait may be pending (nothing was released).
    fn reclaim_ready(&self) -> (usize, bool) {
        if waits_pending(self.raw()) {
            return (self.inner.deferred.lock().unwrap_or_else(PoisonError::into_inner).len(), true);
        }
        let (ready, left) = {
            let mut list = self.inner.deferred.lock().unwrap_or_else(PoisonError::into_inner);
            let ready = list.reclaim();
            (ready, list.len())
        };
        for what in ready {
            what.run(self.raw());
        }
        (left, false)
    }
}

/// How long a context's end (and [`CudaRing`](crate::ring::CudaRing)'s drop) waits for the
/// semaphore waits queued through lava-flow in it to pass, before leaking what it holds: a wait
/// for a value nobody signals never passes.
pub(crate) const END_WAIT: Duration = Duration::from_secs(10);

/// How long a context's end then waits, in all, for the work queued before its deferred objects
/// were dropped (kernels, copies: work that completes unless it waits for something lava-flow
/// cannot see), before leaking what is still held.
const END_WORK: Duration = Duration::from_secs(60);

/// At a context's end: waits (up to [`END_WAIT`]) for the semaphore waits queued through
/// lava-flow in the context to pass, then (up to [`END_WORK`] in all) for the work of everything
/// still deferred; releases what it can, and leaks the rest — everything, while a wait is still
/// pending, since a release could wait for it for ever. Then forgets the context's waits. The
/// one host wait of ADR 0014's CUDA side.
pub(crate) fn release_all(inner: &Inner) {
    let settled = settle_waits(inner.context, Instant::now() + END_WAIT);
    let (ready, failed) = {
        let mut list = inner.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        if settled {
            list.drain_waiting(Instant::now() + END_WORK, END_WORK)
        } else {
            (Vec::new(), list.take_all())
        }
    };
    if !settled && !failed.is_empty() {
        log::error!(
            "a semaphore wait queued through lava-flow is still pending after {END_WAIT:?} at the CUDA \
             context's end: {} dropped objects are leaked rather than released (a release would wait for it)",
            failed.len()
        );
    }
    for what in ready {
        what.run(inner.context);
    }
    for what in failed {
        what.leak();
    }
    // The context's own waits leave the process-wide list now, while their events can still be
    // destroyed (their context lives until the end of `Inner::drop`); dropped with it unlocked.
    let mut gone = Vec::new();
    WAITS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .forget(|fence| std::ptr::eq(fence.owner.as_ptr(), inner), &mut gone);
    drop(gone);
}
