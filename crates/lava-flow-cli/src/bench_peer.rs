//! The peer-copy rows: a copy between lava-flow buffers on two GPUs (`cuda::copy_peer`) beside
//! `cuMemcpyPeerAsync` between `cuMemAlloc` buffers, same sizes, same streams, same run: buffers
//! Vulkan allocated (imported into CUDA: the driver's slow path), and memory CUDA's virtual memory
//! API allocated on each GPU, imported into Vulkan and granted to the other GPU (the direct path).
//! A last group times the host side of one 4 KiB call (`copy_peer`'s ordering, per call) beside
//! one raw `cuMemcpyPeerAsync`. Needs two CUDA devices with Vulkan devices; says so and skips
//! otherwise.

use std::time::Instant;

use lava_flow::cuda::{self, check, sys, Context, DeviceMemory, PeerPath, PeerSide, Stream, TimelineStep};
use lava_flow::{MemoryAllocator, MemoryLocation};

use crate::error::{Error, Result};

use crate::bench::{human, median, Options, Row};

/// The two GPUs of the peer rows: cuda:0 (`a`, the source) and cuda:1 (`b`), each with its
/// Vulkan device, context and stream.
struct Pair {
    a: u32,
    b: u32,
    ctx_a: Context,
    ctx_b: Context,
    stream_a: Stream,
    stream_b: Stream,
}

/// One size's measurement: bytes per copy, copies queued per run, runs (median).
#[derive(Clone, Copy)]
struct Runs {
    size: u64,
    copies: u64,
    reps: usize,
}

/// All peer rows, or a printed reason why there are none.
pub fn rows(
    allocator: &mut MemoryAllocator,
    options: &Options,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let count = match cuda::devices() {
        Ok(list) => list.len(),
        Err(e) => {
            println!("peer rows: skipped: no CUDA ({e})");
            return Ok(());
        }
    };
    if count < 2 {
        println!("peer rows: skipped: {count} CUDA device(s), two GPUs are needed");
        return Ok(());
    }
    // cuda:0 and cuda:1, each with the Vulkan device of the same UUID.
    let (a, b) = (cuda::device_id_for(allocator, 0)?, cuda::device_id_for(allocator, 1)?);
    let (ctx_a, ctx_b) = (Context::for_device(allocator, a)?, Context::for_device(allocator, b)?);
    let possible = cuda::can_access_peer(&ctx_b, &ctx_a)?;
    println!(
        "peer rows: cuda:0 = device {a}, cuda:1 = device {b}; peer access cuda:1 -> cuda:0: {}",
        if possible { "yes" } else { "no (both paths are staged through host memory)" }
    );
    let (stream_a, stream_b) = (ctx_a.stream()?, ctx_b.stream()?);
    let pair = Pair { a, b, ctx_a, ctx_b, stream_a, stream_b };
    let copies = if options.quick { 10 } else { 40 };
    let sizes: &[u64] = if options.quick { &[64 << 20] } else { &[16 << 20, 256 << 20] };
    for &size in sizes {
        let runs = Runs { size, copies, reps };
        let group = "peer copy, GPU to GPU";
        let len = size as usize;
        let Pair { a, b, ctx_a, ctx_b, stream_a, stream_b } = &pair;
        // Baseline: raw CUDA memory on both GPUs, peer access on, one cuMemcpyPeerAsync each.
        let (raw_src, raw_dst) = (ctx_a.alloc(size)?, ctx_b.alloc(size)?);
        let raw = raw_rate(&pair, runs, &raw_src, &raw_dst)?;
        let base = Row::baseline(
            group,
            format!("{}: cuMemcpyPeerAsync, cuMemAlloc → cuMemAlloc", human(size)),
            raw,
            "GB/s",
        );
        // lava-flow buffers Vulkan allocated on both GPUs, imported into CUDA.
        let src = allocator.allocate(size, MemoryLocation::GpuVulkan { device_id: *a })?;
        let dst = allocator.allocate(size, MemoryLocation::GpuVulkan { device_id: *b })?;
        let (view_src, view_dst) = (ctx_a.import_buffer(&src)?, ctx_b.import_buffer(&dst)?);
        let data = pattern(len);
        src.write(0, &data)?;
        let (plain, path) = copy_rate(runs, side(&view_src, stream_a), side(&view_dst, stream_b))?;
        check_copy(&dst, &data, "lava-flow peer copy")?;
        println!("peer rows: {}: Vulkan-allocated buffers: copy_peer went {path}", human(size));
        // The same, ordered by both GPUs' timelines (wait, copy, signal on each side).
        poison(&dst, &data)?;
        let ordered = ordered_rate(allocator, &pair, runs, &view_src, &view_dst)?;
        check_copy(&dst, &data, "lava-flow peer copy ordered by timelines")?;
        let mut measured = vec![
            Row::against(&base, format!("{}: lava-flow buffers, cuda::copy_peer", human(size)), plain),
            Row::against(
                &base,
                format!("{}: lava-flow buffers, copy_peer + both timelines", human(size)),
                ordered,
            ),
        ];
        measured.extend(vmm_rows(allocator, &pair, &base, runs, (&dst, &view_dst))?);
        rows.push(base);
        rows.extend(measured);
    }
    rows.extend(per_call_rows(allocator, &pair, if options.quick { 100 } else { 256 }, reps)?);
    Ok(())
}

