//! The benchmark rows that need CUDA: each lava-flow path beside the raw CUDA/Vulkan pattern it
//! replaces, in the same process.

use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

use lava_flow::ash::vk;
use lava_flow::cuda::{check, sys, Context, DeviceMemory, Module, Stream};

use crate::vk::vk_err;
use lava_flow::{Buffer, MemoryAllocator, MemoryLocation, Submission, TimelineSemaphore};

use crate::error::{Error, Result};

use crate::bench::{human, median, per_iter, Options, Row};
use crate::kernels::{launch_checksum, launch_copy, KERNELS};

/// All CUDA rows, where CUDA has the device; a printed reason otherwise.
pub fn rows(
    allocator: &mut MemoryAllocator,
    options: &Options,
    iters: usize,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let Some(ctx) = crate::bench_processes::context_or_skip(allocator, options.device_id, "CUDA rows") else {
        return Ok(());
    };
    let module = ctx.load_ptx(KERNELS)?;
    let stream = ctx.stream()?;
    setup_rows(allocator, options, &ctx, iters, reps, rows)?;
    copy_bandwidth(allocator, options, &ctx, &module, &stream, reps, rows)?;
    hand_off(allocator, options, &ctx, &module, &stream, reps, rows)?;
    round_trips(allocator, options, &ctx, reps, rows)
}

/// c. Set-up per small buffer: lava-flow's allocate + import + map, which shares one import and
/// mapping per block, against `cuMemAlloc` + `cuMemFree`.
fn setup_rows(
    allocator: &mut MemoryAllocator,
    options: &Options,
    ctx: &Context,
    iters: usize,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    for size in [4096u64, 65_536, 1 << 20] {
        let group = "CUDA set-up per buffer";
        let raw = median(reps, || {
            let start = Instant::now();
            for _ in 0..iters {
                drop(ctx.alloc(size)?);
            }
            Ok(per_iter(start.elapsed(), iters))
        })?;
        let base = Row::baseline(group, format!("{}: cuMemAlloc + cuMemFree", human(size)), raw, "µs");
        // Keep one buffer of the block alive, as an application does, so the block's import
        // and mapping are shared.
        let keep = allocator.allocate(size, location)?;
        let _kept = ctx.import_buffer(&keep)?;
        let us = median(reps, || {
            let start = Instant::now();
            for _ in 0..iters {
                let b = allocator.allocate(size, location)?;
                let view = ctx.import_buffer(&b)?;
                std::hint::black_box(view.device_ptr());
            }
            Ok(per_iter(start.elapsed(), iters))
        })?;
        let lava = Row::against(
            &base,
            format!("{}: lava-flow allocate + import + map (sub-allocated)", human(size)),
            us,
        );
        rows.push(base);
        rows.push(lava);
    }
    Ok(())
}

