//! Vulkan memory in CUDA: one import and one mapping per block per context, and buffers as
//! device pointers into it; plain device memory for the work around it.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::sys;

use super::context::{Context, Stream};
use super::peer::PeerMapping;
use super::raw::check;
use super::release::{lock, CudaFence, CudaUses, Release};
use crate::error::{Api, Error, Result};
use crate::external::NativeHandle;
use crate::external::Payload;
use crate::handle::{ExportedMemory, MemoryDescriptor};
use crate::vulkan::Buffer;

/// A block of Vulkan memory imported into a CUDA context (`cuImportExternalMemory`, opaque fd or
/// NT handle,
/// the whole allocation size, `CUDA_EXTERNAL_MEMORY_DEDICATED` exactly when the allocation is
/// dedicated) and mapped once as a whole (`cuExternalMemoryGetMappedBuffer` at offset 0): every
/// buffer of the block is the mapping's base plus its offset. Mapping once matters twice: a map
/// and unmap cost about 75 µs, and on a dedicated import NVIDIA's driver refuses mappings at any
/// offset but 0.
pub(crate) struct ExternalMemory {
    ctx: Context,
    external: sys::CUexternalMemory,
    base: sys::CUdeviceptr,
    /// What was imported: a later descriptor of the same memory must say the same.
    allocation_size: u64,
    dedicated: bool,
    /// Work still queued on the mapping by views already dropped (ADR 0014).
    uses: CudaUses,
}

// SAFETY: driver handles, usable from any thread with the context current (done before use).
unsafe impl Send for ExternalMemory {}
// SAFETY: as above; nothing here is mutated after construction.
unsafe impl Sync for ExternalMemory {}

impl ExternalMemory {
    /// Imports the memory `desc` describes from `fd` and maps all of it.
    fn import(ctx: &Context, desc: &MemoryDescriptor, fd: NativeHandle) -> Result<Self> {
        let external = import_external(ctx, fd, desc.allocation_size, desc.dedicated)?;
        let buffer = sys::CUDA_EXTERNAL_MEMORY_BUFFER_DESC {
            offset: 0,
            size: desc.allocation_size,
            flags: 0,
            reserved: [0; 16],
        };
        let mut base = 0;
        // SAFETY: `external` was just imported with `allocation_size` bytes; the range is all
        // of it.
        let mapped = check("cuExternalMemoryGetMappedBuffer", unsafe {
            sys::cuExternalMemoryGetMappedBuffer(&mut base, external, &buffer)
        });
        if let Err(e) = mapped {
            // SAFETY: imported above and not mapped.
            unsafe { destroy_external(ctx, external) };
            return Err(e);
        }
        Ok(ExternalMemory {
            ctx: ctx.clone(),
            external,
            base,
            allocation_size: desc.allocation_size,
            dedicated: desc.dedicated,
            uses: CudaUses::default(),
        })
    }
}

impl Drop for ExternalMemory {
    fn drop(&mut self) {
        // Reverse order: the mapping, then the import — once the work its views were told of
        // has completed (now, or later: ADR 0014). The import holds the memory by itself (CUDA
        // owns its fd), so it may outlive the Vulkan buffer it came from.
        let pending = self.uses.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take_pending();
        self.ctx.release_after_fences(pending, Release::Mapping { base: self.base, external: self.external });
    }
}

