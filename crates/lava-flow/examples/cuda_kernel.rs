//! A CUDA kernel works on Vulkan memory in place: Vulkan writes, the kernel transforms, a
//! timeline semaphore tells Vulkan when to read. Prints a reason and exits 0 where there is no
//! CUDA.
//!
//! Run: `cargo run --example cuda_kernel`

use std::time::Duration;

use lava_flow::cuda::Context;
use lava_flow::{MemoryAllocator, MemoryLocation, Result};

fn main() -> Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let cuda = match Context::for_device(&allocator, 0) {
        Ok(c) => c,
        Err(e) => {
            println!("no CUDA on device 0, nothing to show: {e}");
            return Ok(());
        }
    };
    let words = 1u32 << 20;
    let buffer = allocator.allocate(u64::from(words) * 4, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let input: Vec<u8> = (0..words).flat_map(|i| (i ^ 0xDEAD_BEEF).to_le_bytes()).collect();
    buffer.write(0, &input)?; // Vulkan (staging upload)

    let timeline = allocator.timeline_semaphore(0)?;
    let view = cuda.import_buffer(&buffer)?; // zero-copy: a CUdeviceptr into the same memory
    let sync = cuda.import_timeline(&timeline)?;
    let stream = cuda.stream()?;
    let module = cuda.load_ptx(include_str!("kernels/transform.ptx"))?;
    let kernel = module.function("transform")?;
    let mut ptr = lava_flow::cuda::DeviceMemory::device_ptr(&view);
    let mut n = words;
    let mut params = [(&mut ptr as *mut u64).cast(), (&mut n as *mut u32).cast()];
    // SAFETY: two parameters of the kernel's types (u64 pointer, u32 count); the kernel touches
    // `n` words of `view`, which lives until the stream is done (we wait below).
    unsafe { kernel.launch(&stream, (words.div_ceil(256), 1, 1), (256, 1, 1), &mut params)? };
    sync.signal(1, &stream)?;
    timeline.wait(1, Duration::from_secs(10))?; // Vulkan's side of the order

    let mut out = vec![0u8; input.len()];
    buffer.read(0, &mut out)?;
    let wrong = (0..words as usize)
        .filter(|&i| {
            let x = u32::from_le_bytes([input[4 * i], input[4 * i + 1], input[4 * i + 2], input[4 * i + 3]]);
            out[4 * i..4 * i + 4] != x.wrapping_mul(3).wrapping_add(i as u32).to_le_bytes()
        })
        .count();
    println!("CUDA transformed {words} words of Vulkan memory in place; {wrong} wrong");
    if wrong == 0 {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
