// A GL buffer borrows its context: the context cannot be dropped while it lives.
use lava_flow::opengl::GlContext;
use lava_flow::{MemoryAllocator, MemoryLocation};

fn main() -> lava_flow::Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let gl = GlContext::headless(allocator.device(0)?)?;
    let view = gl.import_buffer(&buffer)?;
    drop(gl);
    view.read(0, &mut [0u8; 4])?;
    Ok(())
}
