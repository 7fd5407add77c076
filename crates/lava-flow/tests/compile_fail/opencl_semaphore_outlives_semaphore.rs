// An OpenCL semaphore import borrows the Vulkan semaphore: it cannot be dropped first.
use lava_flow::{opencl, MemoryAllocator};

fn main() -> lava_flow::Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let cl = opencl::Context::for_device(&allocator, 0)?;
    let queue = cl.queue()?;
    let semaphore = allocator.binary_semaphore(0)?;
    let imported = cl.import_semaphore(&semaphore)?;
    drop(semaphore);
    queue.wait_semaphore(&imported)?;
    Ok(())
}
