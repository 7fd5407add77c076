//! Allocates exportable memory, exports it as an opaque fd, imports it into a second Vulkan
//! device (as another process or library would), and verifies that both sides see each other's
//! writes: in a shared block at a non-zero offset and in a dedicated allocation.
//!
//! Run: `cargo run --example share` (add `-- --device N` to pick a device).

use lava_flow::{AllocationOptions, Buffer, MemoryAllocator, MemoryLocation, Result};

fn main() -> Result<()> {
    let device_id = std::env::args()
        .skip_while(|a| a != "--device")
        .nth(1)
        .map_or(0, |s| s.parse().expect("--device takes a number"));

    let mut allocator = MemoryAllocator::new()?;
    for d in allocator.devices() {
        println!(
            "device {}: {} [{:?}], UUID {}, driver {}",
            d.index, d.name, d.device_type, d.uuid, d.driver_info
        );
        println!(
            "  export: buffers {:?}, images {:?}, timeline semaphores {:?}",
            d.buffer_handles.export, d.image_handles.export, d.timeline_semaphore_handles.export
        );
    }
    let location = MemoryLocation::GpuVulkan { device_id };
    // A second allocator has its own VkInstance and VkDevice: the importer.
    let mut importer = MemoryAllocator::new()?;

    let _neighbour = allocator.allocate(4096, location)?;
    let shared = allocator.allocate(1_000_000, location)?;
    let dedicated =
        allocator.allocate_with(1_000_000, location, AllocationOptions::default().dedicated(true))?;
    for (buffer, what) in [(&shared, "sub-allocated"), (&dedicated, "dedicated")] {
        let exported = buffer.export()?;
        let d = *exported.descriptor();
        println!(
            "{what}: {} bytes at offset {} of a {}-byte allocation (memory type {}, dedicated {}), fd exported",
            d.size, d.offset, d.allocation_size, d.memory_type_index, d.dedicated
        );
        let imported = importer.import_memory(device_id, exported)?;
        verify(buffer, &imported, "exporter → importer")?;
        verify(&imported, buffer, "importer → exporter")?;
    }
    let semaphore = allocator.timeline_semaphore(device_id)?;
    match semaphore.export() {
        Ok(e) => println!("timeline semaphore exported as {:?}", e.handle().handle_type()),
        Err(e) => println!("timeline semaphore not exported: {e}"),
    }
    Ok(())
}

/// Writes a pattern through `from`, reads it through `to`, and checks every byte.
fn verify(from: &Buffer, to: &Buffer, direction: &str) -> Result<()> {
    let size = from.size() as usize;
    let seed = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos())) as u64
        | 1;
    // xorshift64: different bytes on every run, no dependency.
    let mut x = seed;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    from.write(0, &data)?;
    let mut out = vec![0xA5u8; size];
    to.read(0, &mut out)?;
    let bad = data.iter().zip(&out).filter(|(a, b)| a != b).count();
    if bad != 0 {
        eprintln!("  {direction}: {bad} of {size} bytes differ");
        std::process::exit(1);
    }
    println!("  {direction}: all {size} bytes verified");
    Ok(())
}
