//! Vulkan memory in CUDA: one import and one mapping per block per context, and buffers as
//! device pointers into it; plain device memory for the work around it.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::sys;

use super::context::Context;
use super::raw::check;
use crate::error::{Error, Result};
use crate::vulkan::{Block, Buffer};

/// A block of Vulkan memory imported into a CUDA context (`cuImportExternalMemory`, opaque fd,
/// the whole allocation size, `CUDA_EXTERNAL_MEMORY_DEDICATED` exactly when the allocation is
/// dedicated) and mapped once as a whole (`cuExternalMemoryGetMappedBuffer` at offset 0): every
/// buffer of the block is the mapping's base plus its offset. Mapping once matters twice: a map
/// and unmap cost about 75 µs, and on a dedicated import NVIDIA's driver refuses mappings at any
/// offset but 0.
pub(crate) struct ExternalMemory {
    ctx: Context,
    external: sys::CUexternalMemory,
    base: sys::CUdeviceptr,
}

// SAFETY: driver handles, usable from any thread with the context current (done before use).
unsafe impl Send for ExternalMemory {}
// SAFETY: as above; nothing here is mutated after construction.
unsafe impl Sync for ExternalMemory {}

impl ExternalMemory {
    fn import(ctx: &Context, block: &Block) -> Result<Self> {
        let external = import_external(ctx, block, "the buffer")?;
        let desc = sys::CUDA_EXTERNAL_MEMORY_BUFFER_DESC {
            offset: 0,
            size: block.size,
            flags: 0,
            reserved: [0; 16],
        };
        let mut base = 0;
        // SAFETY: `external` was just imported with `block.size` bytes; the range is all of it.
        let mapped = check("cuExternalMemoryGetMappedBuffer", unsafe {
            sys::cuExternalMemoryGetMappedBuffer(&mut base, external, &desc)
        });
        if let Err(e) = mapped {
            // SAFETY: imported above and not mapped.
            unsafe { destroy_external(ctx, external) };
            return Err(e);
        }
        Ok(ExternalMemory { ctx: ctx.clone(), external, base })
    }
}

impl Drop for ExternalMemory {
    fn drop(&mut self) {
        // Reverse order: the mapping, then the import (the Vulkan memory outlives both: every
        // CudaBuffer borrows its lava-flow Buffer, which holds the block).
        // SAFETY: the mapping made in `import`, freed once; no CudaBuffer uses it any more.
        unsafe { free(&self.ctx, self.base) };
        // SAFETY: the import made in `import`, destroyed once, after its mapping.
        unsafe { destroy_external(&self.ctx, self.external) };
    }
}

/// A lava-flow buffer mapped into CUDA: a device pointer to its bytes, zero-copy.
///
/// It borrows the lava-flow [`Buffer`] ([`Context::import_buffer`]) or holds an `Arc` of it
/// ([`Context::import_buffer_owned`], a `CudaBuffer<'static>`), so the Vulkan memory cannot be
/// freed while CUDA may use it; dropping the last `CudaBuffer` of a block unmaps and releases
/// the block's import. Work still queued on it must be finished (or ordered with a semaphore)
/// before it is dropped.
pub struct CudaBuffer<'a> {
    // Field order is drop order: the mapping and import go before the Buffer they map.
    memory: Arc<ExternalMemory>,
    ptr: sys::CUdeviceptr,
    size: u64,
    _buffer: PhantomData<&'a Buffer>,
    _owner: Option<Arc<Buffer>>,
}

impl std::fmt::Debug for CudaBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .finish()
    }
}

impl Context {
    /// Maps a lava-flow buffer into this context. The block is imported and mapped once per
    /// context and shared by every buffer of it.
    ///
    /// Errors: [`Error::DeviceMismatch`] for a buffer of another GPU; [`Error::NotExportable`];
    /// CUDA errors as [`Error::Ffi`].
    pub fn import_buffer<'a>(&self, buffer: &'a Buffer) -> Result<CudaBuffer<'a>> {
        self.view(buffer, None)
    }

    /// As [`import_buffer`](Context::import_buffer), for a buffer shared through an `Arc`: the
    /// view keeps the buffer alive, so it has no lifetime to outlive (what Python's DLPack
    /// capsules and anything stored in a long-lived struct need). The mapping is released before
    /// the buffer when the view is dropped.
    pub fn import_buffer_owned(&self, buffer: Arc<Buffer>) -> Result<CudaBuffer<'static>> {
        self.view(&Arc::clone(&buffer), Some(buffer))
    }

    /// `buffer` in its block's mapping; `owner` (the same buffer) kept alive by the view.
    fn view<'a>(&self, buffer: &Buffer, owner: Option<Arc<Buffer>>) -> Result<CudaBuffer<'a>> {
        let memory = self.import_block(buffer.block())?;
        Ok(CudaBuffer {
            ptr: memory.base + buffer.offset(),
            memory,
            size: buffer.size(),
            _buffer: PhantomData,
            _owner: owner,
        })
    }

    fn import_block(&self, block: &Block) -> Result<Arc<ExternalMemory>> {
        let mut imports = self.inner.imports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = imports.get(&block.id).and_then(std::sync::Weak::upgrade) {
            return Ok(m);
        }
        let m = Arc::new(ExternalMemory::import(self, block)?);
        imports.retain(|_, w| w.strong_count() > 0);
        imports.insert(block.id, Arc::downgrade(&m));
        Ok(m)
    }

    /// Allocates plain device memory (`cuMemAlloc`), freed on drop.
    pub fn alloc(&self, size: u64) -> Result<DeviceBuffer> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        self.bind()?;
        let mut ptr = 0;
        // SAFETY: the context is current; `ptr` is a valid out-pointer.
        check("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut ptr, size as usize) })?;
        Ok(DeviceBuffer { ctx: self.clone(), ptr, size, owned: true })
    }
}

