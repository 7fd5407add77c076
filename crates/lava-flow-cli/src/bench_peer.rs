//! The peer-copy rows: a copy between lava-flow buffers on two GPUs (`cuda::copy_peer`) beside
//! `cuMemcpyPeerAsync` between `cuMemAlloc` buffers, same sizes, same streams, same run. Needs two
//! CUDA devices with Vulkan devices; says so and skips otherwise.

use std::time::Instant;

use lava_flow::cuda::{self, check, sys, Context, DeviceMemory, PeerSide, Stream, TimelineStep};
use lava_flow::{MemoryAllocator, MemoryLocation};

use crate::error::{Error, Result};

use crate::bench::{human, median, Options, Row};

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
    let copies = if options.quick { 10 } else { 40 };
    let sizes: &[u64] = if options.quick { &[64 << 20] } else { &[16 << 20, 256 << 20] };
    for &size in sizes {
        let group = "peer copy, GPU to GPU";
        let len = size as usize;
        // Baseline: raw CUDA memory on both GPUs, peer access on, one cuMemcpyPeerAsync each.
        let (raw_src, raw_dst) = (ctx_a.alloc(size)?, ctx_b.alloc(size)?);
        let raw = median(reps, || {
            let start = Instant::now();
            for _ in 0..copies {
                raw_copy(&ctx_a, &ctx_b, &raw_src, &raw_dst, len, &stream_b)?;
            }
            stream_b.synchronize()?;
            Ok(gbps(size * copies, start))
        })?;
        let base = Row::baseline(
            group,
            format!("{}: cuMemcpyPeerAsync, cuMemAlloc → cuMemAlloc", human(size)),
            raw,
            "GB/s",
        );
        // lava-flow buffers on both GPUs.
        let src = allocator.allocate(size, MemoryLocation::GpuVulkan { device_id: a })?;
        let dst = allocator.allocate(size, MemoryLocation::GpuVulkan { device_id: b })?;
        let (view_src, view_dst) = (ctx_a.import_buffer(&src)?, ctx_b.import_buffer(&dst)?);
        let data = pattern(len);
        src.write(0, &data)?;
        let plain = median(reps, || {
            let start = Instant::now();
            for _ in 0..copies {
                cuda::copy_peer(side(&view_src, &stream_a), side(&view_dst, &stream_b), len)?;
            }
            stream_a.synchronize()?;
            stream_b.synchronize()?;
            Ok(gbps(size * copies, start))
        })?;
        check_copy(&dst, &data, "lava-flow peer copy")?;
        // The same, ordered by both GPUs' timelines (wait, copy, signal on each side).
        let (tl_a, tl_b) = (allocator.timeline_semaphore(a)?, allocator.timeline_semaphore(b)?);
        tl_a.signal(1)?;
        tl_b.signal(1)?;
        let (sync_a, sync_b) = (ctx_a.import_timeline(&tl_a)?, ctx_b.import_timeline(&tl_b)?);
        let mut value = 1u64;
        dst.write(0, &vec![0u8; len])?;
        let ordered = median(reps, || {
            let start = Instant::now();
            for _ in 0..copies {
                let step = |timeline| Some(TimelineStep { timeline, wait: value, signal: value + 1 });
                cuda::copy_peer(
                    PeerSide { step: step(&sync_a), ..side(&view_src, &stream_a) },
                    PeerSide { step: step(&sync_b), ..side(&view_dst, &stream_b) },
                    len,
                )?;
                value += 1;
            }
            tl_b.wait(value, std::time::Duration::from_secs(60))?;
            tl_a.wait(value, std::time::Duration::from_secs(60))?;
            Ok(gbps(size * copies, start))
        })?;
        check_copy(&dst, &data, "lava-flow peer copy ordered by timelines")?;
        let lava = Row::against(&base, format!("{}: lava-flow buffers, cuda::copy_peer", human(size)), plain);
        let lava_ordered = Row::against(
            &base,
            format!("{}: lava-flow buffers, copy_peer + both timelines", human(size)),
            ordered,
        );
        rows.push(base);
        rows.push(lava);
        rows.push(lava_ordered);
    }
    Ok(())
}

/// A side at offset 0, not ordered by a timeline.
fn side<'a>(memory: &'a dyn DeviceMemory, stream: &'a Stream) -> PeerSide<'a> {
    PeerSide { memory, offset: 0, stream, step: None }
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
