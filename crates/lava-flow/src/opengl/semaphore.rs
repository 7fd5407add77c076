//! Ordering GL work against a lava-flow timeline semaphore.

use std::marker::PhantomData;
use std::time::Duration;

use super::context::{GlContext, EXT_SEMAPHORE_FD};
use super::memory::GlBuffer;
use super::sys::{self, GLenum, GLuint};
use super::texture::GlTexture;
use crate::error::{Error, Result};
use crate::vulkan::TimelineSemaphore;

/// How long the host-side fallback waits for a value before giving up.
pub const FALLBACK_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A lava-flow timeline semaphore as seen from a GL context.
///
/// Two ways, one API:
/// - **GPU path** (NVIDIA: `GL_EXT_semaphore_fd` + `GL_NV_timeline_semaphore`, and a semaphore
///   the device could export): the timeline is imported into GL; [`wait`](GlTimeline::wait) and
///   [`signal`](GlTimeline::signal) are GL commands, and the CPU never blocks.
/// - **Fallback** (no semaphore extension, e.g. Mesa's llvmpipe, or a semaphore that cannot be
///   exported, e.g. lavapipe's): `wait` blocks the calling thread until the timeline reaches the
///   value (at most [`FALLBACK_WAIT_TIMEOUT`]) before later GL commands are issued, and `signal`
///   runs `glFinish` and then signals the timeline from the host. The order is the same; only
///   the CPU waits.
pub struct GlTimeline<'a> {
    ctx: &'a GlContext,
    semaphore: &'a TimelineSemaphore,
    /// The imported GL semaphore, on the GPU path.
    gl: Option<GLuint>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for GlTimeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlTimeline").field("gl_semaphore", &self.gl).finish_non_exhaustive()
    }
}

impl GlContext {
    /// Makes `semaphore` usable for ordering this context's work, on the GPU path where the
    /// driver allows it and the fallback otherwise (see [`GlTimeline`]).
    pub fn import_timeline<'a>(&'a self, semaphore: &'a TimelineSemaphore) -> Result<GlTimeline<'a>> {
        self.check_device(
            "the timeline semaphore",
            crate::Uuid(semaphore.device_uuid()),
            crate::Uuid(semaphore.driver_uuid()),
        )?;
        let shared = &self.shared;
        let gpu_path = semaphore.is_exportable() && shared.info.has_extension(EXT_SEMAPHORE_FD);
        let gl = match (gpu_path, shared.nv_timeline.as_ref()) {
            (true, Some(nv)) => {
                let fd = semaphore.export_fd()?;
                let gl = shared.current()?;
                // SAFETY: the context is current and lists GL_NV_timeline_semaphore.
                let name = unsafe { nv.create_timeline() };
                shared.check("glCreateSemaphoresNV")?;
                let imported = crate::fd::give_to_driver(fd, |raw| {
                    // SAFETY: a fresh timeline semaphore of this context; `raw` is an opaque fd of
                    // a timeline semaphore of the same device (checked above).
                    unsafe { gl.ImportSemaphoreFdEXT(name, sys::HANDLE_TYPE_OPAQUE_FD_EXT, raw) };
                    shared.check("glImportSemaphoreFdEXT").map_err(|e| (e, shared.info.refused_fd()))
                });
                if let Err(e) = imported {
                    // SAFETY: made above, used by nothing.
                    unsafe { gl.DeleteSemaphoresEXT(1, &name) };
                    return Err(e);
                }
                Some(name)
            }
            _ => None,
        };
        Ok(GlTimeline { ctx: self, semaphore, gl, _not_send: PhantomData })
    }
}

