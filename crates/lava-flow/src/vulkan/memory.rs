//! `VkDeviceMemory`: allocation (exportable, dedicated), import from the platform's handle (an fd
//! or an NT handle), mapping, export.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ash::vk;

use super::device::Device;
use crate::error::{Api, Error, Result, VkResultExt};
use crate::external::{NativeHandle, Payload, RawHandle, Refused};
use crate::handle::MemoryId;

/// A pointer to persistently mapped device memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MappedPtr(pub NonNull<u8>);

// SAFETY: the pointer addresses driver-mapped memory that is not tied to a thread; every access
// through it is a bounds-checked copy made by lava-flow (or by a user through `mapped_ptr`, which
// is documented as raw).
unsafe impl Send for MappedPtr {}
// SAFETY: as above; lava-flow never hands out references into the mapping.
unsafe impl Sync for MappedPtr {}

/// How to allocate one `VkDeviceMemory`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryDesc {
    pub size: u64,
    pub memory_type_index: u32,
    /// Chain `VkExportMemoryAllocateInfo` (the platform's opaque handle).
    pub exportable: bool,
    /// Chain `VkMemoryDedicatedAllocateInfo` for this buffer or image.
    pub dedicated_to: Option<Dedicated>,
    /// Map the whole allocation persistently.
    pub map: bool,
}

/// The one resource a dedicated allocation is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dedicated {
    Buffer(vk::Buffer),
    Image(vk::Image),
}

/// One `VkDeviceMemory`, freed — and uncharged from its heap's use — by its `Drop`, the one
/// place where lava-flow frees memory.
///
/// It keeps only what the free needs (the device handle, `vkFreeMemory` and the heap counters),
/// not the `Device`, so that the device's own staging memory can be one too; its owners
/// ([`Block`], the staging context) guarantee that the device outlives it and that nothing
/// bound to it is in use when it is dropped.
pub(crate) struct RawMemory {
    pub memory: vk::DeviceMemory,
    pub mapped: Option<MappedPtr>,
    device: vk::Device,
    free_memory: vk::PFN_vkFreeMemory,
    /// The heap counters and the bytes charged to one heap (allocations, not imports).
    charged: Option<(Arc<[AtomicU64]>, usize, u64)>,
}

impl std::fmt::Debug for RawMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMemory").field("memory", &self.memory).field("mapped", &self.mapped).finish()
    }
}

impl RawMemory {
    /// Allocates memory as `desc` says; with `import`, imports that handle instead.
    ///
    /// An fd belongs to the driver on success; on failure it is closed here (or by the driver,
    /// see `fd.rs`). An NT handle is only referenced by Vulkan and closed here either way.
    pub fn allocate(device: &Device, desc: MemoryDesc, import: Option<NativeHandle>) -> Result<Self> {
        let (memory, charged) = match import {
            None => {
                let heap = charge(device, &desc)?;
                match allocate_memory(device, &desc, None) {
                    Ok(memory) => (memory, Some((Arc::clone(&device.heap_used), heap, desc.size))),
                    Err(e) => {
                        uncharge(&device.heap_used, heap, desc.size);
                        return Err(out_of_memory(device, &desc, e));
                    }
                }
            }
            Some(handle) => (
                crate::external::give_to_driver(
                    Api::Vulkan,
                    handle,
                    Payload::Memory { allocation_size: desc.size },
                    |raw| {
                        allocate_memory(device, &desc, Some(raw)).map_err(|e| {
                            let refused = refused_import(device, &e);
                            (e, refused)
                        })
                    },
                )?,
                None,
            ),
        };
        let mut raw = RawMemory {
            memory,
            mapped: None,
            device: device.device.handle(),
            free_memory: device.device.fp_v1_0().free_memory,
            charged,
        };
        if desc.map {
            // SAFETY: the memory was just allocated from a HOST_VISIBLE type (the caller's
            // choice) and is not mapped yet. On failure `raw`'s drop frees it.
            let ptr =
                unsafe { device.device.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) };
            match ptr.map(|p| NonNull::new(p.cast::<u8>())) {
                Ok(Some(p)) => raw.mapped = Some(MappedPtr(p)),
                Err(e) => return Err(Error::vk("vkMapMemory", e)),
                Ok(None) => {
                    return Err(Error::Ffi {
                        api: crate::Api::Vulkan,
                        call: "vkMapMemory",
                        name: "VK_SUCCESS".into(),
                        description: "the driver returned a null pointer".into(),
                    })
                }
            }
        }
        Ok(raw)
    }
}

