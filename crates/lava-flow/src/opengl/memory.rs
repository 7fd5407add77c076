//! GL memory objects (one per imported block) and GL buffers on them.

use std::cell::Cell;
use std::marker::PhantomData;
use std::rc::Rc;

use super::context::{handle_extensions, GlContext, Shared};
use super::sys::{self, GLuint};
use crate::error::{Api, Error, Result};
use crate::external::{NativeHandle, Payload};

use crate::handle::{ExportedMemory, MemoryDescriptor};
use crate::vulkan::Buffer;
use crate::DEDICATED_TAIL;

/// One `VkDeviceMemory` imported into GL (`glImportMemoryFdEXT`), shared by every GL buffer and
/// texture on it; deleted when the last of them is dropped, once the GL work queued before that
/// has completed (a fence sync: ADR 0014).
pub(crate) struct MemoryObject {
    pub shared: Rc<Shared>,
    pub name: GLuint,
    pub allocation_size: u64,
    pub dedicated: bool,
    /// The GL buffer over the whole block, for drivers that ignore buffer offsets (made on
    /// first use; 0 until then).
    whole_block: Cell<GLuint>,
}

impl MemoryObject {
    /// Imports the memory `desc` describes from `fd` (its whole allocation size, dedicated flag
    /// as the descriptor says).
    fn import(ctx: &GlContext, desc: &MemoryDescriptor, handle: NativeHandle) -> Result<Rc<Self>> {
        let shared = &ctx.shared;
        let gl = shared.current()?;
        let mut name = 0;
        // SAFETY: the context is current; `name` is a valid out-pointer for one name.
        unsafe { gl.CreateMemoryObjectsEXT(1, &mut name) };
        shared.check("glCreateMemoryObjectsEXT")?;
        let memory = MemoryObject {
            shared: Rc::clone(shared),
            name,
            allocation_size: desc.allocation_size,
            dedicated: desc.dedicated,
            whole_block: Cell::new(0),
        };
        if desc.dedicated {
            let on = i32::from(sys::TRUE);
            // SAFETY: a fresh memory object of this context; `on` outlives the call.
            unsafe { gl.MemoryObjectParameterivEXT(name, sys::DEDICATED_MEMORY_OBJECT_EXT, &on) };
            shared.check("glMemoryObjectParameterivEXT(GL_DEDICATED_MEMORY_OBJECT_EXT)")?;
        }
        crate::external::give_to_driver(
            Api::OpenGl,
            handle,
            Payload::Memory { allocation_size: desc.allocation_size },
            |raw| {
                // SAFETY: the context is current and has the platform's extension (checked by
                // `memory_for`); `raw` is an open handle that the caller says is opaque memory of
                // `allocation_size` bytes of this context's device (UUIDs checked by the caller).
                let call = unsafe { super::external::import_memory(gl, name, desc.allocation_size, raw) };
                shared.check(call).map_err(|e| (e, shared.info.refused_fd()))
            },
        )?;
        Ok(Rc::new(memory))
    }

    /// The GL buffer over the whole block but its last [`DEDICATED_TAIL`] bytes (llvmpipe refuses
    /// a GL buffer that reaches the end of imported memory), made once; `range` (offset, size)
    /// must lie inside it: lava-flow never places buffers there, other exporters may.
    fn whole_block_buffer(&self, (offset, size): (u64, u64)) -> Result<GLuint> {
        let reachable = self.allocation_size.saturating_sub(DEDICATED_TAIL);
        if offset.checked_add(size).is_none_or(|end| end > reachable) {
            return Err(Error::Unsupported {
                what: format!(
                    "{} binds imported memory only whole and cannot reach its last {DEDICATED_TAIL} bytes: \
                     {size} bytes at offset {offset} of a {}-byte allocation",
                    self.shared.info.renderer, self.allocation_size
                ),
            });
        }
        if self.whole_block.get() != 0 {
            return Ok(self.whole_block.get());
        }
        let name = create_buffer_on(&self.shared, self.name, reachable, 0)?;
        self.whole_block.set(name);
        Ok(name)
    }
}

