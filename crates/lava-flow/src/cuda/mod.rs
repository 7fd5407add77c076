//! CUDA interop (feature `cuda`): lava-flow buffers as CUDA device pointers and lava-flow
//! timeline semaphores on CUDA streams, zero-copy. libcuda is loaded at run time (through
//! cudarc's driver `sys` with dynamic loading), so the crate builds and runs without it: every
//! entry point then returns [`Error::LibraryNotFound`](crate::Error::LibraryNotFound).
//!
//! ```
//! # fn main() -> lava_flow::Result<()> {
//! use lava_flow::cuda::{Context, DeviceMemory};
//! use lava_flow::{MemoryAllocator, MemoryLocation};
//!
//! let mut allocator = MemoryAllocator::new()?;
//! let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
//! match Context::for_device(&allocator, 0) {
//!     Ok(cuda) => {
//!         let view = cuda.import_buffer(&buffer)?;   // CUdeviceptr into the Vulkan memory
//!         view.fill(0, 4096, 0xAB)?;                  // cuMemsetD8
//!         let mut out = [0u8; 4];
//!         buffer.read(0, &mut out)?;                  // Vulkan sees CUDA's bytes
//!         assert_eq!(out, [0xAB; 4]);
//!     }
//!     Err(e) => println!("no CUDA here: {e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! **Status:** the CPU tier proves the typed errors without a driver; the GPU tier tests of this
//! module (`tests/gpu_cuda.rs`) pass on an NVIDIA H100, also under compute-sanitizer.

mod array;
mod context;
mod event;
// CUDA-allocated memory exported as a POSIX fd (`CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`): Unix
// only. Its Windows twin (`CU_MEM_HANDLE_TYPE_WIN32` with security attributes) is not written.
#[cfg(unix)]
mod export;
mod external;
mod memory;
mod module;
mod peer;
mod raw;
pub(crate) mod release;
mod reuse;
mod semaphore;

pub use array::{CudaArray, CudaImage, SurfaceObject, TextureObject};
pub use context::{device_id_for, devices, ordinal_for, Context, CudaDevice, Stream};
pub use event::Event;
#[cfg(unix)]
pub use export::ExportableAllocation;
pub use memory::{fill_async, CudaBuffer, DeviceBuffer, DeviceMemory};
pub use module::{Function, Module};
pub use peer::{
    can_access_peer, copy_peer, copy_peer_staged, peer_access, PeerAccess, PeerMapping, PeerPath, PeerSide,
    TimelineStep,
};
pub use raw::check;
pub use semaphore::CudaTimeline;

/// The raw driver API types (`CUdeviceptr`, `CUstream`, ...) of the cudarc version lava-flow
/// uses.
pub use cudarc::driver::sys;
