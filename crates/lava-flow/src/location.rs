//! Where an allocation lives.

use std::fmt;

/// Where [`MemoryAllocator::allocate`](crate::MemoryAllocator::allocate) places a buffer.
///
/// `device_id` indexes [`MemoryAllocator::devices`](crate::MemoryAllocator::devices); see
/// [`crate::device`] for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryLocation {
    /// Device-local Vulkan memory (`DEVICE_LOCAL`), the fastest for the GPU and what CUDA, OpenCL
    /// and OpenGL import. Not visible to the CPU: [`Buffer::write`](crate::Buffer::write) and
    /// [`Buffer::read`](crate::Buffer::read) go through a staging buffer.
    GpuVulkan {
        /// The Vulkan device.
        device_id: u32,
    },
    /// Device-local memory that the CPU can also map (`DEVICE_LOCAL | HOST_VISIBLE |
    /// HOST_COHERENT`, "resizable BAR"). Only where the device has such a memory type; otherwise
    /// allocation fails with [`Error::LocationUnavailable`](crate::Error::LocationUnavailable).
    GpuMappable {
        /// The Vulkan device.
        device_id: u32,
    },
    /// Host (system) memory that the GPU reads and writes over the bus (`HOST_VISIBLE |
    /// HOST_COHERENT`, preferring a heap that is not device-local). On a CPU device such as
    /// lavapipe every heap is host memory, and this is what it gets.
    HostVisible {
        /// The Vulkan device.
        device_id: u32,
    },
}

impl MemoryLocation {
    /// The Vulkan device the location refers to.
    pub fn device_id(&self) -> u32 {
        match *self {
            MemoryLocation::GpuVulkan { device_id }
            | MemoryLocation::GpuMappable { device_id }
            | MemoryLocation::HostVisible { device_id } => device_id,
        }
    }

    /// Whether memory at this location can be mapped by the CPU.
    pub fn is_host_visible(&self) -> bool {
        !matches!(self, MemoryLocation::GpuVulkan { .. })
    }
}

impl fmt::Display for MemoryLocation {
    /// The location as it is written in Rust, e.g. `GpuVulkan { device_id: 0 }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