impl Drop for MemoryObject {
    fn drop(&mut self) {
        match self.shared.current() {
            Ok(gl) => {
                let whole = self.whole_block.get();
                if whole != 0 {
                    // SAFETY: the buffer was made by this context and is used by nothing else now.
                    unsafe { gl.DeleteBuffers(1, &whole) };
                }
                // Every GL object on the memory object is gone; GL commands queued before may
                // still read or write its memory, so it goes once they are done.
                if let Err(e) = self.shared.delete_memory_after_queued_work(self.name) {
                    // No fence: wait for everything instead, then delete.
                    log::error!("{e}");
                    // SAFETY: the context is current.
                    unsafe { gl.Finish() };
                    // SAFETY: the memory object belongs to this context; nothing queued uses it.
                    unsafe { gl.DeleteMemoryObjectsEXT(1, &self.name) };
                    if let Err(e) = self.shared.check("glDeleteMemoryObjectsEXT") {
                        log::error!("{e}");
                    }
                }
            }
            Err(e) => log::error!("GL memory object {} leaked: {e}", self.name),
        }
    }
}

/// `glCreateBuffers` + `glNamedBufferStorageMemEXT(size, memory, offset)`.
fn create_buffer_on(shared: &Shared, memory: GLuint, size: u64, offset: u64) -> Result<GLuint> {
    let gl = shared.current()?;
    let mut name = 0;
    // SAFETY: the context is current; `name` is a valid out-pointer for one name.
    unsafe { gl.CreateBuffers(1, &mut name) };
    shared.check("glCreateBuffers")?;
    let gl_size = isize::try_from(size)
        .map_err(|_| Error::InvalidArgument(format!("{size} bytes do not fit GLsizeiptr")))?;
    // SAFETY: a fresh buffer and a memory object of this context; the range lies inside the
    // imported allocation (checked by the callers).
    unsafe { gl.NamedBufferStorageMemEXT(name, gl_size, memory, offset) };
    if let Err(e) = shared.check("glNamedBufferStorageMemEXT") {
        // SAFETY: the buffer was made above and is used by nothing.
        unsafe { gl.DeleteBuffers(1, &name) };
        return Err(e);
    }
    Ok(name)
}

/// A lava-flow buffer seen by OpenGL: a GL buffer name and the byte range of it that is the
/// lava-flow buffer.
///
/// Bind it with `glBindBufferRange(target, index, gl_buffer(), offset(), size())`. On drivers
/// that honour the memory offset (NVIDIA) the GL buffer is exactly the lava-flow buffer and
/// `offset()` is 0. On Mesa's llvmpipe, which ignores it, the GL buffer spans the whole block and
/// `offset()` is the buffer's offset in it ([`GlInfo::ignores_memory_offset`](super::GlInfo)).
///
/// It borrows the context, and the lava-flow buffer it was imported from
/// ([`GlContext::import_buffer`]), so neither can be dropped first; one made from an exported
/// handle ([`GlContext::import_memory`]) holds its memory through the GL memory object.
///
/// # Dropped under queued GL work (ADR 0014)
/// GL commands queued before the drop that use the buffer are safe without any call: the GL
/// memory object is deleted only once a fence placed at its drop has signalled (checked on later
/// imports, [`GlContext::reclaim`], and at the context's end, which waits). A view that borrows
/// a buffer of a shared block waits in its drop for the GL work queued so far (a fence, waited
/// for on the host): once the borrow ends, the buffer's range may go to the next allocation.
pub struct GlBuffer<'a> {
    memory: Rc<MemoryObject>,
    /// Our own GL buffer, or 0 when we use the memory object's whole-block buffer.
    own: GLuint,
    name: GLuint,
    offset: u64,
    size: u64,
    /// Borrows a buffer of a shared block: the drop waits for the GL work queued before it.
    waits_on_drop: bool,
    _borrows: PhantomData<(&'a GlContext, &'a Buffer)>,
}

