//! Ordering GL work against a lava-flow timeline semaphore.

use std::marker::PhantomData;
use std::time::Duration;

use super::context::{handle_extensions, GlContext};
use super::memory::GlBuffer;
use super::sys::{self, GLenum, GLuint};
use super::texture::GlTexture;
use crate::external::{NativeHandle, Payload};

use crate::error::{Api, Error, Result};
use crate::handle::{ExportedSemaphore, SemaphoreKind};
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
    path: Path<'a>,
    /// The last value signalled through this import, for the increasing-values rule where
    /// there is no Vulkan semaphore to read the counter from.
    last_signal: std::cell::Cell<u64>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for GlTimeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gl = match self.path {
            Path::Gpu { name, .. } => Some(name),
            Path::Host(_) => None,
        };
        f.debug_struct("GlTimeline").field("gl_semaphore", &gl).finish_non_exhaustive()
    }
}

/// How a [`GlTimeline`] orders GL work.
enum Path<'a> {
    /// An imported GL semaphore; the Vulkan semaphore where it lives in this process.
    Gpu { name: GLuint, vulkan: Option<&'a TimelineSemaphore> },
    /// The host fallback, on the Vulkan semaphore.
    Host(&'a TimelineSemaphore),
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
        let gpu_path = semaphore.is_exportable()
            && self.shared.info.has_extension(handle_extensions().semaphore)
            && self.shared.nv_timeline.is_some();
        let path = if gpu_path {
            Path::Gpu { name: self.gl_timeline(semaphore.export_native()?)?, vulkan: Some(semaphore) }
        } else {
            Path::Host(semaphore)
        };
        Ok(GlTimeline { ctx: self, path, last_signal: Default::default(), _not_send: PhantomData })
    }

    /// Imports an exported timeline semaphore — from this process or another — on the GPU path
    /// (there is no Vulkan object here for the fallback to wait on). Errors:
    /// [`Error::Unsupported`] without `GL_EXT_semaphore_fd` and `GL_NV_timeline_semaphore`;
    /// [`Error::DeviceMismatch`]; [`Error::InvalidArgument`] for a binary semaphore.
    ///
    /// [`signal`](GlTimeline::signal) then checks its values against the last value signalled
    /// through this import; ordering signals made elsewhere is the caller's part.
    pub fn import_exported_semaphore(&self, exported: ExportedSemaphore) -> Result<GlTimeline<'_>> {
        let (handle, desc) = exported.into_parts();
        let fd = handle.into_native();
        self.require(handle_extensions().semaphore, "importing Vulkan semaphores")?;
        if self.shared.nv_timeline.is_none() {
            return Err(Error::Unsupported {
                what: format!(
                    "{} has no GL_NV_timeline_semaphore, so it cannot import a timeline semaphore",
                    self.shared.info.renderer
                ),
            });
        }
        self.check_device("the timeline semaphore", desc.device_uuid, desc.driver_uuid)?;
        if desc.kind != SemaphoreKind::Timeline {
            return Err(Error::InvalidArgument(format!(
                "GL imports timeline semaphores here; this one is {:?}",
                desc.kind
            )));
        }
        let path = Path::Gpu { name: self.gl_timeline(fd)?, vulkan: None };
        Ok(GlTimeline { ctx: self, path, last_signal: Default::default(), _not_send: PhantomData })
    }

    /// A GL timeline semaphore imported from `handle` (`GL_NV_timeline_semaphore` present).
    fn gl_timeline(&self, handle: NativeHandle) -> Result<GLuint> {
        let shared = &self.shared;
        let nv = shared.nv_timeline.as_ref().ok_or_else(|| Error::Unsupported {
            what: format!("{} has no GL_NV_timeline_semaphore", shared.info.renderer),
        })?;
        let gl = shared.current()?;
        // SAFETY: the context is current and lists GL_NV_timeline_semaphore.
        let name = unsafe { nv.create_timeline() };
        shared.check("glCreateSemaphoresNV")?;
        let imported = crate::external::give_to_driver(Api::OpenGl, handle, Payload::Semaphore, |raw| {
            // SAFETY: a fresh timeline semaphore of this context, which has the platform's
            // semaphore extension (checked by the callers); `raw` is a handle the caller says is
            // an opaque handle of a timeline semaphore of the same device (checked by the caller).
            let call = unsafe { super::external::import_semaphore(gl, name, raw) };
            shared.check(call).map_err(|e| (e, shared.info.refused_fd()))
        });
        if let Err(e) = imported {
            // SAFETY: made above, used by nothing.
            unsafe { gl.DeleteSemaphoresEXT(1, &name) };
            return Err(e);
        }
        Ok(name)
    }
}

impl GlTimeline<'_> {
    /// Whether GL waits and signals on the GPU (`true`) or through the host fallback.
    pub fn is_gpu_path(&self) -> bool {
        matches!(self.path, Path::Gpu { .. })
    }

    /// Makes GL commands issued after this call wait until the timeline reaches `value`.
    /// `buffers` and `textures` are what those commands use (GL_EXT_semaphore makes them
    /// available; lava-flow images are in `GENERAL` layout, which is what GL is told).
    pub fn wait(&self, value: u64, buffers: &[&GlBuffer<'_>], textures: &[&GlTexture<'_>]) -> Result<()> {
        match self.path {
            Path::Gpu { name, .. } => self.semaphore_op(name, value, buffers, textures, Op::Wait),
            Path::Host(semaphore) => semaphore.wait(value, FALLBACK_WAIT_TIMEOUT),
        }
    }

    /// Sets the timeline to `value` once the GL commands issued so far are done. `buffers` and
    /// `textures` are what those commands wrote (left in `GENERAL` layout for Vulkan).
    pub fn signal(&self, value: u64, buffers: &[&GlBuffer<'_>], textures: &[&GlTexture<'_>]) -> Result<()> {
        let (name, vulkan) = match self.path {
            Path::Gpu { name, vulkan } => (name, vulkan),
            Path::Host(semaphore) => {
                self.ctx.finish()?;
                return semaphore.signal(value);
            }
        };
        let current = match vulkan {
            Some(vulkan) => vulkan.value()?,
            None => self.last_signal.get(),
        };
        crate::vulkan::check_increasing(value, current)?;
        self.semaphore_op(name, value, buffers, textures, Op::Signal)?;
        let gl = self.ctx.shared.current()?;
        // SAFETY: the context is current. The signal must reach the GPU without further GL calls.
        unsafe { gl.Flush() };
        self.ctx.shared.check("glFlush")?;
        self.last_signal.set(value);
        Ok(())
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
        if let Path::Gpu { name, .. } = self.path {
            match self.ctx.shared.current() {
                // SAFETY: our semaphore, made by this context.
                Ok(gl) => unsafe { gl.DeleteSemaphoresEXT(1, &name) },
                Err(e) => log::error!("GL semaphore {name} leaked: {e}"),
            }
        }
    }
}
