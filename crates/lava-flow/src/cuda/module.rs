//! Loading PTX and launching kernels: what a user needs to run their own CUDA code on imported
//! memory.

use std::ffi::{c_void, CString};

use cudarc::driver::sys;

use super::context::{Context, Stream};
use super::raw::check;
use super::release::Release;
use crate::error::{Error, Result};

/// A CUDA module loaded from PTX text (`cuModuleLoadData`; the driver JIT-compiles it for the
/// GPU), unloaded on drop.
pub struct Module {
    ctx: Context,
    module: sys::CUmodule,
}

// SAFETY: a CUmodule is a driver handle usable from any thread with its context current.
unsafe impl Send for Module {}
// SAFETY: as above; lava-flow only reads it.
unsafe impl Sync for Module {}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("module", &self.module).finish()
    }
}

/// A kernel of a [`Module`].
#[derive(Debug, Clone, Copy)]
pub struct Function<'m> {
    module: &'m Module,
    function: sys::CUfunction,
}

impl Context {
    /// Loads PTX (text, without the trailing NUL) into this context.
    pub fn load_ptx(&self, ptx: &str) -> Result<Module> {
        let text =
            CString::new(ptx).map_err(|_| Error::InvalidArgument("PTX text contains a NUL byte".into()))?;
        self.bind()?;
        let mut module = std::ptr::null_mut();
        // SAFETY: the context is current; `text` is NUL-terminated PTX that outlives the call.
        check("cuModuleLoadData", unsafe { sys::cuModuleLoadData(&mut module, text.as_ptr().cast()) })?;
        Ok(Module { ctx: self.clone(), module })
    }
}

impl Module {
    /// The kernel called `name` (its `.entry` name).
    pub fn function(&self, name: &str) -> Result<Function<'_>> {
        let cname = CString::new(name)
            .map_err(|_| Error::InvalidArgument("kernel name contains a NUL byte".into()))?;
        self.ctx.bind()?;
        let mut function = std::ptr::null_mut();
        // SAFETY: the module is loaded in the current context; `cname` is NUL-terminated.
        check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut function, self.module, cname.as_ptr())
        })?;
        Ok(Function { module: self, function })
    }
}

impl Function<'_> {
    /// Queues the kernel on `stream` with `grid` × `block` threads.
    ///
    /// # Safety
    /// `params` holds one pointer per kernel parameter, each to a value of exactly that
    /// parameter's type, and the kernel's memory accesses stay inside memory that lives until
    /// the launch completes.
    pub unsafe fn launch(
        &self,
        stream: &Stream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        params: &mut [*mut c_void],
    ) -> Result<()> {
        self.module.ctx.check_device("the stream", stream.ctx.uuid())?;
        self.module.ctx.bind()?;
        // SAFETY: the caller's contract for `params`; the function and stream belong to the
        // current context.
        check("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                self.function,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                0,
                stream.stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // Not under a pending wait (ADR 0017): `cuModuleUnload` may wait for the kernels
        // queued from the module, and so for what they wait for.
        self.ctx.release_later(Release::Module(self.module));
    }
}