impl GlTimeline<'_> {
    /// Whether GL waits and signals on the GPU (`true`) or through the host fallback.
    pub fn is_gpu_path(&self) -> bool {
        self.gl.is_some()
    }

    /// Makes GL commands issued after this call wait until the timeline reaches `value`.
    /// `buffers` and `textures` are what those commands use (GL_EXT_semaphore makes them
    /// available; lava-flow images are in `GENERAL` layout, which is what GL is told).
    pub fn wait(&self, value: u64, buffers: &[&GlBuffer<'_>], textures: &[&GlTexture<'_>]) -> Result<()> {
        let Some(name) = self.gl else {
            return self.semaphore.wait(value, FALLBACK_WAIT_TIMEOUT);
        };
        self.semaphore_op(name, value, buffers, textures, Op::Wait)
    }

    /// Sets the timeline to `value` once the GL commands issued so far are done. `buffers` and
    /// `textures` are what those commands wrote (left in `GENERAL` layout for Vulkan).
    pub fn signal(&self, value: u64, buffers: &[&GlBuffer<'_>], textures: &[&GlTexture<'_>]) -> Result<()> {
        let Some(name) = self.gl else {
            self.ctx.finish()?;
            return self.semaphore.signal(value);
        };
        let current = self.semaphore.value()?;
        if value <= current {
            return Err(Error::InvalidArgument(format!(
                "timeline values must increase: signal({value}) with the counter at {current}"
            )));
        }
        self.semaphore_op(name, value, buffers, textures, Op::Signal)?;
        let gl = self.ctx.shared.current()?;
        // SAFETY: the context is current. The signal must reach the GPU without further GL calls.
        unsafe { gl.Flush() };
        self.ctx.shared.check("glFlush")
    }

    /// Sets the GL semaphore's timeline value, then waits for or signals it with the barriers
    /// for `buffers` and `textures`.
    fn semaphore_op(
        &self,
        name: GLuint,
        value: u64,
        buffers: &[&GlBuffer<'_>],
        textures: &[&GlTexture<'_>],
        op: Op,
    ) -> Result<()> {
        let shared = &self.ctx.shared;
        let gl = shared.current()?;
        let names: Vec<GLuint> = buffers.iter().map(|b| b.gl_buffer()).collect();
        // lava-flow keeps images in GENERAL layout, so that is what GL is told.
        let (texture_names, layouts): (Vec<GLuint>, Vec<GLenum>) =
            textures.iter().map(|t| (t.gl_texture(), sys::LAYOUT_GENERAL_EXT)).unzip();
        // SAFETY: the context is current; `name` is its timeline semaphore; `value` outlives
        // the call.
        unsafe { gl.SemaphoreParameterui64vEXT(name, sys::TIMELINE_SEMAPHORE_VALUE_NV, &value) };
        shared.check("glSemaphoreParameterui64vEXT(GL_TIMELINE_SEMAPHORE_VALUE_NV)")?;
        let (nb, nt) = (names.len() as u32, texture_names.len() as u32);
        let (b, t, l) = (names.as_ptr(), texture_names.as_ptr(), layouts.as_ptr());
        match op {
            // SAFETY: the lists name live buffers and textures of this context, one layout per
            // texture; the context is current.
            Op::Wait => unsafe { gl.WaitSemaphoreEXT(name, nb, b, nt, t, l) },
            // SAFETY: as above.
            Op::Signal => unsafe { gl.SignalSemaphoreEXT(name, nb, b, nt, t, l) },
        }
        shared.check(match op {
            Op::Wait => "glWaitSemaphoreEXT",
            Op::Signal => "glSignalSemaphoreEXT",
        })
    }
}

/// Which side of a semaphore a GL command is on.
#[derive(Clone, Copy)]
enum Op {
    Wait,
    Signal,
}

impl Drop for GlTimeline<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.gl {
            match self.ctx.shared.current() {
                // SAFETY: our semaphore, made by this context.
                Ok(gl) => unsafe { gl.DeleteSemaphoresEXT(1, &name) },
                Err(e) => log::error!("GL semaphore {name} leaked: {e}"),
            }
        }
    }
}
