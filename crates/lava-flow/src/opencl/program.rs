//! OpenCL C programs built at run time, and their kernels.

use std::ffi::{c_void, CString};

use super::memory::{ClBuffer, Queue};
use super::sys::{self, check, cl};
use super::Context;
use crate::error::{Api, Error, Result};

/// An OpenCL C program built for the context's device, released on drop.
#[derive(Debug)]
pub struct Program<'c> {
    ctx: &'c Context,
    program: sys::cl_program,
}

/// A kernel of a [`Program`]. Not `Sync`: `clSetKernelArg` on one kernel from two threads races.
#[derive(Debug)]
pub struct Kernel<'p> {
    _program: &'p Program<'p>,
    kernel: sys::cl_kernel,
}

// SAFETY: OpenCL programs are thread-safe handles.
unsafe impl Send for Program<'_> {}
// SAFETY: as above; lava-flow only builds and reads them.
unsafe impl Sync for Program<'_> {}
// SAFETY: a kernel may move between threads; it is not Sync (see above).
unsafe impl Send for Kernel<'_> {}

impl Context {
    /// Builds OpenCL C `source` for the device (`clCreateProgramWithSource`, `clBuildProgram`).
    /// A failed build is [`Error::Ffi`] whose description is the build log.
    pub fn build(&self, source: &str) -> Result<Program<'_>> {
        let cl = cl()?;
        let text =
            CString::new(source).map_err(|_| Error::InvalidArgument("a NUL in the OpenCL source".into()))?;
        let mut status = 0;
        let ptr = text.as_ptr();
        // SAFETY: one NUL-terminated string (length 0: NUL-terminated); a live context.
        let program =
            unsafe { (cl.clCreateProgramWithSource)(self.context, 1, &ptr, std::ptr::null(), &mut status) };
        check("clCreateProgramWithSource", status)?;
        let program = Program { ctx: self, program };
        // SAFETY: the program and device are live; no options, no callback.
        let built = unsafe {
            (cl.clBuildProgram)(
                program.program,
                1,
                &self.device.device_id,
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        };
        if let Err(Error::Ffi { name, .. }) = check("clBuildProgram", built) {
            return Err(Error::Ffi {
                api: Api::OpenCl,
                call: "clBuildProgram",
                name,
                description: program.build_log().unwrap_or_else(|e| format!("no build log: {e}")),
            });
        }
        Ok(program)
    }
}

impl<'c> Program<'c> {
    fn build_log(&self) -> Result<String> {
        let cl = cl()?;
        super::info_string(|size, ptr, ret| {
            // SAFETY: a live program and its device; the buffer arguments come from `info_string`.
            unsafe {
                (cl.clGetProgramBuildInfo)(
                    self.program,
                    self.ctx.device.device_id,
                    sys::CL_PROGRAM_BUILD_LOG,
                    size,
                    ptr,
                    ret,
                )
            }
        })
    }

    /// The kernel `name`.
    pub fn kernel(&self, name: &str) -> Result<Kernel<'_>> {
        let cl = cl()?;
        let cname =
            CString::new(name).map_err(|_| Error::InvalidArgument("a NUL in the kernel name".into()))?;
        let mut status = 0;
        // SAFETY: a built program; a NUL-terminated name.
        let kernel = unsafe { (cl.clCreateKernel)(self.program, cname.as_ptr(), &mut status) };
        check("clCreateKernel", status)?;
        Ok(Kernel { _program: self, kernel })
    }
}

impl Kernel<'_> {
    /// Sets argument `index` to `buffer`'s memory object ([`ClBuffer::mem`]; pass
    /// [`ClBuffer::offset`] too where it is not 0).
    pub fn arg_buffer(&mut self, index: u32, buffer: &ClBuffer<'_>) -> Result<()> {
        let mem = buffer.mem();
        // SAFETY: a `cl_mem` argument by pointer to a live memory object.
        self.set(index, std::mem::size_of::<sys::cl_mem>(), (&raw const mem).cast())
    }

    /// Sets argument `index` to `image` (an `image2d_t` parameter).
    pub fn arg_image(&mut self, index: u32, image: &super::ClImage<'_>) -> Result<()> {
        let mem = image.mem();
        // SAFETY: a `cl_mem` argument by pointer to a live image object.
        self.set(index, std::mem::size_of::<sys::cl_mem>(), (&raw const mem).cast())
    }

    /// Sets argument `index` to a `uint`.
    pub fn arg_u32(&mut self, index: u32, value: u32) -> Result<()> {
        self.set(index, 4, (&raw const value).cast())
    }

    /// Sets argument `index` to a `ulong`.
    pub fn arg_u64(&mut self, index: u32, value: u64) -> Result<()> {
        self.set(index, 8, (&raw const value).cast())
    }

    fn set(&mut self, index: u32, size: usize, value: *const c_void) -> Result<()> {
        let cl = cl()?;
        // SAFETY: `value` points at `size` bytes that live for the call; OpenCL checks the size
        // against the kernel's parameter and copies the value.
        check("clSetKernelArg", unsafe { (cl.clSetKernelArg)(self.kernel, index, size, value) })
    }
}

impl Queue<'_> {
    /// Enqueues `kernel` over `global` work items (1-D) in work-groups of `local` items, or of a
    /// size the driver picks for `None` (`global` must then be a multiple of `local`). Memory
    /// objects it uses must be acquired ([`Queue::acquire`]).
    pub fn launch(&self, kernel: &Kernel<'_>, global: usize, local: Option<usize>) -> Result<()> {
        let cl = cl()?;
        // SAFETY: a kernel of this queue's context with its arguments set (OpenCL reports
        // missing ones); one dimension.
        check("clEnqueueNDRangeKernel", unsafe {
            (cl.clEnqueueNDRangeKernel)(
                self.queue,
                kernel.kernel,
                1,
                std::ptr::null(),
                &global,
                local.as_ref().map_or(std::ptr::null(), std::ptr::from_ref),
                0,
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        })
    }
}

impl Drop for Kernel<'_> {
    fn drop(&mut self) {
        let Ok(cl) = cl() else { return };
        // SAFETY: made by `Program::kernel`, released once.
        if let Err(e) = check("clReleaseKernel", unsafe { (cl.clReleaseKernel)(self.kernel) }) {
            log::error!("{e}");
        }
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        let Ok(cl) = cl() else { return };
        // SAFETY: made by `Context::build`, released once (after its kernels, which borrow it).
        if let Err(e) = check("clReleaseProgram", unsafe { (cl.clReleaseProgram)(self.program) }) {
            log::error!("{e}");
        }
    }
}
