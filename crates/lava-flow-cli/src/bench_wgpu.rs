//! wgpu (feature `wgpu`): the same compute pass — a read-modify-write over 64 MiB of `u32` —
//! over a buffer wgpu allocated itself (the baseline) and over a lava-flow buffer of the same
//! `VkDevice` as a `wgpu::Buffer` (`MemoryAllocator::from_wgpu` + `Buffer::to_wgpu`), in the same
//! run. Each measurement records `passes` dispatches in one compute pass (wgpu orders them with
//! barriers), submits once and waits: milliseconds per pass, so that submission overhead does not
//! hide the memory's speed.

use std::time::Instant;

use lava_flow::{AllocationOptions, AllocatorOptions, MemoryAllocator, MemoryLocation};

use crate::error::{Error, Result};

use crate::bench::{human, median, Options, Row};

const SIZE: u64 = 64 << 20;
/// Workgroups per dispatch (within every adapter's 65535); the invocations stride over the rest.
const GROUPS: u32 = 4096;

/// `data[i] = data[i] * 1664525 + 1013904223` for every word, grid-stride.
const SHADER: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let stride = n.x * 256u;
    for (var i = id.x; i < arrayLength(&data); i += stride) {
        data[i] = data[i] * 1664525u + 1013904223u;
    }
}";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn wgpu_failed(call: &'static str, e: impl std::fmt::Display + std::fmt::Debug) -> Error {
    let name = format!("{e:?}");
    let name = name.split(['(', ' ', '{']).next().unwrap_or_default().to_owned();
    Error::Lava(lava_flow::Error::Ffi { api: lava_flow::Api::Wgpu, call, name, description: e.to_string() })
}

pub fn rows(options: &Options, reps: usize, rows: &mut Vec<Row>) -> Result<()> {
    let info = MemoryAllocator::new()?.device(options.device_id)?.clone();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    // The adapter of the bench's Vulkan device: wgpu's adapter info has no UUID, the name does.
    let adapters = block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    let Some(adapter) = adapters.into_iter().find(|a| a.get_info().name == info.name) else {
        println!("wgpu rows skipped: wgpu has no Vulkan adapter named {:?}", info.name);
        return Ok(());
    };
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: SIZE,
        max_buffer_size: SIZE,
        ..wgpu::Limits::default()
    };
    let desc = wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() };
    let (device, queue) = block_on(adapter.request_device(&desc))
        .map_err(|e| wgpu_failed("wgpu::Adapter::request_device", e))?;

    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let own = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu's own"),
        size: SIZE,
        usage,
        mapped_at_creation: false,
    });
    // Blocks large enough that the 64 MiB buffer is sub-allocated (bound directly by `to_wgpu`);
    // the dedicated one goes through `to_wgpu`'s import.
    let mut alloc_options = AllocatorOptions::default();
    alloc_options.block_size = 2 * SIZE;
    alloc_options.dedicated_threshold = 2 * SIZE;
    let mut allocator = MemoryAllocator::from_wgpu_with_options(&device, alloc_options)?;
    let location = MemoryLocation::GpuVulkan { device_id: 0 };
    let lava = allocator.allocate_with(SIZE, location, AllocationOptions::default())?;
    let lava_view = lava.to_wgpu(&device, usage)?;
    let dedicated = allocator.allocate_with(SIZE, location, AllocationOptions::default().dedicated(true))?;
    let dedicated_view = dedicated.to_wgpu(&device, usage)?;

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("read-modify-write"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("read-modify-write"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let passes = if options.quick { 5 } else { 50 };
    let time = |buffer: &wgpu::Buffer| -> Result<f64> {
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry { binding: 0, resource: buffer.as_entire_binding() }],
        });
        median(reps, || {
            let start = Instant::now();
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                for _ in 0..passes {
                    pass.dispatch_workgroups(GROUPS, 1, 1);
                }
            }
            queue.submit([encoder.finish()]);
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| wgpu_failed("wgpu::Device::poll", e))?;
            Ok(start.elapsed().as_secs_f64() * 1e3 / f64::from(passes))
        })
    };
    let group = "wgpu compute pass";
    let what = format!("{} of u32, read-modify-write, {passes} passes per submit", human(SIZE));
    // A throwaway round first: measured first on an idle H200, the baseline came out 1.8× slower
    // than the same pass over lava-flow's buffers (the GPU was still ramping up).
    time(&own)?;
    let base = Row::baseline(group, format!("{what}: buffer wgpu allocated"), time(&own)?, "ms");
    let sub = if lava.is_dedicated() { "dedicated" } else { "sub-allocated" };
    let over_lava = time(&lava_view)?;
    let over_dedicated = time(&dedicated_view)?;
    let compared = [
        Row::against(&base, format!("{what}: lava-flow buffer, {sub}, to_wgpu"), over_lava),
        Row::against(&base, format!("{what}: lava-flow buffer, dedicated, to_wgpu"), over_dedicated),
    ];
    rows.push(base);
    rows.extend(compared);
    Ok(())
}
