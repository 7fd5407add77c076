//! `lava-flow demo`: a zero-copy pipeline over a ring of shared buffers (two by default:
//! ping-pong).
//!
//! The frames go through a [`lava_flow::Ring`] of `n` buffers: a Vulkan compute shader produces
//! frame `f` into slot `f % n`; the consumer (CUDA, OpenGL, OpenCL or a second Vulkan device, one
//! module each, each behind its feature but Vulkan's) checksums it in place, through the ring's
//! adapter for its API, and writes the checksum into a results buffer that is shared too. The
//! ring's two timelines order it all (its steps say what each end waits for and signals): the
//! producer's frame `f` waits until the consumer released frame `f - n` (same slot); the
//! consumer's frame `f` waits until the producer wrote it. Every checksum is checked on the CPU at the end. Then, all in the
//! same run: the same frames through host memory (download, upload), the way it is done without
//! sharing; each side alone; and both sides at once with no hand-off between them, each on its
//! own frames — the ceiling the pipeline is compared with.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "opencl")]
mod opencl;
#[cfg(feature = "opengl")]
mod opengl;
#[cfg(all(unix, feature = "cuda"))]
pub mod process;
mod vulkan;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use lava_flow::{
    AllocatorOptions, Buffer, FrameStep, MemoryAllocator, MemoryLocation, QueueGlobalPriority, Ring,
    RingOptions, TimelineSemaphore,
};

use crate::compute::{Compute, Shader};
use crate::error::{Error, Result};

/// The producer's compute shader.
const PRODUCER: &str = include_str!("../shaders/producer.comp");

/// Which consumer checksums the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumerKind {
    /// CUDA where it has this device, else OpenGL where built, else Vulkan.
    Auto,
    /// A CUDA kernel, ordered by the timelines imported into CUDA (feature `cuda`).
    Cuda,
    /// An OpenGL compute shader on a headless EGL context (feature `opengl`).
    Opengl,
    /// An OpenCL kernel, ordered through the host: OpenCL has no timelines (feature `opencl`).
    Opencl,
    /// A compute shader on a second `VkDevice` importing the buffers and timelines.
    Vulkan,
}

/// A CUDA stream's priority (`cuStreamCreateWithPriority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamPriority {
    /// The lowest priority the context has (the default streams').
    Least,
    /// The highest priority the context has (`cuCtxGetStreamPriorityRange`).
    Greatest,
}

/// How the CUDA context's host threads wait for the GPU (`CU_CTX_SCHED_*`, set on the consumer's
/// context, the device's primary one, with `cuCtxSetFlags`; it stays set for the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CudaSched {
    /// `CU_CTX_SCHED_AUTO`.
    Auto,
    /// `CU_CTX_SCHED_SPIN`.
    Spin,
    /// `CU_CTX_SCHED_YIELD`.
    Yield,
    /// `CU_CTX_SCHED_BLOCKING_SYNC`.
    BlockingSync,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub frames: u32,
    /// Shared frame buffers in the ring (2: ping-pong).
    pub buffers: u32,
    /// Frames per hand-off: the producer signals, and the consumer waits, once per this many
    /// frames (1: every frame); at most `buffers` (the ring's rule).
    pub batch: u32,
    pub frame_bytes: u64,
    pub consumer: ConsumerKind,
    pub device_id: u32,
    /// 2: the consumer runs in a child process that receives the ring over a Unix socket.
    pub processes: u32,
    /// At most this many frames queued beyond the last one the consumer finished (the host waits
    /// before queueing more; at least `batch`), or `None`: only the ring bounds it.
    pub ahead: Option<u32>,
    /// About this much GPU work per frame on each side, in ms, from a loop count calibrated on
    /// each side alone before the runs; `None`: none beyond writing and summing the frame.
    pub work_ms: Option<f64>,
    /// Also run the frames staged through host memory.
    pub staged: bool,
    /// The global priority of the producer's Vulkan queue.
    pub queue_priority: Option<QueueGlobalPriority>,
    /// The CUDA consumer's stream priority.
    pub stream_priority: Option<StreamPriority>,
    /// The CUDA consumer's context scheduling flags.
    pub cuda_sched: Option<CudaSched>,
}

