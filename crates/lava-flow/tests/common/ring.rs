//! The frame-ring tests' Vulkan side: recorded command buffers and a producer whose every frame
//! is random bytes.

use lava_flow::ash::vk;
use lava_flow::{Buffer, MemoryLocation, Ring};

use super::{random_bytes, Recorded, Validated};

const HOST0: MemoryLocation = MemoryLocation::HostVisible { device_id: 0 };

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

    /// Submits the command buffer that copies frame `content`'s bytes into slot
    /// `content % slots`, with `submission`'s waits and signals.
    pub fn submit(&self, v: &Validated, content: usize, submission: lava_flow::Submission<'_>) {
        v.submit(0, &self.cmds.with(content, submission)).expect("producer submit");
    }

    /// Queues every frame at once: only the ring's GPU waits keep it from overwriting slots.
    pub fn produce_all(&self, v: &Validated, ring: &Ring) {
        let mut producer = ring.producer().expect("producer");
        for f in 0..self.data.len() {
            let step = producer.next_frame().expect("step");
            assert_eq!(step.frame, f as u64);
            v.submit(0, &self.cmds.with(f, ring.submission(&step).expect("the ring's step")))
                .expect("producer submit");
        }
    }
}
