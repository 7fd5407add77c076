//! The Vulkan consumer: a second `VkDevice` on the same GPU.

use std::time::Duration;

use lava_flow::ring::VulkanRing;
use lava_flow::{Buffer, FrameStep, MemoryAllocator, MemoryLocation, Submission, TimelineSemaphore};

use super::{Consumer, Options, Shared};
use crate::compute::{Compute, Shader};
use crate::error::Result;

/// The checksum's compute shader (WGSL: see the file for why not GLSL).
const CHECKSUM: &str = include_str!("../shaders/checksum.wgsl");

/// The Vulkan consumer: a second `VkDevice` on the same GPU (its own `MemoryAllocator`, as another
/// process would have) imports the ring ([`VulkanRing`]: its slots, and its timelines where the
/// driver exports them), the consumer's own frames and the sums (`export` → `import_memory`), and
/// checksums with a compute shader. Where timelines cannot be exported (lavapipe), the ring
/// orders through the host.
pub(super) struct VkSide<'a> {
    pass: Compute,
    ring: VulkanRing<'a>,
    other: MemoryAllocator,
    /// The own frames and the sums as the second device sees them (kept alive for the pass).
    _imported: Vec<Buffer>,
    staged_frame: Buffer,
    staged_sums: Buffer,
    /// The second device's own timeline, for work it waits for itself.
    done: TimelineSemaphore,
    next: u64,
    frame_count: u32,
    words: u32,
    /// The pass's slots: the ring's, then the own frames', then the staged one.
    ring_slots: usize,
    staged_slot: usize,
    /// Work rounds per word ([`Consumer::set_rounds`]).
    rounds: u32,
}

impl<'a> VkSide<'a> {
    pub(super) fn new(mut other: MemoryAllocator, shared: &Shared<'a>, options: &Options) -> Result<Self> {
        let id = options.device_id;
        let ring = shared.ring.import_vulkan(&other, id)?;
        let mut imported = Vec::new();
        for b in shared.own.iter().chain([shared.sums]) {
            imported.push(other.import_memory(id, b.export()?)?);
        }
        let location = MemoryLocation::GpuVulkan { device_id: id };
        let staged_frame = other.allocate(options.frame_bytes, location)?;
        let staged_sums = other.allocate(u64::from(options.frames) * 4, location)?;
        staged_sums.write(0, &vec![0; options.frames as usize * 4])?;
        let (own, sums) = imported.split_at(imported.len() - 1);
        let mut slots: Vec<Vec<&Buffer>> =
            ring.buffers().iter().chain(own).map(|f| vec![f, &sums[0]]).collect();
        slots.push(vec![&staged_frame, &staged_sums]);
        let staged_slot = slots.len() - 1;
        let pass = Compute::new(&other, id, Shader::Wgsl(CHECKSUM), &slots, shared.words.div_ceil(256))?;
        let done = other.timeline_semaphore(id)?;
        Ok(VkSide {
            pass,
            ring_slots: ring.buffers().len(),
            ring,
            other,
            _imported: imported,
            staged_frame,
            staged_sums,
            done,
            next: 0,
            frame_count: options.frames,
            words: shared.words,
            staged_slot,
            rounds: 0,
        })
    }

    /// A checksum of `slot` into `sums[f]` signalling the second device's own timeline; returns
    /// the value it signals.
    fn dispatch_alone(&mut self, f: u32, slot: usize) -> Result<u64> {
        self.next += 1;
        self.pass.run(
            &self.other,
            [f, self.words, self.rounds, 0],
            slot,
            None,
            Some((&self.done, self.next)),
        )?;
        Ok(self.next)
    }
}

impl Consumer for VkSide<'_> {
    fn describe(&self) -> String {
        let name = self.other.device(self.pass.device_id).map_or_else(|_| "?".to_owned(), |d| d.name.clone());
        format!("Vulkan compute on a second VkDevice of {name}")
    }

    fn gpu_semaphores(&self) -> bool {
        self.ring.is_gpu_ordered()
    }

    fn set_rounds(&mut self, rounds: u32) -> Result<()> {
        self.rounds = rounds;
        Ok(())
    }

    fn consume(&mut self, f: u32, step: &FrameStep) -> Result<()> {
        let recorded = self.pass.record([f, self.words, self.rounds, 0], step.slot)?;
        Ok(self.ring.submit(step, recorded.submission(Submission::new()))?)
    }

    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        // The previous staged dispatch reads the staging frame: it is waited for before the next
        // upload (as the other consumers' staged paths do).
        self.staged_frame.write(0, host)?;
        let done = self.dispatch_alone(f, self.staged_slot)?;
        Ok(self.done.wait(done, Duration::from_secs(60))?)
    }

    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.frame_count as usize * 4];
        self.staged_sums.read(0, &mut out)?;
        Ok(out)
    }

    fn consume_alone(&mut self, f: u32, own: usize) -> Result<()> {
        self.dispatch_alone(f, self.ring_slots + own).map(|_| ())
    }

    fn finish(&mut self) -> Result<()> {
        self.done.wait(self.next, Duration::from_secs(60))?;
        // Submissions that waited for the first device's values: a fenced wait lets the
        // validation layer see them complete.
        Ok(self.other.wait_idle(self.pass.device_id)?)
    }
}