impl Options {
    /// The demo's defaults for `frames` frames of `frame_bytes` with `consumer`.
    pub fn new(frames: u32, frame_bytes: u64, consumer: ConsumerKind, device_id: u32) -> Self {
        Options {
            frames,
            buffers: 2,
            batch: 1,
            frame_bytes,
            consumer,
            device_id,
            processes: 1,
            ahead: None,
            work_ms: None,
            staged: true,
            queue_priority: None,
            stream_priority: None,
            cuda_sched: None,
        }
    }

    /// Checks the options against each other.
    fn validate(&self) -> Result<()> {
        let usage = |s: String| Err(Error::Usage(s));
        if self.frames < 2 || self.frame_bytes < 1024 || !self.frame_bytes.is_multiple_of(4) {
            return usage("at least 2 frames of at least 1024 bytes, a multiple of 4".into());
        }
        if self.frame_bytes / 4 > u64::from(u32::MAX) {
            return usage(format!("frames of at most {} bytes", u64::from(u32::MAX) * 4));
        }
        if !(2..=16).contains(&self.buffers) {
            return usage("2 to 16 shared buffers".into());
        }
        if let Some(a) = self.ahead.filter(|&a| a < self.batch) {
            return usage(format!(
                "--ahead {a} must be at least --batch {}: a batch is queued whole",
                self.batch
            ));
        }
        if self.work_ms.is_some_and(|w| !(w > 0.0 && w <= 100.0)) {
            return usage("--work-ms is more than 0 and at most 100".into());
        }
        if !(1..=2).contains(&self.processes) {
            return usage("--processes is 1 or 2".into());
        }
        if self.processes == 2 && (self.stream_priority.is_some() || self.cuda_sched.is_some()) {
            return usage(
                "the CUDA stream priority and scheduling apply to the consumer in this process".into(),
            );
        }
        Ok(())
    }
}

/// The checksum the consumer must find for `frame`.
fn expected_sum(frame: u32, words: u32) -> u32 {
    (0..words).fold(0u32, |acc, i| {
        acc.wrapping_add(
            i.wrapping_mul(2_654_435_761) ^ frame.wrapping_mul(40503).wrapping_add(2_654_435_769),
        )
    })
}

/// What one run measured.
pub struct Measured {
    pub frames: u32,
    pub frame_bytes: u64,
    /// The consumer, as it describes itself (read by `bench`, which is Unix only).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub consumer: String,
    /// Whether the consumer waited and signalled on the GPU (read by `bench`'s OpenGL rows).
    #[cfg_attr(not(all(unix, feature = "opengl")), allow(dead_code))]
    pub gpu_semaphores: bool,
    /// The zero-copy pipeline, all frames.
    pub zero_copy: Duration,
    /// Per frame of the pipeline: from the producer's submission to the host seeing the
    /// consumer's signal for it (the end of its batch), sorted.
    pub latency: Vec<Duration>,
    /// The same frames staged through host memory (when asked for).
    pub staging: Option<Duration>,
    /// The producer alone, no consumer, the same number of frames.
    pub producer_alone: Duration,
    /// The consumer alone (no producer, no semaphores), the same number of frames.
    pub consumer_alone: Duration,
    /// Both at once with no hand-off, each on its own frames, the same number of frames each:
    /// until both are done.
    pub both_at_once: Duration,
    /// The calibrated work rounds of the producer and the consumer.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub rounds: (u32, u32),
}