/// The bytes of a per-call row's copy: so few that the ordering, not the bytes, is the cost.
const PER_CALL_SIZE: u64 = 4 << 10;

/// The per-call rows: the host time of one 4 KiB `copy_peer` (what its ordering costs per call:
/// cross-GPU events, fences, timeline steps) beside one raw `cuMemcpyPeerAsync` between
/// `cuMemAlloc` buffers, peer access enabled and the context bound once beforehand; `copies`
/// queued back to back, timed up to the last one queued, then one wait; µs per call, median of
/// the runs. After each, the destination is read back and compared byte for byte.
fn per_call_rows(allocator: &mut MemoryAllocator, pair: &Pair, copies: u64, reps: usize) -> Result<Vec<Row>> {
    let Pair { ctx_a, ctx_b, stream_a, stream_b, .. } = pair;
    let (size, len) = (PER_CALL_SIZE, PER_CALL_SIZE as usize);
    let group = "peer copy, host time per call";
    let label = |what: &str| format!("{}: {what}, host time per call", human(size));
    let data = pattern(len);

    let (raw_src, raw_dst) = (ctx_a.alloc(size)?, ctx_b.alloc(size)?);
    raw_src.copy_from_host(0, &data)?;
    poison_cuda(&raw_dst, &data)?;
    raw_copy(ctx_a, ctx_b, &raw_src, &raw_dst, len, stream_b)?; // enables peer access
    ctx_b.bind()?;
    let raw = per_call_us(
        copies,
        reps,
        || {
            // SAFETY: both allocations hold `len` bytes; each pointer is passed with its
            // context; the stream belongs to cuda:1's context.
            check("cuMemcpyPeerAsync", unsafe {
                sys::cuMemcpyPeerAsync(
                    raw_dst.device_ptr(),
                    ctx_b.raw(),
                    raw_src.device_ptr(),
                    ctx_a.raw(),
                    len,
                    stream_b.raw(),
                )
            })
            .map_err(Into::into)
        },
        || Ok(stream_b.synchronize()?),
    )?;
    check_cuda(&raw_dst, &data, "cuMemcpyPeerAsync, 4 KiB calls")?;
    let base = Row::baseline(group, label("cuMemcpyPeerAsync alone, cuMemAlloc → cuMemAlloc"), raw, "µs");

    // copy_peer between the same cuMemAlloc buffers (peer access through the contexts).
    poison_cuda(&raw_dst, &data)?;
    let (src, dst) = (side(&raw_src, stream_a), side(&raw_dst, stream_b));
    let plain_alloc = per_call_us(copies, reps, || copy_once(src, dst, len), || sync_both(src, dst))?;
    check_cuda(&raw_dst, &data, "copy_peer, 4 KiB calls, cuMemAlloc buffers")?;

    // copy_peer between VMM buffers (the full-speed memory), plain and with both timelines.
    let (vmm_src, vmm_dst) = (ctx_a.alloc_exportable(size)?, ctx_b.alloc_exportable(size)?);
    if let Err(e) = vmm_src.grant_access(ctx_b) {
        println!("peer rows: per call: cuda:1 is not granted cuda:0's memory ({e}): its copies are staged");
    }
    vmm_src.copy_from_host(0, &data)?;
    poison_cuda(&vmm_dst, &data)?;
    let (src, dst) = (side(&vmm_src, stream_a), side(&vmm_dst, stream_b));
    let plain_vmm = per_call_us(copies, reps, || copy_once(src, dst, len), || sync_both(src, dst))?;
    check_cuda(&vmm_dst, &data, "copy_peer, 4 KiB calls, VMM buffers")?;

    poison_cuda(&vmm_dst, &data)?;
    let (tl_a, tl_b) = (allocator.timeline_semaphore(pair.a)?, allocator.timeline_semaphore(pair.b)?);
    tl_a.signal(1)?;
    tl_b.signal(1)?;
    let (sync_a, sync_b) = (ctx_a.import_timeline(&tl_a)?, ctx_b.import_timeline(&tl_b)?);
    let value = std::cell::Cell::new(1u64);
    let ordered = per_call_us(
        copies,
        reps,
        || {
            let v = value.get();
            let step = |timeline| Some(TimelineStep { timeline, wait: v, signal: v + 1 });
            cuda::copy_peer(
                PeerSide { step: step(&sync_a), ..src },
                PeerSide { step: step(&sync_b), ..dst },
                len,
            )?;
            value.set(v + 1);
            Ok(())
        },
        || {
            tl_b.wait(value.get(), std::time::Duration::from_secs(60))?;
            tl_a.wait(value.get(), std::time::Duration::from_secs(60))?;
            Ok(())
        },
    )?;
    check_cuda(&vmm_dst, &data, "copy_peer + both timelines, 4 KiB calls, VMM buffers")?;
    let measured = [
        Row::against(&base, label("cuda::copy_peer, cuMemAlloc buffers"), plain_alloc),
        Row::against(&base, label("cuda::copy_peer, VMM buffers (granted)"), plain_vmm),
        Row::against(&base, label("copy_peer + both timelines, VMM buffers"), ordered),
    ];
    Ok(std::iter::once(base).chain(measured).collect())
}

