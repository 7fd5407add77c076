// A kernel's arguments are set through it (`clSetKernelArg`): it must not be shared between
// threads.
use lava_flow::{opencl, MemoryAllocator};

fn is_sync<T: Sync>(_: &T) {}

fn main() -> lava_flow::Result<()> {
    let allocator = MemoryAllocator::new()?;
    let cl = opencl::Context::for_device(&allocator, 0)?;
    let program = cl.build("__kernel void k() {}")?;
    let kernel = program.kernel("k")?;
    is_sync(&kernel);
    Ok(())
}
