//! lava-flow buffers as OpenCL memory objects, and the command queue that uses them.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::{Mutex, PoisonError};

use super::sys::{self, check, cl};
use super::Context;
use crate::error::{Api, Error, Result};
use crate::external::{NativeHandle, Payload, RawHandle};
use crate::handle::{ExportedMemory, MemoryDescriptor};
use crate::Buffer;

/// An in-order OpenCL command queue of a [`Context`], released on drop.
#[derive(Debug)]
pub struct Queue<'c> {
    pub(super) ctx: &'c Context,
    pub(super) queue: sys::cl_command_queue,
}

// SAFETY: OpenCL command queues are thread-safe handles.
unsafe impl Send for Queue<'_> {}
// SAFETY: as above.
unsafe impl Sync for Queue<'_> {}

impl Context {
    /// A new in-order command queue on the context's device.
    pub fn queue(&self) -> Result<Queue<'_>> {
        let cl = cl()?;
        let mut status = 0;
        // SAFETY: the context and device are live; no properties (an empty, zero-terminated list).
        let queue = unsafe {
            (cl.clCreateCommandQueueWithProperties)(
                self.context,
                self.device.device_id,
                [0u64].as_ptr(),
                &mut status,
            )
        };
        check("clCreateCommandQueueWithProperties", status)?;
        Ok(Queue { ctx: self, queue })
    }

    /// Makes exported memory — from this process or another, from lava-flow or any exporter
    /// that fills a [`MemoryDescriptor`] — an OpenCL memory object of this context: no Vulkan
    /// object is needed in this process. The view holds the import, which holds the memory.
    ///
    /// The whole allocation is imported (`clCreateBufferWithProperties` with
    /// `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR`, size = `allocation_size`):
    /// `cl_khr_external_memory` has no offset, so the buffer is reached as a sub-buffer
    /// (`clCreateSubBuffer`) where its offset is a multiple of the device's
    /// `CL_DEVICE_MEM_BASE_ADDR_ALIGN`, and otherwise as the whole import plus
    /// [`ClBuffer::offset`], which kernels must add (as with GL on llvmpipe). Each call imports
    /// once (ADR 0006); keep the view for as long as you use it. The fd is OpenCL's once the
    /// import succeeds and closed otherwise.
    ///
    /// Errors: [`Error::InvalidArgument`] for a descriptor that describes no buffer;
    /// [`Error::DeviceMismatch`] for memory of another device; OpenCL errors.
    pub fn import_memory(&self, exported: ExportedMemory) -> Result<ClBuffer<'_>> {
        let (handle, desc) = exported.into_parts();
        let fd = handle.into_native();
        self.buffer_of(&desc, || Ok(fd), false)
    }

    /// Makes a lava-flow buffer of this process an OpenCL memory object of this context: the
    /// same path as [`import_memory`](Context::import_memory) with the buffer's export.
    ///
    /// Errors: as [`import_memory`](Context::import_memory), and [`Error::NotExportable`].
    pub fn import_buffer<'a>(&'a self, buffer: &'a Buffer) -> Result<ClBuffer<'a>> {
        let desc = buffer.descriptor();
        self.buffer_of(&desc, || buffer.export_native(), !desc.dedicated)
    }

    /// The one place where OpenCL imports buffer memory, after the one set of checks;
    /// `waits_on_drop` for a borrowed buffer of a shared block.
    fn buffer_of<'a>(
        &'a self,
        desc: &MemoryDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
        waits_on_drop: bool,
    ) -> Result<ClBuffer<'a>> {
        let cl = cl()?;
        desc.check_layout()?;
        self.check_device("the memory", desc.device_uuid)?;
        let whole = usize::try_from(desc.allocation_size).map_err(|_| {
            Error::InvalidArgument(format!("{} bytes do not fit size_t", desc.allocation_size))
        })?;
        let imported = crate::external::give_to_driver(
            Api::OpenCl,
            fd()?,
            Payload::Memory { allocation_size: desc.allocation_size },
            |raw| {
                let properties = self.import_properties(raw);
                let mut status = 0;
                // SAFETY: a zero-terminated property list with an fd that the caller says is
                // opaque memory of this device (UUID checked above) and this context's device; no
                // host pointer.
                let mem = unsafe {
                    (cl.clCreateBufferWithProperties)(
                        self.context,
                        properties.as_ptr(),
                        sys::CL_MEM_READ_WRITE,
                        whole,
                        std::ptr::null_mut(),
                        &mut status,
                    )
                };
                crate::external::spec_rule(check("clCreateBufferWithProperties", status).map(|()| mem))
            },
        )?;
        let mut view = ClBuffer {
            ctx: self,
            imported,
            sub: std::ptr::null_mut(),
            offset: desc.offset,
            size: desc.size,
            waits_on_drop,
            queues: Mutex::default(),
            _buffer: PhantomData,
        };
        if desc.offset.is_multiple_of(self.base_align()?) {
            let region = sys::cl_buffer_region { origin: desc.offset as usize, size: desc.size as usize };
            let mut status = 0;
            // SAFETY: the region lies inside the import (offset + size <= allocation size) and its
            // origin is aligned as the device requires (checked above).
            let sub = unsafe {
                (cl.clCreateSubBuffer)(
                    imported,
                    sys::CL_MEM_READ_WRITE,
                    sys::CL_BUFFER_CREATE_TYPE_REGION,
                    (&raw const region).cast(),
                    &mut status,
                )
            };
            check("clCreateSubBuffer", status)?; // `view`'s drop releases the import
            view.sub = sub;
            view.offset = 0;
        }
        Ok(view)
    }

    /// The property list of an import of memory (buffer or image) from `raw`, for this
    /// context's device; zero-terminated.
    pub(super) fn import_properties(&self, raw: RawHandle) -> [sys::cl_mem_properties; 6] {
        memory_properties(raw, self.device.device_id)
    }

    /// `CL_DEVICE_MEM_BASE_ADDR_ALIGN` in bytes.
    fn base_align(&self) -> Result<u64> {
        let cl = cl()?;
        let mut bits: sys::cl_uint = 0;
        // SAFETY: a cl_uint query into a cl_uint.
        check("clGetDeviceInfo(CL_DEVICE_MEM_BASE_ADDR_ALIGN)", unsafe {
            (cl.clGetDeviceInfo)(
                self.device.device_id,
                sys::CL_DEVICE_MEM_BASE_ADDR_ALIGN,
                std::mem::size_of::<sys::cl_uint>(),
                (&raw mut bits).cast(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(u64::from(bits / 8).max(1))
    }
}

/// A lava-flow [`Buffer`] as an OpenCL memory object; borrows the context, and the buffer it
/// was imported from ([`Context::import_buffer`]), so neither can go first; one made from an
/// exported handle ([`Context::import_memory`]) holds its memory through the import. Commands that use it must come between [`Queue::acquire`] and
/// [`Queue::release`] (`cl_khr_external_memory`); [`ClBuffer::read`] and [`ClBuffer::write`] do
/// that themselves.
///
/// # Dropped under queued work (ADR 0014)
/// OpenCL deletes a memory object only once the commands queued that use it have finished
/// (`clReleaseMemObject`), so the import and the memory it holds outlive a drop under queued
/// commands by themselves. What OpenCL cannot hold is the range of a shared block that a
/// borrowed view ([`Context::import_buffer`]) maps: once the borrow ends the next allocation may
/// take it. Such a view's drop therefore waits (`clFinish`) for the queues it was acquired on
/// ([`Queue::acquire`], which every command on it must follow); the queues are retained for it.
#[derive(Debug)]
pub struct ClBuffer<'a> {
    ctx: &'a Context,
    /// The whole imported allocation.
    imported: sys::cl_mem,
    /// The sub-buffer that is exactly the lava-flow buffer, where the offset allowed one.
    sub: sys::cl_mem,
    offset: u64,
    size: u64,
    /// Borrows a buffer of a shared block: the drop finishes `queues`.
    waits_on_drop: bool,
    /// The queues the view was acquired on (retained), for the drop to finish.
    queues: Mutex<Vec<sys::cl_command_queue>>,
    _buffer: PhantomData<&'a Buffer>,
}

// SAFETY: OpenCL memory objects are thread-safe handles; the borrowed buffer is Sync.
unsafe impl Send for ClBuffer<'_> {}
// SAFETY: as above.
unsafe impl Sync for ClBuffer<'_> {}

impl ClBuffer<'_> {
    /// The memory object to pass to kernels: the sub-buffer that is exactly the lava-flow
    /// buffer, or the whole import when [`offset`](ClBuffer::offset) is not 0.
    pub fn mem(&self) -> *mut c_void {
        if self.sub.is_null() {
            self.imported
        } else {
            self.sub
        }
    }

    /// Where the lava-flow buffer starts inside [`mem`](ClBuffer::mem): 0 for a sub-buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The lava-flow buffer's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the view is a sub-buffer (the offset was aligned for the device).
    pub fn is_sub_buffer(&self) -> bool {
        !self.sub.is_null()
    }

    /// Copies `data` to `offset` (relative to the lava-flow buffer) and waits for it.
    pub fn write(&self, queue: &Queue<'_>, offset: u64, data: &[u8]) -> Result<()> {
        Error::check_range(offset, data.len(), self.size)?;
        self.with_acquired(queue, |cl, q| {
            // SAFETY: the range lies inside the memory object (checked); blocking, so `data`
            // outlives the copy.
            check("clEnqueueWriteBuffer", unsafe {
                (cl.clEnqueueWriteBuffer)(
                    q,
                    self.mem(),
                    sys::CL_TRUE,
                    (self.offset + offset) as usize,
                    data.len(),
                    data.as_ptr().cast(),
                    0,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                )
            })
        })
    }

    /// Copies `out.len()` bytes from `offset` and waits for them.
    pub fn read(&self, queue: &Queue<'_>, offset: u64, out: &mut [u8]) -> Result<()> {
        Error::check_range(offset, out.len(), self.size)?;
        self.with_acquired(queue, |cl, q| {
            // SAFETY: as in `write`; `out` has room for the bytes.
            check("clEnqueueReadBuffer", unsafe {
                (cl.clEnqueueReadBuffer)(
                    q,
                    self.mem(),
                    sys::CL_TRUE,
                    (self.offset + offset) as usize,
                    out.len(),
                    out.as_mut_ptr().cast(),
                    0,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                )
            })
        })
    }

    /// Acquires the memory on `queue`, runs `f`, releases it and waits for the queue.
    fn with_acquired(
        &self,
        queue: &Queue<'_>,
        f: impl FnOnce(&sys::Cl, sys::cl_command_queue) -> Result<()>,
    ) -> Result<()> {
        let cl = cl()?;
        queue.acquire(&[self])?;
        let result = f(cl, queue.queue);
        let released = queue.release(&[self]);
        let finished = queue.finish();
        result.and(released).and(finished)
    }
}

impl Drop for ClBuffer<'_> {
    fn drop(&mut self) {
        let Ok(cl) = cl() else { return };
        for queue in std::mem::take(self.queues.get_mut().unwrap_or_else(PoisonError::into_inner)) {
            if self.waits_on_drop {
                // SAFETY: a queue retained by `Queue::acquire` for this view, still live.
                if let Err(e) = check("clFinish", unsafe { (cl.clFinish)(queue) }) {
                    log::error!("an OpenCL view dropped under queued work could not wait for it: {e}");
                }
            }
            // SAFETY: retained once by `Queue::acquire` for this view, released once.
            if let Err(e) = check("clReleaseCommandQueue", unsafe { (cl.clReleaseCommandQueue)(queue) }) {
                log::error!("{e}");
            }
        }
        for (what, mem) in [("sub-buffer", self.sub), ("import", self.imported)] {
            if mem.is_null() {
                continue;
            }
            // SAFETY: made in `import_buffer`, released once; the sub-buffer goes first.
            if let Err(e) = check("clReleaseMemObject", unsafe { (cl.clReleaseMemObject)(mem) }) {
                log::error!("OpenCL {what}: {e}");
            }
        }
    }
}

