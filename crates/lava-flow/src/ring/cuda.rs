//! A ring seen from a CUDA context.

use super::{End, FrameStep, Ring};
use crate::cuda::{Context, CudaBuffer, CudaImage, CudaTimeline, Stream};
use crate::error::Result;

/// A [`Ring`] imported into a CUDA context ([`Ring::import_cuda`]): the slots as
/// [`CudaBuffer`]s (device pointers) or [`CudaImage`]s (mipmapped arrays), the two timelines as
/// [`CudaTimeline`]s, so that streams wait and signal with no host involvement. It needs a device
/// that exports timelines (every NVIDIA driver does; lavapipe does not: [`Error::Unsupported`]).
///
/// Its drop synchronizes the context before the imports are released, so that no queued kernel
/// still uses a slot when its mapping goes — once no semaphore wait queued through lava-flow is
/// pending in the context (`cuCtxSynchronize` would wait for it): if one still is after 10 s (a
/// wait for a value nobody signals), the slots' imports are leaked instead, with an error logged,
/// rather than the drop hang.
///
/// [`Error::Unsupported`]: crate::Error::Unsupported
pub struct CudaRing<'a> {
    ring: &'a Ring,
    ctx: Context,
    buffers: Vec<CudaBuffer<'a>>,
    images: Vec<CudaImage<'a>>,
    written: CudaTimeline<'a>,
    released: CudaTimeline<'a>,
}

impl std::fmt::Debug for CudaRing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaRing")
            .field("buffers", &self.buffers)
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Imports the ring's slots (each once) and timelines into `ctx`. Errors: those of
    /// [`Context::import_buffer`], [`Context::import_image`] and [`Context::import_timeline`]
    /// ([`Error::Unsupported`](crate::Error::Unsupported) where timelines cannot be exported).
    pub fn import_cuda<'a>(&'a self, ctx: &Context) -> Result<CudaRing<'a>> {
        Ok(CudaRing {
            ring: self,
            ctx: ctx.clone(),
            written: ctx.import_timeline(self.written())?,
            released: ctx.import_timeline(self.released())?,
            buffers: self.buffers().iter().map(|b| ctx.import_buffer(b)).collect::<Result<_>>()?,
            images: self.images().iter().map(|i| ctx.import_image(i)).collect::<Result<_>>()?,
        })
    }
}

impl CudaRing<'_> {
    /// The slots of a buffer ring, as CUDA device memory.
    pub fn buffers(&self) -> &[CudaBuffer<'_>] {
        &self.buffers
    }

    /// The slots of an image ring, as CUDA mipmapped arrays.
    pub fn images(&self) -> &[CudaImage<'_>] {
        &self.images
    }

    fn timelines(&self, end: End) -> (&CudaTimeline<'_>, &CudaTimeline<'_>) {
        match end {
            End::Producer => (&self.released, &self.written),
            End::Consumer => (&self.written, &self.released),
        }
    }

    /// Makes work queued on `stream` after this call wait for `step.wait` (nothing if the step
    /// has none). Errors: a step of another ring ([`Error::Ring`](crate::Error::Ring)); a
    /// stream of another device; CUDA errors.
    pub fn wait(&self, step: &FrameStep, stream: &Stream) -> Result<()> {
        self.ring.check_step(step)?;
        match step.wait {
            Some(v) => self.timelines(step.end).0.wait(v, stream),
            None => Ok(()),
        }
    }

    /// Signals `step.signal` once the work queued on `stream` so far is done (nothing if the
    /// step has none). Errors: as [`wait`](CudaRing::wait).
    pub fn signal(&self, step: &FrameStep, stream: &Stream) -> Result<()> {
        self.ring.check_step(step)?;
        match step.signal {
            Some(v) => self.timelines(step.end).1.signal(v, stream),
            None => Ok(()),
        }
    }
}

impl Drop for CudaRing<'_> {
    fn drop(&mut self) {
        if !self.ctx.settle_waits(crate::cuda::release::END_WAIT) {
            log::error!(
                "CudaRing: a semaphore wait queued through lava-flow is still pending after {:?}; \
                 the ring's CUDA slot imports are leaked rather than released under work that may \
                 still use them",
                crate::cuda::release::END_WAIT
            );
            std::mem::forget(std::mem::take(&mut self.buffers));
            std::mem::forget(std::mem::take(&mut self.images));
            return;
        }
        if let Err(e) = self.ctx.synchronize() {
            log::error!("CudaRing: synchronizing before releasing the imported slots: {e}");
        }
    }
}