/// Synchronous copies and fills shared by [`CudaBuffer`] and [`DeviceBuffer`].
pub trait DeviceMemory {
    /// The context the memory belongs to.
    fn context(&self) -> &Context;
    /// The device pointer to the first byte.
    fn device_ptr(&self) -> sys::CUdeviceptr;
    /// The size in bytes.
    fn size(&self) -> u64;

    /// Copies `data` to `offset` (`cuMemcpyHtoD`).
    fn copy_from_host(&self, offset: u64, data: &[u8]) -> Result<()> {
        let at = range(self.size(), offset, data.len())?;
        self.context().bind()?;
        // SAFETY: the context is current; the range lies inside the memory (checked).
        check("cuMemcpyHtoD_v2", unsafe {
            sys::cuMemcpyHtoD_v2(self.device_ptr() + at, data.as_ptr().cast(), data.len())
        })
    }

    /// Copies `out.len()` bytes from `offset` (`cuMemcpyDtoH`).
    fn copy_to_host(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let at = range(self.size(), offset, out.len())?;
        self.context().bind()?;
        // SAFETY: as above; `out` has room for the bytes.
        check("cuMemcpyDtoH_v2", unsafe {
            sys::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), self.device_ptr() + at, out.len())
        })
    }

    /// Copies all of `src` to `offset` of `self` (`cuMemcpyDtoD`); both in the same context.
    fn copy_from_device(&self, offset: u64, src: &dyn DeviceMemory) -> Result<()> {
        self.context().check_device("the source memory", src.context().uuid())?;
        let len =
            usize::try_from(src.size()).map_err(|_| Error::InvalidArgument("source too large".into()))?;
        let at = range(self.size(), offset, len)?;
        self.context().bind()?;
        // SAFETY: both ranges lie inside their memory; the context is current.
        check("cuMemcpyDtoD_v2", unsafe {
            sys::cuMemcpyDtoD_v2(self.device_ptr() + at, src.device_ptr(), len)
        })
    }

    /// Sets `len` bytes at `offset` to `value` (`cuMemsetD8`).
    fn fill(&self, offset: u64, len: usize, value: u8) -> Result<()> {
        let at = range(self.size(), offset, len)?;
        self.context().bind()?;
        // SAFETY: the range lies inside the memory; the context is current.
        check("cuMemsetD8_v2", unsafe { sys::cuMemsetD8_v2(self.device_ptr() + at, value, len) })
    }
}

/// Queues a fill of `len` bytes at `offset` of `memory` with `value` on `stream`
/// (`cuMemsetD8Async`): ordered after the stream's earlier work, such as a semaphore wait.
pub fn fill_async(
    memory: &dyn DeviceMemory,
    offset: u64,
    len: usize,
    value: u8,
    stream: &super::Stream,
) -> Result<()> {
    memory.context().check_device("the stream", stream.ctx.uuid())?;
    let at = range(memory.size(), offset, len)?;
    memory.context().bind()?;
    // SAFETY: the range lies inside the memory; the stream belongs to its context, which is
    // current.
    check("cuMemsetD8Async", unsafe {
        sys::cuMemsetD8Async(memory.device_ptr() + at, value, len, stream.stream)
    })
}

fn range(size: u64, offset: u64, len: usize) -> Result<u64> {
    Error::check_range(offset, len, size)?;
    Ok(offset)
}

impl DeviceMemory for CudaBuffer<'_> {
    fn context(&self) -> &Context {
        &self.memory.ctx
    }
    fn device_ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// Plain CUDA device memory: from [`Context::alloc`] (freed with `cuMemFree` on drop), or a
