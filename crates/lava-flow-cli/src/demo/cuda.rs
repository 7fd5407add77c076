//! The CUDA consumer: a PTX checksum kernel on the ring imported into CUDA ([`CudaRing`]: its
//! slots, and its timelines, which streams wait for and signal); for the staged pipeline, memory
//! from `cuMemAlloc`. Its stream's priority
//! and its context's scheduling flags can be chosen (the hand-off knobs `bench` measures).

use lava_flow::cuda::{
    check, sys, Context, CudaBuffer, CudaTimeline, DeviceBuffer, DeviceMemory, Module, Stream,
};
use lava_flow::ring::CudaRing;
use lava_flow::{FrameStep, MemoryAllocator};

use super::{Consumer, CudaSched, Options, Shared, StreamPriority};
use crate::error::Result;
use crate::kernels::{launch_checksum_work, KERNELS};

/// How the consumer sees the ring: through the library's adapter, or (in the child process of
/// `demo --processes 2`) as the slots and timelines imported from the handles another process
/// sent, with the ring's steps sent beside them.
pub enum RingView<'a> {
    Ring(CudaRing<'a>),
    /// Built by `demo-peer` (Unix only).
    #[cfg_attr(not(unix), allow(dead_code))]
    Imported {
        slots: Vec<CudaBuffer<'a>>,
        written: CudaTimeline<'a>,
        released: CudaTimeline<'a>,
    },
}

impl RingView<'_> {
    /// The device pointer of slot `slot`.
    fn slot(&self, slot: usize) -> u64 {
        match self {
            RingView::Ring(r) => r.buffers()[slot].device_ptr(),
            RingView::Imported { slots, .. } => slots[slot].device_ptr(),
        }
    }

    /// Queues the consumer step's wait on `stream`.
    fn wait(&self, step: &FrameStep, stream: &Stream) -> lava_flow::Result<()> {
        match (self, step.wait) {
            (RingView::Ring(r), _) => r.wait(step, stream),
            (RingView::Imported { written, .. }, Some(v)) => written.wait(v, stream),
            (RingView::Imported { .. }, None) => Ok(()),
        }
    }

    /// Queues the consumer step's signal on `stream`.
    fn signal(&self, step: &FrameStep, stream: &Stream) -> lava_flow::Result<()> {
        match (self, step.signal) {
            (RingView::Ring(r), _) => r.signal(step, stream),
            (RingView::Imported { released, .. }, Some(v)) => released.signal(v, stream),
            (RingView::Imported { .. }, None) => Ok(()),
        }
    }
}

/// What the CUDA consumer uses, imported into its context.
pub struct Imports<'a> {
    pub ring: RingView<'a>,
    /// The consumer's own frames.
    pub own: Vec<CudaBuffer<'a>>,
    pub sums: CudaBuffer<'a>,
}

pub struct CudaConsumer<'a> {
    stream: Stream,
    /// The stream made with a priority, destroyed after `stream` (which does not own it).
    _prioritised: Option<PriorityStream>,
    module: Module,
    ring: RingView<'a>,
    own: Vec<CudaBuffer<'a>>,
    sums: CudaBuffer<'a>,
    staged_frame: DeviceBuffer,
    staged_sums: DeviceBuffer,
    frame_count: u32,
    words: u32,
    rounds: u32,
    /// The knobs as they took effect, for the description.
    settings: String,
    ctx: Context,
}

impl<'a> CudaConsumer<'a> {
    pub(super) fn new(allocator: &MemoryAllocator, options: &Options, shared: &Shared<'a>) -> Result<Self> {
        let ctx = Context::for_device(allocator, options.device_id)?;
        let imports = Imports {
            ring: RingView::Ring(shared.ring.import_cuda(&ctx)?),
            own: shared.own.iter().map(|b| ctx.import_buffer(b)).collect::<lava_flow::Result<_>>()?,
            sums: ctx.import_buffer(shared.sums)?,
        };
        let mut settings = Vec::new();
        if let Some(sched) = options.cuda_sched {
            settings.push(set_sched(&ctx, sched)?);
        }
        let mut consumer =
            Self::from_imports(ctx, imports, options.frames, options.frame_bytes, shared.words)?;
        if let Some(priority) = options.stream_priority {
            let stream = PriorityStream::new(&consumer.ctx, priority)?;
            settings.push(format!("stream priority {}", stream.priority));
            // SAFETY: the stream belongs to the consumer's context and is destroyed after
            // `consumer.stream` (field order), which never destroys it.
            consumer.stream = unsafe { Stream::from_raw(&consumer.ctx, stream.raw) };
            consumer._prioritised = Some(stream);
        }
        consumer.settings = settings.iter().map(|s| format!(", {s}")).collect();
        Ok(consumer)
    }

    /// The consumer over memory and timelines already imported into `ctx` (from this process's
    /// buffers, or from handles another process sent).
    pub fn from_imports(
        ctx: Context,
        imports: Imports<'a>,
        frame_count: u32,
        frame_bytes: u64,
        words: u32,
    ) -> Result<Self> {
        let staged_sums = ctx.alloc(u64::from(frame_count) * 4)?;
        staged_sums.fill(0, frame_count as usize * 4, 0)?;
        Ok(CudaConsumer {
            stream: ctx.stream()?,
            _prioritised: None,
            module: ctx.load_ptx(KERNELS)?,
            ring: imports.ring,
            own: imports.own,
            sums: imports.sums,
            staged_frame: ctx.alloc(frame_bytes)?,
            staged_sums,
            frame_count,
            words,
            rounds: 0,
            settings: String::new(),
            ctx,
        })
    }

