//! GPU tier: Vulkan memory and timeline semaphores in CUDA on an NVIDIA GPU. Where CUDA is
//! absent each test prints why it skips; with `LAVA_FLOW_REQUIRE_GPU=1` that is a failure.
#![cfg(feature = "cuda")]

mod common;

use std::time::Duration;

use common::{assert_bytes_eq, open_fds, poisoned, random_bytes, Validated};
use lava_flow::cuda::{self, Context, DeviceMemory};
use lava_flow::{AllocationOptions, Buffer, MemoryLocation, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

/// The CUDA context of device 0, or `None` (with the reason printed) where there is no CUDA.
fn cuda_or_skip(v: &Validated, test: &str) -> Option<Context> {
    match Context::for_device(v, 0) {
        Ok(c) => Some(c),
        Err(e) if std::env::var("LAVA_FLOW_REQUIRE_GPU").is_ok_and(|x| x == "1") => {
            panic!("{test}: the GPU tier needs CUDA: {e}")
        }
        Err(e) => {
            println!("{test}: skipped, no CUDA: {e}");
            None
        }
    }
}

fn both_directions(buffer: &Buffer, view: &dyn DeviceMemory, what: &str) {
    let size = buffer.size() as usize;
    let data = random_bytes(size);
    buffer.write(0, &data).expect("Vulkan write");
    let mut out = poisoned(size);
    view.copy_to_host(0, &mut out).expect("CUDA read");
    assert_bytes_eq(&out, &data, &format!("{what}: Vulkan → CUDA"));
    let back = random_bytes(size);
    view.copy_from_host(0, &back).expect("CUDA write");
    let mut out = poisoned(size);
    buffer.read(0, &mut out).expect("Vulkan read");
    assert_bytes_eq(&out, &back, &format!("{what}: CUDA → Vulkan"));
}

#[test]
fn buffers_in_shared_blocks_and_dedicated_allocations_both_ways() {
    let mut v = Validated::new();
    let Some(ctx) = cuda_or_skip(&v, "buffers") else { return };
    let first = v.allocate(70_000, DEV0).expect("first");
    let second = v.allocate(123_457, DEV0).expect("second");
    let dedicated =
        v.allocate_with(1 << 20, DEV0, AllocationOptions::default().dedicated(true)).expect("dedicated");
    assert_ne!(second.offset(), 0);
    let a = ctx.import_buffer(&first).expect("import");
    let b = ctx.import_buffer(&second).expect("import");
    let d = ctx.import_buffer(&dedicated).expect("import dedicated");
    assert_eq!(b.device_ptr() - a.device_ptr(), second.offset() - first.offset(), "one mapping per block");
    both_directions(&second, &b, "shared block, non-zero offset");
    both_directions(&first, &a, "shared block, offset 0");
    both_directions(&dedicated, &d, "dedicated");
    // CUDA device-to-device copy and fill land in Vulkan memory.
    let plain = ctx.alloc(second.size()).expect("cuMemAlloc");
    let data = random_bytes(second.size() as usize);
    plain.copy_from_host(0, &data).expect("upload");
    b.copy_from_device(0, &plain).expect("DtoD");
    let mut out = poisoned(data.len());
    second.read(0, &mut out).expect("Vulkan read");
    assert_bytes_eq(&out, &data, "cuMemcpyDtoD into Vulkan memory");
}

#[test]
fn a_stream_waits_for_vulkan_and_vulkan_waits_for_the_stream() {
    let mut v = Validated::new();
    let Some(ctx) = cuda_or_skip(&v, "semaphores") else { return };
    let buffer = v.allocate(1 << 20, DEV0).expect("buffer");
    buffer.write(0, &poisoned(1 << 20)).expect("poison");
    let timeline = v.timeline_semaphore(0).expect("timeline");
    let view = ctx.import_buffer(&buffer).expect("import");
    let sync = ctx.import_timeline(&timeline).expect("import timeline");
    let stream = ctx.stream().expect("stream");
    sync.wait(1, &stream).expect("wait");
    cuda::fill_async(&view, 0, 1 << 20, 0x5A, &stream).expect("fill");
    sync.signal(2, &stream).expect("signal");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(timeline.value().expect("value"), 0, "CUDA waits for Vulkan's 1");
    v.submit(0, &Submission::new().signal(&timeline, 1)).expect("Vulkan signals 1");
    timeline.wait(2, Duration::from_secs(10)).expect("CUDA signals 2");
    let mut out = poisoned(1 << 20);
    buffer.read(0, &mut out).expect("read");
    assert!(out.iter().all(|&b| b == 0x5A), "CUDA's fill, ordered by the timeline, is what Vulkan reads");
}

#[test]
fn ten_thousand_semaphore_round_trips_without_host_waits() {
    let mut v = Validated::new();
    let Some(ctx) = cuda_or_skip(&v, "round trips") else { return };
    let timeline = v.timeline_semaphore(0).expect("timeline");
    let sync = ctx.import_timeline(&timeline).expect("import");
    let stream = ctx.stream().expect("stream");
    let n = 10_000u64;
    let start = std::time::Instant::now();
    for i in 0..n {
        // CUDA: wait for Vulkan's even value, signal the next odd one; Vulkan: the reverse.
        if i > 0 {
            sync.wait(2 * i, &stream).expect("CUDA wait");
        }
        sync.signal(2 * i + 1, &stream).expect("CUDA signal");
        v.submit(0, &Submission::new().wait(&timeline, 2 * i + 1).signal(&timeline, 2 * i + 2))
            .expect("Vulkan");
    }
    timeline.wait(2 * n, Duration::from_secs(120)).expect("all round trips");
    println!(
        "{n} Vulkan → CUDA → Vulkan round trips: {:.1} µs each",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

#[test]
fn a_thousand_import_map_unmap_cycles_leave_nothing_behind() {
    let mut v = Validated::new();
    let Some(ctx) = cuda_or_skip(&v, "import cycles") else { return };
    let buffer =
        v.allocate_with(1 << 20, DEV0, AllocationOptions::default().dedicated(true)).expect("buffer");
    drop(ctx.import_buffer(&buffer).expect("warm-up"));
    let (free, _) = ctx.memory_info().expect("cuMemGetInfo");
    let fds = open_fds();
    for _ in 0..1000 {
        let view = ctx.import_buffer(&buffer).expect("import");
        view.fill(0, 16, 1).expect("use it");
    }
    ctx.synchronize().expect("sync");
    assert_eq!(open_fds(), fds, "fds back to the baseline");
    let (after, _) = ctx.memory_info().expect("cuMemGetInfo");
    assert!(after + (2 << 20) >= free, "device memory back to the baseline: {free} then {after}");
}