/// a. Copy-kernel bandwidth on memory lava-flow imported against `cuMemAlloc` memory: the same
/// kernel, timed with CUDA events; GB/s counts bytes read plus bytes written.
fn copy_bandwidth(
    allocator: &mut MemoryAllocator,
    options: &Options,
    ctx: &Context,
    module: &Module,
    stream: &Stream,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let bytes: u64 = if options.quick { 64 << 20 } else { 256 << 20 };
    let launches = if options.quick { 5 } else { 20 };
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    // Two lava-flow pairs: buffers of `bytes` and of `bytes - 256`. On GPUs both are dedicated
    // allocations of about their size; with a 256-byte tail after a 256 MiB buffer (lava-flow's
    // rule before 2026-11-23), the H100 copied at 0.91× (ADR 0004), so both sizes stay measured.
    // Every copy moves `bytes - 256` bytes.
    let copied = bytes - 256;
    let (src, dst) = (allocator.allocate(bytes, location)?, allocator.allocate(bytes, location)?);
    let (vsrc, vdst) = (ctx.import_buffer(&src)?, ctx.import_buffer(&dst)?);
    let (esrc, edst) = (allocator.allocate(copied, location)?, allocator.allocate(copied, location)?);
    let (xsrc, xdst) = (ctx.import_buffer(&esrc)?, ctx.import_buffer(&edst)?);
    let (rsrc, rdst) = (ctx.alloc(bytes)?, ctx.alloc(bytes)?);
    let (start, end) = (ctx.event(true)?, ctx.event(true)?);
    let rate = |(d, s): (u64, u64)| -> Result<f64> {
        start.record(stream)?;
        for _ in 0..launches {
            launch_copy(module, stream, d, s, copied)?;
        }
        end.record(stream)?;
        end.synchronize()?;
        let t = end.elapsed_since(&start)?;
        Ok(2.0 * copied as f64 * f64::from(launches) / t.as_secs_f64() / 1e9)
    };
    let group = "CUDA copy-kernel bandwidth";
    // Interleaved, the order rotated every repetition, so that clocks and temperature drift
    // evenly over all three.
    let pairs = [
        (rdst.device_ptr(), rsrc.device_ptr()),
        (vdst.device_ptr(), vsrc.device_ptr()),
        (xdst.device_ptr(), xsrc.device_ptr()),
    ];
    for p in pairs {
        rate(p)?;
    }
    let mut results = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..reps {
        for k in 0..3 {
            let i = (r + k) % 3;
            results[i].push(rate(pairs[i])?);
        }
    }
    let [raw, lava, exact] = results.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    let size = human(bytes);
    let base = Row::baseline(group, format!("{size}: on cuMemAlloc memory"), raw, "GB/s");
    let row = Row::against(
        &base,
        format!("{size}: on lava-flow memory imported into CUDA (allocation of {} B)", src.allocation_size()),
        lava,
    );
    let exact = Row::against(
        &base,
        format!(
            "{size} − 256 B: on lava-flow memory imported into CUDA (allocation of {} B)",
            esrc.allocation_size()
        ),
        exact,
    );
    rows.push(base);
    rows.push(row);
    rows.push(exact);
    // The copies moved the bytes: check a sample.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    src.write(copied - 4096, &pattern)?;
    launch_copy(module, stream, vdst.device_ptr(), vsrc.device_ptr(), copied)?;
    stream.synchronize()?;
    let mut out = vec![0u8; 4096];
    dst.read(copied - 4096, &mut out)?;
    if out != pattern {
        return Err(Error::WrongData("the copy kernel copied wrong bytes".into()));
    }
    Ok(())
}

/// A Vulkan command buffer that fills a buffer with a 32-bit pattern, recorded once.
struct VkFill {
    device: lava_flow::ash::Device,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
}

impl VkFill {
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain recording")]
    fn new(allocator: &MemoryAllocator, device_id: u32, buffer: &Buffer, pattern: u32) -> Result<Self> {
        let (device, family) = allocator.ash_device(device_id)?;
        // SAFETY: plain Vulkan calls on lava-flow's device; the pool is destroyed on drop, after
        // the device finished the work (callers wait for each submission).
        unsafe {
            let pool = device
                .create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(family), None)
                .map_err(vk_err("vkCreateCommandPool"))?;
            let mut fill = VkFill { device: device.clone(), pool, cmd: vk::CommandBuffer::null() };
            fill.cmd = device
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default().command_pool(pool).command_buffer_count(1),
                )
                .map_err(vk_err("vkAllocateCommandBuffers"))?[0];
            let cmd = fill.cmd;
            device
                .begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())
                .map_err(vk_err("vkBeginCommandBuffer"))?;
            device.cmd_fill_buffer(cmd, buffer.vk_buffer(), 0, buffer.size(), pattern);
            crate::vk::barrier_to_all(
                &device,
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::TRANSFER_WRITE,
            );
            device.end_command_buffer(cmd).map_err(vk_err("vkEndCommandBuffer"))?;
            Ok(fill)
        }
    }

    /// The fill as a submission to add waits and signals to.
    fn submission(&self) -> Submission<'static> {
        // SAFETY: recorded on this device; lives until drop, after the callers' waits.
        unsafe { Submission::new().command_buffers(std::slice::from_ref(&self.cmd)) }
    }
}

impl Drop for VkFill {
    fn drop(&mut self) {
        // SAFETY: the work was waited for; the pool frees its command buffer.
        unsafe { self.device.destroy_command_pool(self.pool, None) };
    }
}

