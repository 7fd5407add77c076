//! lava-flow binary semaphores imported into OpenCL (`cl_khr_external_semaphore_opaque_fd`).

use crate::external::{NativeHandle, Payload, RawHandle};
use std::marker::PhantomData;

use super::memory::Queue;
use super::sys::{self, check};
use super::Context;
use std::sync::Arc;

use crate::error::{Api, Error, Result};
use crate::handle::{ExportedSemaphore, SemaphoreKind};
use crate::vulkan::{binary_ops, BinaryState};
use crate::BinarySemaphore;

/// The platform's semaphore entry points, looked up with
/// `clGetExtensionFunctionAddressForPlatform` (ICD loaders do not export them).
#[derive(Debug, Clone, Copy)]
pub(super) struct SemaphoreFns {
    pub create: sys::CreateSemaphoreFn,
    pub wait: sys::EnqueueSemaphoresFn,
    pub signal: sys::EnqueueSemaphoresFn,
    pub release: sys::ReleaseSemaphoreFn,
}

/// A lava-flow [`BinarySemaphore`] imported into an OpenCL context; borrows the context, and
/// the semaphore it was imported from ([`Context::import_semaphore`]; one from an exported
/// handle holds its payload itself). Binary: every wait consumes one signal, and a wait must be enqueued after the
/// signal it consumes has been submitted (by Vulkan, or by OpenCL and flushed).
#[derive(Debug)]
pub struct ClSemaphore<'a> {
    ctx: &'a Context,
    semaphore: sys::cl_semaphore_khr,
    /// What lava-flow knows of the payload's signals, shared with the Vulkan semaphore.
    state: Arc<BinaryState>,
    _vulkan: PhantomData<&'a BinarySemaphore>,
}

// SAFETY: OpenCL semaphores are thread-safe handles.
unsafe impl Send for ClSemaphore<'_> {}
// SAFETY: as above.
unsafe impl Sync for ClSemaphore<'_> {}

impl Context {
    /// Imports `semaphore` (`clCreateSemaphoreWithPropertiesKHR`, binary, opaque fd, this
    /// context's device). Errors: [`Error::Unsupported`] without
    /// `cl_khr_external_semaphore_opaque_fd` or where Vulkan cannot export the semaphore;
    /// [`Error::DeviceMismatch`]; OpenCL errors.
    pub fn import_semaphore<'a>(&'a self, semaphore: &'a BinarySemaphore) -> Result<ClSemaphore<'a>> {
        let fns = self.semaphore_fns()?;
        self.check_device("the semaphore", crate::Uuid(semaphore.device_uuid()))?;
        let (handle, state) = semaphore.export_tracked()?;
        self.semaphore_of(fns, handle, state)
    }

    /// Imports an exported binary semaphore — from this process or another — with no Vulkan
    /// object needed here; the OpenCL semaphore holds its payload. Errors: as
    /// [`import_semaphore`](Context::import_semaphore), and [`Error::InvalidArgument`] for a
    /// timeline semaphore (OpenCL imports binary ones).
    pub fn import_exported_semaphore(&self, exported: ExportedSemaphore) -> Result<ClSemaphore<'_>> {
        let (handle, desc, state) = exported.into_tracked_parts();
        let fd = handle.into_native();
        let fns = self.semaphore_fns()?;
        self.check_device("the semaphore", desc.device_uuid)?;
        if desc.kind != SemaphoreKind::Binary {
            return Err(Error::InvalidArgument(format!(
                "OpenCL imports binary semaphores; this one is {:?}",
                desc.kind
            )));
        }
        self.semaphore_of(fns, fd, state.unwrap_or_else(BinaryState::unknown))
    }

    fn semaphore_of(
        &self,
        fns: SemaphoreFns,
        fd: NativeHandle,
        state: Arc<BinaryState>,
    ) -> Result<ClSemaphore<'_>> {
        let created = crate::external::give_to_driver(Api::OpenCl, fd, Payload::Semaphore, |raw| {
            let properties = semaphore_properties(raw, self.device.device_id);
            let mut status = 0;
            // SAFETY: the platform's entry point; a zero-terminated property list with an opaque
            // handle of a binary semaphore of this device and this context's device.
            let sem = unsafe { (fns.create)(self.context, properties.as_ptr(), &mut status) };
            crate::external::spec_rule(check("clCreateSemaphoreWithPropertiesKHR", status).map(|()| sem))
        })?;
        Ok(ClSemaphore { ctx: self, semaphore: created, state, _vulkan: PhantomData })
    }

    fn semaphore_fns(&self) -> Result<SemaphoreFns> {
        match (self.semaphores, self.device.has_extension(super::EXTERNAL_SEMAPHORE)) {
            (Some(fns), true) => Ok(fns),
            _ => Err(Error::Unsupported {
                what: format!(
                    "OpenCL device {} on {} cannot import Vulkan semaphores: it lacks {}",
                    self.device.name,
                    self.device.platform,
                    super::EXTERNAL_SEMAPHORE
                ),
            }),
        }
    }
}