/// µs of host time per `queue` call: `copies` calls back to back, timed up to the last one, then
/// `finish` (the one wait, untimed); median of the runs.
fn per_call_us(
    copies: u64,
    reps: usize,
    mut queue: impl FnMut() -> Result<()>,
    mut finish: impl FnMut() -> Result<()>,
) -> Result<f64> {
    median(reps, || {
        let start = Instant::now();
        for _ in 0..copies {
            queue()?;
        }
        let queued = start.elapsed();
        finish()?;
        Ok(queued.as_secs_f64() * 1e6 / copies as f64)
    })
}

/// One unordered `copy_peer`.
fn copy_once(src: PeerSide<'_>, dst: PeerSide<'_>, len: usize) -> Result<()> {
    cuda::copy_peer(src, dst, len)?;
    Ok(())
}

/// Waits for both sides' streams.
fn sync_both(src: PeerSide<'_>, dst: PeerSide<'_>) -> Result<()> {
    src.stream.synchronize()?;
    dst.stream.synchronize()?;
    Ok(())
}

/// Overwrites CUDA memory with the complement of `data`.
fn poison_cuda(dst: &dyn DeviceMemory, data: &[u8]) -> Result<()> {
    let inverse: Vec<u8> = data.iter().map(|b| !b).collect();
    dst.copy_from_host(0, &inverse)?;
    Ok(())
}

/// Reads CUDA memory back (`cuMemcpyDtoH`) and compares its first `data.len()` bytes with `data`.
fn check_cuda(dst: &dyn DeviceMemory, data: &[u8], what: &str) -> Result<()> {
    let mut out = vec![0xEEu8; data.len()];
    dst.copy_to_host(0, &mut out)?;
    compare(&out, data, what)
}

