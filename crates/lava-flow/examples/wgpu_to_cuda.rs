//! A wgpu compute pass writes a lava-flow buffer, a CUDA kernel transforms it in place, and wgpu
//! reads the result — one timeline semaphore orders the three on the GPU, with no host wait in
//! between: wgpu's submit signals 1, CUDA's stream waits for 1 and signals 2, wgpu's next
//! submit waits for 2. The device is wgpu's own (`lava_flow::wgpu::open_device`, which adds the
//! external-semaphore extension); the memory and the timeline are lava-flow's on it.
//!
//! Without CUDA (or without exportable semaphores, as on Mesa's lavapipe) it prints why, checks
//! the wgpu pass alone and exits 0.
//!
//! Run: `cargo run --example wgpu_to_cuda --features wgpu,cuda`

use std::future::Future;

use lava_flow::cuda::{Context, DeviceMemory};
use lava_flow::{AllocationOptions, Exportable, MemoryAllocator, MemoryLocation, Result};

const WORDS: u32 = 1 << 20;

/// `data[i] = i * 2654435761 ^ 0x9E3779B9`: a pattern the kernel's input is checked against.
const SHADER: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&data)) { data[id.x] = (id.x * 2654435761u) ^ 0x9E3779B9u; }
}";

fn written(i: u32) -> u32 {
    i.wrapping_mul(2_654_435_761) ^ 0x9E37_79B9
}

/// wgpu's native futures are ready at once.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn main() -> Result<()> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    };
    let Ok(adapter) = block_on(instance.request_adapter(&options)) else {
        println!("no wgpu Vulkan adapter, nothing to show");
        return Ok(());
    };
    println!("wgpu adapter: {}", adapter.get_info().name);
    let opened = lava_flow::wgpu::open_device(&adapter, &wgpu::DeviceDescriptor::default())?;
    for (extension, what) in &opened.missing {
        println!("without {}: {what}", extension.to_string_lossy());
    }
    let (device, queue) = (&opened.device, &opened.queue);
    let mut allocator = MemoryAllocator::from_wgpu(device)?;
    let size = u64::from(WORDS) * 4;
    let buffer = allocator.allocate_with(
        size,
        MemoryLocation::GpuVulkan { device_id: 0 },
        AllocationOptions::default().exportable(Exportable::Required),
    )?;
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let view = buffer.to_wgpu(device, usage)?;
    let timeline = allocator.timeline_semaphore(0)?;

    // CUDA on the same GPU, with the buffer and the timeline imported — or the reason not.
    let cuda = match Context::for_device(&allocator, 0) {
        Ok(cuda) if timeline.is_exportable() => Some(cuda),
        Ok(_) => {
            println!("this device cannot export semaphores: CUDA part skipped");
            None
        }
        Err(e) => {
            println!("no CUDA on wgpu's device, CUDA part skipped: {e}");
            None
        }
    };

    // 1. wgpu writes the pattern; its submission signals 1.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("pattern"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("pattern"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 0, resource: view.as_entire_binding() }],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(WORDS.div_ceil(256), 1, 1);
    }
    // SAFETY: `timeline` lives until the end of `main`, after every submission completed.
    unsafe { lava_flow::wgpu::signal_on_queue(queue, &timeline, 1)? };
    queue.submit([encoder.finish()]);

    // 2. CUDA waits for 1, transforms in place (x * 3 + i), signals 2.
    let cuda_parts = match &cuda {
        Some(cuda) => {
            let cuda_view = cuda.import_buffer(&buffer)?;
            let sync = cuda.import_timeline(&timeline)?;
            let stream = cuda.stream()?;
            let kernel_module = cuda.load_ptx(include_str!("kernels/transform.ptx"))?;
            let kernel = kernel_module.function("transform")?;
            sync.wait(1, &stream)?;
            let mut ptr = cuda_view.device_ptr();
            let mut n = WORDS;
            let mut params = [(&mut ptr as *mut u64).cast(), (&mut n as *mut u32).cast()];
            // SAFETY: the kernel's two parameters (u64 pointer, u32 count); it touches `n` words
            // of `cuda_view`, which lives until the stream is done (synchronised below).
            unsafe { kernel.launch(&stream, (WORDS.div_ceil(256), 1, 1), (256, 1, 1), &mut params)? };
            sync.signal(2, &stream)?;
            Some((cuda_view, sync, stream, kernel_module))
        }
        None => None,
    };

    // 3. wgpu's next submission waits for CUDA's 2 (or, without CUDA, for its own 1), then
    // copies the result where the host can map it.
    let last = if cuda_parts.is_some() { 2 } else { 1 };
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&view, 0, &readback, 0, size);
    // SAFETY: as above.
    unsafe { lava_flow::wgpu::wait_on_queue(queue, &timeline, last)? };
    queue.submit([encoder.finish()]);
    readback.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map_async"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("wgpu poll");
    let bytes = readback.slice(..).get_mapped_range().expect("mapped").to_vec();
    if let Some((_, _, stream, _)) = &cuda_parts {
        stream.synchronize()?;
    }

    let wrong = (0..WORDS)
        .filter(|&i| {
            let at = 4 * i as usize;
            let got = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            let want =
                if cuda_parts.is_some() { written(i).wrapping_mul(3).wrapping_add(i) } else { written(i) };
            got != want
        })
        .count();
    let who =
        if cuda_parts.is_some() { "wgpu wrote, CUDA transformed, wgpu read" } else { "wgpu wrote and read" };
    println!("{who} {WORDS} words of lava-flow memory, ordered by one timeline; {wrong} wrong");
    if wrong == 0 {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
