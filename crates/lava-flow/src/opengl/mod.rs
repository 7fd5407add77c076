//! OpenGL interop (feature `opengl`): lava-flow memory and timeline semaphores in a GL context,
//! without copies. EGL and GL are loaded at run time.
//!
//! ```
//! # fn main() -> lava_flow::Result<()> {
//! use lava_flow::opengl::GlContext;
//! use lava_flow::{MemoryAllocator, MemoryLocation};
//!
//! let mut allocator = MemoryAllocator::new()?;
//! let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
//! buffer.write(0, b"from Vulkan")?;
//!
//! let gl = GlContext::headless(allocator.device(0)?)?;   // same GPU, matched by UUID
//! let view = gl.import_buffer(&buffer)?;                   // zero-copy
//! let mut out = [0u8; 11];
//! view.read(0, &mut out)?;                                 // a GL copy, then glGetNamedBufferSubData
//! assert_eq!(&out, b"from Vulkan");
//! # Ok(()) }
//! ```
//!
//! See `docs/opengl_interop.md` for the guide, the driver quirks handled here and the fallback
//! used where GL has no semaphore extension.

mod context;
mod external;
mod memory;
mod semaphore;
pub(crate) mod sys;
mod texture;

pub use context::{EglPlatform, GlContext, GlInfo};
pub use memory::GlBuffer;
pub use semaphore::{GlTimeline, FALLBACK_WAIT_TIMEOUT};
pub use texture::GlTexture;