impl std::fmt::Debug for GlBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlBuffer")
            .field("gl_buffer", &self.name)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish()
    }
}

impl GlContext {
    /// Imports exported memory — from this process or another, from lava-flow or any exporter
    /// that fills a [`MemoryDescriptor`] — as a GL buffer, without copying: no Vulkan object is
    /// needed in this process.
    ///
    /// The memory is imported once per context and [`MemoryId`](crate::MemoryId)
    /// (`glImportMemoryFdEXT` with the whole allocation size, `GL_DEDICATED_MEMORY_OBJECT_EXT`
    /// exactly when dedicated) and shared by every buffer of it imported here; the memory object
    /// holds the memory while any of them lives. The fd is GL's once the import succeeds, closed
    /// if anything fails, and not needed (closed) when the memory is imported here already.
    ///
    /// Errors: [`Error::InvalidArgument`] for a descriptor that describes no buffer or disagrees
    /// with an import of the same memory held here; [`Error::DeviceMismatch`] for memory of
    /// another device (or driver); [`Error::Unsupported`] without `GL_EXT_memory_object_fd`.
    pub fn import_memory(&self, exported: ExportedMemory) -> Result<GlBuffer<'_>> {
        let (handle, desc) = exported.into_parts();
        let fd = handle.into_native();
        self.buffer_of(&desc, || Ok(fd), false)
    }

    /// Imports a lava-flow buffer of this process: the same path as
    /// [`import_memory`](GlContext::import_memory) with the buffer's export, which it skips when
    /// the memory is imported here already.
    ///
    /// Errors: as [`import_memory`](GlContext::import_memory), and [`Error::NotExportable`] if
    /// the buffer was allocated without export.
    pub fn import_buffer<'a>(&'a self, buffer: &'a Buffer) -> Result<GlBuffer<'a>> {
        let desc = buffer.descriptor();
        self.buffer_of(&desc, || buffer.export_native(), !desc.dedicated)
    }

    fn buffer_of<'a>(
        &'a self,
        desc: &MemoryDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
        waits_on_drop: bool,
    ) -> Result<GlBuffer<'a>> {
        let memory = self.memory_for(desc, "the buffer", fd)?;
        let (own, name, offset) = if self.shared.info.ignores_memory_offset {
            (0, memory.whole_block_buffer((desc.offset, desc.size))?, desc.offset)
        } else {
            let own = create_buffer_on(&self.shared, memory.name, desc.size, desc.offset)?;
            (own, own, 0)
        };
        Ok(GlBuffer { memory, own, name, offset, size: desc.size, waits_on_drop, _borrows: PhantomData })
    }

    /// The memory object of the memory `desc` describes (the memory of `what`) in this context,
    /// imported from `fd()` on first use once the context can import it: the extension, a valid
    /// descriptor, the same device and driver. The one place where GL imports memory.
    pub(crate) fn memory_for(
        &self,
        desc: &MemoryDescriptor,
        what: &'static str,
        fd: impl FnOnce() -> Result<NativeHandle>,
    ) -> Result<Rc<MemoryObject>> {
        self.require(handle_extensions().memory, "importing Vulkan memory")?;
        desc.check_layout()?;
        self.check_device(what, desc.device_uuid, desc.driver_uuid)?;
        if let Some(m) = self.memories.borrow().get(&desc.memory_id).and_then(std::rc::Weak::upgrade) {
            if m.allocation_size != desc.allocation_size || m.dedicated != desc.dedicated {
                return Err(Error::InvalidArgument(format!(
                    "memory {} is imported here as {} bytes (dedicated: {}), but the descriptor says \
                     {} bytes (dedicated: {})",
                    desc.memory_id, m.allocation_size, m.dedicated, desc.allocation_size, desc.dedicated
                )));
            }
            return Ok(m);
        }
        self.shared.current()?;
        self.shared.reclaim(false);
        let m = MemoryObject::import(self, desc, fd()?)?;
        let mut memories = self.memories.borrow_mut();
        memories.retain(|_, w| w.strong_count() > 0);
        memories.insert(desc.memory_id, Rc::downgrade(&m));
        Ok(m)
    }
}

