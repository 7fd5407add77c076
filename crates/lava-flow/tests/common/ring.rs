//! The frame-ring tests' Vulkan side: recorded command buffers and a producer whose every frame
//! is random bytes.

use lava_flow::ash::vk;
use lava_flow::{Buffer, MemoryAllocator, MemoryLocation, Ring, Submission};

use super::{random_bytes, Validated};

const HOST0: MemoryLocation = MemoryLocation::HostVisible { device_id: 0 };

/// Command buffers recorded on one allocator's device 0, in one pool, destroyed on drop (after a
/// fenced wait for the device).
pub struct Recorded {
    allocator: MemoryAllocator,
    device: lava_flow::ash::Device,
    pool: vk::CommandPool,
    cmds: Vec<vk::CommandBuffer>,
}

impl Recorded {
    /// `count` command buffers, each filled in by `record(index, command_buffer)`, then ended
    /// with a barrier that makes their writes visible to later work (and to the host).
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of Vulkan calls")]
    pub fn new(
        allocator: &MemoryAllocator,
        count: usize,
        record: impl Fn(usize, &lava_flow::ash::Device, vk::CommandBuffer),
    ) -> Self {
        let (device, family) = allocator.ash_device(0).expect("device");
        let barrier = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
            .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE);
        // SAFETY: plain Vulkan calls on lava-flow's device with valid arguments; what the
        // command buffers use outlives their work (the tests wait for it before dropping).
        unsafe {
            let pool = device
                .create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(family), None)
                .expect("pool");
            let cmds = device
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .command_buffer_count(count as u32),
                )
                .expect("command buffers");
            for (i, &cmd) in cmds.iter().enumerate() {
                device.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default()).expect("begin");
                record(i, &device, cmd);
                device.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::ALL_COMMANDS | vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &[barrier.dst_access_mask(
                        vk::AccessFlags::MEMORY_READ
                            | vk::AccessFlags::MEMORY_WRITE
                            | vk::AccessFlags::HOST_READ,
                    )],
                    &[],
                    &[],
                );
                device.end_command_buffer(cmd).expect("end");
            }
            Recorded { allocator: allocator.clone(), device, pool, cmds }
        }
    }

    /// `submission` with command buffer `i` added.
    pub fn with<'a>(&self, i: usize, submission: Submission<'a>) -> Submission<'a> {
        // SAFETY: recorded on this device; lives until `self` drops, after the work is done.
        unsafe { submission.command_buffers(&[self.cmds[i]]) }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Err(e) = self.allocator.wait_idle(0) {
            eprintln!("Recorded: {e}");
        }
        // SAFETY: the work is done; the pool frees its command buffers.
        unsafe { self.device.destroy_command_pool(self.pool, None) };
    }
}

/// The producer: every frame's random bytes in one host-visible staging buffer, and one command
/// buffer per frame that copies them into the frame's slot.
pub struct VkProducer {
    pub data: Vec<Vec<u8>>,
    _staging: Buffer,
    cmds: Recorded,
}

impl VkProducer {
    pub fn new(v: &mut Validated, ring: &Ring, frames: usize, slot_size: u64) -> Self {
        let data: Vec<Vec<u8>> = (0..frames).map(|_| random_bytes(slot_size as usize)).collect();
        let staging = v.allocate(slot_size * frames as u64, HOST0).expect("staging");
        for (f, d) in data.iter().enumerate() {
            staging.write(f as u64 * slot_size, d).expect("staging write");
        }
        let slots = ring.slot_count();
        let cmds = Recorded::new(v, frames, |f, device, cmd| {
            let region = vk::BufferCopy { src_offset: f as u64 * slot_size, dst_offset: 0, size: slot_size };
            // SAFETY: both buffers are live transfer sources/destinations of this device and
            // the region lies inside both.
            unsafe {
                device.cmd_copy_buffer(
                    cmd,
                    staging.vk_buffer(),
                    ring.buffers()[f % slots].vk_buffer(),
                    &[region],
                )
            };
        });
        VkProducer { data, _staging: staging, cmds }
    }

    /// Queues every frame at once: only the ring's GPU waits keep it from overwriting slots.
    pub fn produce_all(&self, v: &Validated, ring: &Ring) {
        let mut producer = ring.producer().expect("producer");
        for f in 0..self.data.len() {
            let step = producer.next_frame().expect("step");
            assert_eq!(step.frame, f as u64);
            v.submit(0, &self.cmds.with(f, ring.submission(&step))).expect("producer submit");
        }
    }
}
