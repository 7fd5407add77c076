//! External handles: how memory and semaphores leave Vulkan for other APIs and processes.
//!
//! On Linux the handle is an opaque file descriptor ([`HandleType::OpaqueFd`]), owned as
//! `std::os::fd::OwnedFd`; on Windows an NT `HANDLE` ([`HandleType::OpaqueWin32`]),
//! owned as `std::os::windows::io::OwnedHandle`. Either way every export returns a fresh handle,
//! closed when dropped. An importer gives up an fd only after the import succeeded; an NT handle
//! is never given up (no API takes ownership of one): lava-flow closes it after the import. See
//! `docs/adr/0003-external-handle-types.md` and `docs/adr/0010-windows-and-other-platforms.md`.
//!
//! | platform | handle | exports | Unix-socket transport (`lava_flow::ipc`) |
//! |---|---|---|---|
//! | Unix | `OpaqueFd(OwnedFd)` | `export_fd()`, `export()` | yes |
//! | Windows | `OpaqueWin32(OwnedHandle)` | `export_handle()`, `export()` | no (send handles with `DuplicateHandle` into the other process) |

#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(windows)]
use std::os::windows::io::OwnedHandle;

use crate::device::Uuid;

/// A kind of external handle, as Vulkan names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandleType {
    /// A POSIX file descriptor that only the same device and driver understand
    /// (`VK_EXTERNAL_*_HANDLE_TYPE_OPAQUE_FD_BIT`). What CUDA, OpenCL and OpenGL import on Linux.
    OpaqueFd,
    /// A Linux dma-buf file descriptor (`VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT`).
    DmaBuf,
    /// A sync file (`VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_SYNC_FD_BIT`), binary semaphores only.
    SyncFd,
    /// A Windows NT `HANDLE` (`..._OPAQUE_WIN32_BIT`). What CUDA, OpenCL and OpenGL import on
    /// Windows.
    OpaqueWin32,
    /// A Windows global share handle (`..._OPAQUE_WIN32_KMT_BIT`): reported by
    /// [`DeviceInfo`](crate::DeviceInfo) where a driver has it, never exported or imported.
    OpaqueWin32Kmt,
}

/// An owned external handle.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExternalHandle {
    /// An opaque file descriptor ([`HandleType::OpaqueFd`]).
    #[cfg(unix)]
    OpaqueFd(OwnedFd),
    /// A Windows NT handle ([`HandleType::OpaqueWin32`]).
    #[cfg(windows)]
    OpaqueWin32(OwnedHandle),
}

impl ExternalHandle {
    /// The handle's type.
    pub fn handle_type(&self) -> HandleType {
        match self {
            #[cfg(unix)]
            ExternalHandle::OpaqueFd(_) => HandleType::OpaqueFd,
            #[cfg(windows)]
            ExternalHandle::OpaqueWin32(_) => HandleType::OpaqueWin32,
        }
    }

    /// The file descriptor (the only kind of handle on Unix).
    #[cfg(unix)]
    pub fn into_fd(self) -> OwnedFd {
        self.into_native()
    }

    /// The NT handle (the only kind of handle on Windows).
    #[cfg(windows)]
    pub fn into_handle(self) -> OwnedHandle {
        self.into_native()
    }

    /// The platform's owned handle.
    pub(crate) fn into_native(self) -> crate::external::NativeHandle {
        match self {
            #[cfg(unix)]
            ExternalHandle::OpaqueFd(fd) => fd,
            #[cfg(windows)]
            ExternalHandle::OpaqueWin32(handle) => handle,
        }
    }

    /// The platform's owned handle as an `ExternalHandle`.
    pub(crate) fn from_native(handle: crate::external::NativeHandle) -> Self {
        #[cfg(unix)]
        return ExternalHandle::OpaqueFd(handle);
        #[cfg(windows)]
        return ExternalHandle::OpaqueWin32(handle);
    }
}