impl GlBuffer<'_> {
    /// The GL buffer name to bind.
    pub fn gl_buffer(&self) -> GLuint {
        self.name
    }

    /// Where the lava-flow buffer starts inside [`gl_buffer`](GlBuffer::gl_buffer).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The lava-flow buffer's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Uploads `data` at `offset` (relative to the lava-flow buffer) with `glNamedBufferSubData`
    /// and returns once the bytes are in the memory (`glFinish`), visible to Vulkan, CUDA and
    /// OpenCL. (GL runs the upload asynchronously; on NVIDIA, Vulkan read the old bytes without
    /// the finish.) To upload without the host wait, call `glNamedBufferSubData` yourself and
    /// order it with [`GlTimeline::signal`](super::GlTimeline::signal).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let at = self.range(offset, data.len())?;
        let shared = &self.memory.shared;
        let gl = shared.current()?;
        // SAFETY: the context is current; the range lies inside the GL buffer (checked).
        unsafe { gl.NamedBufferSubData(self.name, at, data.len() as isize, data.as_ptr().cast()) };
        shared.check("glNamedBufferSubData")?;
        // SAFETY: the context is current.
        unsafe { gl.Finish() };
        shared.check("glFinish")
    }

    /// Reads `out.len()` bytes at `offset`: copied on the GPU (`glCopyNamedBufferSubData`, in
    /// pieces of up to 16 MiB) into a GL buffer of the context's own and read from there
    /// (`glGetNamedBufferSubData`). Returns once the bytes are in `out`.
    ///
    /// Why not `glGetNamedBufferSubData` on the imported buffer itself: NVIDIA's GL answers host
    /// reads of imported memory from a copy of its own, made at the first read or write, and
    /// never refreshed by what Vulkan, CUDA or OpenCL write afterwards — not after a semaphore
    /// wait, `glMemoryBarrier` or `glFinish` (measured on an H200, driver 580;
    /// `cpu_opengl::every_write_reaches_the_other_side_not_only_the_first` on the GPU tier). A GPU copy reads the memory itself.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let at = self.range(offset, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let shared = &self.memory.shared;
        let gl = shared.current()?;
        let (staging, size) = shared.read_staging(out.len() as u64)?;
        let mut from = at;
        for piece in out.chunks_mut(size as usize) {
            let len = piece.len() as isize;
            // SAFETY: the context is current; `from..from + len` lies inside the GL buffer
            // (checked above) and `0..len` inside the staging buffer (`len` ≤ its size).
            unsafe { gl.CopyNamedBufferSubData(self.name, staging, from, 0, len) };
            shared.check("glCopyNamedBufferSubData")?;
            // SAFETY: the context is current; `piece` has room for `len` bytes.
            unsafe { gl.GetNamedBufferSubData(staging, 0, len, piece.as_mut_ptr().cast()) };
            shared.check("glGetNamedBufferSubData")?;
            from += len;
        }
        Ok(())
    }

    /// The GL-buffer offset of `offset..offset + len`, checked against the buffer's size.
    fn range(&self, offset: u64, len: usize) -> Result<isize> {
        Error::check_range(offset, len, self.size)?;
        Ok((self.offset + offset) as isize)
    }
}

impl Drop for GlBuffer<'_> {
    fn drop(&mut self) {
        let gl = match self.memory.shared.current() {
            Ok(gl) => gl,
            Err(e) => {
                log::error!("GL buffer {} leaked: {e}", self.own);
                return;
            }
        };
        if self.waits_on_drop {
            if let Err(e) = self.memory.shared.wait_for_queued_work() {
                log::error!("a GL view dropped under queued work could not wait for it: {e}");
            }
        }
        if self.own != 0 {
            // SAFETY: our own buffer, made by this context; nothing else refers to it (GL keeps
            // its storage for commands queued before the delete).
            unsafe { gl.DeleteBuffers(1, &self.own) };
        }
    }
}
