//! Memory that CUDA allocates and Vulkan imports: `cuMemCreate` with a POSIX fd handle,
//! exported (`cuMemExportToShareableHandle`) and imported as a lava-flow [`Buffer`], so that
//! CUDA-owned data can be read by Vulkan, OpenGL and OpenCL; and, being memory of CUDA's virtual
//! memory API, mapped for other GPUs one allocation at a time (`cuMemSetAccess`), which is what
//! lets [`copy_peer`](super::copy_peer) run at the interconnect's rate.

use std::os::fd::{FromRawFd, OwnedFd};

use cudarc::driver::sys;

use super::context::{Context, Stream};
use super::memory::DeviceMemory;
use super::peer::{can_access_peer, PeerMapping};
use super::raw::check;
use super::release::{lock, CudaFence, CudaUses, Release};
use crate::device::Uuid;
use crate::error::{Error, Result};
use crate::handle::{ExportedMemory, ExternalHandle, MemoryDescriptor};
use crate::{Buffer, MemoryAllocator, MemoryLocation};

/// Device memory made by CUDA's virtual memory API so that it can be exported: a physical
/// allocation (`cuMemCreate`, `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`) mapped read-write at
/// a reserved address. Unmapped and released on drop — once the work recorded with
/// [`release_after`](DeviceMemory::release_after) has completed (ADR 0014); a Vulkan import
/// keeps its own reference to the memory, so the two may be dropped in any order.
///
/// Its own GPU may read and write it; other GPUs only once
/// [`grant_access`](ExportableAllocation::grant_access) has mapped it for them.
pub struct ExportableAllocation {
    ctx: Context,
    handle: sys::CUmemGenericAllocationHandle,
    ptr: sys::CUdeviceptr,
    /// The size asked for.
    size: u64,
    /// The size allocated: `size` rounded up to the allocation granularity.
    allocation_size: u64,
    /// The identity every export of it carries.
    memory_id: crate::MemoryId,
    /// Work queued on the memory (ADR 0014).
    uses: CudaUses,
    /// The contexts of the other GPUs granted access, held so that their (primary) contexts,
    /// whose address spaces hold the mappings, live as long as the allocation.
    peers: std::sync::Mutex<Vec<Context>>,
}

impl std::fmt::Debug for ExportableAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportableAllocation")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .field("allocation_size", &self.allocation_size)
            .finish()
    }
}

impl Context {
    /// Allocates `size` bytes that can be exported to Vulkan (and other processes).
    pub fn alloc_exportable(&self, size: u64) -> Result<ExportableAllocation> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        self.bind()?;
        // SAFETY: all-zero is a valid property block; the used fields are set below.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = self.raw_device();
        let mut granularity = 0;
        // SAFETY: `prop` describes a device allocation; `granularity` is a valid out-pointer.
        check("cuMemGetAllocationGranularity", unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            )
        })?;
        let allocation_size = size.next_multiple_of(granularity.max(1) as u64);
        let bytes = allocation_size as usize;
        let mut handle = 0;
        // SAFETY: the context is current; `prop` is complete; the size is a granularity multiple.
        check("cuMemCreate", unsafe { sys::cuMemCreate(&mut handle, bytes, &prop, 0) })?;
        let mut ptr = 0;
        // SAFETY: reserves an address range of the allocation's size, any address.
        let reserved = unsafe { sys::cuMemAddressReserve(&mut ptr, bytes, 0, 0, 0) };
        if let Err(e) = check("cuMemAddressReserve", reserved) {
            // SAFETY: created above, used by nothing.
            let _ = unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
        let allocation = ExportableAllocation {
            ctx: self.clone(),
            handle,
            ptr,
            size,
            allocation_size,
            memory_id: crate::MemoryId::new_unique(),
            uses: CudaUses::default(),
            peers: std::sync::Mutex::default(),
        };
        // From here on, dropping `allocation` unmaps (if mapped), frees the range and releases.
        // SAFETY: the reserved range and the allocation have the same size.
        check("cuMemMap", unsafe { sys::cuMemMap(ptr, bytes, 0, handle, 0) })?;
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range is mapped; one access descriptor.
        check("cuMemSetAccess", unsafe { sys::cuMemSetAccess(ptr, bytes, &access, 1) })?;
        Ok(allocation)
    }
}

/// Why `peer` may not be granted access to memory of `owner`, if it may not: the rules of
/// [`ExportableAllocation::grant_access`] over what the driver said, testable without a GPU.
fn grant_refusal(owner: Uuid, peer: Uuid, peer_has_vmm: bool, can_access: bool) -> Result<()> {
    if !peer_has_vmm {
        return Err(Error::Unsupported {
            what: format!(
                "GPU {peer} cannot be granted access to memory of GPU {owner}: it does not support \
                 CUDA's virtual memory management (CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0)"
            ),
        });
    }
    if !can_access {
        return Err(Error::Unsupported {
            what: format!(
                "GPU {peer} cannot be granted access to memory of GPU {owner}: cuDeviceCanAccessPeer \
                 says it cannot access that GPU's memory (copy_peer stages such copies through host memory)"
            ),
        });
    }
    Ok(())
}