impl Measured {
    /// Frames per second and GB/s for one of the durations.
    pub fn rate(&self, d: Duration) -> (f64, f64) {
        let bytes = f64::from(self.frames) * self.frame_bytes as f64;
        (f64::from(self.frames) / d.as_secs_f64(), bytes / d.as_secs_f64() / 1e9)
    }

    /// The `p`-th percentile (0–100) of the per-frame latency.
    pub fn latency_percentile(&self, p: usize) -> Duration {
        let n = self.latency.len();
        self.latency.get((n * p / 100).min(n.saturating_sub(1))).copied().unwrap_or_default()
    }
}

/// `lava-flow demo`: runs the pipeline and prints what it measured.
pub fn run(options: &Options) -> Result<()> {
    let m = measure(options, false)?;
    let (zfps, zgbs) = m.rate(m.zero_copy);
    println!("zero-copy: {zfps:.1} frames/s, {zgbs:.2} GB/s shared ({:.2?})", m.zero_copy);
    println!(
        "per-frame latency (producer submit → consumer done): p50 {:.2?}, p99 {:.2?}",
        m.latency_percentile(50),
        m.latency_percentile(99)
    );
    if let Some(staging) = m.staging {
        let (sfps, sgbs) = m.rate(staging);
        println!("staging through host memory: {sfps:.1} frames/s, {sgbs:.2} GB/s ({staging:.2?})");
        println!("zero-copy is {:.1}× the staged pipeline", zfps / sfps);
    }
    let (pfps, _) = m.rate(m.producer_alone);
    let (cfps, _) = m.rate(m.consumer_alone);
    let (bfps, _) = m.rate(m.both_at_once);
    println!(
        "producer alone: {pfps:.1} frames/s, consumer alone: {cfps:.1} frames/s; the pipeline runs at \
         {:.2}× the slower of the two",
        zfps / pfps.min(cfps)
    );
    println!(
        "both at once, no hand-off (the ceiling): {bfps:.1} frames/s; the pipeline runs at {:.2}× it",
        zfps / bfps
    );
    if options.work_ms.is_some() {
        println!("work rounds per word: producer {}, consumer {}", m.rounds.0, m.rounds.1);
    }
    let pipelines = if m.staging.is_some() { "in both pipelines" } else { "in the zero-copy pipeline" };
    println!("all {} frame checksums verified, {pipelines}", m.frames);
    Ok(())
}

/// Runs the pipelines, checks every checksum and, with `LAVA_FLOW_VALIDATION=1`, that the
/// validation layer said nothing.
pub fn measure(options: &Options, quiet: bool) -> Result<Measured> {
    options.validate()?;
    let mut allocator_options = AllocatorOptions::default();
    allocator_options.queue_global_priority = options.queue_priority;
    let allocator = MemoryAllocator::with_options(allocator_options)?;
    let mut logs = vec![allocator.validation_log()];
    let result = pipeline(options, allocator, quiet, &mut logs);
    // Everything is dropped now, devices included: with LAVA_FLOW_VALIDATION=1 any message the
    // validation layer printed on the way (for any device the demo made) fails the demo.
    let messages: Vec<String> = logs.iter().flatten().flat_map(|l| l.take()).collect();
    if !messages.is_empty() {
        for m in &messages {
            eprintln!("validation: {m}");
        }
        return Err(Error::Validation(messages.len()));
    }
    result
}

