//! A ring seen from an OpenCL context.

use std::time::Duration;

use super::{FrameStep, Ring};
use crate::error::Result;
use crate::opencl::{ClBuffer, ClImage, Context, Queue};

/// How long [`ClRing::wait`] waits for a value.
const HOST_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A [`Ring`] imported into an OpenCL context ([`Ring::import_opencl`]): the slots as
/// [`ClBuffer`]s or [`ClImage`]s.
///
/// OpenCL imports binary semaphores only (`cl_khr_external_semaphore` has no timelines), so the
/// ring's timelines are waited for and signalled through the host: [`wait`](ClRing::wait)
/// blocks until the value is reached, and [`signal`](ClRing::signal) finishes the queue
/// (`clFinish`) and then signals from the host. The order is the same as on the GPU; only the
/// CPU waits. Enqueue acquire and release ([`Queue::acquire`], [`Queue::release`]) around the
/// commands that use the slots, as for any imported object.
pub struct ClRing<'a> {
    ring: &'a Ring,
    buffers: Vec<ClBuffer<'a>>,
    images: Vec<ClImage<'a>>,
}

impl std::fmt::Debug for ClRing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClRing")
            .field("buffers", &self.buffers.len())
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Imports the ring's slots into `ctx`, each once. Errors: those of
    /// [`Context::import_buffer`] and [`Context::import_image`].
    pub fn import_opencl<'a>(&'a self, ctx: &'a Context) -> Result<ClRing<'a>> {
        Ok(ClRing {
            ring: self,
            buffers: self.buffers().iter().map(|b| ctx.import_buffer(b)).collect::<Result<_>>()?,
            images: self.images().iter().map(|i| ctx.import_image(i)).collect::<Result<_>>()?,
        })
    }
}

impl ClRing<'_> {
    /// The slots of a buffer ring (mind [`ClBuffer::offset`]).
    pub fn buffers(&self) -> &[ClBuffer<'_>] {
        &self.buffers
    }

    /// The slots of an image ring.
    pub fn images(&self) -> &[ClImage<'_>] {
        &self.images
    }

    /// Blocks until the other end's timeline reaches `step.wait` (at most 60 s, then
    /// [`Error::Timeout`](crate::Error::Timeout)); nothing if the step has none. Enqueue the
    /// slot's commands after it returns.
    pub fn wait(&self, step: &FrameStep) -> Result<()> {
        self.ring.check_step(step)?;
        match step.wait {
            Some(v) => self.ring.wait_timeline(step.end).wait(v, HOST_WAIT_TIMEOUT),
            None => Ok(()),
        }
    }

    /// Finishes `queue` and signals `step.signal` from the host (nothing, not even the finish,
    /// if the step has none).
    pub fn signal(&self, step: &FrameStep, queue: &Queue<'_>) -> Result<()> {
        self.ring.check_step(step)?;
        let Some(v) = step.signal else { return Ok(()) };
        queue.finish()?;
        self.ring.signal_timeline(step.end).signal(v)
    }
}