/// An OpenCL memory object made from lava-flow memory ([`ClBuffer`], [`ClImage`](super::ClImage)): what
/// [`Queue::acquire`] and [`Queue::release`] take. Sealed: only lava-flow's imports are.
pub trait ExternalObject: sealed::Sealed {
    /// The context and the memory object that was imported.
    #[doc(hidden)]
    fn imported(&self) -> (&Context, sys::cl_mem);

    /// Notes that `queue` acquired the object (ADR 0014): a view whose drop must wait for the
    /// work queued on it retains the queue.
    #[doc(hidden)]
    fn acquired_on(&self, queue: &Queue<'_>) -> Result<()>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ClBuffer<'_> {}
    impl Sealed for super::super::ClImage<'_> {}
}

impl ExternalObject for ClBuffer<'_> {
    fn imported(&self) -> (&Context, sys::cl_mem) {
        (self.ctx, self.imported)
    }

    fn acquired_on(&self, queue: &Queue<'_>) -> Result<()> {
        let queue = queue.queue;
        if !self.waits_on_drop {
            return Ok(());
        }
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if queues.contains(&queue) {
            return Ok(());
        }
        let cl = cl()?;
        // SAFETY: a live queue of this context; released once by the view's drop.
        check("clRetainCommandQueue", unsafe { (cl.clRetainCommandQueue)(queue) })?;
        queues.push(queue);
        Ok(())
    }
}