/// One consumer of the frames: CUDA, OpenGL, OpenCL or Vulkan.
pub(crate) trait Consumer {
    /// What consumes, for the report (e.g. "OpenGL compute on <renderer>").
    fn describe(&self) -> String;
    /// Whether the semaphores are waited for and signalled on the GPU (not the host fallback).
    fn gpu_semaphores(&self) -> bool;
    /// Rounds of calibrated work per word from now on (0: none); the checksums stay the same.
    fn set_rounds(&mut self, rounds: u32) -> Result<()>;
    /// Zero-copy: queues "wait for `step.wait` on the ring's `written`, checksum the ring's slot
    /// `step.slot` into shared `sums[f]`, then signal `step.signal` on `released`", without
    /// waiting on the host where the API can wait on the GPU.
    fn consume(&mut self, f: u32, step: &FrameStep) -> Result<()>;
    /// Staged: uploads frame `f` from host memory into the consumer's own memory and checksums it
    /// into its own sums.
    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()>;
    /// Waits for the staged work and returns its sums.
    fn staged_sums(&mut self) -> Result<Vec<u8>>;
    /// The consumer alone: checksums its own frame `own` (not the ring's) with no semaphore.
    fn consume_alone(&mut self, f: u32, own: usize) -> Result<()>;
    /// Waits until the consumer's queued work is done.
    fn finish(&mut self) -> Result<()>;
}

fn pipeline(
    options: &Options,
    mut allocator: MemoryAllocator,
    quiet: bool,
    logs: &mut Vec<Option<lava_flow::ValidationLog>>,
) -> Result<Measured> {
    let consumer = match options.consumer {
        ConsumerKind::Auto if cuda_present(&allocator, options.device_id) => ConsumerKind::Cuda,
        ConsumerKind::Auto if cfg!(feature = "opengl") => ConsumerKind::Opengl,
        ConsumerKind::Auto => ConsumerKind::Vulkan,
        other => other,
    };
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    let words = (options.frame_bytes / 4) as u32;
    let ring_options =
        RingOptions::new(options.buffers).batch(options.batch).frames(u64::from(options.frames));
    let ring = Ring::new_buffers(&mut allocator, location, options.frame_bytes, ring_options)?;
    // The consumer's own frames, as many as the ring's: read alone and in the ceiling run, never
    // handed over.
    let own = (0..options.buffers)
        .map(|_| allocator.allocate(options.frame_bytes, location))
        .collect::<lava_flow::Result<Vec<_>>>()?;
    let sums = allocator.allocate(u64::from(options.frames) * 4, location)?;
    sums.write(0, &vec![0; options.frames as usize * 4])?;
    let side = allocator.timeline_semaphore(options.device_id)?;
    let shared = Shared { ring: &ring, own: &own, sums: &sums, side: &side, words };
    let producer = Producer::new(&allocator, options.device_id, &shared.frames(), words)?;
    // Each consumer borrows what it imports; the runs borrow it in turn.
    macro_rules! run {
        ($consumer:expr) => {
            run_frames(options, &allocator, &producer, &shared, &mut $consumer, quiet)
        };
    }
    if options.processes == 2 {
        #[cfg(all(unix, feature = "cuda"))]
        if consumer == ConsumerKind::Cuda {
            // The typed reason (no libcuda, no device with this UUID) before a child is started.
            lava_flow::cuda::Context::for_device(&allocator, options.device_id)?;
            return run!(process::ProcessConsumer::spawn(options, &shared)?);
        }
        if !cfg!(unix) {
            return Err(Error::Usage(
                "--processes 2 hands the ring to the child over a Unix socket: Unix only".into(),
            ));
        }
        return Err(Error::Usage(format!(
            "--processes 2 runs the CUDA consumer in a child process; the {consumer:?} consumer runs in this \
             one (CUDA is {})",
            if cuda_present(&allocator, options.device_id) { "present" } else { "not available here" }
        )));
    }
    match consumer {
        #[cfg(feature = "cuda")]
        ConsumerKind::Cuda => run!(cuda::CudaConsumer::new(&allocator, options, &shared)?),
        #[cfg(feature = "opencl")]
        ConsumerKind::Opencl => {
            let cl = lava_flow::opencl::Context::for_device(&allocator, options.device_id)?;
            let staged = [
                allocator.allocate(options.frame_bytes, location)?,
                allocator.allocate(u64::from(options.frames) * 4, location)?,
            ];
            let mut c = opencl::ClSide::new(&cl, &shared, &staged, options)?;
            run!(c)
        }
        #[cfg(feature = "opengl")]
        ConsumerKind::Opengl => {
            let gl = lava_flow::opengl::GlContext::headless(allocator.device(options.device_id)?)?;
            let mut c = opengl::GlSide::new(&gl, &shared, options.frames, options.frame_bytes)?;
            run!(c)
        }
        ConsumerKind::Vulkan => {
            let other = MemoryAllocator::new()?;
            logs.push(other.validation_log());
            let mut c = vulkan::VkSide::new(other, &shared, options)?;
            run!(c)
        }
        #[cfg(not(feature = "cuda"))]
        ConsumerKind::Cuda => Err(Error::NotBuilt { consumer: "CUDA", feature: "cuda" }),
        #[cfg(not(feature = "opencl"))]
        ConsumerKind::Opencl => Err(Error::NotBuilt { consumer: "OpenCL", feature: "opencl" }),
        #[cfg(not(feature = "opengl"))]
        ConsumerKind::Opengl => Err(Error::NotBuilt { consumer: "OpenGL", feature: "opengl" }),
        ConsumerKind::Auto => unreachable!("auto was resolved above"),
    }
}