impl ExportableAllocation {
    /// Maps the allocation read-write for `peer`'s GPU (`cuMemSetAccess` with that device), so
    /// that kernels and copies there may use its device pointer directly, and
    /// [`copy_peer`](super::copy_peer) from this memory to that GPU runs at the interconnect's
    /// rate ([`PeerPath::Direct`](super::PeerPath::Direct)). Idempotent: a GPU granted before,
    /// and the allocation's own GPU (through any of its contexts), are left as they are.
    /// `peer` is kept (a clone) while the allocation lives: its context holds the mapping.
    ///
    /// Peer access of contexts (`cuCtxEnablePeerAccess`) does not map this memory; this does.
    /// Work the peer's GPU queues on the memory itself (its kernels) is not recorded here
    /// ([`release_after`](DeviceMemory::release_after) takes streams of the owner's context):
    /// keep the allocation until that work is done. `copy_peer` records its own copies.
    ///
    /// Errors: [`Error::Unsupported`] naming both GPUs' UUIDs where the peer's GPU does not
    /// support virtual memory management or `cuDeviceCanAccessPeer(peer, owner)` says 0 (nothing
    /// is mapped); CUDA errors as [`Error::Ffi`].
    pub fn grant_access(&self, peer: &Context) -> Result<()> {
        if peer.raw_device() == self.ctx.raw_device() {
            return Ok(());
        }
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.iter().any(|p| p.raw_device() == peer.raw_device()) {
            return Ok(());
        }
        let mut vmm = 0;
        // SAFETY: the device is valid (its context exists); `vmm` is a valid out-pointer.
        check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(
                &mut vmm,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED,
                peer.raw_device(),
            )
        })?;
        let can_access = can_access_peer(peer, &self.ctx)?;
        grant_refusal(self.ctx.uuid(), peer.uuid(), vmm != 0, can_access)?;
        self.ctx.bind()?;
        let access = sys::CUmemAccessDesc {
            location: sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: peer.raw_device(),
            },
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the whole range is mapped (by `alloc_exportable`); one access descriptor, for
        // a device that can access this one's memory (checked above). The owner's access is
        // not among the descriptors, so it stays as it is.
        check("cuMemSetAccess", unsafe {
            sys::cuMemSetAccess(self.ptr, self.allocation_size as usize, &access, 1)
        })?;
        peers.push(peer.clone());
        Ok(())
    }

    /// Whether the GPU of `ctx` may access the allocation: its own GPU, or one it was granted
    /// to ([`grant_access`](ExportableAllocation::grant_access)).
    pub fn is_accessible_from(&self, ctx: &Context) -> bool {
        ctx.raw_device() == self.ctx.raw_device()
            || self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .any(|p| p.raw_device() == ctx.raw_device())
    }

    /// The size allocated (`size()` rounded up to the allocation granularity): what an importer
    /// must be given as the allocation size.
    pub fn allocation_size(&self) -> u64 {
        self.allocation_size
    }

    /// A new POSIX fd for the allocation (`cuMemExportToShareableHandle`), owned by the caller.
    pub fn export_fd(&self) -> Result<OwnedFd> {
        self.ctx.bind()?;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: the allocation was created with the POSIX fd handle type; `fd` receives it.
        check("cuMemExportToShareableHandle", unsafe {
            sys::cuMemExportToShareableHandle(
                (&mut fd as *mut std::ffi::c_int).cast(),
                self.handle,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        })?;
        // SAFETY: a successful export returns a new fd that the caller owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Imports the allocation into lava-flow's Vulkan `device_id` as a [`Buffer`] of `size()`
    /// bytes (at offset 0 of an allocation of `allocation_size()` bytes), which Vulkan, OpenGL
    /// and OpenCL can then use. The device must be this context's GPU (same UUID).
    pub fn import_into(&self, allocator: &mut MemoryAllocator, device_id: u32) -> Result<Buffer> {
        let info = allocator.device(device_id)?.clone();
        self.ctx.check_device("the Vulkan device", info.uuid)?;
        let location = MemoryLocation::GpuVulkan { device_id };
        let descriptor = MemoryDescriptor {
            size: self.size,
            offset: 0,
            allocation_size: self.allocation_size,
            memory_type_index: allocator.memory_type_index(location)?,
            dedicated: false,
            device_uuid: info.uuid,
            driver_uuid: info.driver_uuid,
            memory_id: self.memory_id,
        };
        let fd = self.export_fd()?;
        allocator
            .import_memory(device_id, ExportedMemory::from_parts(ExternalHandle::OpaqueFd(fd), descriptor))
    }
}

impl DeviceMemory for ExportableAllocation {
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
    fn peer_mapping(&self) -> PeerMapping {
        let peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        PeerMapping::Granted(
            std::iter::once(self.ctx.raw_device()).chain(peers.iter().map(Context::raw_device)).collect(),
        )
    }
}

impl Drop for ExportableAllocation {
    fn drop(&mut self) {
        // Unmapped, freed and released once the recorded work is done (now or later).
        let pending = self.uses.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take_pending();
        let what =
            Release::Virtual { ptr: self.ptr, bytes: self.allocation_size as usize, handle: self.handle };
        self.ctx.release_after_fences(pending, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_refused_with_both_uuids_where_the_driver_says_no() {
        let (owner, peer) = (Uuid([0x0a; 16]), Uuid([0x0b; 16]));
        grant_refusal(owner, peer, true, true).expect("a peer that can access it");
        for (vmm, can, says) in [
            (false, true, "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0"),
            (true, false, "cuDeviceCanAccessPeer"),
            (false, false, "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0"),
        ] {
            match grant_refusal(owner, peer, vmm, can) {
                Err(e @ Error::Unsupported { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&owner.to_string()) && text.contains(&peer.to_string()), "{text}");
                    assert!(text.contains(says), "{text}");
                }
                other => panic!("vmm {vmm}, can access {can}: expected Unsupported, got {other:?}"),
            }
        }
    }
}