/// The rows of memory CUDA's virtual memory API allocates (`alloc_exportable`) on each GPU,
/// imported into each GPU's Vulkan device (`import_into`), the source granted to cuda:1
/// (`grant_access`): written through Vulkan on cuda:0, copied with `copy_peer` without and with
/// both timelines, with `cuMemcpyPeerAsync` alone (the memory's rate without copy_peer's
/// ordering), and into the Vulkan-allocated destination `imported` (whether an imported
/// destination alone slows the copy); after each, read back through Vulkan and compared.
fn vmm_rows(
    allocator: &mut MemoryAllocator,
    pair: &Pair,
    base: &Row,
    runs: Runs,
    imported: (&lava_flow::Buffer, &dyn DeviceMemory),
) -> Result<Vec<Row>> {
    let Pair { a, b, ctx_a, ctx_b, stream_a, stream_b } = pair;
    let (size, len) = (runs.size, runs.size as usize);
    let (src, dst) = (ctx_a.alloc_exportable(size)?, ctx_b.alloc_exportable(size)?);
    let (src_vk, dst_vk) = (src.import_into(allocator, *a)?, dst.import_into(allocator, *b)?);
    if let Err(e) = src.grant_access(ctx_b) {
        println!("peer rows: VMM: cuda:1 is not granted cuda:0's memory ({e}): its copies are staged");
    }
    let data: Vec<u8> = pattern(len).iter().map(|b| b.rotate_left(3)).collect();
    src_vk.write(0, &data)?; // through Vulkan on cuda:0
    let label = |what: &str| format!("{}: {what}", human(size));

    poison(&dst_vk, &data)?;
    let (plain, path) = copy_rate(runs, side(&src, stream_a), side(&dst, stream_b))?;
    check_copy(&dst_vk, &data, "VMM peer copy")?;
    println!("peer rows: {}: VMM buffers: copy_peer went {path}", human(size));

    poison(&dst_vk, &data)?;
    let ordered = ordered_rate(allocator, pair, runs, &src, &dst)?;
    check_copy(&dst_vk, &data, "VMM peer copy ordered by timelines")?;

    poison(&dst_vk, &data)?;
    let raw = raw_rate(pair, runs, &src, &dst)?;
    check_copy(&dst_vk, &data, "cuMemcpyPeerAsync between VMM buffers")?;

    poison(&dst_vk, &data)?;
    let floor = ordered_floor_rate(pair, runs, &src, &dst)?;
    check_copy(&dst_vk, &data, "cuMemcpyPeerAsync between VMM buffers, ordered by hand")?;

    let (imported_dst, imported_view) = imported;
    poison(imported_dst, &data)?;
    let (mixed, mixed_path) = copy_rate(runs, side(&src, stream_a), side(imported_view, stream_b))?;
    check_copy(imported_dst, &data, "VMM → Vulkan-allocated peer copy")?;
    println!(
        "peer rows: {}: VMM source → Vulkan-allocated destination: copy_peer went {mixed_path}",
        human(size)
    );
    Ok(vec![
        Row::against(base, label("VMM buffers (alloc_exportable, granted), cuda::copy_peer"), plain),
        Row::against(base, label("VMM buffers, copy_peer + both timelines"), ordered),
        Row::against(base, label("VMM buffers, cuMemcpyPeerAsync alone"), raw),
        Row::against(
            base,
            label("VMM buffers, cuMemcpyPeerAsync between the same two cross-GPU event waits by hand (an ordered copy's floor)"),
            floor,
        ),
        Row::against(base, label("VMM → Vulkan-allocated buffer, cuda::copy_peer"), mixed),
    ])
}

/// GB/s of `copies` raw `cuMemcpyPeerAsync`s from `src` (cuda:0) to `dst` (cuda:1) on cuda:1's
/// stream, one wait; median of the runs.
fn raw_rate(pair: &Pair, runs: Runs, src: &dyn DeviceMemory, dst: &dyn DeviceMemory) -> Result<f64> {
    median(runs.reps, || {
        let start = Instant::now();
        for _ in 0..runs.copies {
            raw_copy(&pair.ctx_a, &pair.ctx_b, src, dst, runs.size as usize, &pair.stream_b)?;
        }
        pair.stream_b.synchronize()?;
        Ok(gbps(runs.size * runs.copies, start))
    })
}

