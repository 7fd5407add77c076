//! Host transfers: `Buffer::write`/`read` and their asynchronous forms, from and into ordinary
//! (pageable) host memory, beside the raw copies of the same bytes in the same run — CUDA's
//! `cuMemcpyHtoD`/`cuMemcpyDtoH` from pinned and from pageable memory where CUDA has the device,
//! a host `memcpy` otherwise (lavapipe: there the rows check the pipeline, not a link). Beside
//! them, the ceiling of the staging ring's CPU side: the same bytes copied into (or out of)
//! mapped staging memory the way the ring copies them, without the GPU.

use std::time::Instant;

use lava_flow::{AllocatorOptions, Buffer, MemoryAllocator, MemoryLocation};

use crate::error::{Error, Result};

use crate::bench::{human, median, Options, Row};

/// The sizes measured, capped by the quick mode and a quarter of the largest device-local heap.
const SIZES: [u64; 5] = [4 << 10, 1 << 20, 64 << 20, 256 << 20, 1 << 30];

/// Which way the bytes go.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Write,
    Read,
}

pub fn rows(options: &Options, reps: usize, rows: &mut Vec<Row>) -> Result<()> {
    let mut import_options = AllocatorOptions::default();
    import_options.host_memory_import = true;
    let imports = MemoryAllocator::with_options(import_options)?;
    let stages = MemoryAllocator::with_options(AllocatorOptions::default())?;
    let info = imports.device(options.device_id)?;
    let heap = info.heaps.iter().filter(|h| h.device_local).map(|h| h.size).max().unwrap_or(0);
    let cap = if options.quick { 64 << 20 } else { 1 << 30 }.min(heap / 4);
    #[cfg(feature = "cuda")]
    let cuda =
        crate::bench_processes::context_or_skip(&imports, options.device_id, "CUDA transfer baselines");
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    for size in SIZES.into_iter().filter(|&s| s <= cap) {
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        // Enough copies per measurement to take ~50 ms at 50 GB/s, at least 3.
        let iters = ((2u64 << 30) / size / if options.quick { 4 } else { 1 }).clamp(3, 2000) as usize;
        let imported = imports.clone().allocate(size, location)?;
        let staged = stages.clone().allocate(size, location)?;
        let data = pattern(len);
        check_round_trip(&imported, &data, "import path")?;
        check_round_trip(&staged, &data, "staging path")?;
        let mut host = vec![0u8; len];
        for way in [Way::Write, Way::Read] {
            let group = match way {
                Way::Write => "host transfers: write (host → device)",
                Way::Read => "host transfers: read (device → host)",
            };
            let unit = if size < 1 << 20 { "µs" } else { "GB/s" };
            let value =
                |seconds: f64| if unit == "µs" { seconds * 1e6 } else { size as f64 / seconds / 1e9 };
            let mut measured: Vec<(String, f64)> = Vec::new();
            #[cfg(feature = "cuda")]
            if let Some(ctx) = &cuda {
                cuda_rows(ctx, way, &mut host, iters, reps, &mut measured, &value)?;
            }
            if measured.is_empty() {
                let mut other = data.clone();
                let t = median(reps, || {
                    time(iters, || {
                        match way {
                            Way::Write => other.copy_from_slice(&host),
                            Way::Read => host.copy_from_slice(&other),
                        }
                        std::hint::black_box(&other);
                        Ok(())
                    })
                })?;
                measured.push(("host memcpy (no CUDA: the raw copy of the same bytes)".into(), value(t)));
            }
            for (name, buffer) in
                [("lava-flow, host memory import (opt-in)", &imported), ("lava-flow, staging ring", &staged)]
            {
                let t = median(reps, || {
                    time(iters, || match way {
                        Way::Write => Ok(buffer.write(0, &host)?),
                        Way::Read => Ok(buffer.read(0, &mut host)?),
                    })
                })?;
                measured.push((format!("{name}: {}, pageable memory", sync_name(way)), value(t)));
            }
            let counts = (iters, reps);
            if let Some((copy, import)) =
                lava_flow::bench_support::imported_copy(&imported, &mut host, way == Way::Write, counts)?
            {
                measured
                    .push(("lava-flow GPU copy alone, the Vec's pages imported once".into(), value(copy)));
                measured.push((
                    format!(
                        "lava-flow import + release of the Vec's pages alone, no copy ({:.1} µs per call; \
                         the value: those bytes at that cost)",
                        import * 1e6
                    ),
                    value(import),
                ));
            }
            for (path, buffer) in [("staging ring", &staged), ("host memory import", &imported)] {
                let mut owned = Some(std::mem::take(&mut host));
                let t = median(reps, || {
                    time(iters, || {
                        let v = owned.take().unwrap_or_default();
                        let back = match way {
                            Way::Write => buffer.write_async(0, v)?.wait()?,
                            Way::Read => buffer.read_async(0, v)?.wait()?,
                        };
                        owned = Some(back);
                        Ok(())
                    })
                })?;
                host = owned.unwrap_or_default();
                let name = match way {
                    Way::Write => "write_async + wait",
                    Way::Read => "read_async + wait",
                };
                measured.push((format!("lava-flow {name}, {path} (Vec moved in and back)"), value(t)));
            }
            ceiling_rows(&stages, options.device_id, way, &mut host, (iters, reps), &mut measured, &value)?;
            let mut measured = measured.into_iter();
            let Some((base_name, base_value)) = measured.next() else { continue };
            let base = Row::baseline(group, format!("{}: {base_name}", human(size)), base_value, unit);
            let compared: Vec<Row> = measured
                .map(|(name, v)| Row::against(&base, format!("{}: {name}", human(size)), v))
                .collect();
            rows.push(base);
            rows.extend(compared);
        }
    }
    Ok(())
}

