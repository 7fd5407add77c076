//! Pure conversions between lava-flow's types and Vulkan's, and the choice of memory type.

use ash::vk;

use crate::device::DeviceType;
use crate::handle::HandleType;
use crate::location::MemoryLocation;

/// The usage every lava-flow buffer is created with: transfers, storage, uniform, vertex, index
/// and indirect. One fixed set keeps sub-allocated buffers interchangeable and lets an importer
/// recreate a dedicated buffer with identical parameters.
pub(crate) const BUFFER_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw()
        | vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::UNIFORM_BUFFER.as_raw()
        | vk::BufferUsageFlags::VERTEX_BUFFER.as_raw()
        | vk::BufferUsageFlags::INDEX_BUFFER.as_raw()
        | vk::BufferUsageFlags::INDIRECT_BUFFER.as_raw(),
);

pub(crate) fn device_type(t: vk::PhysicalDeviceType) -> DeviceType {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => DeviceType::DiscreteGpu,
        vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceType::IntegratedGpu,
        vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceType::VirtualGpu,
        vk::PhysicalDeviceType::CPU => DeviceType::Cpu,
        _ => DeviceType::Other,
    }
}

pub(crate) fn memory_handle_flag(t: HandleType) -> vk::ExternalMemoryHandleTypeFlags {
    match t {
        HandleType::OpaqueFd => vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD,
        HandleType::DmaBuf => vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT,
        HandleType::OpaqueWin32 => vk::ExternalMemoryHandleTypeFlags::OPAQUE_WIN32,
        HandleType::OpaqueWin32Kmt => vk::ExternalMemoryHandleTypeFlags::OPAQUE_WIN32_KMT,
        HandleType::SyncFd => vk::ExternalMemoryHandleTypeFlags::empty(),
    }
}

pub(crate) fn semaphore_handle_flag(t: HandleType) -> vk::ExternalSemaphoreHandleTypeFlags {
    match t {
        HandleType::OpaqueFd => vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD,
        HandleType::SyncFd => vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD,
        HandleType::OpaqueWin32 => vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_WIN32,
        HandleType::OpaqueWin32Kmt => vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_WIN32_KMT,
        HandleType::DmaBuf => vk::ExternalSemaphoreHandleTypeFlags::empty(),
    }
}

/// Why a location has no memory type on a device.
pub(crate) fn location_requirement(location: MemoryLocation) -> &'static str {
    match location {
        MemoryLocation::GpuVulkan { .. } => "no DEVICE_LOCAL memory type",
        MemoryLocation::GpuMappable { .. } => {
            "no memory type is DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT (no resizable BAR)"
        }
        MemoryLocation::HostVisible { .. } => {
            "no HOST_VISIBLE | HOST_COHERENT memory type in a host (non-device-local) heap"
        }
    }
}