/// The identity of one exported `VkDeviceMemory`: the same in every export of it, in every
/// process that receives one, and never the same for two allocations.
///
/// Importers keep one import per memory and context (CUDA, OpenGL), keyed by this value: two
/// buffers of one block, or two receipts of the same memory, share one import. Ids are a keyed
/// hash of a counter with a random key per process: unpredictable, and different from every
/// other id but by chance (2^-64 for a pair). An importer trusts the id it is given, as it trusts
/// the rest of the descriptor: a peer that sends the id of other memory than its fd refers to
/// gets the memory the id names, with the sizes checked (see `docs/processes.md`) — but it can
/// name only ids it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemoryId(pub u64);

impl MemoryId {
    /// A new id, unpredictable and (with overwhelming probability) different from every other:
    /// for descriptors of memory that lava-flow did not allocate.
    pub fn new_unique() -> Self {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        // std's hasher keys are random per process (from the OS's random source): ids are a
        // keyed hash (SipHash) of a counter, so a peer that was sent some ids cannot guess the
        // others (an importer's cache trusts ids), and ids of different processes do not collide
        // but by chance (2^-64 a pair).
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut h = KEY.get_or_init(std::collections::hash_map::RandomState::new).build_hasher();
        h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
        MemoryId(h.finish())
    }
}

impl std::fmt::Display for MemoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Everything an importer needs to know about exported memory, besides the handle itself.
///
/// Plain data: it can be sent to another process next to the handle (a file descriptor travels
/// over a Unix socket with `SCM_RIGHTS`, see `ipc`; an NT handle with `DuplicateHandle`), and
/// put back together with
/// [`ExportedMemory::from_parts`]. [`to_bytes`](MemoryDescriptor::to_bytes) and
/// [`from_bytes`](MemoryDescriptor::from_bytes) are its wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryDescriptor {
    /// The buffer's size in bytes.
    pub size: u64,
    /// The buffer's offset inside the exported `VkDeviceMemory`.
    pub offset: u64,
    /// The size of the whole exported `VkDeviceMemory`: CUDA, OpenGL and OpenCL imports must be
    /// given this, not the buffer's size.
    pub allocation_size: u64,
    /// The Vulkan memory type index of the allocation (the importer must use the same one).
    pub memory_type_index: u32,
    /// Whether the allocation is dedicated to this one buffer (`VkMemoryDedicatedAllocateInfo`):
    /// importers must then pass their "dedicated" flag. A dedicated allocation holds one buffer
    /// at offset 0.
    pub dedicated: bool,
    /// The UUID of the device that owns the memory.
    pub device_uuid: Uuid,
    /// The UUID of its driver: opaque handles are only understood by the same driver.
    pub driver_uuid: Uuid,
    /// Which `VkDeviceMemory` this is (importers share one import per memory).
    pub memory_id: MemoryId,
}

impl MemoryDescriptor {
    /// Checks that the descriptor describes a buffer inside its allocation: at least 1 byte,
    /// `offset + size <= allocation_size` (checked arithmetic: descriptors may come from another
    /// process), and a dedicated allocation holding its one buffer at offset 0. Every importer
    /// calls this before anything else; importers add their own rules (the memory type, a
    /// dedicated buffer's exact size, the device).
    pub fn check_layout(&self) -> crate::Result<()> {
        let fits = self.size > 0
            && self.offset.checked_add(self.size).is_some_and(|end| end <= self.allocation_size);
        if !fits {
            return Err(crate::Error::InvalidArgument(format!(
                "memory descriptor does not describe a buffer: {} bytes at offset {} of {} bytes",
                self.size, self.offset, self.allocation_size
            )));
        }
        if self.dedicated && self.offset != 0 {
            return Err(crate::Error::InvalidArgument(format!(
                "a dedicated allocation holds one buffer at offset 0, not at offset {}",
                self.offset
            )));
        }
        Ok(())
    }
}

/// An exported object: an owned handle and the descriptor an importer needs beside it.
/// [`ExportedMemory`], [`ExportedSemaphore`] and [`ExportedImage`] are its three kinds.
///
/// A binary semaphore's export made in this process also carries what lava-flow knows of its
/// signals, so that an import here (Vulkan or OpenCL) keeps checking them; reading the handle
/// ([`handle`](Exported::handle), [`into_parts`](Exported::into_parts), or sending it to
/// another process) ends that: see [`BinarySemaphore`](crate::BinarySemaphore).
#[derive(Debug)]
pub struct Exported<D> {
    handle: ExternalHandle,
    descriptor: D,
    binary: Option<std::sync::Arc<crate::vulkan::BinaryState>>,
}