impl Queue<'_> {
    /// Makes commands enqueued after this wait for `semaphore`'s signal
    /// (`clEnqueueWaitSemaphoresKHR`). Checked as Vulkan's waits are
    /// ([`BinarySemaphore`] says how): a wait with no signal submitted before it, or on a
    /// semaphore whose handle has left lava-flow, is [`Error::InvalidArgument`].
    pub fn wait_semaphore(&self, semaphore: &ClSemaphore<'_>) -> Result<()> {
        self.wait(semaphore, true)
    }

    /// [`wait_semaphore`](Queue::wait_semaphore) without the check, for a payload whose signals
    /// lava-flow cannot see.
    ///
    /// # Safety
    /// A signal that no other wait consumes must have been submitted before (in any API or
    /// process), or the wait never completes.
    pub unsafe fn wait_semaphore_unchecked(&self, semaphore: &ClSemaphore<'_>) -> Result<()> {
        self.wait(semaphore, false)
    }

    /// Signals `semaphore` after the commands enqueued so far (`clEnqueueSignalSemaphoresKHR`),
    /// then flushes the queue (`clFlush`) so that a Vulkan wait may be submitted after it.
    /// Checked: a second signal before a wait consumed the first, or a semaphore whose handle
    /// has left lava-flow, is [`Error::InvalidArgument`].
    pub fn signal_semaphore(&self, semaphore: &ClSemaphore<'_>) -> Result<()> {
        self.signal(semaphore, true)
    }

    /// [`signal_semaphore`](Queue::signal_semaphore) without the check.
    ///
    /// # Safety
    /// When the signal executes, the payload must be unsignalled with no other signal pending.
    pub unsafe fn signal_semaphore_unchecked(&self, semaphore: &ClSemaphore<'_>) -> Result<()> {
        self.signal(semaphore, false)
    }

    fn wait(&self, semaphore: &ClSemaphore<'_>, checked: bool) -> Result<()> {
        let fns = self.ctx.semaphore_fns()?;
        binary_ops("clEnqueueWaitSemaphoresKHR", &[(&semaphore.state, checked)], &[], || {
            self.semaphore_op(semaphore, fns.wait, "clEnqueueWaitSemaphoresKHR")
        })
    }

    fn signal(&self, semaphore: &ClSemaphore<'_>, checked: bool) -> Result<()> {
        let fns = self.ctx.semaphore_fns()?;
        binary_ops("clEnqueueSignalSemaphoresKHR", &[], &[(&semaphore.state, checked)], || {
            self.semaphore_op(semaphore, fns.signal, "clEnqueueSignalSemaphoresKHR")?;
            let cl = sys::cl()?;
            // SAFETY: a live queue.
            check("clFlush", unsafe { (cl.clFlush)(self.queue) })
        })
    }

    fn semaphore_op(
        &self,
        semaphore: &ClSemaphore<'_>,
        f: sys::EnqueueSemaphoresFn,
        call: &'static str,
    ) -> Result<()> {
        if !std::ptr::eq(semaphore.ctx, self.ctx) {
            return Err(Error::InvalidArgument(format!("{call}: a semaphore of another OpenCL context")));
        }
        // SAFETY: the platform's entry point; one live semaphore of this queue's context; no
        // payloads (binary); no events.
        check(call, unsafe {
            f(
                self.queue,
                1,
                &semaphore.semaphore,
                std::ptr::null(),
                0,
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        })
    }
}

impl Drop for ClSemaphore<'_> {
    fn drop(&mut self) {
        let Some(fns) = self.ctx.semaphores else { return };
        // SAFETY: made by `import_semaphore`, released once.
        if let Err(e) = check("clReleaseSemaphoreKHR", unsafe { (fns.release)(self.semaphore) }) {
            log::error!("{e}");
        }
    }
}

/// The zero-terminated property list of an import of the binary semaphore behind `raw` for
/// `device`: `CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR` or `CL_SEMAPHORE_HANDLE_OPAQUE_WIN32_KHR`. OpenCL
/// owns an fd once the import succeeds and only references an NT handle.
fn semaphore_properties(raw: RawHandle, device: sys::cl_device_id) -> [sys::cl_semaphore_properties_khr; 8] {
    [
        sys::CL_SEMAPHORE_TYPE_KHR,
        sys::CL_SEMAPHORE_TYPE_BINARY_KHR,
        match raw {
            RawHandle::Fd(_) => sys::CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR,
            RawHandle::Win32(_) => sys::CL_SEMAPHORE_HANDLE_OPAQUE_WIN32_KHR,
        },
        raw.as_property(),
        sys::CL_SEMAPHORE_DEVICE_HANDLE_LIST_KHR,
        device as sys::cl_semaphore_properties_khr,
        sys::CL_SEMAPHORE_DEVICE_HANDLE_LIST_END_KHR,
        0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphore_imports_name_the_handle_type_and_the_device() {
        let device = 0x5000 as sys::cl_device_id;
        let p = semaphore_properties(RawHandle::Win32(0x2c8), device);
        assert_eq!(&p[2..6], &[0x2056, 0x2c8, 0x2053, 0x5000]);
        let p = semaphore_properties(RawHandle::Fd(6), device);
        assert_eq!(&p[2..4], &[0x2055, 6]);
        assert_eq!(p[7], 0, "zero-terminated");
    }
}
