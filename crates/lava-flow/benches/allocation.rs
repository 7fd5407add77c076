//! Set-up cost per small buffer: lava-flow (block sub-allocation, dedicated) beside the raw-API
//! pattern of hand-written glue (one exportable dedicated `VkDeviceMemory` per buffer), in the
//! same process, on device 0. Prints medians (µs per buffer) and ratios against the raw pattern.
//!
//! `cargo bench --bench allocation` (add `-- --quick` for a short run).

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use lava_flow::ash::{self, vk};
use lava_flow::{AllocationOptions, AllocatorOptions, Exportable, MemoryAllocator, MemoryLocation};

const LOCATION: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

fn main() -> lava_flow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (iters, reps) = if quick { (200, 3) } else { (2000, 7) };
    let mut options = AllocatorOptions::default();
    options.validation = false;
    let mut allocator = MemoryAllocator::with_options(options)?;
    let info = allocator.device(0)?.clone();
    println!("device 0: {} ({}, {})", info.name, info.driver_name, info.driver_info);
    println!("{iters} buffers per repetition, median of {reps} repetitions\n");
    println!("| size | path | µs per buffer | speed-up vs raw |");
    println!("|---|---|---|---|");
    for size in [4096u64, 65_536, 1 << 20] {
        let raw = median(reps, || raw_dedicated_export(&mut allocator, size, iters));
        let rows: [(&str, f64); 5] = [
            (
                "raw: vkCreateBuffer + dedicated exportable vkAllocateMemory + vkGetMemoryFdKHR, then free",
                raw,
            ),
            (
                "lava-flow sub-allocated: allocate + export_fd + drop",
                median(reps, || lava(&mut allocator, size, iters, AllocationOptions::default(), true)),
            ),
            (
                "lava-flow sub-allocated: allocate + drop (no export)",
                median(reps, || lava(&mut allocator, size, iters, AllocationOptions::default(), false)),
            ),
            (
                "lava-flow dedicated: allocate + export_fd + drop",
                median(reps, || {
                    lava(&mut allocator, size, iters, AllocationOptions::default().dedicated(true), true)
                }),
            ),
            (
                "lava-flow sub-allocated, not exportable: allocate + drop",
                median(reps, || {
                    lava(
                        &mut allocator,
                        size,
                        iters,
                        AllocationOptions::default().exportable(Exportable::No),
                        false,
                    )
                }),
            ),
        ];
        for (name, us) in rows {
            println!("| {} | {name} | {us:.2} | {:.2}× |", human(size), raw / us);
        }
    }
    Ok(())
}

fn human(size: u64) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

fn median(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    f(); // warm-up: blocks, caches
    let mut v: Vec<f64> = (0..reps).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// µs per buffer for lava-flow's path.
fn lava(a: &mut MemoryAllocator, size: u64, iters: usize, options: AllocationOptions, export: bool) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        let b = a.allocate_with(size, LOCATION, options).expect("allocate");
        if export {
            drop(b.export_fd().expect("export"));
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / iters as f64
}

#[allow(
    clippy::multiple_unsafe_ops_per_block,
    reason = "the raw-API baseline is one plain sequence of Vulkan calls, as users write it"
)]
/// µs per buffer for the raw pattern: a dedicated exportable allocation per buffer, as NVIDIA's
/// samples do, written directly against `ash` on the same device.
fn raw_dedicated_export(a: &mut MemoryAllocator, size: u64, iters: usize) -> f64 {
    let (device, _) = a.ash_device(0).expect("device");
    let instance = a.ash_instance();
    let fd_loader = ash::khr::external_memory_fd::Device::new(&instance, &device);
    let probe = a.allocate(size, LOCATION).expect("probe");
    let memory_type_index = probe.memory_type_index();
    drop(probe);
    let start = Instant::now();
    for _ in 0..iters {
        let mut ext = vk::ExternalMemoryBufferCreateInfo::default()
            .handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST)
            .push_next(&mut ext);
        // SAFETY: plain Vulkan calls on a live device with valid parameters; every object is
        // destroyed in the same iteration.
        unsafe {
            let buffer = device.create_buffer(&info, None).expect("vkCreateBuffer");
            let req = device.get_buffer_memory_requirements(buffer);
            let mut export = vk::ExportMemoryAllocateInfo::default()
                .handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
            let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(memory_type_index)
                .push_next(&mut export)
                .push_next(&mut dedicated);
            let memory = device.allocate_memory(&alloc, None).expect("vkAllocateMemory");
            device.bind_buffer_memory(buffer, memory, 0).expect("vkBindBufferMemory");
            let get = vk::MemoryGetFdInfoKHR::default()
                .memory(memory)
                .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
            let fd = fd_loader.get_memory_fd(&get).expect("vkGetMemoryFdKHR");
            drop(OwnedFd::from_raw_fd(fd));
            device.destroy_buffer(buffer, None);
            device.free_memory(memory, None);
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / iters as f64
}
