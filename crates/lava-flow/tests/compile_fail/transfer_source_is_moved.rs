// An asynchronous write owns its source until it is waited for: the source cannot be changed
// (or freed) while the GPU may still copy it.
use lava_flow::{MemoryAllocator, MemoryLocation};

fn main() -> lava_flow::Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let mut data = vec![1u8; 4096];
    let pending = buffer.write_async(0, data)?;
    data[0] = 2;
    let _data = pending.wait()?;
    Ok(())
}
