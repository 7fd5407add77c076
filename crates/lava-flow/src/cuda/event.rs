//! CUDA events: ordering one stream after another, and timing work on the GPU.

use std::sync::PoisonError;
use std::time::Duration;

use super::context::{Context, Inner, Stream};
use super::raw::{check, has_function};
use super::sys;
use crate::error::{Error, Result};

/// A CUDA event of a [`Context`], destroyed on drop.
///
/// ```no_run
/// # fn main() -> lava_flow::Result<()> {
/// # let allocator = lava_flow::MemoryAllocator::new()?;
/// use lava_flow::cuda::Context;
/// let ctx = Context::for_device(&allocator, 0)?;
/// let (lava, mine) = (ctx.stream()?, ctx.stream()?);
/// // ... work queued on `lava` (a semaphore wait, a kernel) ...
/// mine.wait_for(&lava)?; // what is queued on `mine` from now on runs after it
/// # Ok(()) }
/// ```
pub struct Event {
    ctx: Context,
    event: sys::CUevent,
    timing: bool,
}

// SAFETY: a CUevent is a driver handle usable from any thread with its context current.
unsafe impl Send for Event {}
// SAFETY: as above; the driver's event calls are thread-safe.
unsafe impl Sync for Event {}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").field("event", &self.event).finish()
    }
}

impl Context {
    /// A new event (`cuEventCreate`). `timing` events can measure elapsed time; others are
    /// cheaper and only order work.
    pub fn event(&self, timing: bool) -> Result<Event> {
        self.reclaim();
        self.bind()?;
        let flags = if timing { 0 } else { sys::CUevent_flags_enum::CU_EVENT_DISABLE_TIMING as u32 };
        let mut event = std::ptr::null_mut();
        // SAFETY: the context is current; `event` is a valid out-pointer.
        check("cuEventCreate", unsafe { sys::cuEventCreate(&mut event, flags) })?;
        Ok(Event { ctx: self.clone(), event, timing })
    }

    /// An event without timing for lava-flow's own use: a spare of this context, or a new one
    /// (`cuEventCreate`). The context must be current. Give it back with [`give_back`] once
    /// nothing will query or wait for it any more (a `cuStreamWaitEvent` already queued on it
    /// does not count: it took the event's state when it was called).
    pub(crate) fn spare_event(&self) -> Result<sys::CUevent> {
        let spare = self.inner.spares.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(event) = spare {
            return Ok(event);
        }
        let flags = sys::CUevent_flags_enum::CU_EVENT_DISABLE_TIMING as u32;
        let mut event = std::ptr::null_mut();
        // SAFETY: the context is current (the caller's promise); `event` is a valid out-pointer.
        check("cuEventCreate", unsafe { sys::cuEventCreate(&mut event, flags) })?;
        Ok(event)
    }
}

/// Gives `event`, of the context `inner` and from [`Context::spare_event`], back to its spares;
/// destroys it where they are full.
pub(crate) fn give_back(inner: &Inner, event: sys::CUevent) {
    let full = inner.spares.lock().unwrap_or_else(PoisonError::into_inner).put(event);
    if let Some(event) = full {
        // SAFETY: an event of `inner`'s live context that nothing uses any more, destroyed once
        // (a record or wait already queued on it completes all the same).
        super::release::release_in(inner.context, "cuEventDestroy_v2", || unsafe {
            sys::cuEventDestroy_v2(event)
        });
    }
}

impl Event {
    /// Captures the work queued on `stream` so far (`cuEventRecord`).
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.ctx.check_device("the stream", stream.ctx.uuid())?;
        self.ctx.bind()?;
        // SAFETY: event and stream are valid in the same, current context.
        check("cuEventRecord", unsafe { sys::cuEventRecord(self.event, stream.stream) })
    }

    /// Waits on the host until the captured work has completed (`cuEventSynchronize`).
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: the event is valid in its current context.
        check("cuEventSynchronize", unsafe { sys::cuEventSynchronize(self.event) })
    }

    /// GPU time from `start`'s capture to this one's (`cuEventElapsedTime_v2`, CUDA 12.8 drivers
    /// and newer; [`Error::Unsupported`] before); both must be timing events
    /// ([`Error::InvalidArgument`] otherwise, before any driver call), recorded and completed.
    pub fn elapsed_since(&self, start: &Event) -> Result<Duration> {
        self.ctx.check_device("the start event", start.ctx.uuid())?;
        if !(self.timing && start.timing) {
            return Err(Error::InvalidArgument(
                "cuEventElapsedTime_v2 needs two timing events (Context::event(true))".into(),
            ));
        }
        if !has_function("cuEventElapsedTime_v2") {
            return Err(Error::Unsupported {
                what: "cuEventElapsedTime_v2 (a CUDA 12.8 driver or newer) for event timing".into(),
            });
        }
        self.ctx.bind()?;
        let mut ms = 0f32;
        // SAFETY: the function exists (checked above); both events are valid in the current
        // context; `ms` is a valid out-pointer.
        check("cuEventElapsedTime_v2", unsafe {
            sys::cuEventElapsedTime_v2(&mut ms, start.event, self.event)
        })?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }

    /// The raw event.
    pub fn raw(&self) -> sys::CUevent {
        self.event
    }
}

impl Stream {
    /// Makes work queued on this stream from now on wait for `event`'s captured work
    /// (`cuStreamWaitEvent`), without blocking the host.
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        self.ctx.check_device("the event", event.ctx.uuid())?;
        self.ctx.bind()?;
        // SAFETY: stream and event are valid in the same, current context.
        check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(self.stream, event.event, 0) })
    }

    /// Orders this stream after the work queued on `other` so far (an event recorded on `other`
    /// and waited for here): how a user's stream follows lava-flow's semaphore waits, or the
    /// reverse. `other` may be a stream of another context or GPU. The event is one the
    /// context keeps for reuse: four driver calls (`cuCtxSetCurrent`, `cuEventRecord`,
    /// `cuCtxSetCurrent`, `cuStreamWaitEvent`); none where `other` is this stream.
    pub fn wait_for(&self, other: &Stream) -> Result<()> {
        if self.stream == other.stream && self.ctx.raw() == other.ctx.raw() {
            return Ok(());
        }
        // No `reclaim` here: a release may call `cuMemFree`, which waits for every stream of the
        // device, including a wait this thread queued and will satisfy only later (RELIABILITY.md).
        other.ctx.bind()?;
        let event = other.ctx.spare_event()?;
        // SAFETY: the event and `other` belong to `other`'s context, which is current.
        let recorded = check("cuEventRecord", unsafe { sys::cuEventRecord(event, other.stream) });
        let waited = recorded.and_then(|()| self.ctx.bind()).and_then(|()| {
            // SAFETY: this stream is valid in its context, which is current; the event is
            // valid (`cuStreamWaitEvent` takes an event of another context or device).
            check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(self.stream, event, 0) })
        });
        // The wait took the event's state: recording it again later does not change it.
        give_back(&other.ctx.inner, event);
        waited
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: our own event, destroyed once; pending waits on it still complete.
        self.ctx.release("cuEventDestroy_v2", || unsafe { sys::cuEventDestroy_v2(self.event) });
    }
}