/// The staging ring's CPU ceiling: the bytes copied into (writes) or out of (reads) mapped
/// staging memory as the ring copies them, with its threads, without the GPU — plain copies
/// and streaming ones, in the ring's memory (host-cached where there is such) and in
/// host-visible memory that is not cached, where the device has both.
fn ceiling_rows(
    allocator: &MemoryAllocator,
    device_id: u32,
    way: Way,
    host: &mut [u8],
    counts: (usize, usize),
    measured: &mut Vec<(String, f64)>,
    value: &dyn Fn(f64) -> f64,
) -> Result<()> {
    use lava_flow::bench_support::{host_copy, HostCopy, StagingKind};
    let to_staging = way == Way::Write;
    let streaming = if to_staging { HostCopy::StreamStores } else { HostCopy::StreamLoads };
    for memory in [StagingKind::Ring, StagingKind::Uncached] {
        for how in [HostCopy::Plain, streaming] {
            let c = match host_copy(allocator, device_id, host, to_staging, how, memory, counts) {
                Ok(c) => c,
                Err(lava_flow::Error::Unsupported { what }) => {
                    eprintln!("host-copy ceiling, {memory:?} memory: {what}; row skipped");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let how = match how {
                HostCopy::Plain => "memcpy",
                HostCopy::StreamStores => "streaming stores",
                HostCopy::StreamLoads => "streaming loads",
            };
            let dir = if to_staging { "pageable → staging" } else { "staging → pageable" };
            let name = format!(
                "ceiling: CPU copy {dir} ({how}, {} thread(s), {} MiB × {} slots, {} memory: {})",
                c.threads,
                c.ring.0 >> 20,
                c.ring.1,
                match memory {
                    StagingKind::Ring => "the ring's",
                    StagingKind::Uncached => "uncached",
                },
                c.memory_flags
            );
            measured.push((name, value(c.seconds)));
        }
    }
    Ok(())
}

fn sync_name(way: Way) -> &'static str {
    match way {
        Way::Write => "write",
        Way::Read => "read",
    }
}

/// Seconds per call of `f`, over `iters` calls.
fn time(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

/// Bytes that differ from their neighbours (a 64-bit LCG).
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// One write and read of every byte before anything is timed.
fn check_round_trip(buffer: &Buffer, data: &[u8], path: &str) -> Result<()> {
    buffer.write(0, data)?;
    let mut out = vec![0xA5; data.len()];
    buffer.read(0, &mut out)?;
    match out.iter().zip(data).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(Error::WrongData(format!(
            "bench check: the {path} read back a different byte at {i} of {}",
            data.len()
        ))),
    }
}

/// The CUDA baselines: pinned (the host memory registered with `cuMemHostRegister`) first, the
/// row the others are compared with, then pageable.
#[cfg(feature = "cuda")]
fn cuda_rows(
    ctx: &lava_flow::cuda::Context,
    way: Way,
    host: &mut [u8],
    iters: usize,
    reps: usize,
    measured: &mut Vec<(String, f64)>,
    value: &dyn Fn(f64) -> f64,
) -> Result<()> {
    use lava_flow::cuda::{check, sys, DeviceMemory};
    let device = ctx.alloc(host.len() as u64)?;
    let copy = |host: &mut [u8]| {
        median(reps, || {
            time(iters, || match way {
                Way::Write => Ok(device.copy_from_host(0, host)?),
                Way::Read => Ok(device.copy_to_host(0, host)?),
            })
        })
    };
    ctx.bind()?;
    // SAFETY: `host` is a live allocation of `host.len()` bytes, unregistered below before this
    // function returns.
    check("cuMemHostRegister_v2", unsafe {
        sys::cuMemHostRegister_v2(host.as_mut_ptr().cast(), host.len(), 0)
    })?;
    let pinned = copy(host);
    ctx.bind()?;
    // SAFETY: registered above.
    check("cuMemHostUnregister", unsafe { sys::cuMemHostUnregister(host.as_mut_ptr().cast()) })?;
    let pinned = pinned?;
    let pageable = copy(host)?;
    let name = match way {
        Way::Write => "cuMemcpyHtoD",
        Way::Read => "cuMemcpyDtoH",
    };
    measured.push((format!("CUDA {name}, pinned memory"), value(pinned)));
    measured.push((format!("CUDA {name}, pageable memory"), value(pageable)));
    Ok(())
}