/// b. Handing a Vulkan-written buffer to a CUDA kernel, end to end: Vulkan fills it, a CUDA
/// kernel checksums it. Zero-copy (one timeline, no host wait between the two) against staging
/// through host memory: Vulkan → host (lava-flow's download) → `cuMemcpyHtoD` from pageable and
/// from registered (`cuMemHostRegister`) memory → the same kernel.
fn hand_off(
    allocator: &mut MemoryAllocator,
    options: &Options,
    ctx: &Context,
    module: &Module,
    stream: &Stream,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let bytes: u64 = if options.quick { 64 << 20 } else { 256 << 20 };
    let rounds = if options.quick { 3 } else { 10 };
    let words = (bytes / 4) as u32;
    let pattern = 0x0102_0304u32;
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    let buffer = allocator.allocate(bytes, location)?;
    let fill = VkFill::new(allocator, options.device_id, &buffer, pattern)?;
    let view = ctx.import_buffer(&buffer)?;
    let timeline = allocator.timeline_semaphore(options.device_id)?;
    let sync = ctx.import_timeline(&timeline)?;
    let sums = ctx.alloc(4)?;
    let staged = ctx.alloc(bytes)?;
    let mut host = vec![0u8; bytes as usize];
    let mut value = 0u64;
    let mut launches = 0u32;

    // Zero-copy: the fill signals, the stream waits, the kernel reads the shared memory.
    let mut zero_copy = || -> Result<f64> {
        let start = Instant::now();
        for _ in 0..rounds {
            allocator.submit(options.device_id, &fill.submission().signal(&timeline, value + 1))?;
            sync.wait(value + 1, stream)?;
            launch_checksum(module, stream, view.device_ptr(), words, sums.device_ptr())?;
            sync.signal(value + 2, stream)?;
            timeline.wait(value + 2, Duration::from_secs(60))?;
            value += 2;
            launches += 1;
        }
        Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(rounds))
    };
    sums.fill(0, 4, 0)?;
    let zero = median(reps, &mut zero_copy)?;
    check_sum(&sums, pattern, words, launches, "zero-copy")?;

    // Staged: the fill, a host wait, a download, an upload, the kernel.
    let staged_run = |host: &mut [u8], launches: &mut u32, value: &mut u64| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..rounds {
            *value += 1;
            allocator.submit(options.device_id, &fill.submission().signal(&timeline, *value))?;
            timeline.wait(*value, Duration::from_secs(60))?;
            buffer.read(0, host)?;
            staged.copy_from_host(0, host)?;
            launch_checksum(module, stream, staged.device_ptr(), words, sums.device_ptr())?;
            stream.synchronize()?;
            *launches += 1;
        }
        Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(rounds))
    };
    sums.fill(0, 4, 0)?;
    launches = 0;
    let pageable = median(reps, || staged_run(&mut host, &mut launches, &mut value))?;
    check_sum(&sums, pattern, words, launches, "staged, pageable")?;
    ctx.bind()?;
    // SAFETY: `host` is a live allocation of `bytes` bytes, unregistered below before it goes.
    check("cuMemHostRegister_v2", unsafe {
        sys::cuMemHostRegister_v2(host.as_mut_ptr().cast(), host.len(), 0)
    })?;
    sums.fill(0, 4, 0)?;
    launches = 0;
    let registered = median(reps, || staged_run(&mut host, &mut launches, &mut value));
    ctx.bind()?;
    // SAFETY: registered above.
    check("cuMemHostUnregister", unsafe { sys::cuMemHostUnregister(host.as_mut_ptr().cast()) })?;
    let registered = registered?;
    check_sum(&sums, pattern, words, launches, "staged, registered")?;
    allocator.wait_idle(options.device_id)?;

    let group = "Vulkan-written buffer → CUDA kernel, end to end";
    let size = human(bytes);
    let base = Row::baseline(
        group,
        format!("{size}: staged through pageable host memory (download, cuMemcpyHtoD)"),
        pageable,
        "ms",
    );
    let reg = Row::against(&base, format!("{size}: staged through registered host memory"), registered);
    let zero = Row::against(&base, format!("{size}: zero-copy, one timeline semaphore"), zero);
    rows.push(base);
    rows.push(reg);
    rows.push(zero);
    Ok(())
}

/// The checksum kernel ran `launches` times over `words` copies of `pattern`.
fn check_sum(sums: &dyn DeviceMemory, pattern: u32, words: u32, launches: u32, what: &str) -> Result<()> {
    let mut out = [0u8; 4];
    sums.copy_to_host(0, &mut out)?;
    let want = pattern.wrapping_mul(words).wrapping_mul(launches);
    if u32::from_le_bytes(out) == want {
        Ok(())
    } else {
        Err(Error::WrongData(format!("{what}: the kernel saw wrong data")))
    }
}

