//! # lava-flow
//!
//! Allocate GPU memory through Vulkan once, and share it without copies with the other APIs
//! that run on the same GPU: another Vulkan device or process, and (as the crate grows) CUDA,
//! OpenCL, OpenGL and Python. Memory leaves Vulkan as an external handle (an opaque file
//! descriptor on Linux); timeline semaphores, exported the same way, keep the APIs in order.
//!
//! ```
//! use lava_flow::{MemoryAllocator, MemoryLocation};
//!
//! # fn main() -> lava_flow::Result<()> {
//! let mut allocator = MemoryAllocator::new()?;
//! let buffer = allocator.allocate(1_000_000, MemoryLocation::GpuVulkan { device_id: 0 })?;
//! let fd = buffer.export_fd()?;
//!
//! // Another device (here: a second allocator, as another process would have) imports it.
//! buffer.write(0, b"hello")?;
//! let mut other = MemoryAllocator::new()?;
//! let imported = other.import_memory(0, buffer.export()?)?;
//! let mut out = [0u8; 5];
//! imported.read(0, &mut out)?;
//! assert_eq!(&out, b"hello");
//! # drop(fd);
//! # Ok(())
//! # }
//! ```
//!
//! ## What an importer needs
//! An export refers to the whole `VkDeviceMemory`, which small buffers share with others
//! (sub-allocation). [`Buffer::export`] returns the fd together with a [`MemoryDescriptor`]: the
//! buffer's [`offset`](Buffer::offset) and [`size`](Buffer::size), the
//! [`allocation_size`](Buffer::allocation_size) to import, whether the allocation is
//! [dedicated](Buffer::is_dedicated), and the device and driver UUIDs that an importing API must
//! match (never the device index).
//!
//! ## Handles from anywhere
//! Every importer — [`MemoryAllocator::import_memory`], `cuda::Context::import_memory`,
//! `opengl::GlContext::import_memory`, `opencl::Context::import_memory`, and their image and
//! semaphore twins — takes the exported handle and its descriptor, so memory can come from
//! another process ([`ipc`] sends both over a Unix socket) or another library. What was imported
//! exports again. The guide: `docs/processes.md`.
//!
//! ## Platforms
//! - **Linux** (tested in CI and on GPUs): opaque fds ([`HandleType::OpaqueFd`]), `export_fd()`,
//!   the Unix-socket transport `ipc`.
//! - **Windows** (builds in CI; **never run on a Windows GPU**): NT handles
//!   ([`HandleType::OpaqueWin32`]), `export_handle()` on buffers, images and semaphores,
//!   imports of NT handles into Vulkan, CUDA, OpenGL (a WGL context you made current, through
//!   `GlContext::from_current`) and OpenCL. Not on Windows: `ipc` (Unix sockets),
//!   `cuda::ExportableAllocation` (CUDA-allocated memory exported as a POSIX fd). Devices match
//!   by LUID as well as UUID ([`device::find_by_luid`]).
//!
//! `export()` and every importer are the same on both: they carry the platform's handle in an
//! [`ExternalHandle`].
//!
//! ## Validation
//! With [`AllocatorOptions::validation`] (or `LAVA_FLOW_VALIDATION=1`) the Khronos validation
//! layer is enabled and its warnings and errors are recorded in a [`ValidationLog`]; the test
//! suite fails on any of them.
//!
//! ## Features
//! Vulkan, exports and imports between Vulkan devices and processes ([`ipc`]) are always there.
//! Each other API is a feature; all are on by default. Every driver library is loaded at run
//! time: a machine without one builds and runs, and a call that needs it returns
//! [`Error::LibraryNotFound`]. In these docs, items that need a feature say so.
//!
#![doc = document_features::document_features!()]
//!
//! The oldest Rust that builds the default features is 1.88 (`rust-version`).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cuda")]
pub mod cuda;
mod deferred;
pub mod device;
mod error;
mod external;
#[cfg(unix)]
mod fd;
pub mod handle;
#[cfg(unix)]
pub mod ipc;
mod location;
#[cfg(feature = "opencl")]
pub mod opencl;
#[cfg(feature = "opengl")]
pub mod opengl;
pub mod ring;
mod suballoc;
mod teardown;
mod vulkan;
#[cfg(windows)]
mod win32;
mod wire;
/// wgpu 30 interop on its Vulkan backend (feature `wgpu`): see [`MemoryAllocator::from_wgpu`],
/// [`Buffer::to_wgpu`] and the functions here.
#[cfg(feature = "wgpu")]
pub mod wgpu {
    pub use crate::vulkan::wgpu_interop::{open_device, signal_on_queue, wait_on_queue, OpenedDevice};
}

pub use device::{DeviceInfo, DeviceType, Uuid};
pub use error::{Api, Error, Result};
pub use handle::{
    Exported, ExportedImage, ExportedMemory, ExportedSemaphore, ExternalHandle, HandleType, ImageDescriptor,
    MemoryDescriptor, MemoryId, SemaphoreDescriptor, SemaphoreKind,
};
pub use location::MemoryLocation;
pub use ring::{FrameStep, Ring, RingError, RingOptions, RingSchedule};
pub use vulkan::{
    required_device_extensions, AllocationOptions, AllocatorOptions, AllocatorStats, BinarySemaphore, Buffer,
    DeviceRequirements, Exportable, HeapUsage, HostBytes, HostBytesMut, Image, ImageDesc, ImageFormat,
    ImageTiling, MemoryAllocator, PendingTransfer, QueueGlobalPriority, RawDevice, Submission,
    TimelineSemaphore, TransferStats, ValidationLog, DEDICATED_TAIL, DEFAULT_BLOCK_SIZE,
    DEFAULT_TRANSFER_TIMEOUT,
};

/// Measurements for `lava-flow bench`: the host-copy ceiling of staged transfers. Not a stable
/// API.
#[doc(hidden)]
pub use vulkan::ceiling as bench_support;

/// The guide `docs/vulkan.md`, whose examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/vulkan.md")]
pub struct VulkanGuide;

/// The guide `docs/opengl_interop.md`, whose examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "opengl"))]
#[doc = include_str!("../../../docs/opengl_interop.md")]
pub struct OpenGlGuide;

/// The guide `docs/cuda_interop.md`, whose examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "cuda"))]
#[doc = include_str!("../../../docs/cuda_interop.md")]
pub struct CudaGuide;

/// The guide `docs/opencl_interop.md`, whose examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "opencl"))]
#[doc = include_str!("../../../docs/opencl_interop.md")]
pub struct OpenClGuide;

/// The guide `docs/rings.md`, whose examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/rings.md")]
pub struct RingsGuide;

/// The crate's README (what the package registry shows), whose example is compiled as a doctest.
#[cfg(all(doctest, feature = "cuda"))]
#[doc = include_str!("../README.md")]
pub struct Readme;

/// The guide `docs/processes.md`, whose examples are compiled and run as doctests.
#[cfg(all(doctest, unix, feature = "cuda"))]
#[doc = include_str!("../../../docs/processes.md")]
pub struct ProcessesGuide;

/// The `ash` crate lava-flow is built on, re-exported so that users' raw handles have the same
/// types.
pub use ash;
