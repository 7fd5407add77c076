//! A ring seen from an OpenGL context.

use super::{End, FrameStep, Ring};
use crate::error::Result;
use crate::opengl::{GlBuffer, GlContext, GlTexture, GlTimeline};

/// A [`Ring`] imported into a GL context ([`Ring::import_gl`]): the slots as GL buffers or
/// textures, the two timelines as [`GlTimeline`]s. On the GPU path (NVIDIA) waits and signals are
/// GL commands; elsewhere (llvmpipe, or a device that cannot export timelines) they take
/// [`GlTimeline`]'s host fallback: [`wait`](GlRing::wait) blocks until the value is reached and
/// [`signal`](GlRing::signal) runs `glFinish` and then signals from the host.
pub struct GlRing<'a> {
    ring: &'a Ring,
    buffers: Vec<GlBuffer<'a>>,
    textures: Vec<GlTexture<'a>>,
    written: GlTimeline<'a>,
    released: GlTimeline<'a>,
}

impl std::fmt::Debug for GlRing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlRing")
            .field("buffers", &self.buffers.len())
            .field("textures", &self.textures.len())
            .field("gpu_ordered", &self.written.is_gpu_path())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Imports the ring's slots and timelines into `ctx` (each slot once). Errors: those of
    /// [`GlContext::import_buffer`], [`GlContext::import_image`] and
    /// [`GlContext::import_timeline`].
    pub fn import_gl<'a>(&'a self, ctx: &'a GlContext) -> Result<GlRing<'a>> {
        Ok(GlRing {
            ring: self,
            buffers: self.buffers().iter().map(|b| ctx.import_buffer(b)).collect::<Result<_>>()?,
            textures: self.images().iter().map(|i| ctx.import_image(i)).collect::<Result<_>>()?,
            written: ctx.import_timeline(self.written())?,
            released: ctx.import_timeline(self.released())?,
        })
    }
}

impl GlRing<'_> {
    /// The slots of a buffer ring, as GL buffers (mind [`GlBuffer::offset`]).
    pub fn buffers(&self) -> &[GlBuffer<'_>] {
        &self.buffers
    }

    /// The slots of an image ring, as GL textures.
    pub fn textures(&self) -> &[GlTexture<'_>] {
        &self.textures
    }

    /// Whether waits and signals are GL commands (`false`: the host fallback).
    pub fn is_gpu_ordered(&self) -> bool {
        self.written.is_gpu_path() && self.released.is_gpu_path()
    }

    fn timelines(&self, end: End) -> (&GlTimeline<'_>, &GlTimeline<'_>) {
        match end {
            End::Producer => (&self.released, &self.written),
            End::Consumer => (&self.written, &self.released),
        }
    }

    /// Makes GL commands issued after this call wait for `step.wait` (nothing if the step has
    /// none). The wait covers every slot. Errors: a step of another ring ([`Error::Ring`]); GL
    /// errors; [`Error::Timeout`] on the host fallback.
    ///
    /// [`Error::Ring`]: crate::Error::Ring
    /// [`Error::Timeout`]: crate::Error::Timeout
    pub fn wait(&self, step: &FrameStep) -> Result<()> {
        self.wait_with(step, &[], &[])
    }

    /// Signals `step.signal` once the GL commands issued so far are done (nothing if the step
    /// has none). Errors: as [`wait`](GlRing::wait).
    pub fn signal(&self, step: &FrameStep) -> Result<()> {
        self.signal_with(step, &[], &[])
    }

    /// As [`wait`](GlRing::wait), also covering other imported objects the GL work uses beside
    /// the slots (say, a results buffer that Vulkan reads later).
    pub fn wait_with(
        &self,
        step: &FrameStep,
        buffers: &[&GlBuffer<'_>],
        textures: &[&GlTexture<'_>],
    ) -> Result<()> {
        self.ring.check_step(step)?;
        let Some(v) = step.wait else { return Ok(()) };
        let (buffers, textures) = self.objects(buffers, textures);
        self.timelines(step.end).0.wait(v, &buffers, &textures)
    }

    /// As [`signal`](GlRing::signal), also covering other imported objects the GL work wrote.
    pub fn signal_with(
        &self,
        step: &FrameStep,
        buffers: &[&GlBuffer<'_>],
        textures: &[&GlTexture<'_>],
    ) -> Result<()> {
        self.ring.check_step(step)?;
        let Some(v) = step.signal else { return Ok(()) };
        let (buffers, textures) = self.objects(buffers, textures);
        self.timelines(step.end).1.signal(v, &buffers, &textures)
    }

    /// The slots and `extra` objects, for a semaphore operation's lists.
    fn objects<'s>(
        &'s self,
        buffers: &[&'s GlBuffer<'s>],
        textures: &[&'s GlTexture<'s>],
    ) -> (Vec<&'s GlBuffer<'s>>, Vec<&'s GlTexture<'s>>) {
        (
            self.buffers.iter().chain(buffers.iter().copied()).collect(),
            self.textures.iter().chain(textures.iter().copied()).collect(),
        )
    }
}