/// Whether CUDA has a device with this device's UUID.
fn cuda_present(allocator: &MemoryAllocator, device_id: u32) -> bool {
    #[cfg(feature = "cuda")]
    {
        lava_flow::cuda::Context::for_device(allocator, device_id).is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (allocator, device_id);
        false
    }
}

/// What producer and consumer share: the ring, the consumer's own frames, the sums, and the
/// producer's timeline for the runs outside the ring.
pub(crate) struct Shared<'a> {
    pub ring: &'a Ring,
    pub own: &'a [Buffer],
    pub sums: &'a Buffer,
    /// Signalled by the producer outside the ring (staged, alone, calibration): the ring's
    /// timelines carry the ring's values only.
    pub side: &'a TimelineSemaphore,
    pub words: u32,
}

impl Shared<'_> {
    /// The ring's buffers, then the consumer's own.
    pub fn frames(&self) -> Vec<&Buffer> {
        self.ring.buffers().iter().chain(self.own).collect()
    }

    /// The ring's slots.
    fn slots(&self) -> u32 {
        self.ring.slot_count() as u32
    }
}

/// How long one timed step may wait for the GPU.
const WAIT: Duration = Duration::from_secs(300);

/// The pipelines with one consumer: zero-copy, staged through host memory, each side alone, both
/// at once.
fn run_frames(
    options: &Options,
    allocator: &MemoryAllocator,
    producer: &Producer,
    shared: &Shared<'_>,
    consumer: &mut dyn Consumer,
    quiet: bool,
) -> Result<Measured> {
    let (ring, side) = (shared.ring, shared.side);
    let released = ring.released();
    let (buffers, batch, frames) = (options.buffers, options.batch, options.frames);
    if !quiet {
        println!(
            "lava-flow demo: {frames} frames of {} KiB in {buffers} shared buffers, Vulkan compute → {} ({} \
             semaphores)",
            options.frame_bytes / 1024,
            consumer.describe(),
            if consumer.gpu_semaphores() { "GPU" } else { "host-fallback" }
        );
    }
    // `side`'s last value: each run outside the ring signals it above the last one.
    let mut next_value = 0;
    let rounds = match options.work_ms {
        Some(ms) => {
            let rounds = calibrate(options, allocator, producer, shared, consumer, ms, &mut next_value)?;
            // The calibration summed into the sums (its work is done): start them again.
            shared.sums.write(0, &vec![0; frames as usize * 4])?;
            rounds
        }
        None => (0, 0),
    };
    producer.set_rounds(rounds.0);
    consumer.set_rounds(rounds.1)?;

    // Zero-copy through the ring: the producer runs ahead by at most the ring. One hand-off per
    // batch of frames (the ring's steps say where). A batch's frames are all submitted to the
    // producer before the consumer's (consumers that order through the host wait there for the
    // batch's end). A second thread notes when each batch's release arrives, for the per-frame
    // latency.
    let ends: Vec<u64> =
        (batch..frames + batch).step_by(batch as usize).map(|e| u64::from(e.min(frames))).collect();
    let mut submitted = Vec::with_capacity(frames as usize);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let (queued, done) = std::thread::scope(|s| {
        let waiter = s.spawn(|| wait_each(released, &ends, &stop));
        let mut progress = Progress::new(frames, "zero-copy", quiet);
        let mut queue = || -> Result<()> {
            let (mut producing, mut consuming) = (ring.producer()?, ring.consumer()?);
            for first in (0..frames).step_by(batch as usize) {
                let end = (first + batch).min(frames);
                if let Some(ahead) = options.ahead {
                    // At most `ahead` frames beyond the last one consumed: wait for the batch
                    // that ends at or before `end - ahead`.
                    let need = (end.saturating_sub(ahead) / batch) * batch;
                    if need > 0 {
                        released.wait(u64::from(need), WAIT)?;
                    }
                }
                for f in first..end {
                    let step = producing.next_frame()?;
                    submitted.push(Instant::now());
                    producer.produce_step(allocator, ring, f, &step)?;
                }
                for f in first..end {
                    consumer.consume(f, &consuming.next_frame()?)?;
                }
                progress.tick(end);
            }
            Ok(())
        };
        let queued = queue();
        progress.done();
        // After a failure, no signal may come: the waiter stops.
        stop.store(queued.is_err(), std::sync::atomic::Ordering::Relaxed);
        (queued, waiter.join())
    });
    queued?;
    let done = done.map_err(|_| Error::Usage("the latency thread panicked".into()))??;
    let zero_copy = start.elapsed();
    // Every release was seen; the consumer's writes of the sums are done too.
    consumer.finish()?;
    let mut latency: Vec<Duration> =
        submitted.iter().enumerate().map(|(f, t)| done[f / batch as usize].duration_since(*t)).collect();
    latency.sort();
    let mut got = vec![0u8; frames as usize * 4];
    shared.sums.read(0, &mut got)?;
    let bad = count_bad(&got, frames, shared.words);

    // The same frames through host memory: download from Vulkan, upload to the consumer.
    let mut staging = None;
    let mut staged_bad = 0;
    if options.staged {
        let mut host = vec![0u8; options.frame_bytes as usize];
        let start = Instant::now();
        let mut progress = Progress::new(frames, "staging", quiet);
        for f in 0..frames {
            next_value += 1;
            producer.produce(allocator, f, 0, None, Some((side, next_value)))?;
            side.wait(next_value, Duration::from_secs(60))?;
            ring.buffers()[0].read(0, &mut host)?;
            consumer.consume_staged(f, &host)?;
            progress.tick(f + 1);
        }
        let staged_sums = consumer.staged_sums()?;
        staging = Some(start.elapsed());
        progress.done();
        staged_bad = count_bad(&staged_sums, frames, shared.words);
    }

    // Each side alone, and both at once with no hand-off (the producer on the ring's buffers, the
    // consumer on its own): how close the pipeline comes to what the GPU does with both.
    let own = |f: u32| (f % buffers) as usize;
    fill_own(allocator, producer, shared, &mut next_value)?;
    let producer_alone = produce_alone(allocator, producer, shared, frames, &mut next_value)?;
    let start = Instant::now();
    for f in 0..frames {
        consumer.consume_alone(f, own(f))?;
    }
    consumer.finish()?;
    let consumer_alone = start.elapsed();
    let start = Instant::now();
    for f in 0..frames {
        let signal = (f + 1 == frames).then(|| (side, next_value + 1));
        producer.produce(allocator, f, (f % buffers) as usize, None, signal)?;
        consumer.consume_alone(f, own(f))?;
    }
    next_value += 1;
    consumer.finish()?;
    side.wait(next_value, WAIT)?;
    let both_at_once = start.elapsed();
    // Submissions waited for values the consumer signalled: a fenced wait lets the validation
    // layer see them complete before the semaphores go.
    allocator.wait_idle(options.device_id)?;

    if bad == 0 && staged_bad == 0 {
        Ok(Measured {
            frames,
            frame_bytes: options.frame_bytes,
            consumer: consumer.describe(),
            gpu_semaphores: consumer.gpu_semaphores(),
            zero_copy,
            latency,
            staging,
            producer_alone,
            consumer_alone,
            both_at_once,
            rounds,
        })
    } else {
        Err(Error::WrongData(format!(
            "wrong frame checksums: {bad} of {frames} zero-copy, {staged_bad} staged"
        )))
    }
}