impl RawMemory {
    /// Imports `size` bytes of the host's memory at `ptr` (`VK_EXT_external_memory_host`,
    /// `HOST_ALLOCATION`) as memory type `memory_type_index`. Not charged to a heap: the bytes
    /// are the caller's.
    ///
    /// # Safety
    /// `ptr..ptr + size` is mapped memory of this process, aligned as the device's
    /// `minImportedHostPointerAlignment` asks (both ends), and stays mapped until the returned
    /// memory is dropped; the type is one `vkGetMemoryHostPointerPropertiesEXT` allows for it.
    pub unsafe fn import_host(
        device: &Device,
        ptr: *mut std::ffi::c_void,
        size: u64,
        memory_type_index: u32,
    ) -> Result<Self> {
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT)
            .host_pointer(ptr);
        let info = vk::MemoryAllocateInfo::default()
            .allocation_size(size)
            .memory_type_index(memory_type_index)
            .push_next(&mut import);
        // SAFETY: `info` and its chain point at live locals; the caller vouches for the range
        // and the type.
        let memory = unsafe { device.device.allocate_memory(&info, None) }.vk("vkAllocateMemory")?;
        Ok(RawMemory {
            memory,
            mapped: None,
            device: device.device.handle(),
            free_memory: device.device.fp_v1_0().free_memory,
            charged: None,
        })
    }
}

impl Drop for RawMemory {
    fn drop(&mut self) {
        // SAFETY: the memory belongs to `self.device`, which its owner keeps alive past this
        // drop; whatever was bound to it is gone (owners drop their buffers and images first)
        // and it is freed exactly once, here. Freeing unmaps it implicitly.
        unsafe { (self.free_memory)(self.device, self.memory, std::ptr::null()) };
        if let Some((heaps, heap, size)) = &self.charged {
            uncharge(heaps, *heap, *size);
        }
    }
}

/// Who owns the fd of a memory import `vkAllocateMemory` refused with `e`. Mesa's lavapipe
/// closes it on every refusal but a failed allocation of its own bookkeeping, which comes before
/// it looks at the fd (`lvp_AllocateMemory`: `VK_ERROR_OUT_OF_HOST_MEMORY`); other drivers keep
/// the specification's rule.
fn refused_import(device: &Device, e: &Error) -> Refused {
    let before_the_fd = matches!(e, Error::Ffi { name, .. } if name == "VK_ERROR_OUT_OF_HOST_MEMORY");
    if device.physical.closes_refused_memory_fds && !before_the_fd {
        Refused::TakenByDriver
    } else {
        Refused::StillOurs
    }
}

/// The heap of `desc`'s memory type.
fn heap_of(device: &Device, desc: &MemoryDesc) -> usize {
    device.physical.memory.memory_types[desc.memory_type_index as usize].heap_index as usize
}

/// Adds `desc.size` to its heap's use, or fails with [`Error::OutOfMemory`] if that passes the
/// heap budget. Returns the heap.
fn charge(device: &Device, desc: &MemoryDesc) -> Result<usize> {
    let heap = heap_of(device, desc);
    let used = &device.heap_used[heap];
    let before = used.fetch_add(desc.size, Ordering::Relaxed);
    match device.heap_budget {
        Some(budget) if before.saturating_add(desc.size) > budget => {
            uncharge(&device.heap_used, heap, desc.size);
            Err(oom(device, desc, before, format!("would pass the heap budget of {budget} bytes")))
        }
        _ => Ok(heap),
    }
}

fn uncharge(heaps: &[AtomicU64], heap: usize, size: u64) {
    heaps[heap].fetch_sub(size, Ordering::Relaxed);
}

/// A driver's out-of-memory result as [`Error::OutOfMemory`]; other errors unchanged.
fn out_of_memory(device: &Device, desc: &MemoryDesc, e: Error) -> Error {
    match e {
        Error::Ffi { name, .. }
            if name == "VK_ERROR_OUT_OF_DEVICE_MEMORY" || name == "VK_ERROR_OUT_OF_HOST_MEMORY" =>
        {
            let in_use = device.heap_used[heap_of(device, desc)].load(std::sync::atomic::Ordering::Relaxed);
            oom(device, desc, in_use, format!("was refused by vkAllocateMemory ({name})"))
        }
        other => other,
    }
}

fn oom(device: &Device, desc: &MemoryDesc, in_use: u64, cause: String) -> Error {
    let heap = heap_of(device, desc);
    Error::OutOfMemory {
        requested: desc.size,
        device_id: device.physical.info.index,
        heap_index: heap as u32,
        heap_size: device.physical.memory.memory_heaps[heap].size,
        in_use,
        cause,
    }
}