/// GB/s of `copies` raw `cuMemcpyPeerAsync`s ordered as `copy_peer` orders each copy, written
/// with the driver's calls: an event recorded on cuda:0's stream and waited for by cuda:1's
/// before the copy, and one recorded on cuda:1's after it and waited for by cuda:0's (two events
/// made once, recorded again each copy); one wait per run; median of the runs. What any copy
/// that keeps both streams in order pays, beside `copy_peer`'s own row.
fn ordered_floor_rate(
    pair: &Pair,
    runs: Runs,
    src: &dyn DeviceMemory,
    dst: &dyn DeviceMemory,
) -> Result<f64> {
    let flags = sys::CUevent_flags_enum::CU_EVENT_DISABLE_TIMING as u32;
    let mut before = std::ptr::null_mut();
    let mut after = std::ptr::null_mut();
    pair.ctx_a.bind()?;
    // SAFETY: cuda:0's context is current; a valid out-pointer.
    check("cuEventCreate", unsafe { sys::cuEventCreate(&mut before, flags) })?;
    pair.ctx_b.bind()?;
    // SAFETY: cuda:1's context is current; a valid out-pointer.
    if let Err(e) = check("cuEventCreate", unsafe { sys::cuEventCreate(&mut after, flags) }) {
        destroy_event(&pair.ctx_a, before);
        return Err(e.into());
    }
    let rate = median(runs.reps, || {
        let start = Instant::now();
        for _ in 0..runs.copies {
            pair.ctx_a.bind()?;
            // SAFETY: the event and the stream are cuda:0's, whose context is current.
            check("cuEventRecord", unsafe { sys::cuEventRecord(before, pair.stream_a.raw()) })?;
            pair.ctx_b.bind()?;
            // SAFETY: cuda:1's stream, its context current; the event may be another device's.
            check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(pair.stream_b.raw(), before, 0) })?;
            raw_copy(&pair.ctx_a, &pair.ctx_b, src, dst, runs.size as usize, &pair.stream_b)?;
            // SAFETY: cuda:1's event and stream, its context current (`raw_copy` bound it).
            check("cuEventRecord", unsafe { sys::cuEventRecord(after, pair.stream_b.raw()) })?;
            pair.ctx_a.bind()?;
            // SAFETY: cuda:0's stream, its context current.
            check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(pair.stream_a.raw(), after, 0) })?;
        }
        pair.stream_a.synchronize()?;
        pair.stream_b.synchronize()?;
        Ok(gbps(runs.size * runs.copies, start))
    });
    // Both streams were synchronised (or a call failed before more was queued on them):
    // destroying the events is allowed either way (the driver keeps what is queued).
    destroy_event(&pair.ctx_a, before);
    destroy_event(&pair.ctx_b, after);
    rate
}

/// Destroys `event` of `ctx`; a failure is printed (nothing to return it to).
fn destroy_event(ctx: &Context, event: sys::CUevent) {
    let destroyed = ctx.bind().and_then(|()| {
        // SAFETY: an event this bench created in `ctx`, destroyed once.
        check("cuEventDestroy_v2", unsafe { sys::cuEventDestroy_v2(event) })
    });
    if let Err(e) = destroyed {
        println!("peer rows: destroying an event: {e}");
    }
}

/// GB/s of `copies` `copy_peer`s from `src` to `dst`, not ordered by timelines, one wait per
/// run; median of the runs, and the path the last copy took.
fn copy_rate(runs: Runs, src: PeerSide<'_>, dst: PeerSide<'_>) -> Result<(f64, PeerPath)> {
    let mut path = None;
    let rate = median(runs.reps, || {
        let start = Instant::now();
        for _ in 0..runs.copies {
            path = Some(cuda::copy_peer(src, dst, runs.size as usize)?);
        }
        src.stream.synchronize()?;
        dst.stream.synchronize()?;
        Ok(gbps(runs.size * runs.copies, start))
    })?;
    Ok((rate, path.expect("at least one copy")))
}