/// Picks the memory type for `location` among the types in `type_bits`.
///
/// - `GpuVulkan`: `DEVICE_LOCAL`, preferring types that are not also host-visible.
/// - `GpuMappable`: `DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT`.
/// - `HostVisible`: `HOST_VISIBLE | HOST_COHERENT` in a heap that is not device-local; on CPU and
///   integrated devices, whose "device-local" heap is system memory, any such type.
///
/// Among the acceptable types the one with the fewest extra property flags wins, then the lowest
/// index (Vulkan lists better types first).
pub(crate) fn choose_memory_type(
    memory: &vk::PhysicalDeviceMemoryProperties,
    type_bits: u32,
    location: MemoryLocation,
    device_type: DeviceType,
) -> Option<u32> {
    use vk::MemoryPropertyFlags as F;
    let host = F::HOST_VISIBLE | F::HOST_COHERENT;
    let unified = matches!(device_type, DeviceType::Cpu | DeviceType::IntegratedGpu);
    let types = memory.memory_types_as_slice();
    let accept = |i: usize| -> Option<(u32, usize)> {
        let t = types[i];
        let f = t.property_flags;
        let heap_local =
            memory.memory_heaps[t.heap_index as usize].flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL);
        let (ok, wanted) = match location {
            MemoryLocation::GpuVulkan { .. } => (f.contains(F::DEVICE_LOCAL), F::DEVICE_LOCAL),
            MemoryLocation::GpuMappable { .. } => {
                (f.contains(F::DEVICE_LOCAL | host), F::DEVICE_LOCAL | host)
            }
            MemoryLocation::HostVisible { .. } => (f.contains(host) && (!heap_local || unified), host),
        };
        // Rank by the flags beyond what was asked for (fewer is better), and avoid
        // protected / lazily-allocated / device-coherent types altogether.
        let exotic = F::PROTECTED | F::LAZILY_ALLOCATED | F::DEVICE_COHERENT_AMD;
        (ok && !f.intersects(exotic)).then(|| ((f & !wanted).as_raw().count_ones(), i))
    };
    (0..types.len()).filter(|&i| type_bits & (1 << i) != 0).filter_map(accept).min().map(|(_, i)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vk::MemoryPropertyFlags as F;

    fn props(heaps: &[bool], types: &[(F, u32)]) -> vk::PhysicalDeviceMemoryProperties {
        let mut p = vk::PhysicalDeviceMemoryProperties {
            memory_heap_count: heaps.len() as u32,
            memory_type_count: types.len() as u32,
            ..Default::default()
        };
        for (i, &local) in heaps.iter().enumerate() {
            p.memory_heaps[i] = vk::MemoryHeap {
                size: 1 << 30,
                flags: if local { vk::MemoryHeapFlags::DEVICE_LOCAL } else { vk::MemoryHeapFlags::empty() },
            };
        }
        for (i, &(flags, heap)) in types.iter().enumerate() {
            p.memory_types[i] = vk::MemoryType { property_flags: flags, heap_index: heap };
        }
        p
    }

    /// A discrete GPU like NVIDIA's: VRAM, a BAR window, system memory.
    fn discrete() -> vk::PhysicalDeviceMemoryProperties {
        props(
            &[true, false, true],
            &[
                (F::empty(), 1),
                (F::DEVICE_LOCAL, 0),
                (F::HOST_VISIBLE | F::HOST_COHERENT, 1),
                (F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED, 1),
                (F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT, 2),
            ],
        )
    }

    #[test]
    fn discrete_gpu_gets_vram_bar_and_system_memory() {
        let p = discrete();
        let d = DeviceType::DiscreteGpu;
        assert_eq!(choose_memory_type(&p, !0, MemoryLocation::GpuVulkan { device_id: 0 }, d), Some(1));
        assert_eq!(choose_memory_type(&p, !0, MemoryLocation::GpuMappable { device_id: 0 }, d), Some(4));
        assert_eq!(choose_memory_type(&p, !0, MemoryLocation::HostVisible { device_id: 0 }, d), Some(2));
        // Restricted by the buffer's memoryTypeBits.
        assert_eq!(choose_memory_type(&p, 1 << 4, MemoryLocation::GpuVulkan { device_id: 0 }, d), Some(4));
        assert_eq!(choose_memory_type(&p, 1 << 0, MemoryLocation::GpuVulkan { device_id: 0 }, d), None);
    }

    #[test]
    fn cpu_device_host_memory_is_its_only_heap() {
        let all = F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED;
        let p = props(&[true], &[(all, 0)]);
        for loc in [
            MemoryLocation::GpuVulkan { device_id: 0 },
            MemoryLocation::GpuMappable { device_id: 0 },
            MemoryLocation::HostVisible { device_id: 0 },
        ] {
            assert_eq!(choose_memory_type(&p, !0, loc, DeviceType::Cpu), Some(0), "{loc}");
        }
        // The same heap layout on a discrete GPU is not host memory.
        assert_eq!(
            choose_memory_type(&p, !0, MemoryLocation::HostVisible { device_id: 0 }, DeviceType::DiscreteGpu),
            None
        );
    }
}
