//! The Vulkan side: instance and devices, exportable memory, buffers, timeline semaphores,
//! staging transfers and the validation layer.

mod adopt;
mod allocator;
mod buffer;
#[doc(hidden)]
pub mod ceiling;
pub(crate) mod conv;
mod copy;
mod device;
mod external;
mod image;
mod instance;
mod memory;
mod pending;
mod semaphore;
mod transfer;
mod validation;
#[cfg(feature = "wgpu")]
pub mod wgpu_interop;

pub use adopt::{required_device_extensions, DeviceRequirements, RawDevice};
pub use allocator::{
    AllocationOptions, AllocatorOptions, AllocatorStats, Exportable, HeapUsage, MemoryAllocator,
    QueueGlobalPriority, TransferStats, DEDICATED_TAIL, DEFAULT_BLOCK_SIZE, DEFAULT_TRANSFER_TIMEOUT,
};
pub use buffer::Buffer;
pub use image::{Image, ImageDesc, ImageFormat, ImageTiling};
pub use pending::{HostBytes, HostBytesMut, PendingTransfer};
#[cfg(feature = "opencl")]
pub(crate) use semaphore::binary_ops;
#[cfg(any(feature = "cuda", feature = "opengl"))]
pub(crate) use semaphore::check_increasing;
pub(crate) use semaphore::BinaryState;
pub use semaphore::{BinarySemaphore, Submission, TimelineSemaphore};
pub use validation::ValidationLog;
