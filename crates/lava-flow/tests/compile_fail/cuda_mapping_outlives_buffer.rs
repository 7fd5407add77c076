// A CUDA mapping borrows the lava-flow buffer: the buffer cannot be dropped while it lives.
use lava_flow::cuda::{Context, DeviceMemory};
use lava_flow::{MemoryAllocator, MemoryLocation};

fn main() -> lava_flow::Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let cuda = Context::for_device(&allocator, 0)?;
    let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let view = cuda.import_buffer(&buffer)?;
    drop(buffer);
    view.fill(0, 16, 0)?;
    Ok(())
}