    fn checksum(&self, words: u64, sum: u64) -> Result<()> {
        launch_checksum_work(&self.module, &self.stream, words, self.words, sum, self.rounds)
    }
}

/// Sets the scheduling flags of the context (the device's primary context, already in use:
/// `cuCtxSetFlags` on it, current) and reads them back: what took effect.
fn set_sched(ctx: &Context, sched: CudaSched) -> Result<String> {
    use sys::CUctx_flags_enum as F;
    let flag = match sched {
        CudaSched::Auto => F::CU_CTX_SCHED_AUTO,
        CudaSched::Spin => F::CU_CTX_SCHED_SPIN,
        CudaSched::Yield => F::CU_CTX_SCHED_YIELD,
        CudaSched::BlockingSync => F::CU_CTX_SCHED_BLOCKING_SYNC,
    } as u32;
    ctx.bind()?;
    let mut flags = 0u32;
    // SAFETY: the context is current; `flags` is a valid out-pointer.
    check("cuCtxGetFlags", unsafe { sys::cuCtxGetFlags(&mut flags) })?;
    let others = flags & !(F::CU_CTX_SCHED_MASK as u32);
    // SAFETY: the context is current; its other flags are kept, one scheduling flag is set.
    check("cuCtxSetFlags", unsafe { sys::cuCtxSetFlags(others | flag) })?;
    // SAFETY: as above.
    check("cuCtxGetFlags", unsafe { sys::cuCtxGetFlags(&mut flags) })?;
    let got = flags & F::CU_CTX_SCHED_MASK as u32;
    Ok(format!("CU_CTX_SCHED flags {got:#x} (asked {flag:#x})"))
}

/// A non-blocking stream created with a priority (`cuStreamCreateWithPriority`), destroyed on drop.
struct PriorityStream {
    ctx: Context,
    raw: sys::CUstream,
    priority: i32,
}

impl PriorityStream {
    fn new(ctx: &Context, priority: StreamPriority) -> Result<Self> {
        ctx.bind()?;
        let (mut least, mut greatest) = (0, 0);
        // SAFETY: the context is current; both are valid out-pointers.
        check("cuCtxGetStreamPriorityRange", unsafe {
            sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest)
        })?;
        let priority = match priority {
            StreamPriority::Least => least,
            StreamPriority::Greatest => greatest,
        };
        let mut raw = std::ptr::null_mut();
        let flags = sys::CUstream_flags_enum::CU_STREAM_NON_BLOCKING as u32;
        // SAFETY: the context is current; `raw` is a valid out-pointer.
        check("cuStreamCreateWithPriority", unsafe {
            sys::cuStreamCreateWithPriority(&mut raw, flags, priority)
        })?;
        Ok(PriorityStream { ctx: ctx.clone(), raw, priority })
    }
}

impl Drop for PriorityStream {
    fn drop(&mut self) {
        // SAFETY: made in `new`, destroyed once; pending work still completes.
        let destroyed = self
            .ctx
            .bind()
            .and_then(|()| check("cuStreamDestroy_v2", unsafe { sys::cuStreamDestroy_v2(self.raw) }));
        if let Err(e) = destroyed {
            eprintln!("lava-flow demo: {e}");
        }
    }
}

impl Consumer for CudaConsumer<'_> {
    fn describe(&self) -> String {
        let name = lava_flow::cuda::devices()
            .ok()
            .and_then(|d| d.into_iter().find(|d| d.uuid == self.ctx.uuid()))
            .map_or_else(|| "?".to_owned(), |d| d.name);
        format!("CUDA kernel on {name}{}", self.settings)
    }

    fn gpu_semaphores(&self) -> bool {
        true
    }

    fn set_rounds(&mut self, rounds: u32) -> Result<()> {
        self.rounds = rounds;
        Ok(())
    }

    fn consume(&mut self, f: u32, step: &FrameStep) -> Result<()> {
        self.ring.wait(step, &self.stream)?;
        self.checksum(self.ring.slot(step.slot), self.sums.device_ptr() + u64::from(f) * 4)?;
        Ok(self.ring.signal(step, &self.stream)?)
    }

    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        // The previous frame's kernel reads the staging memory: let it finish first
        // (cuMemcpyHtoD is not ordered with a non-blocking stream).
        self.stream.synchronize()?;
        self.staged_frame.copy_from_host(0, host)?;
        self.checksum(self.staged_frame.device_ptr(), self.staged_sums.device_ptr() + u64::from(f) * 4)
    }

    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        self.stream.synchronize()?;
        let mut out = vec![0u8; self.frame_count as usize * 4];
        self.staged_sums.copy_to_host(0, &mut out)?;
        Ok(out)
    }

    fn consume_alone(&mut self, f: u32, own: usize) -> Result<()> {
        self.checksum(self.own[own].device_ptr(), self.sums.device_ptr() + u64::from(f) * 4)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}