/// A lava-flow buffer mapped into CUDA: a device pointer to its bytes, zero-copy.
///
/// From an exported handle ([`Context::import_memory`], a `CudaBuffer<'static>` that owns its
/// import: the memory stays alive while it lives, whatever happens to the exporter), or from a
/// lava-flow [`Buffer`] of this process, borrowed ([`Context::import_buffer`]) or held in an
/// `Arc` ([`Context::import_buffer_owned`]). Either way the memory is imported and mapped once
/// per context and [`MemoryId`](crate::MemoryId): dropping the last `CudaBuffer` of it unmaps
/// and releases the import.
///
/// # Dropped under queued work (ADR 0014)
/// Work that lava-flow queues on the view ([`fill_async`], and any [`DeviceMemory`] call that
/// takes a stream) is recorded; tell the view of your own kernels and copies with
/// [`release_after`](DeviceMemory::release_after) once they are queued. Dropping the view while
/// recorded work is still queued never frees the memory under it: an owning view (from
/// [`Context::import_memory`] or [`Context::import_buffer_owned`]) hands its mapping, import
/// and `Arc<Buffer>` to the context, which releases them once that work completes (checked on
/// later calls into the context, [`Context::reclaim`], and at the context's end, which waits).
/// A view that borrows a buffer of a shared block ([`Context::import_buffer`]) cannot keep the
/// buffer's range from being reused once the borrow ends, so its drop waits on the host for the
/// recorded work. Work lava-flow was not told of is the caller's to finish (or to order with a
/// semaphore) before the drop.
pub struct CudaBuffer<'a> {
    // Field order is drop order: the mapping and import go before the Buffer they map.
    memory: Arc<ExternalMemory>,
    ptr: sys::CUdeviceptr,
    size: u64,
    /// Work queued on the view (ADR 0014).
    uses: CudaUses,
    /// Borrows a buffer of a shared block: the drop waits for `uses`.
    waits_on_drop: bool,
    _buffer: PhantomData<&'a Buffer>,
    owner: Option<Arc<Buffer>>,
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
    /// Imports exported memory — from this process or another, from lava-flow or any exporter
    /// that fills a [`MemoryDescriptor`] — and maps the described buffer: no Vulkan object is
    /// needed in this process (a consumer that only has CUDA never loads Vulkan).
    ///
    /// The whole allocation is imported (`cuImportExternalMemory`, opaque fd,
    /// `allocation_size` bytes, `CUDA_EXTERNAL_MEMORY_DEDICATED` exactly when the descriptor
    /// says dedicated) and mapped once per context and memory id; the view points at `offset`.
    /// The fd is CUDA's once the import succeeds; it is closed if anything fails, and not needed
    /// (closed) when this context already holds an import of that memory.
    ///
    /// Errors: [`Error::InvalidArgument`] for a descriptor that describes no buffer, or that
    /// disagrees with an import of the same memory already held (size, dedicated flag);
    /// [`Error::DeviceMismatch`] for memory of another GPU; CUDA errors as [`Error::Ffi`].
    pub fn import_memory(&self, exported: ExportedMemory) -> Result<CudaBuffer<'static>> {
        let (handle, desc) = exported.into_parts();
        let fd = handle.into_native();
        self.view_of(&desc, || Ok(fd), None, false)
    }

    /// Maps a lava-flow buffer of this process into this context: the same path as
    /// [`import_memory`](Context::import_memory) with the buffer's export, which it skips when
    /// the memory is imported here already (every buffer of a block shares one import).
    ///
    /// Errors: [`Error::DeviceMismatch`] for a buffer of another GPU; [`Error::NotExportable`];
    /// CUDA errors as [`Error::Ffi`].
    pub fn import_buffer<'a>(&self, buffer: &'a Buffer) -> Result<CudaBuffer<'a>> {
        let desc = buffer.descriptor();
        self.view_of(&desc, || buffer.export_native(), None, !desc.dedicated)
    }

    /// As [`import_buffer`](Context::import_buffer), for a buffer shared through an `Arc`: the
    /// view keeps the buffer alive, so it has no lifetime to outlive (what Python's DLPack
    /// capsules and anything stored in a long-lived struct need). The mapping is released before
    /// the buffer when the view is dropped.
    pub fn import_buffer_owned(&self, buffer: Arc<Buffer>) -> Result<CudaBuffer<'static>> {
        self.view_of(&buffer.descriptor(), || buffer.export_native(), Some(Arc::clone(&buffer)), false)
    }

    /// The buffer `desc` describes, in this context's import of its memory (made from `fd()`
    /// on first use); `owner` kept alive by the view; `waits_on_drop` for a borrowed buffer
    /// of a shared block.
    fn view_of<'a>(
        &self,
        desc: &MemoryDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
        owner: Option<Arc<Buffer>>,
        waits_on_drop: bool,
    ) -> Result<CudaBuffer<'a>> {
        self.reclaim();
        let memory = self.external_memory(desc, fd)?;
        Ok(CudaBuffer {
            ptr: memory.base + desc.offset,
            memory,
            size: desc.size,
            uses: CudaUses::default(),
            waits_on_drop,
            _buffer: PhantomData,
            owner,
        })
    }

    /// This context's import of the memory `desc` describes, made from `fd()` on first use.
    /// The one place where CUDA imports buffers' memory, after the one set of checks.
    fn external_memory(
        &self,
        desc: &MemoryDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
    ) -> Result<Arc<ExternalMemory>> {
        desc.check_layout()?;
        self.check_device("the memory", desc.device_uuid)?;
        let mut imports = self.inner.imports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = imports.get(&desc.memory_id).and_then(std::sync::Weak::upgrade) {
            if m.allocation_size != desc.allocation_size || m.dedicated != desc.dedicated {
                return Err(Error::InvalidArgument(format!(
                    "memory {} is imported here as {} bytes (dedicated: {}), but the descriptor says \
                     {} bytes (dedicated: {})",
                    desc.memory_id, m.allocation_size, m.dedicated, desc.allocation_size, desc.dedicated
                )));
            }
            return Ok(m);
        }
        let m = Arc::new(ExternalMemory::import(self, desc, fd()?)?);
        imports.retain(|_, w| w.strong_count() > 0);
        imports.insert(desc.memory_id, Arc::downgrade(&m));
        Ok(m)
    }

    /// Allocates plain device memory (`cuMemAlloc`), freed on drop.
    pub fn alloc(&self, size: u64) -> Result<DeviceBuffer> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        self.reclaim();
        self.bind()?;
        let mut ptr = 0;
        // SAFETY: the context is current; `ptr` is a valid out-pointer.
        check("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut ptr, size as usize) })?;
        Ok(DeviceBuffer { ctx: self.clone(), ptr, size, owned: true, uses: CudaUses::default() })
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

    /// Records that the work queued on `stream` so far uses this memory (an event recorded on
    /// the stream): if the value is dropped before that work completes, the memory is released
    /// only once it has (ADR 0014). Call it after queueing kernels or copies of your own on the
    /// memory; lava-flow's own stream operations call it themselves. Memory lava-flow does not
    /// free ([`DeviceBuffer::borrowed`]) records it too, to no effect on its owner.
    ///
    /// Errors: [`Error::DeviceMismatch`] for a stream of another GPU; CUDA errors.
    fn release_after(&self, stream: &Stream) -> Result<()>;

    /// How other GPUs reach the memory, which decides the rate of a
    /// [`copy_peer`](super::copy_peer) to or from another GPU. The default,
    /// [`PeerMapping::Context`], is right for `cuMemAlloc` memory: implementations for other
    /// memory override it ([`CudaBuffer`]: [`PeerMapping::Imported`];
    /// `ExportableAllocation`: [`PeerMapping::Granted`]).
    fn peer_mapping(&self) -> PeerMapping {
        PeerMapping::Context
    }

    /// Copies `data` to `offset` (`cuMemcpyHtoD`) and waits until the bytes are in device
    /// memory (CUDA's own call may return before a copy from pageable memory has landed).
    fn copy_from_host(&self, offset: u64, data: &[u8]) -> Result<()> {
        let at = range(self.size(), offset, data.len())?;
        self.context().bind()?;
        // SAFETY: the context is current; the range lies inside the memory (checked).
        check("cuMemcpyHtoD_v2", unsafe {
            sys::cuMemcpyHtoD_v2(self.device_ptr() + at, data.as_ptr().cast(), data.len())
        })?;
        self.context().finish_default_stream()
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

    /// Copies all of `src` to `offset` of `self` (`cuMemcpyDtoD`), both in the same context, and
    /// waits for the copy (CUDA's own call returns before it completes).
    fn copy_from_device(&self, offset: u64, src: &dyn DeviceMemory) -> Result<()> {
        self.context().check_device("the source memory", src.context().uuid())?;
        let len =
            usize::try_from(src.size()).map_err(|_| Error::InvalidArgument("source too large".into()))?;
        let at = range(self.size(), offset, len)?;
        self.context().bind()?;
        // SAFETY: both ranges lie inside their memory; the context is current.
        check("cuMemcpyDtoD_v2", unsafe {
            sys::cuMemcpyDtoD_v2(self.device_ptr() + at, src.device_ptr(), len)
        })?;
        self.context().finish_default_stream()
    }

    /// Sets `len` bytes at `offset` to `value` (`cuMemsetD8`) and waits for the fill (CUDA's own
    /// call returns before it completes).
    fn fill(&self, offset: u64, len: usize, value: u8) -> Result<()> {
        let at = range(self.size(), offset, len)?;
        self.context().bind()?;
        // SAFETY: the range lies inside the memory; the context is current.
        check("cuMemsetD8_v2", unsafe { sys::cuMemsetD8_v2(self.device_ptr() + at, value, len) })?;
        self.context().finish_default_stream()
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
    })?;
    // The fill is queued: a drop of `memory` before it runs must not free the bytes under it.
    if let Err(e) = memory.release_after(stream) {
        // Recording failed (the context is in trouble): wait for the fill instead, so the
        // memory is safe to release whatever happens next.
        stream.synchronize()?;
        return Err(e);
    }
    Ok(())
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
    fn release_after(&self, stream: &Stream) -> Result<()> {
        let fence = CudaFence::record(&self.memory.ctx, stream)?;
        lock(&self.uses).add(fence);
        Ok(())
    }
    fn peer_mapping(&self) -> PeerMapping {
        // `cuImportExternalMemory` + a mapped buffer: peer access does not map it.
        PeerMapping::Imported
    }
}

