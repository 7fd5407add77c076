//! External handles: how memory and semaphores leave Vulkan for other APIs and processes.
//!
//! On Linux the handle is an opaque file descriptor ([`HandleType::OpaqueFd`]), owned as
//! [`OwnedFd`]: a fresh descriptor for every export, closed when dropped, and given up by an
//! importer only after the import succeeded. Windows' `HANDLE`s ([`HandleType::OpaqueWin32`]) have
//! their place in these types, but lava-flow does not build for Windows yet and provides no
//! `export_handle()`; see `docs/adr/0003-external-handle-types.md`.

#[cfg(unix)]
use std::os::fd::OwnedFd;

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
    /// A Windows NT `HANDLE` (`..._OPAQUE_WIN32_BIT`). Not provided yet.
    OpaqueWin32,
    /// A Windows global share handle (`..._OPAQUE_WIN32_KMT_BIT`). Not provided yet.
    OpaqueWin32Kmt,
}

/// An owned external handle.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExternalHandle {
    /// An opaque file descriptor ([`HandleType::OpaqueFd`]).
    #[cfg(unix)]
    OpaqueFd(OwnedFd),
}

impl ExternalHandle {
    /// The handle's type.
    pub fn handle_type(&self) -> HandleType {
        match self {
            #[cfg(unix)]
            ExternalHandle::OpaqueFd(_) => HandleType::OpaqueFd,
        }
    }

    /// The file descriptor, if this is one.
    #[cfg(unix)]
    pub fn into_fd(self) -> OwnedFd {
        match self {
            ExternalHandle::OpaqueFd(fd) => fd,
        }
    }
}

/// Everything an importer needs to know about exported memory, besides the handle itself.
///
/// Plain data: it can be sent to another process next to the file descriptor (which travels over
/// a Unix socket with `SCM_RIGHTS`), and put back together with
/// [`ExportedMemory::from_parts`].
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
    /// importers must then pass their "dedicated" flag.
    pub dedicated: bool,
    /// The UUID of the device that owns the memory.
    pub device_uuid: Uuid,
    /// The UUID of its driver: opaque handles are only understood by the same driver.
    pub driver_uuid: Uuid,
}

/// Exported memory: an owned handle and its [`MemoryDescriptor`].
#[derive(Debug)]
pub struct ExportedMemory {
    handle: ExternalHandle,
    descriptor: MemoryDescriptor,
}

impl ExportedMemory {
    /// Puts a handle and its descriptor back together (e.g. after receiving both from another
    /// process). Nothing is checked until the memory is imported.
    pub fn from_parts(handle: ExternalHandle, descriptor: MemoryDescriptor) -> Self {
        ExportedMemory { handle, descriptor }
    }

    /// The handle's metadata.
    pub fn descriptor(&self) -> &MemoryDescriptor {
        &self.descriptor
    }

    /// The handle.
    pub fn handle(&self) -> &ExternalHandle {
        &self.handle
    }

    /// Splits into the owned handle and its descriptor.
    pub fn into_parts(self) -> (ExternalHandle, MemoryDescriptor) {
        (self.handle, self.descriptor)
    }
}

/// An exported timeline semaphore: an owned handle and the device it belongs to.
#[derive(Debug)]
pub struct ExportedSemaphore {
    /// The handle.
    pub handle: ExternalHandle,
    /// The UUID of the device that created the semaphore.
    pub device_uuid: Uuid,
    /// The UUID of its driver.
    pub driver_uuid: Uuid,
}
