//! `lava-flow bench`: each lava-flow path beside its raw-API baseline, measured in the same
//! process; medians and ratios as a table, and as JSON with `--json FILE`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use lava_flow::ash::{self, vk};
use lava_flow::{AllocationOptions, Exportable, MemoryAllocator, MemoryLocation};

use crate::error::{Error, Result};
use serde::Serialize;

/// One measured path.
#[derive(Serialize)]
pub struct Row {
    group: &'static str,
    path: String,
    /// The median, in `unit`.
    value: f64,
    unit: &'static str,
    /// The path this one is compared with, in the same group.
    baseline: Option<String>,
    /// How many times better than the baseline (lower time or higher rate, as `unit` says).
    speedup: Option<f64>,
    /// Per-frame latency of a pipeline, median and 99th percentile, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<[f64; 2]>,
}

impl Row {
    /// A baseline row.
    pub fn baseline(group: &'static str, path: String, value: f64, unit: &'static str) -> Self {
        Row { group, path, value, unit, baseline: None, speedup: None, latency_us: None }
    }

    /// A row compared with `baseline` (same group and unit): how many times faster, whether the
    /// unit is a time (lower is better) or a rate (higher is better).
    pub fn against(baseline: &Row, path: String, value: f64) -> Self {
        let speedup = if matches!(baseline.unit, "µs" | "ms") {
            baseline.value / value
        } else {
            value / baseline.value
        };
        Row {
            group: baseline.group,
            path,
            value,
            unit: baseline.unit,
            baseline: Some(baseline.path.clone()),
            speedup: Some(speedup),
            latency_us: None,
        }
    }

    /// A rate compared with a baseline measured beside it in the same runs (its own row or not).
    pub fn beside(
        group: &'static str,
        path: String,
        value: f64,
        unit: &'static str,
        baseline: (String, f64),
    ) -> Self {
        let speedup = Some(value / baseline.1);
        Row { group, path, value, unit, baseline: Some(baseline.0), speedup, latency_us: None }
    }

    /// The row with a per-frame latency (median, 99th percentile).
    pub fn with_latency(mut self, p50: Duration, p99: Duration) -> Self {
        self.latency_us = Some([p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6]);
        self
    }
}

/// What to run.
pub struct Options {
    pub quick: bool,
    pub json: Option<std::path::PathBuf>,
    pub device_id: u32,
    /// Only the host-transfer rows.
    pub transfers_only: bool,
    /// Only the wgpu rows (feature `wgpu`; without it, an error).
    pub wgpu_only: bool,
    /// Only the peer-copy rows (feature `cuda`; without it, an error).
    pub peer_only: bool,
    /// Only the pipeline rows (`bench_pipeline`).
    pub pipeline_only: bool,
}

#[derive(Serialize)]
struct Report {
    device: String,
    driver: String,
    quick: bool,
    rows: Vec<Row>,
}

