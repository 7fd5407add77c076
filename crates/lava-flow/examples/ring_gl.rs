//! A frame ring between a Vulkan producer and an OpenGL consumer: Vulkan fills each frame's slot
//! on its queue (waiting on the GPU until the consumer released the slot), GL waits for the
//! frame, reads it and releases the slot. The same loop serves CUDA (`ring.import_cuda`),
//! OpenCL (`ring.import_opencl`) and another Vulkan device (`ring.import_vulkan`).
//!
//! Run: `cargo run --example ring_gl`

use lava_flow::ash::vk;
use lava_flow::opengl::GlContext;
use lava_flow::{Error, MemoryAllocator, MemoryLocation, Result, Ring, RingOptions};

const FRAMES: u64 = 32;
const SLOT_BYTES: u64 = 1 << 20;

fn main() -> Result<()> {
    let mut allocator = MemoryAllocator::new()?;
    let location = MemoryLocation::GpuVulkan { device_id: 0 };
    // 4 slots, one hand-off per 2 frames, 32 frames in all.
    let options = RingOptions::new(4).batch(2).frames(FRAMES);
    let ring = Ring::new_buffers(&mut allocator, location, SLOT_BYTES, options)?;

    // The consumer: a headless GL context on the same GPU, with the slots and timelines imported.
    let gl_context = GlContext::headless(allocator.device(0)?)?;
    let gl = ring.import_gl(&gl_context)?;
    println!(
        "{} slots into {}; hand-offs on the {}",
        ring.slot_count(),
        gl_context.info().renderer,
        if gl.is_gpu_ordered() { "GPU" } else { "host (this driver cannot share semaphores)" }
    );

    // The producer: one command buffer per frame that fills the frame's slot with its number.
    let (device, family) = allocator.ash_device(0)?;
    // SAFETY: a plain command pool on lava-flow's device, destroyed below after the work is done.
    let pool = unsafe {
        device.create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(family), None)
    }
    .map_err(|r| Error::vk("vkCreateCommandPool", r))?;
    let info =
        vk::CommandBufferAllocateInfo::default().command_pool(pool).command_buffer_count(FRAMES as u32);
    // SAFETY: the pool is live; the command buffers are freed with it.
    let cmds = unsafe { device.allocate_command_buffers(&info) }
        .map_err(|r| Error::vk("vkAllocateCommandBuffers", r))?;
    for (f, &cmd) in cmds.iter().enumerate() {
        let slot = ring.buffers()[f % ring.slot_count()].vk_buffer();
        record_fill(&device, cmd, slot, f as u32)?;
    }

    // Both ends on this thread: each batch is queued on Vulkan, then read in GL. The producer's
    // waits for released slots are queue waits: the host never blocks on them.
    let (mut producer, mut consumer) = (ring.producer()?, ring.consumer()?);
    let mut frame = vec![0u8; SLOT_BYTES as usize];
    let batch = ring.schedule().batch() as u64;
    for first in (0..FRAMES).step_by(batch as usize) {
        for f in first..(first + batch).min(FRAMES) {
            let step = producer.next_frame()?;
            // SAFETY: recorded on this device; it lives until the pool is destroyed, after the
            // device is idle.
            let submission = unsafe { ring.submission(&step)?.command_buffers(&[cmds[f as usize]]) };
            allocator.submit(0, &submission)?;
        }
        for f in first..(first + batch).min(FRAMES) {
            let step = consumer.next_frame()?;
            gl.wait(&step)?;
            gl.buffers()[step.slot].read(0, &mut frame)?;
            let want = (f as u32).to_le_bytes();
            if frame.chunks_exact(4).any(|w| w != want) {
                return Err(Error::InvalidArgument(format!(
                    "frame {f}: slot {} holds another frame",
                    step.slot
                )));
            }
            gl.signal(&step)?;
        }
    }
    ring.released().wait(FRAMES, std::time::Duration::from_secs(10))?;
    println!("{FRAMES} frames of {} KiB handed from Vulkan to GL, every word checked", SLOT_BYTES / 1024);

    drop(gl);
    allocator.wait_idle(0)?;
    // SAFETY: the device is idle: no command buffer of the pool is pending.
    unsafe { device.destroy_command_pool(pool, None) };
    Ok(())
}

/// Records "fill `slot` with `value`, then make the write visible" into `cmd`.
fn record_fill(
    device: &lava_flow::ash::Device,
    cmd: vk::CommandBuffer,
    slot: vk::Buffer,
    value: u32,
) -> Result<()> {
    let barrier = vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::MEMORY_READ);
    // SAFETY: a fresh command buffer of this device.
    unsafe { device.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default()) }
        .map_err(|r| Error::vk("vkBeginCommandBuffer", r))?;
    // SAFETY: a recording command buffer; the slot is a live transfer destination of this device.
    unsafe { device.cmd_fill_buffer(cmd, slot, 0, vk::WHOLE_SIZE, value) };
    // SAFETY: as above.
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        )
    };
    // SAFETY: as above.
    unsafe { device.end_command_buffer(cmd) }.map_err(|r| Error::vk("vkEndCommandBuffer", r))
}
