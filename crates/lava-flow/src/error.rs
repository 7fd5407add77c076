//! The one error type of the crate.
//!
//! Every failed call into a foreign API becomes [`Error::Ffi`], which names the API, the call,
//! the result's name and its description, e.g.
//! `Vulkan vkAllocateMemory failed: VK_ERROR_OUT_OF_DEVICE_MEMORY (A device memory allocation has
//! failed)`. Bad input has variants of its own, so callers can match on what they did wrong.

use std::fmt;

use crate::device::Uuid;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The foreign API a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Api {
    /// Vulkan, through the loader `libvulkan.so.1`.
    Vulkan,
    /// The CUDA driver API (`libcuda.so.1`).
    Cuda,
    /// OpenCL, through the ICD loader.
    OpenCl,
    /// OpenGL.
    OpenGl,
    /// EGL, used to make headless OpenGL contexts.
    Egl,
    /// The operating system (file descriptors, `dup`, ...).
    Os,
    /// wgpu and wgpu-hal (feature `wgpu`).
    Wgpu,
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Api::Vulkan => "Vulkan",
            Api::Cuda => "CUDA",
            Api::OpenCl => "OpenCL",
            Api::OpenGl => "OpenGL",
            Api::Egl => "EGL",
            Api::Os => "OS",
            Api::Wgpu => "wgpu",
        })
    }
}

