//! The Vulkan side: instance and devices, exportable memory, buffers, timeline semaphores,
//! staging transfers and the validation layer.

mod allocator;
mod buffer;
pub(crate) mod conv;
mod device;
mod image;
mod instance;
mod memory;
mod pending;
mod semaphore;
mod transfer;
mod validation;

pub use allocator::{
    AllocationOptions, AllocatorOptions, AllocatorStats, Exportable, HeapUsage, MemoryAllocator,
    TransferStats, DEDICATED_TAIL, DEFAULT_BLOCK_SIZE, DEFAULT_TRANSFER_TIMEOUT,
};
pub use buffer::Buffer;
pub use image::{Image, ImageDesc, ImageFormat, ImageTiling};
pub use pending::{HostBytes, HostBytesMut, PendingTransfer};
#[cfg(any(feature = "cuda", feature = "opengl"))]
pub(crate) use semaphore::check_increasing;
pub use semaphore::{BinarySemaphore, Submission, TimelineSemaphore};
pub use validation::ValidationLog;