impl Drop for CudaBuffer<'_> {
    fn drop(&mut self) {
        let pending = self.uses.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take_pending();
        if pending.is_empty() {
            return;
        }
        if self.waits_on_drop {
            // The borrowed buffer's range goes back to its block once the borrow ends, and the
            // next allocation may take it: the work must be done before this returns.
            let mut uses = crate::deferred::Uses::default();
            uses.extend(pending.clone());
            if let Err(e) = uses.wait_all() {
                log::error!("a CUDA view dropped under queued work could not wait for it: {e}");
            }
        }
        // The mapping and import stay until the work completes; so does an owned buffer.
        lock(&self.memory.uses).extend(pending.clone());
        if let Some(owner) = self.owner.take() {
            self.memory.ctx.release_after_fences(pending, Release::Keep(Box::new(owner)));
        }
    }
}

/// Plain CUDA device memory: from [`Context::alloc`] (freed with `cuMemFree` on drop), or a
/// pointer lava-flow did not allocate (`cuMemAlloc` elsewhere, a PyTorch or CuPy tensor's
/// storage), wrapped as [`borrowed`](DeviceBuffer::borrowed) (never freed) or
/// [`owned`](DeviceBuffer::owned) (freed on drop). Who frees it is in the value, not in a
/// protocol.
///
/// Such memory cannot be exported to Vulkan (CUDA exports only `cuMemCreate` memory): allocate
/// with lava-flow and import into CUDA instead. [`copy_peer`](super::copy_peer) takes it for
/// `cuMemAlloc` memory ([`PeerMapping::Context`]), mapped for a peer by `cuCtxEnablePeerAccess`.
///
/// Owned memory dropped while work recorded with
/// [`release_after`](DeviceMemory::release_after) is queued is freed once that work completes
/// (ADR 0014), as with [`CudaBuffer`].
pub struct DeviceBuffer {
    /// Work queued on the memory (ADR 0014). Declared before `ctx`: its events are destroyed
    /// while the context (perhaps the last handle to it) is still held.
    uses: CudaUses,
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
    fn release_after(&self, stream: &Stream) -> Result<()> {
        let fence = CudaFence::record(&self.ctx, stream)?;
        lock(&self.uses).add(fence);
        Ok(())
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.owned {
            // From `Context::alloc`, or owned by the `owned` contract; freed once, after the
            // recorded work.
            let pending =
                self.uses.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take_pending();
            self.ctx.release_after_fences(pending, Release::Free(self.ptr));
        }
    }
}