pub fn run(options: &Options) -> Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let info = allocator.device(options.device_id)?.clone();
    let (iters, reps) = if options.quick { (200, 3) } else { (2000, 7) };
    let mut rows = Vec::new();
    println!(
        "lava-flow bench on device {}: {} ({} {})",
        info.index, info.name, info.driver_name, info.driver_info
    );
    println!("medians of {reps} repetitions; each path beside its baseline, same process\n");

    if options.pipeline_only {
        crate::bench_pipeline::rows(options, &mut rows)?;
        return report(options, &info, rows);
    }
    if options.transfers_only {
        crate::bench_transfers::rows(options, reps, &mut rows)?;
        return report(options, &info, rows);
    }
    if options.peer_only {
        #[cfg(not(feature = "cuda"))]
        return Err(Error::Usage("--peer-only: this lava-flow was built without the feature `cuda`".into()));
        #[cfg(feature = "cuda")]
        {
            crate::bench_peer::rows(&mut allocator, options, reps, &mut rows)?;
            return report(options, &info, rows);
        }
    }
    if options.wgpu_only {
        #[cfg(not(feature = "wgpu"))]
        return Err(Error::Usage("--wgpu-only: this lava-flow was built without the feature `wgpu`".into()));
        #[cfg(feature = "wgpu")]
        {
            crate::bench_wgpu::rows(options, reps, &mut rows)?;
            return report(options, &info, rows);
        }
    }
    // Set-up cost per small buffer: allocate + export (+ free), against the raw pattern of one
    // dedicated exportable allocation per buffer.
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    // The raw pattern uses the memory type lava-flow picks for this location.
    let memory_type = allocator.allocate(4096, location)?.memory_type_index();
    for size in [4096u64, 65_536, 1 << 20] {
        let group = "set-up per buffer";
        let raw =
            median(reps, || raw_dedicated_export(&allocator, options.device_id, memory_type, size, iters))?;
        let base = Row::baseline(
            group,
            format!(
                "{}: raw vkCreateBuffer + dedicated exportable vkAllocateMemory + vkGetMemoryFdKHR",
                human(size)
            ),
            raw,
            "µs",
        );
        let mut compared = Vec::new();
        for (name, opts, export) in [
            ("lava-flow sub-allocated: allocate + export_fd", AllocationOptions::default(), true),
            ("lava-flow sub-allocated: allocate", AllocationOptions::default(), false),
            ("lava-flow dedicated: allocate + export_fd", AllocationOptions::default().dedicated(true), true),
            (
                "lava-flow sub-allocated, not exportable: allocate",
                AllocationOptions::default().exportable(Exportable::No),
                false,
            ),
        ] {
            let us = median(reps, || lava(&mut allocator, location, size, iters, opts, export))?;
            compared.push(Row::against(&base, format!("{}: {name}", human(size)), us));
        }
        rows.push(base);
        rows.append(&mut compared);
    }

    // Handing frames from Vulkan to OpenGL: zero-copy (shared buffers, timeline semaphores)
    // against downloading each frame to host memory and uploading it to GL.
    #[cfg(feature = "opengl")]
    {
        let frames = if options.quick { 20 } else { 120 };
        let demo =
            crate::demo::Options::new(frames, 4 << 20, crate::demo::ConsumerKind::Opengl, options.device_id);
        let mut runs = Vec::new();
        for _ in 0..if options.quick { 1 } else { 3 } {
            runs.push(crate::demo::measure(&demo, true)?);
        }
        let pick = |f: &dyn Fn(&crate::demo::Measured) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let zero = pick(&|m| m.rate(m.zero_copy).0);
        // Every run staged its frames too (`Options::new` asks for it): 0 would fail the check
        // of the rows' values.
        let staged = pick(&|m| m.staging.map_or(0.0, |s| m.rate(s).0));
        let m = &runs[0];
        let group = "Vulkan → OpenGL hand-off, 4 MiB frames";
        let base = Row::baseline(
            group,
            "staged through host memory (vkCmdCopyBuffer → host → glNamedBufferSubData)".to_owned(),
            staged,
            "frames/s",
        );
        let path = format!(
            "zero-copy, {} semaphores ({})",
            if m.gpu_semaphores { "GPU" } else { "host-fallback" },
            m.consumer
        );
        let zero_copy = Row::against(&base, path, zero);
        rows.push(base);
        rows.push(zero_copy);
    }

    crate::bench_transfers::rows(options, reps, &mut rows)?;
    #[cfg(feature = "cuda")]
    crate::bench_cuda::rows(&mut allocator, options, iters, reps, &mut rows)?;
    #[cfg(feature = "cuda")]
    crate::bench_processes::rows(&mut allocator, options, reps, &mut rows)?;
    #[cfg(feature = "cuda")]
    crate::bench_peer::rows(&mut allocator, options, reps, &mut rows)?;
    crate::bench_pipeline::rows(options, &mut rows)?;
    #[cfg(feature = "wgpu")]
    crate::bench_wgpu::rows(options, reps, &mut rows)?;

    report(options, &info, rows)
}

/// Prints the table, and writes the JSON file if asked.
fn report(options: &Options, info: &lava_flow::DeviceInfo, rows: Vec<Row>) -> Result<()> {
    print_table(&rows);
    if let Some(path) = &options.json {
        let report = Report {
            device: info.name.clone(),
            driver: info.driver_info.clone(),
            quick: options.quick,
            rows,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).map_err(|source| Error::File { path: path.clone(), source })?;
        println!("\nwritten to {}", path.display());
    }
    Ok(())
}

