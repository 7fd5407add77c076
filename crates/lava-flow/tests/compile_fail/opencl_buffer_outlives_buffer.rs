// An OpenCL view borrows the lava-flow buffer: the buffer cannot be dropped while it lives.
use lava_flow::{opencl, MemoryAllocator, MemoryLocation};

fn main() -> lava_flow::Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let cl = opencl::Context::for_device(&allocator, 0)?;
    let queue = cl.queue()?;
    let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let view = cl.import_buffer(&buffer)?;
    drop(buffer);
    view.write(&queue, 0, &[1, 2, 3])?;
    Ok(())
}