impl ExternalObject for super::ClImage<'_> {
    fn imported(&self) -> (&Context, sys::cl_mem) {
        (self.ctx, self.mem)
    }

    /// An image is a dedicated allocation that its import holds by itself, and OpenCL deletes
    /// the import only after the commands that use it: nothing to wait for at its drop.
    fn acquired_on(&self, _queue: &Queue<'_>) -> Result<()> {
        Ok(())
    }
}

impl Queue<'_> {
    /// Enqueues `clEnqueueAcquireExternalMemObjectsKHR` for `objects` (buffers and images):
    /// commands enqueued after it may use them.
    pub fn acquire(&self, objects: &[&dyn ExternalObject]) -> Result<()> {
        // Noted first (objects of this context only): a view borrowed from a shared block must
        // finish this queue at its drop.
        for o in objects.iter().filter(|o| std::ptr::eq(o.imported().0, self.ctx)) {
            o.acquired_on(self)?;
        }
        self.external(objects, self.ctx.acquire, "clEnqueueAcquireExternalMemObjectsKHR")
    }

    /// Enqueues `clEnqueueReleaseExternalMemObjectsKHR` for `objects`, after the commands that
    /// used them.
    pub fn release(&self, objects: &[&dyn ExternalObject]) -> Result<()> {
        self.external(objects, self.ctx.release, "clEnqueueReleaseExternalMemObjectsKHR")
    }

    fn external(
        &self,
        objects: &[&dyn ExternalObject],
        f: sys::ExternalMemObjectsFn,
        call: &'static str,
    ) -> Result<()> {
        let mut mems = Vec::with_capacity(objects.len());
        for o in objects {
            let (ctx, mem) = o.imported();
            if !std::ptr::eq(ctx, self.ctx) {
                return Err(Error::InvalidArgument(format!("{call}: an object of another OpenCL context")));
            }
            mems.push(mem);
        }
        // SAFETY: the extension function of this context's platform; live memory objects of
        // this context, imported from external memory; no events.
        check(call, unsafe {
            f(self.queue, mems.len() as u32, mems.as_ptr(), 0, std::ptr::null(), std::ptr::null_mut())
        })
    }

    /// Waits until everything enqueued has completed (`clFinish`).
    pub fn finish(&self) -> Result<()> {
        let cl = cl()?;
        // SAFETY: a live queue.
        check("clFinish", unsafe { (cl.clFinish)(self.queue) })
    }

    /// The raw `cl_command_queue`, for the caller's own OpenCL code.
    pub fn raw(&self) -> *mut c_void {
        self.queue
    }
}