/// pointer lava-flow did not allocate (`cuMemAlloc` elsewhere, a PyTorch or CuPy tensor's
/// storage), wrapped as [`borrowed`](DeviceBuffer::borrowed) (never freed) or
/// [`owned`](DeviceBuffer::owned) (freed on drop). Who frees it is in the value, not in a
/// protocol.
///
/// Such memory cannot be exported to Vulkan (CUDA exports only `cuMemCreate` memory): allocate
/// with lava-flow and import into CUDA instead.
pub struct DeviceBuffer {
    ctx: Context,
    ptr: sys::CUdeviceptr,
    size: u64,
    owned: bool,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .field("owned", &self.owned)
            .finish()
    }
}

impl DeviceMemory for DeviceBuffer {
    fn context(&self) -> &Context {
        &self.ctx
    }
    fn device_ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
    fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: from `Context::alloc`, or owned by the `owned` contract; freed once.
            unsafe { free(&self.ctx, self.ptr) };
        }
    }
}

/// `cuMemFree` in `ctx`, logging a failure (it runs in `Drop`).
///
/// # Safety
/// `ptr` was allocated (or mapped) in `ctx`, is freed here once, and nothing uses it any more.
unsafe fn free(ctx: &Context, ptr: sys::CUdeviceptr) {
    // SAFETY: the caller's contract.
    ctx.release("cuMemFree_v2", || unsafe { sys::cuMemFree_v2(ptr) });
}

/// Imports all of `block` (the memory of `what`) into `ctx`: `cuImportExternalMemory` with an
/// opaque fd, the allocation size, and `CUDA_EXTERNAL_MEMORY_DEDICATED` exactly when the
/// allocation is dedicated; after checking that the block is this GPU's and exportable.
pub(crate) fn import_external(
    ctx: &Context,
    block: &Block,
    what: &'static str,
) -> Result<sys::CUexternalMemory> {
    ctx.check_device(what, block.device.physical.info.uuid)?;
    if !block.exportable {
        return Err(Error::NotExportable {
            reason: format!("{what} was allocated without export, so CUDA cannot import it"),
        });
    }
    let fd = block.export_fd()?;
    ctx.bind()?;
    let mut external = std::ptr::null_mut();
    crate::fd::give_to_driver(fd, |raw| {
        let desc = sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
            type_: sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
            handle: sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC_st__bindgen_ty_1 { fd: raw },
            size: block.size,
            flags: if block.dedicated { sys::CUDA_EXTERNAL_MEMORY_DEDICATED } else { 0 },
            reserved: [0; 16],
        };
        // SAFETY: the context is current; `raw` is an open opaque fd of exactly `size` bytes of
        // this GPU's memory (checked above); CUDA owns it on success.
        check("cuImportExternalMemory", unsafe { sys::cuImportExternalMemory(&mut external, &desc) })
    })?;
    Ok(external)
}

/// `cuDestroyExternalMemory`, logging a failure.
///
/// # Safety
/// `external` was imported in `ctx`, is destroyed here once, and nothing mapped from it is used
/// any more.
pub(crate) unsafe fn destroy_external(ctx: &Context, external: sys::CUexternalMemory) {
    // SAFETY: the caller's contract.
    ctx.release("cuDestroyExternalMemory", || unsafe { sys::cuDestroyExternalMemory(external) });
}

impl DeviceBuffer {
    /// Wraps `size` bytes at `ptr` without taking ownership: lava-flow never frees them.
    ///
    /// # Safety
    /// `ptr..ptr + size` is device memory of `ctx`'s device that stays allocated while the
    /// returned value lives.
    pub unsafe fn borrowed(ctx: &Context, ptr: sys::CUdeviceptr, size: u64) -> Result<Self> {
        Self::wrap(ctx, ptr, size, false)
    }

    /// Takes ownership of `size` bytes at `ptr`, allocated with `cuMemAlloc` in `ctx`: they are
    /// freed with `cuMemFree` when the returned value is dropped.
    ///
    /// # Safety
    /// As for [`DeviceBuffer::borrowed`], and nobody else frees `ptr`.
    pub unsafe fn owned(ctx: &Context, ptr: sys::CUdeviceptr, size: u64) -> Result<Self> {
        Self::wrap(ctx, ptr, size, true)
    }

    fn wrap(ctx: &Context, ptr: sys::CUdeviceptr, size: u64, owned: bool) -> Result<Self> {
        if ptr == 0 {
            return Err(Error::InvalidArgument("a null device pointer".into()));
        }
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        Ok(DeviceBuffer { ctx: ctx.clone(), ptr, size, owned })
    }

    /// Whether lava-flow frees the memory on drop.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// Gives the pointer back without freeing it: owned memory becomes the caller's again.
    pub fn into_raw(self) -> sys::CUdeviceptr {
        let ptr = self.ptr;
        std::mem::forget(self);
        ptr
    }
}