/// d. Vulkan → CUDA → Vulkan round trips on one timeline, host waiting only at the end:
/// lava-flow's `submit` and `CudaTimeline` against the raw calls (`vkQueueSubmit` with a timeline
/// submit info, `cuWaitExternalSemaphoresAsync`/`cuSignalExternalSemaphoresAsync` on a semaphore
/// imported by hand).
fn round_trips(
    allocator: &mut MemoryAllocator,
    options: &Options,
    ctx: &Context,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = if options.quick { 200u64 } else { 2000 };
    let stream = ctx.stream()?;
    let lava = median(reps, || {
        crate::bench_processes::one_process_round_trips(allocator, options.device_id, ctx, &stream, n)
    })?;
    let raw = median(reps, || {
        let timeline = allocator.timeline_semaphore(options.device_id)?;
        raw_round_trips(allocator, options.device_id, ctx, &stream, &timeline, n)
    })?;
    let group = "Vulkan → CUDA → Vulkan round trip (one timeline)";
    let base =
        Row::baseline(group, "raw vkQueueSubmit + cuWait/SignalExternalSemaphoresAsync".into(), raw, "µs");
    let row = Row::against(&base, "lava-flow submit + CudaTimeline wait/signal".into(), lava);
    rows.push(base);
    rows.push(row);
    Ok(())
}

/// The raw-API floor of [`round_trips`]: the same pattern written directly against `ash` (on
/// lava-flow's queue, single-threaded here) and the CUDA driver API.
#[allow(clippy::multiple_unsafe_ops_per_block, reason = "the raw baseline is one plain sequence of calls")]
fn raw_round_trips(
    allocator: &MemoryAllocator,
    device_id: u32,
    ctx: &Context,
    stream: &Stream,
    timeline: &TimelineSemaphore,
    n: u64,
) -> Result<f64> {
    let (device, family) = allocator.ash_device(device_id)?;
    let semaphore = timeline.vk_semaphore();
    let fd = timeline.export_fd()?.into_raw_fd();
    ctx.bind()?;
    // SAFETY: plain driver calls; the fd goes to CUDA on success (closed by us on failure); the
    // imported semaphore is destroyed before returning; the queue is used by this thread alone.
    unsafe {
        let desc = sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
            type_:
                sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD,
            handle: sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC_st__bindgen_ty_1 { fd },
            flags: 0,
            reserved: [0; 16],
        };
        let mut ext = std::ptr::null_mut();
        if let Err(e) = check("cuImportExternalSemaphore", sys::cuImportExternalSemaphore(&mut ext, &desc)) {
            libc_close(fd);
            return Err(e.into());
        }
        let queue = device.get_device_queue(family, 0);
        let mut wait: sys::CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS = std::mem::zeroed();
        let mut signal: sys::CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS = std::mem::zeroed();
        let start = Instant::now();
        let mut result = Ok(());
        for i in 0..n {
            if i > 0 {
                wait.params.fence.value = 2 * i;
                result = check(
                    "cuWaitExternalSemaphoresAsync",
                    sys::cuWaitExternalSemaphoresAsync(&ext, &wait, 1, stream.raw()),
                );
            }
            signal.params.fence.value = 2 * i + 1;
            result = result.and_then(|()| {
                check(
                    "cuSignalExternalSemaphoresAsync",
                    sys::cuSignalExternalSemaphoresAsync(&ext, &signal, 1, stream.raw()),
                )
            });
            let (wv, sv) = ([2 * i + 1], [2 * i + 2]);
            let mut values = vk::TimelineSemaphoreSubmitInfo::default()
                .wait_semaphore_values(&wv)
                .signal_semaphore_values(&sv);
            let sems = [semaphore];
            let stages = [vk::PipelineStageFlags::ALL_COMMANDS];
            let submit = vk::SubmitInfo::default()
                .wait_semaphores(&sems)
                .wait_dst_stage_mask(&stages)
                .signal_semaphores(&sems)
                .push_next(&mut values);
            result = result.and_then(|()| {
                device
                    .queue_submit(queue, &[submit], vk::Fence::null())
                    .map_err(|e| lava_flow::Error::vk("vkQueueSubmit", e))
            });
            if result.is_err() {
                break;
            }
        }
        let waited = result.and_then(|()| timeline.wait(2 * n, Duration::from_secs(120)));
        let us = per_iter(start.elapsed(), n as usize);
        let _ = stream.synchronize();
        let destroyed = check("cuDestroyExternalSemaphore", sys::cuDestroyExternalSemaphore(ext));
        waited.and(destroyed)?;
        allocator.wait_idle(device_id)?;
        Ok(us)
    }
}

/// Closes an fd the raw baseline still owns.
fn libc_close(fd: i32) {
    // SAFETY: `fd` is owned here and closed once.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
}