/// Everything that can go wrong in lava-flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call into a foreign API returned an error.
    #[error("{api} {call} failed: {name} ({description})")]
    Ffi {
        /// The API that failed.
        api: Api,
        /// The function that was called, e.g. `vkAllocateMemory`.
        call: &'static str,
        /// The result code's name, e.g. `VK_ERROR_OUT_OF_DEVICE_MEMORY`.
        name: String,
        /// What the result code means.
        description: String,
    },
    /// A run-time loaded library (the Vulkan loader, libcuda, ...) is missing or unusable.
    #[error("{api} is not available: {library} could not be loaded ({reason})")]
    LibraryNotFound {
        /// The API whose library is missing.
        api: Api,
        /// The library's file name.
        library: &'static str,
        /// Why loading it failed.
        reason: String,
    },
    /// An allocation of zero bytes was asked for.
    #[error("invalid size: an allocation must be at least 1 byte, 0 was requested")]
    ZeroSize,
    /// The requested size is larger than the heap that would hold it.
    #[error(
        "size {requested} bytes exceeds memory heap {heap_index} of device {device_id} ({heap_size} bytes)"
    )]
    SizeExceedsHeap {
        /// The size that was asked for.
        requested: u64,
        /// The device it was asked of.
        device_id: u32,
        /// The heap the location maps to.
        heap_index: u32,
        /// That heap's size.
        heap_size: u64,
    },
    /// A heap is full: the driver refused the allocation (`VK_ERROR_OUT_OF_DEVICE_MEMORY` or
    /// `VK_ERROR_OUT_OF_HOST_MEMORY`), or lava-flow's own use of the heap would pass
    /// [`AllocatorOptions::heap_budget`](crate::AllocatorOptions::heap_budget). Nothing was
    /// allocated; freeing buffers (and [`MemoryAllocator::trim`](crate::MemoryAllocator::trim))
    /// makes room again.
    #[error(
        "out of memory on heap {heap_index} of device {device_id} ({heap_size} bytes): an allocation \
         of {requested} bytes {cause}; lava-flow holds {in_use} bytes of that heap"
    )]
    OutOfMemory {
        /// The `VkDeviceMemory` size that was asked for (a block or a dedicated allocation).
        requested: u64,
        /// The device.
        device_id: u32,
        /// The heap.
        heap_index: u32,
        /// That heap's size.
        heap_size: u64,
        /// Bytes of that heap lava-flow's allocations held at the time.
        in_use: u64,
        /// What refused it, e.g. `was refused by vkAllocateMemory (VK_ERROR_OUT_OF_DEVICE_MEMORY)`
        /// or `would pass the heap budget of 1048576 bytes`.
        cause: String,
    },
    /// No Vulkan device has this `device_id`.
    #[error("unknown device_id {device_id}: {device_count} Vulkan device(s) found")]
    UnknownDevice {
        /// The index that was asked for.
        device_id: u32,
        /// How many devices exist (valid ids are `0..device_count`).
        device_count: u32,
    },
    /// The device has no memory of the kind the location asks for.
    #[error("location {location} is not available: {reason}")]
    LocationUnavailable {
        /// The location, as written in Rust.
        location: String,
        /// Why the device cannot provide it.
        reason: String,
    },
    /// An export was asked of memory or a semaphore that was not created exportable.
    #[error("not exportable: {reason}")]
    NotExportable {
        /// What made it non-exportable.
        reason: String,
    },
    /// The allocator was made on the caller's device without a queue lava-flow may submit to
    /// ([`MemoryAllocator::from_raw`](crate::MemoryAllocator::from_raw) with no
    /// [`RawDevice::queue`](crate::RawDevice::queue)), and the call needs one.
    #[error(
        "{what} needs a queue, and device {device} was adopted without one lava-flow may submit to: \
         give it one (RawDevice::queue), or record the work on your own queue (host-visible buffers' \
         write/read map the memory and need none)"
    )]
    NoQueue {
        /// What needed the queue, e.g. `Buffer::write through staging`.
        what: &'static str,
        /// The device's name.
        device: String,
    },
    /// The driver or this build cannot do what was asked.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is missing, and where.
        what: String,
    },
    /// A read or write outside the buffer.
    #[error("out of range: {len} bytes at offset {offset} do not fit in a buffer of {size} bytes")]
    OutOfRange {
        /// The first byte asked for.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A handle or object of one device was given to another.
    #[error("device mismatch: {what} belongs to device {found}, expected device {expected}")]
    DeviceMismatch {
        /// What was mismatched (e.g. "exported memory").
        what: &'static str,
        /// The UUID that was required.
        expected: Uuid,
        /// The UUID that was found.
        found: Uuid,
    },
    /// An argument broke a rule that is not covered by a more specific variant.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Validation was requested but the Khronos validation layer is not installed.
    #[error("the Khronos validation layer (VK_LAYER_KHRONOS_validation) was requested but is not installed")]
    ValidationLayerMissing,
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
    /// Bytes received from elsewhere (a descriptor's wire form, an [`ipc`](crate::ipc) message)
    /// that do not decode: wrong magic or version, wrong length, unknown codes, values that break
    /// the descriptor's rules, or a message with the wrong kind or number of file descriptors.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded, e.g. "memory descriptor".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The peer of a socket closed the connection (end of stream, or a reset) before a whole
    /// message was exchanged.
    #[error("the peer closed the connection {during}")]
    Disconnected {
        /// When, e.g. "before a message" or "in the middle of a message".
        during: &'static str,
    },
    /// A frame ring's shape or use broke one of its rules ([`RingError`](crate::ring::RingError)
    /// says which).
    #[error("ring: {0}")]
    Ring(#[from] crate::ring::RingError),
}

impl Error {
    /// Checks that `len` bytes at `offset` fit in `size` bytes, or [`Error::OutOfRange`].
    pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> Result<()> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Builds [`Error::Ffi`] for a failed operating-system call (`call`: e.g. `"sendmsg"`), named
    /// by its errno: for programs built on lava-flow that report their own OS errors the same way.
    pub fn os(call: &'static str, e: &std::io::Error) -> Self {
        Error::Ffi {
            api: Api::Os,
            call,
            name: e.raw_os_error().map_or_else(|| format!("{:?}", e.kind()), |c| format!("errno {c}")),
            description: e.to_string(),
        }
    }

    /// Builds [`Error::Ffi`] for a failed Vulkan call: the call, the result's name and the
    /// registry's description. For users' own calls on lava-flow's device
    /// ([`MemoryAllocator::ash_device`](crate::MemoryAllocator::ash_device)) too:
    /// `.map_err(|r| Error::vk("vkCreateShaderModule", r))`.
    pub fn vk(call: &'static str, result: ash::vk::Result) -> Self {
        let name = format!("VK_{result:?}");
        let description = result.to_string();
        let description = if description == format!("{result:?}") {
            "no description in the Vulkan registry".to_owned()
        } else {
            description
        };
        Error::Ffi { api: Api::Vulkan, call, name, description }
    }
}

/// Attaches the name of the Vulkan call to an `ash` result.
pub(crate) trait VkResultExt<T> {
    /// Turns a failed `VkResult` into [`Error::Ffi`] naming `call`.
    fn vk(self, call: &'static str) -> Result<T>;
}

impl<T> VkResultExt<T> for std::result::Result<T, ash::vk::Result> {
    fn vk(self, call: &'static str) -> Result<T> {
        self.map_err(|r| Error::vk(call, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffi_errors_name_api_call_result_and_description() {
        let e = Error::vk("vkAllocateMemory", ash::vk::Result::ERROR_OUT_OF_DEVICE_MEMORY);
        assert_eq!(
            e.to_string(),
            "Vulkan vkAllocateMemory failed: VK_ERROR_OUT_OF_DEVICE_MEMORY \
             (A device memory allocation has failed)"
        );
        let e = Error::vk("vkGetMemoryFdKHR", ash::vk::Result::ERROR_INVALID_EXTERNAL_HANDLE);
        assert_eq!(
            e.to_string(),
            "Vulkan vkGetMemoryFdKHR failed: VK_ERROR_INVALID_EXTERNAL_HANDLE \
             (no description in the Vulkan registry)"
        );
    }
}