pub fn per_iter(d: Duration, iters: usize) -> f64 {
    d.as_secs_f64() * 1e6 / iters as f64
}

pub fn human(size: u64) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// The median of `reps` runs after one warm-up run.
pub fn median(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    f()?;
    let mut v = (0..reps).map(|_| f()).collect::<Result<Vec<f64>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// µs per buffer through lava-flow.
fn lava(
    a: &mut MemoryAllocator,
    location: MemoryLocation,
    size: u64,
    iters: usize,
    options: AllocationOptions,
    export: bool,
) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..iters {
        let b = a.allocate_with(size, location, options)?;
        if export {
            drop(b.export_fd()?);
        }
    }
    Ok(per_iter(start.elapsed(), iters))
}

/// µs per buffer for the raw pattern of NVIDIA's samples: a dedicated exportable allocation per
/// buffer, written directly against `ash` on lava-flow's device.
#[allow(
    clippy::multiple_unsafe_ops_per_block,
    reason = "the raw-API baseline is one plain sequence of Vulkan calls"
)]
fn raw_dedicated_export(
    a: &MemoryAllocator,
    device_id: u32,
    memory_type_index: u32,
    size: u64,
    iters: usize,
) -> Result<f64> {
    let (device, _) = a.ash_device(device_id)?;
    let instance = a.ash_instance();
    let fd_loader = ash::khr::external_memory_fd::Device::new(&instance, &device);
    let err = crate::vk::vk_err;
    let start = Instant::now();
    for _ in 0..iters {
        let mut ext = vk::ExternalMemoryBufferCreateInfo::default()
            .handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST)
            .push_next(&mut ext);
        // SAFETY: plain Vulkan calls on a live device with valid parameters; every object is
        // destroyed in the same iteration, also when a call fails.
        unsafe {
            let buffer = device.create_buffer(&info, None).map_err(err("vkCreateBuffer"))?;
            let req = device.get_buffer_memory_requirements(buffer);
            let mut export = vk::ExportMemoryAllocateInfo::default()
                .handle_types(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
            let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(memory_type_index)
                .push_next(&mut export)
                .push_next(&mut dedicated);
            let memory = match device.allocate_memory(&alloc, None) {
                Ok(m) => m,
                Err(e) => {
                    device.destroy_buffer(buffer, None);
                    return Err(err("vkAllocateMemory")(e));
                }
            };
            let result = device
                .bind_buffer_memory(buffer, memory, 0)
                .map_err(err("vkBindBufferMemory"))
                .and_then(|()| {
                    let get = vk::MemoryGetFdInfoKHR::default()
                        .memory(memory)
                        .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
                    fd_loader.get_memory_fd(&get).map_err(err("vkGetMemoryFdKHR"))
                });
            if let Ok(fd) = &result {
                drop(OwnedFd::from_raw_fd(*fd));
            }
            device.destroy_buffer(buffer, None);
            device.free_memory(memory, None);
            result?;
        }
    }
    Ok(per_iter(start.elapsed(), iters))
}

fn print_table(rows: &[Row]) {
    let mut group = "";
    for (i, r) in rows.iter().enumerate() {
        let latency = rows[i..].iter().take_while(|o| o.group == r.group).any(|o| o.latency_us.is_some());
        if r.group != group {
            group = r.group;
            println!("\n### {group}\n");
            if latency {
                println!("| path | median | vs baseline | latency p50 | latency p99 |");
                println!("|---|---|---|---|---|");
            } else {
                println!("| path | median | vs baseline |");
                println!("|---|---|---|");
            }
        }
        let speedup = r.speedup.map_or("baseline".to_owned(), |s| format!("{s:.2}×"));
        let against = match (&r.baseline, r.speedup) {
            (Some(b), Some(_)) if !rows.iter().any(|o| o.group == r.group && &o.path == b) => {
                format!(" of {b}")
            }
            _ => String::new(),
        };
        let tail = match (latency, r.latency_us) {
            (true, Some([p50, p99])) => format!(" {p50:.0} µs | {p99:.0} µs |"),
            (true, None) => " | |".to_owned(),
            (false, _) => String::new(),
        };
        println!("| {} | {:.2} {} | {speedup}{against} |{tail}", r.path, r.value, r.unit);
    }
}