/// Waits for each of `values` on `timeline` in turn: when the host saw each. Gives up when `stop`
/// is set, or after [`WAIT`].
fn wait_each(
    timeline: &TimelineSemaphore,
    values: &[u64],
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<Instant>> {
    let start = Instant::now();
    let mut seen = Vec::with_capacity(values.len());
    for &v in values {
        loop {
            match timeline.wait(v, Duration::from_millis(100)) {
                Ok(()) => break,
                Err(lava_flow::Error::Timeout(..))
                    if !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < WAIT => {}
                Err(e) => return Err(e.into()),
            }
        }
        seen.push(Instant::now());
    }
    Ok(seen)
}

/// Writes a frame into each of the consumer's own buffers, which it reads alone.
fn fill_own(
    allocator: &MemoryAllocator,
    producer: &Producer,
    shared: &Shared<'_>,
    next: &mut u64,
) -> Result<()> {
    for i in 0..shared.own.len() as u32 {
        *next += 1;
        let slot = (shared.slots() + i) as usize;
        producer.produce(allocator, i, slot, None, Some((shared.side, *next)))?;
    }
    Ok(shared.side.wait(*next, WAIT)?)
}

/// `frames` frames from the producer alone, into the ring's buffers: how long.
fn produce_alone(
    allocator: &MemoryAllocator,
    producer: &Producer,
    shared: &Shared<'_>,
    frames: u32,
    next: &mut u64,
) -> Result<Duration> {
    let start = Instant::now();
    for f in 0..frames {
        let signal = (f + 1 == frames).then(|| (shared.side, *next + 1));
        producer.produce(allocator, f, (f % shared.slots()) as usize, None, signal)?;
    }
    *next += 1;
    shared.side.wait(*next, WAIT)?;
    Ok(start.elapsed())
}

/// The work rounds per word that make each side, alone, take about `ms` per frame: doubled from
/// 16 until a frame takes longer, then interpolated linearly from no rounds. A side slower than
/// `ms` without any gets none.
fn calibrate(
    options: &Options,
    allocator: &MemoryAllocator,
    producer: &Producer,
    shared: &Shared<'_>,
    consumer: &mut dyn Consumer,
    ms: f64,
    next: &mut u64,
) -> Result<(u32, u32)> {
    let frames = options.buffers.max(4);
    let target = ms / 1e3;
    fill_own(allocator, producer, shared, next)?;
    let mut time_producer = |rounds: u32| -> Result<f64> {
        producer.set_rounds(rounds);
        let d = produce_alone(allocator, producer, shared, frames, next)?;
        Ok(d.as_secs_f64() / f64::from(frames))
    };
    let p = fit(target, &mut time_producer)?;
    let mut time_consumer = |rounds: u32| -> Result<f64> {
        consumer.set_rounds(rounds)?;
        let start = Instant::now();
        for f in 0..frames {
            consumer.consume_alone(f, (f % shared.slots()) as usize)?;
        }
        consumer.finish()?;
        Ok(start.elapsed().as_secs_f64() / f64::from(frames))
    };
    let c = fit(target, &mut time_consumer)?;
    Ok((p, c))
}

/// The rounds at which `time` (seconds per frame) reaches `target`, as [`calibrate`] says.
fn fit(target: f64, time: &mut dyn FnMut(u32) -> Result<f64>) -> Result<u32> {
    time(0)?; // warm-up
    let t0 = time(0)?;
    if t0 >= target {
        return Ok(0);
    }
    let mut rounds = 16u32;
    let mut t = time(rounds)?;
    while t < target && rounds < 1 << 24 {
        rounds *= 2;
        t = time(rounds)?;
    }
    if t <= t0 {
        return Ok(rounds);
    }
    Ok(((target - t0) / (t - t0) * f64::from(rounds)).round().max(1.0) as u32)
}

/// How many of the little-endian u32 sums in `got` differ from the expected ones.
fn count_bad(got: &[u8], frames: u32, words: u32) -> usize {
    (0..frames)
        .filter(|&f| {
            let i = f as usize * 4;
            u32::from_le_bytes([got[i], got[i + 1], got[i + 2], got[i + 3]]) != expected_sum(f, words)
        })
        .count()
}

/// A text progress bar on stderr, drawn only where stderr is a terminal (a log would fill with
/// carriage returns).
struct Progress {
    total: u32,
    label: &'static str,
    last: Instant,
    draw: bool,
}

impl Progress {
    fn new(total: u32, label: &'static str, quiet: bool) -> Self {
        Progress { total, label, last: Instant::now(), draw: !quiet && std::io::stderr().is_terminal() }
    }

    fn tick(&mut self, done: u32) {
        if !self.draw || (self.last.elapsed() < Duration::from_millis(100) && done != self.total) {
            return;
        }
        self.last = Instant::now();
        let width = 30;
        let filled = (done as usize * width) / self.total.max(1) as usize;
        eprint!(
            "\r{:>9} [{}{}] {done}/{}",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
    }

    fn done(&self) {
        if self.draw {
            eprintln!();
        }
    }
}

/// The Vulkan producer: a compute pass writing frame `f` into the frame buffer of its slot.
struct Producer {
    pass: Compute,
    words: u32,
    /// Work rounds per word ([`Consumer::set_rounds`]).
    rounds: std::cell::Cell<u32>,
}

impl Producer {
    /// A pass over `frames`: the ring's slots, then the consumer's own frames.
    fn new(allocator: &MemoryAllocator, device_id: u32, frames: &[&Buffer], words: u32) -> Result<Self> {
        let slots: Vec<Vec<&Buffer>> = frames.iter().map(|f| vec![*f]).collect();
        let pass = Compute::new(allocator, device_id, Shader::Glsl(PRODUCER), &slots, words.div_ceil(256))?;
        Ok(Producer { pass, words, rounds: std::cell::Cell::new(0) })
    }

    fn set_rounds(&self, rounds: u32) {
        self.rounds.set(rounds);
    }

    /// Frame `f` into `slot`, after `after`, then `signal`.
    fn produce(
        &self,
        allocator: &MemoryAllocator,
        f: u32,
        slot: usize,
        after: Option<(&TimelineSemaphore, u64)>,
        signal: Option<(&TimelineSemaphore, u64)>,
    ) -> Result<()> {
        self.pass.run(allocator, [f, self.words, self.rounds.get(), 0], slot, after, signal)
    }

    /// Frame `f` as the ring's producer `step` says: into its slot, after its wait, then its
    /// signal (the ring's submission for the step, with the dispatch).
    fn produce_step(&self, allocator: &MemoryAllocator, ring: &Ring, f: u32, step: &FrameStep) -> Result<()> {
        let recorded = self.pass.record([f, self.words, self.rounds.get(), 0], step.slot)?;
        Ok(allocator.submit(ring.device_id(), &recorded.submission(ring.submission(step)?))?)
    }
}