impl<D> Exported<D> {
    /// Puts a handle and its descriptor back together (e.g. after receiving both from another
    /// process). Nothing is checked until the import.
    pub fn from_parts(handle: ExternalHandle, descriptor: D) -> Self {
        Exported { handle, descriptor, binary: None }
    }

    /// An export of a binary semaphore of this process, with what lava-flow knows of its signals.
    pub(crate) fn with_binary_state(mut self, state: std::sync::Arc<crate::vulkan::BinaryState>) -> Self {
        self.binary = Some(state);
        self
    }

    /// The handle's metadata.
    pub fn descriptor(&self) -> &D {
        &self.descriptor
    }

    /// The handle. (For a binary semaphore, lava-flow stops checking its signals: the handle may
    /// now be used where lava-flow cannot see.)
    pub fn handle(&self) -> &ExternalHandle {
        self.escape();
        &self.handle
    }

    /// Splits into the owned handle and its descriptor. (For a binary semaphore, lava-flow stops
    /// checking its signals, as for [`handle`](Exported::handle).)
    pub fn into_parts(self) -> (ExternalHandle, D) {
        self.escape();
        (self.handle, self.descriptor)
    }

    /// For lava-flow's own imports in this process: the parts, and the binary semaphore's state
    /// if it has one (the handle has not left lava-flow).
    pub(crate) fn into_tracked_parts(
        self,
    ) -> (ExternalHandle, D, Option<std::sync::Arc<crate::vulkan::BinaryState>>) {
        (self.handle, self.descriptor, self.binary)
    }

    fn escape(&self) {
        if let Some(state) = &self.binary {
            state.escape();
        }
    }
}

/// Exported memory: an owned handle and its [`MemoryDescriptor`].
pub type ExportedMemory = Exported<MemoryDescriptor>;

/// An exported semaphore: an owned handle and its [`SemaphoreDescriptor`].
pub type ExportedSemaphore = Exported<SemaphoreDescriptor>;

/// An exported image: an owned handle to its memory and its [`ImageDescriptor`].
pub type ExportedImage = Exported<ImageDescriptor>;

/// The two kinds of exportable Vulkan semaphores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SemaphoreKind {
    /// A timeline semaphore (a 64-bit counter): Vulkan, CUDA, OpenGL (`GL_NV_timeline_semaphore`).
    Timeline,
    /// A binary semaphore: what OpenCL's `cl_khr_external_semaphore` imports.
    Binary,
}

/// What an importer needs to know about an exported semaphore, besides its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SemaphoreDescriptor {
    /// Timeline or binary.
    pub kind: SemaphoreKind,
    /// The UUID of the device that created the semaphore.
    pub device_uuid: Uuid,
    /// The UUID of its driver.
    pub driver_uuid: Uuid,
}

/// What an importer needs to know about an exported image: its memory (always a dedicated
/// allocation) and the image's description, which the importer must recreate exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageDescriptor {
    /// The image's memory.
    pub memory: MemoryDescriptor,
    /// Format, extent, mip levels and tiling.
    pub image: crate::ImageDesc,
}

impl ImageDescriptor {
    /// Checks what every importer of an image relies on: a dedicated allocation (lava-flow
    /// images always are) described by a valid [`MemoryDescriptor`], a non-empty extent, and
    /// between 1 and [`max_mip_levels`](crate::ImageDesc::max_mip_levels) levels.
    pub fn check(&self) -> crate::Result<()> {
        self.memory.check_layout()?;
        let image = &self.image;
        let bad = |why: String| Err(crate::Error::InvalidArgument(format!("image descriptor: {why}")));
        if !self.memory.dedicated {
            return bad("an image's memory is a dedicated allocation".into());
        }
        if image.width == 0 || image.height == 0 {
            return bad(format!("an extent of {}x{} texels", image.width, image.height));
        }
        if image.mip_levels == 0 || image.mip_levels > image.max_mip_levels() {
            return bad(format!(
                "{} mip levels for a {}x{} image (1 to {})",
                image.mip_levels,
                image.width,
                image.height,
                image.max_mip_levels()
            ));
        }
        Ok(())
    }
}