/// Imports `allocation_size` bytes of memory from the platform's opaque handle into `ctx`
/// (`cuImportExternalMemory`, `CUDA_EXTERNAL_MEMORY_DEDICATED` exactly when `dedicated`). An fd
/// is CUDA's on success and closed on failure; an NT handle is only referenced by CUDA and closed
/// here either way.
pub(crate) fn import_external(
    ctx: &Context,
    handle: NativeHandle,
    allocation_size: u64,
    dedicated: bool,
) -> Result<sys::CUexternalMemory> {
    ctx.bind()?;
    let mut external = std::ptr::null_mut();
    let payload = Payload::Memory { allocation_size };
    crate::external::give_to_driver(Api::Cuda, handle, payload, |raw| {
        let desc = super::external::memory_desc(raw, allocation_size, dedicated);
        // SAFETY: the context is current; `raw` is an open handle that the caller says is opaque
        // memory of this GPU of `allocation_size` bytes (the driver checks what it can and
        // refuses the rest); CUDA owns an fd on success and references an NT handle.
        crate::external::spec_rule(check("cuImportExternalMemory", unsafe {
            sys::cuImportExternalMemory(&mut external, &desc)
        }))
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
        Ok(DeviceBuffer { ctx: ctx.clone(), ptr, size, owned, uses: CudaUses::default() })
    }

    /// Whether lava-flow frees the memory on drop.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// Gives the pointer back without freeing it: owned memory becomes the caller's again.
    pub fn into_raw(self) -> sys::CUdeviceptr {
        let ptr = self.ptr;
        let mut this = std::mem::ManuallyDrop::new(self);
        // The context handle and the recorded uses are dropped; only the memory is given back.
        // SAFETY: each field is dropped once here and `this` is never used or dropped again.
        // The uses first: their events belong to the context.
        unsafe {
            std::ptr::drop_in_place(&raw mut this.uses);
        }
        // SAFETY: as above.
        unsafe {
            std::ptr::drop_in_place(&raw mut this.ctx);
        }
        ptr
    }
}
