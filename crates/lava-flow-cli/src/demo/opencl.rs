//! The OpenCL consumer: the shared buffers imported into OpenCL, a kernel built from source at run
//! time, the ring imported into OpenCL ([`ClRing`]). OpenCL cannot import timelines (its
//! semaphores are binary), so the ring orders each batch through the host: wait for the
//! producer's value, run, `clFinish`, signal.

use lava_flow::opencl::{ClBuffer, Context, Program, Queue};
use lava_flow::ring::ClRing;
use lava_flow::{Buffer, FrameStep};

use super::{Consumer, Options, Shared};
use crate::error::Result;

/// The checksum kernel.
const CHECKSUM: &str = include_str!("../shaders/checksum.cl");

pub(super) struct ClSide<'c> {
    cl: &'c Context,
    queue: Queue<'c>,
    program: Program<'c>,
    ring: ClRing<'c>,
    own: Vec<ClBuffer<'c>>,
    sums: ClBuffer<'c>,
    staged_frame: ClBuffer<'c>,
    staged_sums: ClBuffer<'c>,
    frame_count: u32,
    words: u32,
    /// Work rounds per word ([`Consumer::set_rounds`]).
    rounds: u32,
}

impl<'c> ClSide<'c> {
    /// `staged` is a frame-sized and a sums-sized lava-flow buffer for the staged pipeline
    /// (written from host memory through OpenCL there, never shared with Vulkan).
    pub(super) fn new(
        cl: &'c Context,
        shared: &Shared<'c>,
        staged: &'c [Buffer; 2],
        options: &Options,
    ) -> Result<Self> {
        let queue = cl.queue()?;
        let staged_sums = cl.import_buffer(&staged[1])?;
        staged_sums.write(&queue, 0, &vec![0; options.frames as usize * 4])?;
        Ok(ClSide {
            program: cl.build(CHECKSUM)?,
            ring: shared.ring.import_opencl(cl)?,
            own: shared.own.iter().map(|b| cl.import_buffer(b)).collect::<lava_flow::Result<_>>()?,
            sums: cl.import_buffer(shared.sums)?,
            staged_frame: cl.import_buffer(&staged[0])?,
            staged_sums,
            frame_count: options.frames,
            words: shared.words,
            rounds: 0,
            queue,
            cl,
        })
    }

    /// Queues the checksum of `frame` into `sums[f]`, between acquire and release.
    fn checksum(&self, f: u32, frame: &ClBuffer<'_>, sums: &ClBuffer<'_>) -> Result<()> {
        let mut kernel = self.program.kernel("checksum")?;
        kernel.arg_buffer(0, frame)?;
        kernel.arg_u64(1, frame.offset() / 4)?;
        kernel.arg_u32(2, self.words)?;
        kernel.arg_buffer(3, sums)?;
        kernel.arg_u64(4, sums.offset() / 4)?;
        kernel.arg_u32(5, f)?;
        kernel.arg_u32(6, self.rounds)?;
        kernel.arg_u32(7, 0)?;
        self.queue.acquire(&[frame, sums])?;
        let global = self.words.div_ceil(256) as usize * 256;
        self.queue.launch(&kernel, global, Some(256))?;
        Ok(self.queue.release(&[frame, sums])?)
    }
}

impl Consumer for ClSide<'_> {
    fn describe(&self) -> String {
        format!("OpenCL kernel on {} ({})", self.cl.device().name, self.cl.device().platform)
    }

    fn gpu_semaphores(&self) -> bool {
        false
    }

    fn set_rounds(&mut self, rounds: u32) -> Result<()> {
        self.rounds = rounds;
        Ok(())
    }

    fn consume(&mut self, f: u32, step: &FrameStep) -> Result<()> {
        self.ring.wait(step)?;
        self.checksum(f, &self.ring.buffers()[step.slot], &self.sums)?;
        Ok(self.ring.signal(step, &self.queue)?)
    }

    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        // A blocking write: the previous frame's kernel, queued before it, is done first.
        self.staged_frame.write(&self.queue, 0, host)?;
        self.checksum(f, &self.staged_frame, &self.staged_sums)
    }

    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.frame_count as usize * 4];
        self.staged_sums.read(&self.queue, 0, &mut out)?;
        Ok(out)
    }

    fn consume_alone(&mut self, f: u32, own: usize) -> Result<()> {
        self.checksum(f, &self.own[own], &self.sums)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.queue.finish()?)
    }
}
