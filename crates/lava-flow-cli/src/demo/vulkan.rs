//! The Vulkan consumer: a second `VkDevice` on the same GPU.

use std::time::Duration;

use lava_flow::{Buffer, MemoryAllocator, MemoryLocation, TimelineSemaphore};

use super::{Consumer, Handoff, Options, Shared};
use crate::compute::{Compute, Shader};
use crate::error::Result;

/// The checksum's compute shader (WGSL: see the file for why not GLSL).
const CHECKSUM: &str = include_str!("../shaders/checksum.wgsl");

/// The Vulkan consumer: a second `VkDevice` on the same GPU (its own `MemoryAllocator`, as another
/// process would have) imports the frames and the sums (`export` → `import_memory`) and the two
/// timelines where the driver exports them, and checksums with a compute shader. Where timelines
/// cannot be exported (lavapipe), it orders through the host, as the GL fallback does.
pub(super) struct VkSide<'a> {
    other: MemoryAllocator,
    pass: Compute,
    /// The frames and the sums as the second device sees them (kept alive for the pass).
    _imported: Vec<Buffer>,
    staged_frame: Buffer,
    staged_sums: Buffer,
    /// The timelines imported into the second device, or `None` for the host fallback.
    imported_timelines: Option<(TimelineSemaphore, TimelineSemaphore)>,
    /// The shared timelines, for the host fallback.
    produced: &'a TimelineSemaphore,
    consumed: &'a TimelineSemaphore,
    /// The second device's own timeline, for work it waits for itself.
    done: TimelineSemaphore,
    next: u64,
    frame_count: u32,
    words: u32,
    staged_slot: usize,
    /// Work rounds per word ([`Consumer::set_rounds`]).
    rounds: u32,
}

impl<'a> VkSide<'a> {
    pub(super) fn new(mut other: MemoryAllocator, shared: &Shared<'a>, options: &Options) -> Result<Self> {
        let id = options.device_id;
        let mut imported = Vec::new();
        for b in shared.frames.iter().chain([shared.sums]) {
            imported.push(other.import_memory(id, b.export()?)?);
        }
        let location = MemoryLocation::GpuVulkan { device_id: id };
        let staged_frame = other.allocate(options.frame_bytes, location)?;
        let staged_sums = other.allocate(u64::from(options.frames) * 4, location)?;
        staged_sums.write(0, &vec![0; options.frames as usize * 4])?;
        let (frames, sums) = imported.split_at(imported.len() - 1);
        let mut slots: Vec<Vec<&Buffer>> = frames.iter().map(|f| vec![f, &sums[0]]).collect();
        slots.push(vec![&staged_frame, &staged_sums]);
        let staged_slot = slots.len() - 1;
        let pass = Compute::new(&other, id, Shader::Wgsl(CHECKSUM), &slots, shared.words.div_ceil(256))?;
        let mut import = |t: &TimelineSemaphore| -> lava_flow::Result<Option<TimelineSemaphore>> {
            match t.export() {
                Ok(e) => other.import_timeline_semaphore(id, e).map(Some),
                Err(lava_flow::Error::Unsupported { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let imported_timelines = match (import(shared.produced)?, import(shared.consumed)?) {
            (Some(p), Some(c)) => Some((p, c)),
            _ => None,
        };
        let done = other.timeline_semaphore(id)?;
        Ok(VkSide {
            other,
            pass,
            _imported: imported,
            staged_frame,
            staged_sums,
            imported_timelines,
            produced: shared.produced,
            consumed: shared.consumed,
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
        self.imported_timelines.is_some()
    }

    fn set_rounds(&mut self, rounds: u32) -> Result<()> {
        self.rounds = rounds;
        Ok(())
    }

    fn consume(&mut self, f: u32, slot: usize, handoff: Handoff) -> Result<()> {
        if let Some((produced, consumed)) = &self.imported_timelines {
            return self.pass.run(
                &self.other,
                [f, self.words, self.rounds, 0],
                slot,
                handoff.wait.map(|v| (produced, v)),
                handoff.signal.map(|v| (consumed, v)),
            );
        }
        if let Some(v) = handoff.wait {
            self.produced.wait(v, Duration::from_secs(60))?;
        }
        let done = self.dispatch_alone(f, slot)?;
        if let Some(v) = handoff.signal {
            self.done.wait(done, Duration::from_secs(60))?;
            self.consumed.signal(v)?;
        }
        Ok(())
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

    fn consume_alone(&mut self, f: u32, slot: usize) -> Result<()> {
        self.dispatch_alone(f, slot).map(|_| ())
    }

    fn finish(&mut self) -> Result<()> {
        self.done.wait(self.next, Duration::from_secs(60))?;
        // Submissions that waited for the first device's values: a fenced wait lets the
        // validation layer see them complete.
        Ok(self.other.wait_idle(self.pass.device_id)?)
    }
}
