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

/// Vulkan fills a buffer and signals 1; a CUDA kernel waits for 1 on its stream, transforms the
/// buffer in place and signals 2; Vulkan waits for 2, copies the result to a second buffer and
/// signals 3. Only the final check waits on the host.
#[test]
#[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of Vulkan calls")]
fn kernel_between_vulkan_passes_ordered_by_one_timeline() {
    use lava_flow::ash::vk;
    let mut v = Validated::new();
    let Some(ctx) = cuda_or_skip(&v, "kernel") else { return };
    let words = 1u32 << 18;
    let bytes = u64::from(words) * 4;
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let shared = v.allocate(bytes, DEV0).expect("shared");
    let result = v.allocate(bytes, DEV0).expect("result");
    result.write(0, &poisoned(bytes as usize)).expect("poison");
    let timeline = v.timeline_semaphore(0).expect("timeline");
    let view = ctx.import_buffer(&shared).expect("import");
    let sync = ctx.import_timeline(&timeline).expect("import timeline");
    let stream = ctx.stream().expect("stream");
    let module = ctx.load_ptx(include_str!("../examples/kernels/transform.ptx")).expect("PTX");
    let kernel = module.function("transform").expect("kernel");
    let (device, family) = v.ash_device(0).expect("device");
    let pattern = 0x0102_0304u32;
    // SAFETY: plain Vulkan calls on lava-flow's device; everything made here is destroyed after
    // the final wait.
    unsafe {
        let pool = device
            .create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(family), None)
            .expect("pool");
        let cmds = device
            .allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default().command_pool(pool).command_buffer_count(2),
            )
            .expect("command buffers");
        let barrier = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
            .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE);
        let begin = vk::CommandBufferBeginInfo::default();
        device.begin_command_buffer(cmds[0], &begin).expect("begin");
        device.cmd_fill_buffer(cmds[0], shared.vk_buffer(), 0, bytes, pattern);
        device.cmd_pipeline_barrier(
            cmds[0],
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        );
        device.end_command_buffer(cmds[0]).expect("end");
        device.begin_command_buffer(cmds[1], &begin).expect("begin");
        device.cmd_copy_buffer(
            cmds[1],
            shared.vk_buffer(),
            result.vk_buffer(),
            &[vk::BufferCopy { src_offset: 0, dst_offset: 0, size: bytes }],
        );
        device.cmd_pipeline_barrier(
            cmds[1],
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        );
        device.end_command_buffer(cmds[1]).expect("end");

        v.submit(0, &Submission::new().command_buffers(&cmds[..1]).signal(&timeline, 1)).expect("fill");
        sync.wait(1, &stream).expect("CUDA waits for the fill");
        let mut ptr = view.device_ptr();
        let mut n = words;
        let mut params = [(&mut ptr as *mut u64).cast(), (&mut n as *mut u32).cast()];
        kernel.launch(&stream, (words.div_ceil(256), 1, 1), (256, 1, 1), &mut params).expect("launch");
        sync.signal(2, &stream).expect("CUDA signals");
        v.submit(0, &Submission::new().wait(&timeline, 2).command_buffers(&cmds[1..]).signal(&timeline, 3))
            .expect("copy");
        timeline.wait(3, Duration::from_secs(30)).expect("the chain completes");
        device.destroy_command_pool(pool, None);
    }
    let mut out = poisoned(bytes as usize);
    result.read(0, &mut out).expect("read");
    let want: Vec<u8> =
        (0..words).flat_map(|i| pattern.wrapping_mul(3).wrapping_add(i).to_le_bytes()).collect();
    assert_bytes_eq(&out, &want, "Vulkan fill → CUDA kernel → Vulkan copy");
}

#[test]
fn foreign_pointers_are_borrowed_or_owned_by_type() {
    let v = Validated::new();
    let Some(ctx) = cuda_or_skip(&v, "foreign pointers") else { return };
    let mine = ctx.alloc(1 << 20).expect("cuMemAlloc");
    let data = random_bytes(1 << 20);
    mine.copy_from_host(0, &data).expect("upload");
    // Borrowed: dropping the wrapper leaves the memory alone.
    // SAFETY: `mine` outlives `borrowed` and is of this context.
    let borrowed =
        unsafe { cuda::ForeignMemory::borrowed(&ctx, mine.device_ptr(), mine.size()) }.expect("wrap");
    assert!(!borrowed.is_owned());
    let mut out = poisoned(1 << 20);
    borrowed.copy_to_host(0, &mut out).expect("read through the wrapper");
    assert_bytes_eq(&out, &data, "borrowed view");
    drop(borrowed);
    let mut out = poisoned(1 << 20);
    mine.copy_to_host(0, &mut out).expect("the memory is still there");
    assert_bytes_eq(&out, &data, "after the borrowed view was dropped");
    // Owned: the wrapper frees it (device memory goes back to where it was).
    let (free_before, _) = ctx.memory_info().expect("info");
    let raw = ctx.alloc(64 << 20).expect("alloc").into_raw();
    // SAFETY: `raw` is from cuMemAlloc in this context and nobody else frees it.
    let owned = unsafe { cuda::ForeignMemory::owned(&ctx, raw, 64 << 20) }.expect("adopt");
    drop(owned);
    let (free_after, _) = ctx.memory_info().expect("info");
    assert!(
        free_after + (2 << 20) >= free_before,
        "the owned memory was freed: {free_before} then {free_after}"
    );
    // SAFETY: a null pointer is refused before anything else.
    assert!(unsafe { cuda::ForeignMemory::borrowed(&ctx, 0, 16) }.is_err());
}
