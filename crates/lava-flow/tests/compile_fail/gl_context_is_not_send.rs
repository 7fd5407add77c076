// A GL context is bound to its thread: it cannot be sent to another.
use lava_flow::opengl::GlContext;
use lava_flow::MemoryAllocator;

fn main() -> lava_flow::Result<()> {
    let allocator = MemoryAllocator::new()?;
    let gl = GlContext::headless(allocator.device(0)?)?;
    std::thread::spawn(move || drop(gl)).join().ok();
    Ok(())
}