/// One `vkAllocateMemory` with the chain `desc` asks for, importing `import` if given.
fn allocate_memory(
    device: &Device,
    desc: &MemoryDesc,
    import: Option<RawHandle>,
) -> Result<vk::DeviceMemory> {
    let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(super::external::memory_handle());
    let mut dedicated = vk::MemoryDedicatedAllocateInfo::default();
    let mut import_info = import.map(super::external::MemoryImport::new);
    let mut info = vk::MemoryAllocateInfo::default()
        .allocation_size(desc.size)
        .memory_type_index(desc.memory_type_index);
    if desc.exportable {
        info = info.push_next(&mut export);
    }
    if let Some(to) = desc.dedicated_to {
        dedicated = match to {
            Dedicated::Buffer(buffer) => dedicated.buffer(buffer),
            Dedicated::Image(image) => dedicated.image(image),
        };
        info = info.push_next(&mut dedicated);
    }
    if let Some(import) = import_info.as_mut() {
        info = import.chain(info);
    }
    // SAFETY: `info` and its chain point at live locals; the type index was chosen from this
    // device's memory properties (or checked against them, for imports).
    unsafe { device.device.allocate_memory(&info, None) }.vk("vkAllocateMemory")
}

/// A `VkDeviceMemory` owned by lava-flow: a sub-allocation block, a dedicated allocation, or an
/// import. Freed when the last buffer using it is dropped.
#[derive(Debug)]
pub(crate) struct Block {
    // Field order is drop order: the memory is freed before the device reference goes.
    pub raw: RawMemory,
    /// Which memory this is, in every process: importers cache their imports by it. An import
    /// has the id of the memory it imported.
    pub id: MemoryId,
    pub device: Arc<Device>,
    pub size: u64,
    pub memory_type_index: u32,
    /// Whether [`export`](Block::export) can succeed: allocated with export, or imported
    /// (then the exports are duplicates of the imported handle).
    pub exportable: bool,
    pub dedicated: bool,
    /// The handle of the first export (or a duplicate of the imported one), duplicated for
    /// every export (see `export`).
    exported: std::sync::Mutex<Option<NativeHandle>>,
}

impl Block {
    /// Allocates a block as `desc` says.
    pub fn new(device: &Arc<Device>, desc: MemoryDesc) -> Result<Self> {
        let raw = RawMemory::allocate(device, desc, None)?;
        Ok(Self::with(device, raw, &desc, MemoryId::new_unique(), None))
    }

    /// Imports memory `id` from `handle` as `desc` says. The block keeps a duplicate of the
    /// handle, so that what was imported can be exported again (to CUDA, OpenGL, OpenCL,
    /// another process): the duplicate refers to the same memory.
    pub fn import(
        device: &Arc<Device>,
        desc: MemoryDesc,
        handle: NativeHandle,
        id: MemoryId,
    ) -> Result<Self> {
        let kept = crate::external::duplicate(&handle)?;
        let raw = RawMemory::allocate(device, desc, Some(handle))?;
        Ok(Self::with(device, raw, &desc, id, Some(kept)))
    }

    fn with(
        device: &Arc<Device>,
        raw: RawMemory,
        desc: &MemoryDesc,
        id: MemoryId,
        kept: Option<NativeHandle>,
    ) -> Self {
        Block {
            raw,
            id,
            device: Arc::clone(device),
            size: desc.size,
            memory_type_index: desc.memory_type_index,
            exportable: desc.exportable || kept.is_some(),
            dedicated: desc.dedicated_to.is_some(),
            exported: std::sync::Mutex::new(kept),
        }
    }

    /// A new handle (an opaque fd, or an NT handle on Windows) referring to the whole block.
    ///
    /// The first call asks the driver (`vkGetMemoryFdKHR`, about 40 µs on NVIDIA's driver;
    /// `vkGetMemoryWin32HandleKHR`) and keeps that handle; every call returns a duplicate of it
    /// (`dup`, about 1 µs; `DuplicateHandle`), which refers to the same memory. So exporting many
    /// buffers of one block costs one driver call, and the block holds one extra handle until it
    /// is freed. An imported block holds a duplicate of the handle it was imported from instead.
    pub fn export(&self) -> Result<NativeHandle> {
        let not_exportable = || Error::NotExportable {
            reason: "the memory was allocated without VkExportMemoryAllocateInfo".into(),
        };
        if !self.exportable {
            return Err(not_exportable());
        }
        let mut cached = self.exported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let handle = match cached.as_ref() {
            Some(handle) => handle,
            None => {
                // SAFETY: the memory is live and was allocated exportable as the platform's
                // opaque handle (`exportable`, and not imported: that one is cached from the start).
                let new = unsafe { self.device.external.export_memory(self.raw.memory) };
                cached.insert(new.ok_or_else(not_exportable)??)
            }
        };
        crate::external::duplicate(handle)
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("name", &self.physical.info.name).finish_non_exhaustive()
    }
}