/// GB/s of `copies` `copy_peer`s from `src` (cuda:0) to `dst` (cuda:1), each ordered by both
/// GPUs' timelines (new ones: wait, copy, signal on each side), one host wait on both per run;
/// median of the runs.
fn ordered_rate(
    allocator: &mut MemoryAllocator,
    pair: &Pair,
    runs: Runs,
    src: &dyn DeviceMemory,
    dst: &dyn DeviceMemory,
) -> Result<f64> {
    let (tl_a, tl_b) = (allocator.timeline_semaphore(pair.a)?, allocator.timeline_semaphore(pair.b)?);
    tl_a.signal(1)?;
    tl_b.signal(1)?;
    let (sync_a, sync_b) = (pair.ctx_a.import_timeline(&tl_a)?, pair.ctx_b.import_timeline(&tl_b)?);
    let mut value = 1u64;
    median(runs.reps, || {
        let start = Instant::now();
        for _ in 0..runs.copies {
            let step = |timeline| Some(TimelineStep { timeline, wait: value, signal: value + 1 });
            cuda::copy_peer(
                PeerSide { step: step(&sync_a), ..side(src, &pair.stream_a) },
                PeerSide { step: step(&sync_b), ..side(dst, &pair.stream_b) },
                runs.size as usize,
            )?;
            value += 1;
        }
        tl_b.wait(value, std::time::Duration::from_secs(60))?;
        tl_a.wait(value, std::time::Duration::from_secs(60))?;
        Ok(gbps(runs.size * runs.copies, start))
    })
}

/// A side at offset 0, not ordered by a timeline.
fn side<'a>(memory: &'a dyn DeviceMemory, stream: &'a Stream) -> PeerSide<'a> {
    PeerSide { memory, offset: 0, stream, step: None }
}

/// Overwrites `dst` through Vulkan with the complement of `data`, so that every byte of the next
/// check proves the next copy.
fn poison(dst: &lava_flow::Buffer, data: &[u8]) -> Result<()> {
    let inverse: Vec<u8> = data.iter().map(|b| !b).collect();
    dst.write(0, &inverse)?;
    Ok(())
}

/// One raw peer copy on `stream` (of `dst_ctx`), peer access enabled first.
fn raw_copy(
    src_ctx: &Context,
    dst_ctx: &Context,
    src: &dyn DeviceMemory,
    dst: &dyn DeviceMemory,
    len: usize,
    stream: &Stream,
) -> Result<()> {
    dst_ctx.bind()?;
    // SAFETY: both contexts are valid; `dst_ctx` is current; flags must be 0.
    let r = unsafe { sys::cuCtxEnablePeerAccess(src_ctx.raw(), 0) };
    if r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
        && r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_UNSUPPORTED
    {
        check("cuCtxEnablePeerAccess", r)?;
    }
    // SAFETY: both allocations hold `len` bytes; each pointer is passed with its context; the
    // stream belongs to the current context.
    check("cuMemcpyPeerAsync", unsafe {
        sys::cuMemcpyPeerAsync(
            dst.device_ptr(),
            dst_ctx.raw(),
            src.device_ptr(),
            src_ctx.raw(),
            len,
            stream.raw(),
        )
    })?;
    Ok(())
}

fn gbps(bytes: u64, start: Instant) -> f64 {
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Bytes that differ at every offset of a 251-byte period (a prime: no alignment hides a shift).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

/// Reads `dst` back through Vulkan and compares every byte with `data`.
fn check_copy(dst: &lava_flow::Buffer, data: &[u8], what: &str) -> Result<()> {
    let mut out = vec![0xEEu8; data.len()];
    dst.read(0, &mut out)?;
    compare(&out, data, what)
}

/// `Ok` where `out` is `data`; otherwise the first byte that differs.
fn compare(out: &[u8], data: &[u8], what: &str) -> Result<()> {
    match out.iter().zip(data).position(|(o, d)| o != d) {
        None => Ok(()),
        Some(i) => Err(Error::WrongData(format!(
            "{what}: byte {i} of {} is {:#04x}, expected {:#04x}",
            data.len(),
            out[i],
            data[i]
        ))),
    }
}