impl Drop for Queue<'_> {
    fn drop(&mut self) {
        let Ok(cl) = cl() else { return };
        // SAFETY: made in `Context::queue`, released once (pending work still completes).
        if let Err(e) = check("clReleaseCommandQueue", unsafe { (cl.clReleaseCommandQueue)(self.queue) }) {
            log::error!("{e}");
        }
    }
}

/// The zero-terminated property list of an import of the memory behind `raw` for `device`:
/// `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR` or `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_WIN32_KHR`, then
/// the device list. OpenCL owns an fd once the import succeeds and only references an NT handle.
fn memory_properties(raw: RawHandle, device: sys::cl_device_id) -> [sys::cl_mem_properties; 6] {
    [
        match raw {
            RawHandle::Fd(_) => sys::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR,
            RawHandle::Win32(_) => sys::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_WIN32_KHR,
        },
        raw.as_property(),
        sys::CL_DEVICE_HANDLE_LIST_KHR,
        device as sys::cl_mem_properties,
        sys::CL_DEVICE_HANDLE_LIST_END_KHR,
        0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_imports_name_the_handle_type_and_the_device() {
        let device = 0x5000 as sys::cl_device_id;
        // The registry's values: ..._OPAQUE_FD_KHR 0x2060, ..._OPAQUE_WIN32_KHR 0x2061,
        // CL_DEVICE_HANDLE_LIST_KHR 0x2051.
        assert_eq!(memory_properties(RawHandle::Win32(0x2c8), device), [0x2061, 0x2c8, 0x2051, 0x5000, 0, 0]);
        assert_eq!(memory_properties(RawHandle::Fd(5), device), [0x2060, 5, 0x2051, 0x5000, 0, 0]);
    }
}
