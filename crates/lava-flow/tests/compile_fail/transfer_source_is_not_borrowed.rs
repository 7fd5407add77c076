// A borrowed slice cannot be the source of an asynchronous write: the transfer could outlive
// the borrow (a leaked `PendingTransfer` never ends it), so it must own its memory.
use lava_flow::{MemoryAllocator, MemoryLocation};

fn main() -> lava_flow::Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let buffer = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let data = vec![1u8; 4096];
    let pending = buffer.write_async(0, &data[..])?;
    drop(data);
    pending.wait()?;
    Ok(())
}
