//! Frame rings: N slots (buffers, or images of one description) that a producer fills and a
//! consumer reads, ordered by timeline semaphores, with batched hand-offs.
//!
//! ```
//! use lava_flow::{MemoryAllocator, MemoryLocation, Ring, RingOptions};
//!
//! # fn main() -> lava_flow::Result<()> {
//! let mut allocator = MemoryAllocator::new()?;
//! let location = MemoryLocation::GpuVulkan { device_id: 0 };
//! let ring = Ring::new_buffers(&mut allocator, location, 4096, RingOptions::new(4).batch(2).frames(8))?;
//! let (mut producer, mut consumer) = (ring.producer()?, ring.consumer()?);
//! // Both ends on one Vulkan queue here, which runs in order: each batch's writes are submitted
//! // before its reads. (Ends on different queues or APIs need no such care.)
//! for _batch in 0..4 {
//!     for _ in 0..2 {
//!         let step = producer.next_frame()?;
//!         // Record work that writes ring.buffers()[step.slot] into a command buffer, then:
//!         allocator.submit(0, &ring.submission(&step)?)?;
//!     }
//!     for _ in 0..2 {
//!         let step = consumer.next_frame()?;
//!         // A consumer in any API: wait for step.wait, read the slot, signal step.signal.
//!         allocator.submit(0, &ring.submission(&step)?)?;
//!     }
//! }
//! ring.released().wait(8, std::time::Duration::from_secs(10))?;
//! # Ok(()) }
//! ```
//!
//! # Values
//! A ring has two timelines, [`written`](Ring::written) (the producer's) and
//! [`released`](Ring::released) (the consumer's). Frame `f` lives in slot `f % N`. With a batch of
//! `K` frames (one hand-off per batch, batches `[bK, bK + K)`), the arithmetic of
//! [`RingSchedule`] is:
//! - the producer signals `written = f + 1` after the last frame of a batch;
//! - the consumer waits for `written ≥ end of the batch` before the first frame of a batch, and
//!   signals `released = f + 1` after its last frame;
//! - the producer waits for `released ≥ f − N + K` before frame `f` when `f ≥ N` and `f − N` starts
//!   a batch: the release of the batch that last used the slots it is about to write. This is a
//!   queue wait (GPU side), so the host never blocks on back-pressure.
//!
//! Any batch from 1 to N works, including batches that do not divide N (the batch that last used
//! a slot may then end later than that slot's frame; the producer waits for that batch's end,
//! which comes no later than the frame before it: no deadlock). A batch above N is refused
//! ([`RingError::Batch`]): the consumer would wait for frames that cannot be written before it
//! releases. A batch above N / 2 is allowed but serialises the two sides (the producer can only
//! refill slots once the whole previous batch is released). A ring of known length
//! ([`RingOptions::frames`]) ends its last batch early, at the last frame; an endless ring hands
//! off whole batches only.
//!
//! # Why two timelines
//! Timeline values only grow, and producer and consumer run at the same time: one counter
//! would force their signals into one total order (written 1, released 1, written 2, …), which is
//! lock-step. Two counters carry two independent progresses (ADR 0013).
//!
//! # Consumers
//! Every API sees the ring the same way: a [`FrameStep`] (slot, value to wait for, value to
//! signal), taken from a [`Producer`] or [`Consumer`] cursor, and an adapter that imports the
//! slots and timelines once: [`Ring::submission`] (Vulkan, the ring's device),
//! [`VulkanRing`] (a second `VkDevice` or allocator), `GlRing` (OpenGL), `CudaRing` (CUDA
//! streams), `ClRing` (OpenCL). Each adapter waits and signals for either end, so a producer
//! can be in any API too.

#[cfg(feature = "opencl")]
mod cl;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "opengl")]
mod gl;
mod vk;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "opencl")]
pub use cl::ClRing;
#[cfg(feature = "cuda")]
pub use cuda::CudaRing;
#[cfg(feature = "opengl")]
pub use gl::GlRing;
pub use vk::VulkanRing;

use crate::error::Result;
use crate::vulkan::{Buffer, Image, ImageDesc, MemoryAllocator, Submission, TimelineSemaphore};
use crate::MemoryLocation;

/// The most slots a ring may have.
pub const MAX_SLOTS: u32 = 1024;

/// What one dependent hand-off between two GPU contexts costs, as measured on an H200 (issue 15:
/// ~160–175 µs each way, Vulkan ↔ CUDA, whichever the APIs): the figure
/// [`batch_for_latency`] adds to a batch's latency.
pub const HANDOFF_COST: Duration = Duration::from_micros(160);

/// A broken rule of a ring's shape or use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The slot count is 0 or above [`MAX_SLOTS`].
    #[error("a ring has 1 to {max} slots, not {slots}")]
    Slots {
        /// The count asked for.
        slots: u32,
        /// [`MAX_SLOTS`].
        max: u32,
    },
    /// The batch is 0 or more than the slots.
    #[error(
        "a ring of {slots} slot(s) hands off batches of 1 to {slots} frames, not {batch} (the consumer \
         would wait for frames that cannot be written before it releases any)"
    )]
    Batch {
        /// The batch asked for.
        batch: u32,
        /// The ring's slots.
        slots: u32,
    },
    /// A ring of known length was given 0 frames.
    #[error("a ring of known length has at least 1 frame")]
    NoFrames,
    /// A cursor went past the last frame of a ring of known length.
    #[error("the ring's {frames} frame(s) have all been handed out to the {end}")]
    Finished {
        /// The ring's length.
        frames: u64,
        /// Which end.
        end: End,
    },
    /// A second cursor was asked for an end that already has one.
    #[error("the ring's {end} end is already taken: one producer and one consumer per ring")]
    EndTaken {
        /// Which end.
        end: End,
    },
    /// A step was given to the wrong ring or adapter (its slot does not exist there).
    #[error("slot {slot} of a ring of {slots} slot(s)")]
    NoSuchSlot {
        /// The step's slot.
        slot: usize,
        /// The ring's slots.
        slots: usize,
    },
    /// A step handed out by another ring's cursor was given to this ring or its adapter: its
    /// values belong to the other ring's timelines.
    #[error("a step of another ring (frame {frame} of its {end}) was given to this ring")]
    OtherRing {
        /// The step's frame.
        frame: u64,
        /// The step's end.
        end: End,
    },
}

/// The two ends of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// Writes slots: waits on [`Ring::released`], signals [`Ring::written`].
    Producer,
    /// Reads slots: waits on [`Ring::written`], signals [`Ring::released`].
    Consumer,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Producer => "producer",
            End::Consumer => "consumer",
        })
    }
}

/// One frame as one end sees it: which slot, what to wait for before touching it, and what to
/// signal after. The timelines are the end's: a producer waits on `released` and signals
/// `written`; a consumer the other way round ([`Ring::wait_timeline`], [`Ring::signal_timeline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameStep {
    /// Which end this step is for.
    pub end: End,
    /// The frame number, from 0.
    pub frame: u64,
    /// The slot the frame lives in (`frame % slots`).
    pub slot: usize,
    /// Before touching the slot, wait until the other end's timeline reaches this value.
    pub wait: Option<u64>,
    /// After the work on the slot (and every earlier step's), set this end's timeline to this
    /// value.
    pub signal: Option<u64>,
    /// The ring whose cursor handed the step out (its [`Ring`]'s identity), or 0 for a step
    /// computed from a [`RingSchedule`] alone, which no ring can check. Private: steps are
    /// made by cursors and schedules (or [`FrameStep::new`], which belongs to no ring).
    ring: u64,
}

impl FrameStep {
    /// A step from its parts — say, one that came from another process, whose ring's values it
    /// carries. It belongs to no ring here, so no ring can tell it from its own: prefer the
    /// steps of a cursor or a [`RingSchedule`].
    pub fn new(end: End, frame: u64, slot: usize, wait: Option<u64>, signal: Option<u64>) -> Self {
        FrameStep { end, frame, slot, wait, signal, ring: 0 }
    }

    /// Whether the step was handed out by a cursor of a ring other than the one with identity
    /// `ring` (a step of a schedule alone belongs to no ring and passes).
    fn is_of_another_ring(&self, ring: u64) -> bool {
        self.ring != 0 && self.ring != ring
    }
}

/// The ring's value arithmetic, a pure function of the shape: which values each end of frame
/// `f` waits for and signals (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingSchedule {
    slots: u32,
    batch: u32,
    frames: Option<u64>,
}

impl RingSchedule {
    /// An endless ring of `slots` slots handing off every `batch` frames. Errors:
    /// [`RingError::Slots`], [`RingError::Batch`].
    pub fn new(slots: u32, batch: u32) -> std::result::Result<Self, RingError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(RingError::Slots { slots, max: MAX_SLOTS });
        }
        if batch == 0 || batch > slots {
            return Err(RingError::Batch { batch, slots });
        }
        Ok(RingSchedule { slots, batch, frames: None })
    }

    /// The same ring with a known length: its last batch ends at the last frame. Errors:
    /// [`RingError::NoFrames`].
    pub fn with_frames(mut self, frames: u64) -> std::result::Result<Self, RingError> {
        if frames == 0 {
            return Err(RingError::NoFrames);
        }
        self.frames = Some(frames);
        Ok(self)
    }

    /// The slot count.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Frames per hand-off.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// The ring's length, if known.
    pub fn frames(&self) -> Option<u64> {
        self.frames
    }

    /// One past the last frame of the batch that holds `frame` (a frame below
    /// [`len`](Self::len)). Saturating: a batch that would end past `u64::MAX` ends at the
    /// ring's length.
    fn batch_end(&self, frame: u64) -> u64 {
        let k = u64::from(self.batch);
        let end = (frame / k + 1).saturating_mul(k);
        self.frames.map_or(end, |n| end.min(n))
    }

    /// The number of frames the ring hands out: its length, or for an endless ring as many
    /// whole batches as timeline values reach (the last batch's signal is at most `u64::MAX`).
    fn len(&self) -> u64 {
        let k = u64::from(self.batch);
        self.frames.unwrap_or(u64::MAX / k * k)
    }

    fn check(&self, frame: u64, end: End) -> std::result::Result<(), RingError> {
        let frames = self.len();
        if frame >= frames {
            return Err(RingError::Finished { frames, end });
        }
        Ok(())
    }

    /// The producer's step for `frame`. Errors: [`RingError::Finished`] past the ring's length
    /// (for an endless ring, past the last whole batch whose values a timeline can hold).
    pub fn producer(&self, frame: u64) -> std::result::Result<FrameStep, RingError> {
        self.check(frame, End::Producer)?;
        let (n, k) = (u64::from(self.slots), u64::from(self.batch));
        // The batch that last used these slots starts at frame - n: wait for its release once,
        // before the first frame that reuses one of its slots. It ends at frame - n + k, which
        // is at most `frame` (k ≤ n), so it never waits for its own writes.
        let wait = (frame >= n && (frame - n).is_multiple_of(k)).then(|| frame - n + k);
        let signal = (frame + 1 == self.batch_end(frame)).then_some(frame + 1);
        Ok(FrameStep { end: End::Producer, frame, slot: self.slot(frame), wait, signal, ring: 0 })
    }

    /// The consumer's step for `frame`. Errors: [`RingError::Finished`] past the ring's length.
    pub fn consumer(&self, frame: u64) -> std::result::Result<FrameStep, RingError> {
        self.check(frame, End::Consumer)?;
        let end = self.batch_end(frame);
        let wait = frame.is_multiple_of(u64::from(self.batch)).then_some(end);
        let signal = (frame + 1 == end).then_some(frame + 1);
        Ok(FrameStep { end: End::Consumer, frame, slot: self.slot(frame), wait, signal, ring: 0 })
    }

    /// The step of `end` for `frame`.
    pub fn step(&self, end: End, frame: u64) -> std::result::Result<FrameStep, RingError> {
        match end {
            End::Producer => self.producer(frame),
            End::Consumer => self.consumer(frame),
        }
    }

    fn slot(&self, frame: u64) -> usize {
        (frame % u64::from(self.slots)) as usize
    }
}

/// The batch a ring of `slots` slots should use when a frame takes `frame_time` on the slower
/// side and the user accepts `budget` of added latency from batching.
///
/// The rule: a batch of `K` delays a batch's first frame by the `K − 1` frames after it (it is
/// handed off with the last) plus one hand-off ([`HANDOFF_COST`]). The largest `K` with
/// `(K − 1) · frame_time + HANDOFF_COST ≤ budget` is taken — fewer hand-offs are faster — capped
/// at `max(1, slots / 2)` so that the producer can fill one half of the ring while the consumer
/// reads the other. At least 1 (a budget below one hand-off cannot be met by batching less).
pub fn batch_for_latency(slots: u32, frame_time: Duration, budget: Duration) -> u32 {
    let cap = (slots / 2).max(1);
    let Some(spare) = budget.checked_sub(HANDOFF_COST) else { return 1 };
    if frame_time.is_zero() {
        return cap;
    }
    let extra = spare.as_nanos() / frame_time.as_nanos();
    u32::try_from(extra.saturating_add(1)).unwrap_or(u32::MAX).clamp(1, cap)
}

/// How to shape a [`Ring`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOptions {
    /// Slots (1 to [`MAX_SLOTS`]).
    pub slots: u32,
    /// Frames per hand-off (1 to `slots`).
    pub batch: u32,
    /// The ring's length, if known (its last batch then ends at the last frame).
    pub frames: Option<u64>,
}

impl RingOptions {
    /// `slots` slots, a hand-off per frame, endless.
    pub fn new(slots: u32) -> Self {
        RingOptions { slots, batch: 1, frames: None }
    }

    /// Hands off every `batch` frames.
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = batch;
        self
    }

    /// Picks the batch from a latency budget ([`batch_for_latency`]).
    pub fn latency_budget(mut self, frame_time: Duration, budget: Duration) -> Self {
        self.batch = batch_for_latency(self.slots, frame_time, budget);
        self
    }

    /// A ring of `frames` frames.
    pub fn frames(mut self, frames: u64) -> Self {
        self.frames = Some(frames);
        self
    }

    /// The schedule these options describe. Errors: as [`RingSchedule::new`] and
    /// [`RingSchedule::with_frames`].
    pub fn schedule(&self) -> std::result::Result<RingSchedule, RingError> {
        let schedule = RingSchedule::new(self.slots, self.batch)?;
        match self.frames {
            Some(frames) => schedule.with_frames(frames),
            None => Ok(schedule),
        }
    }
}

/// What a ring's slots are.
#[derive(Debug)]
enum Slots {
    Buffers(Vec<Buffer>),
    Images(Vec<Image>),
}

/// A frame ring: N slots (buffers of one size, or images of one description) on one Vulkan
/// device and two exportable timelines, `written` and `released` (see the
/// [module docs](crate::ring) for the values).
///
/// Where the device cannot export timelines (lavapipe), adapters in other APIs order through the
/// host instead (each says how); the producer's back-pressure on the ring's own device stays a
/// queue wait.
///
/// # Dropping
/// Drop the adapters first (they borrow the ring), and the ring once no queued work uses its
/// slots: wait for the last value (`released().wait(n, ..)`) and, where submissions of the ring's
/// device waited for values another API signalled, [`MemoryAllocator::wait_idle`]. The timelines
/// themselves may go under pending work (see [`TimelineSemaphore`]).
#[derive(Debug)]
pub struct Ring {
    schedule: RingSchedule,
    device_id: u32,
    slots: Slots,
    written: TimelineSemaphore,
    released: TimelineSemaphore,
    producer_taken: AtomicBool,
    consumer_taken: AtomicBool,
    /// The frame each end's next cursor starts at: where the last one stopped.
    producer_next: AtomicU64,
    consumer_next: AtomicU64,
    /// This ring's identity, which the steps its cursors hand out carry (never 0).
    id: u64,
}

impl Ring {
    /// A ring of buffers of `slot_size` bytes at `location`. Errors: [`Error::Ring`](crate::Error::Ring) for the shape; allocation errors.
    pub fn new_buffers(
        allocator: &mut MemoryAllocator,
        location: MemoryLocation,
        slot_size: u64,
        options: RingOptions,
    ) -> Result<Ring> {
        let schedule = options.schedule()?;
        let buffers = (0..schedule.slots)
            .map(|_| allocator.allocate(slot_size, location))
            .collect::<Result<Vec<_>>>()?;
        Self::with_slots(allocator, location.device_id(), schedule, Slots::Buffers(buffers))
    }

    /// A ring of exportable images of one description on `device_id`. Errors: as
    /// [`new_buffers`](Ring::new_buffers), and [`MemoryAllocator::allocate_image`]'s.
    pub fn new_images(
        allocator: &mut MemoryAllocator,
        device_id: u32,
        desc: ImageDesc,
        options: RingOptions,
    ) -> Result<Ring> {
        let schedule = options.schedule()?;
        let images = (0..schedule.slots)
            .map(|_| allocator.allocate_image(device_id, desc))
            .collect::<Result<Vec<_>>>()?;
        Self::with_slots(allocator, device_id, schedule, Slots::Images(images))
    }

    fn with_slots(
        allocator: &mut MemoryAllocator,
        device_id: u32,
        schedule: RingSchedule,
        slots: Slots,
    ) -> Result<Ring> {
        Ok(Ring {
            schedule,
            device_id,
            slots,
            written: allocator.timeline_semaphore(device_id)?,
            released: allocator.timeline_semaphore(device_id)?,
            producer_taken: AtomicBool::new(false),
            consumer_taken: AtomicBool::new(false),
            producer_next: AtomicU64::new(0),
            consumer_next: AtomicU64::new(0),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        })
    }

    /// The value arithmetic.
    pub fn schedule(&self) -> &RingSchedule {
        &self.schedule
    }

    /// The Vulkan device (of the allocator that made it) the ring lives on.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The number of slots.
    pub fn slot_count(&self) -> usize {
        self.schedule.slots as usize
    }

    /// The slots of a buffer ring (empty for an image ring).
    pub fn buffers(&self) -> &[Buffer] {
        match &self.slots {
            Slots::Buffers(b) => b,
            Slots::Images(_) => &[],
        }
    }

    /// The slots of an image ring (empty for a buffer ring).
    pub fn images(&self) -> &[Image] {
        match &self.slots {
            Slots::Images(i) => i,
            Slots::Buffers(_) => &[],
        }
    }

    /// The producer's timeline: frames written.
    pub fn written(&self) -> &TimelineSemaphore {
        &self.written
    }

    /// The consumer's timeline: frames released.
    pub fn released(&self) -> &TimelineSemaphore {
        &self.released
    }

    /// The timeline `end` waits on.
    pub fn wait_timeline(&self, end: End) -> &TimelineSemaphore {
        match end {
            End::Producer => &self.released,
            End::Consumer => &self.written,
        }
    }

    /// The timeline `end` signals.
    pub fn signal_timeline(&self, end: End) -> &TimelineSemaphore {
        match end {
            End::Producer => &self.written,
            End::Consumer => &self.released,
        }
    }

    /// Whether other APIs can wait and signal on the GPU (the device exports timelines); if
    /// not, their adapters order through the host.
    pub fn is_exportable(&self) -> bool {
        self.written.is_exportable() && self.released.is_exportable()
    }

    /// The producer's cursor, at the frame after the last step the end handed out (frame 0 for
    /// the first). Errors: [`RingError::EndTaken`] while another one lives.
    pub fn producer(&self) -> Result<Producer<'_>> {
        Ok(Producer(Cursor::take(self, End::Producer)?))
    }

    /// The consumer's cursor, as [`producer`](Ring::producer). Errors: [`RingError::EndTaken`]
    /// while another one lives.
    pub fn consumer(&self) -> Result<Consumer<'_>> {
        Ok(Consumer(Cursor::take(self, End::Consumer)?))
    }

    /// The Vulkan adapter on the ring's own device: a submission that waits for `step.wait`
    /// and signals `step.signal` on the end's timelines. Add command buffers
    /// ([`Submission::command_buffers`]) and submit it with [`MemoryAllocator::submit`].
    /// Errors: a step of another ring, or of a slot this ring lacks ([`Error::Ring`]).
    ///
    /// [`Error::Ring`]: crate::Error::Ring
    pub fn submission(&self, step: &FrameStep) -> Result<Submission<'_>> {
        self.check_step(step)?;
        let mut s = Submission::new();
        if let Some(v) = step.wait {
            s = s.wait(self.wait_timeline(step.end), v);
        }
        if let Some(v) = step.signal {
            s = s.signal(self.signal_timeline(step.end), v);
        }
        Ok(s)
    }

    /// Checks that `step` is this ring's (or a schedule's alone) and its slot exists here.
    pub(crate) fn check_step(&self, step: &FrameStep) -> std::result::Result<(), RingError> {
        if step.is_of_another_ring(self.id) {
            return Err(RingError::OtherRing { frame: step.frame, end: step.end });
        }
        if step.slot >= self.slot_count() {
            return Err(RingError::NoSuchSlot { slot: step.slot, slots: self.slot_count() });
        }
        Ok(())
    }
}

/// What both cursors are.
#[derive(Debug)]
struct Cursor<'r> {
    ring: &'r Ring,
    end: End,
    next: u64,
}

impl<'r> Cursor<'r> {
    /// The end's flag (taken or free) and the frame its next cursor starts at.
    fn state(ring: &Ring, end: End) -> (&AtomicBool, &AtomicU64) {
        match end {
            End::Producer => (&ring.producer_taken, &ring.producer_next),
            End::Consumer => (&ring.consumer_taken, &ring.consumer_next),
        }
    }

    fn take(ring: &'r Ring, end: End) -> std::result::Result<Self, RingError> {
        let (taken, next) = Self::state(ring, end);
        if taken.swap(true, Ordering::AcqRel) {
            return Err(RingError::EndTaken { end });
        }
        // Where the last cursor stopped (stored before it freed the end): the steps it handed
        // out are spent, since timeline values only grow.
        Ok(Cursor { ring, end, next: next.load(Ordering::Acquire) })
    }

    fn next_frame(&mut self) -> std::result::Result<FrameStep, RingError> {
        let step = self.ring.schedule.step(self.end, self.next)?;
        self.next += 1;
        Ok(FrameStep { ring: self.ring.id, ..step })
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        let (taken, next) = Self::state(self.ring, self.end);
        next.store(self.next, Ordering::Release);
        taken.store(false, Ordering::Release);
    }
}

/// The producer's cursor of a [`Ring`]: hands out its steps in frame order. One per ring at a
/// time; dropping it frees the end, and the end's next cursor carries on from the frame after the
/// last step handed out (a step handed out is spent, whether or not it was used: timeline values
/// only grow, and a frame's slot must not be written again before its release).
#[derive(Debug)]
pub struct Producer<'r>(Cursor<'r>);

impl Producer<'_> {
    /// The next frame's step. Errors: [`RingError::Finished`] past the ring's length.
    pub fn next_frame(&mut self) -> Result<FrameStep> {
        Ok(self.0.next_frame()?)
    }

    /// The frame the next step is for.
    pub fn position(&self) -> u64 {
        self.0.next
    }
}

/// The consumer's cursor of a [`Ring`]; as [`Producer`].
#[derive(Debug)]
pub struct Consumer<'r>(Cursor<'r>);

impl Consumer<'_> {
    /// The next frame's step. Errors: [`RingError::Finished`] past the ring's length.
    pub fn next_frame(&mut self) -> Result<FrameStep> {
        Ok(self.0.next_frame()?)
    }

    /// The frame the next step is for.
    pub fn position(&self) -> u64 {
        self.0.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    /// Runs both ends as two in-order queues that execute a step once its wait is met, and checks
    /// the ring's promises: every frame is consumed, each after it was written, and no slot is
    /// written before the consumer released the frame that used it before. The producer runs
    /// whenever it can (a consumer as slow as possible: early overwrites show), or, with
    /// `producer_first` false, the consumer does.
    fn simulate(schedule: RingSchedule, frames: u64, producer_first: bool) {
        let n = u64::from(schedule.slots());
        let (mut written, mut released) = (0u64, 0u64);
        // The next frame of each end; frames [0, c) have been read and are done.
        let (mut p, mut c) = (0u64, 0u64);
        while c < frames {
            let producer_ready =
                p < frames && schedule.producer(p).expect("producer step").wait.is_none_or(|v| released >= v);
            let consumer_ready =
                schedule.consumer(c).expect("consumer step").wait.is_none_or(|v| written >= v);
            assert!(
                producer_ready || consumer_ready,
                "deadlock at producer {p}, consumer {c} ({schedule:?})"
            );
            if producer_ready && (producer_first || !consumer_ready) {
                let s = schedule.producer(p).expect("producer step");
                assert_eq!(s.slot as u64, p % n);
                if p >= n {
                    // The slot's previous frame, p - n, must be read and released.
                    assert!(c > p - n, "frame {p} overwrites frame {} before it was read", p - n);
                    assert!(released > p - n, "frame {p} overwrites frame {} before its release", p - n);
                }
                if let Some(v) = s.signal {
                    assert!(v > written, "written must grow");
                    written = v;
                }
                p += 1;
            } else {
                let s = schedule.consumer(c).expect("consumer step");
                assert_eq!(s.slot as u64, c % n);
                assert!(p > c, "frame {c} read before it was written");
                if let Some(v) = s.signal {
                    assert!(v > released, "released must grow");
                    assert!(written >= v, "frame {} released before it was handed over", v - 1);
                    released = v;
                }
                c += 1;
            }
        }
        assert_eq!(released, frames, "the last release covers every frame");
        assert_eq!(written, frames, "the last write covers every frame");
    }

    #[test]
    fn every_shape_up_to_9_slots_runs_without_deadlock_or_early_overwrite() {
        for slots in 1..=9 {
            for batch in 1..=slots {
                for frames in 1..=40 {
                    let schedule =
                        RingSchedule::new(slots, batch).expect("shape").with_frames(frames).expect("len");
                    simulate(schedule, frames, true);
                    simulate(schedule, frames, false);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_shape_runs(slots in 1u32..=64, batch_seed in 0u32..64, frames in 1u64..400) {
            let batch = batch_seed % slots + 1;
            let schedule = RingSchedule::new(slots, batch).expect("shape").with_frames(frames).expect("len");
            simulate(schedule, frames, true);
            simulate(schedule, frames, false);
        }
    }

    #[test]
    fn values_of_a_ring_of_4_with_batches_of_2() {
        let s = RingSchedule::new(4, 2).expect("shape");
        let p: Vec<_> =
            (0..8).map(|f| s.producer(f).expect("p")).map(|x| (x.slot, x.wait, x.signal)).collect();
        assert_eq!(
            p,
            [
                (0, None, None),
                (1, None, Some(2)),
                (2, None, None),
                (3, None, Some(4)),
                (0, Some(2), None),
                (1, None, Some(6)),
                (2, Some(4), None),
                (3, None, Some(8)),
            ]
        );
        let c: Vec<_> =
            (0..4).map(|f| s.consumer(f).expect("c")).map(|x| (x.slot, x.wait, x.signal)).collect();
        assert_eq!(c, [(0, Some(2), None), (1, None, Some(2)), (2, Some(4), None), (3, None, Some(4))]);
    }

    #[test]
    fn a_batch_that_does_not_divide_the_ring_waits_for_the_batch_that_used_the_slot() {
        // 3 slots, batches of 2: frame 3 (slot 0) reuses frame 0's slot; frame 0 was released
        // with its batch {0, 1}, at released = 2.
        let s = RingSchedule::new(3, 2).expect("shape");
        assert_eq!(s.producer(3).expect("p").wait, Some(2));
        assert_eq!(s.producer(4).expect("p").wait, None);
        assert_eq!(s.producer(5).expect("p").wait, Some(4));
    }

    #[test]
    fn a_ring_of_known_length_ends_its_last_batch_at_the_last_frame() {
        let s = RingSchedule::new(4, 3).expect("shape").with_frames(7).expect("len");
        assert_eq!(s.producer(6).expect("p").signal, Some(7));
        assert_eq!(s.consumer(6).expect("c").wait, Some(7));
        assert_eq!(s.consumer(6).expect("c").signal, Some(7));
        assert_eq!(s.consumer(7), Err(RingError::Finished { frames: 7, end: End::Consumer }));
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert_eq!(RingSchedule::new(0, 1), Err(RingError::Slots { slots: 0, max: MAX_SLOTS }));
        assert_eq!(
            RingSchedule::new(MAX_SLOTS + 1, 1),
            Err(RingError::Slots { slots: MAX_SLOTS + 1, max: MAX_SLOTS })
        );
        assert_eq!(RingSchedule::new(4, 0), Err(RingError::Batch { batch: 0, slots: 4 }));
        assert_eq!(RingSchedule::new(4, 5), Err(RingError::Batch { batch: 5, slots: 4 }));
        assert_eq!(RingSchedule::new(4, 4).expect("shape").with_frames(0), Err(RingError::NoFrames));
        let e: Error = RingError::Batch { batch: 5, slots: 4 }.into();
        assert!(e.to_string().starts_with("ring: a ring of 4 slot(s) hands off batches of 1 to 4"), "{e}");
    }

    #[test]
    fn the_batch_follows_the_latency_budget() {
        let ms = Duration::from_millis;
        // 1 ms frames: 160 µs of hand-off leaves 3.84 ms for 3 more frames: a batch of 4.
        assert_eq!(batch_for_latency(16, ms(1), ms(4)), 4);
        // Capped at half the ring.
        assert_eq!(batch_for_latency(4, ms(1), ms(100)), 2);
        assert_eq!(batch_for_latency(1, ms(1), ms(100)), 1);
        // A budget below one hand-off, or one frame: no batching.
        assert_eq!(batch_for_latency(16, ms(1), Duration::from_micros(100)), 1);
        assert_eq!(batch_for_latency(16, ms(1), ms(1)), 1);
        // Free frames: as large as the cap.
        assert_eq!(batch_for_latency(16, Duration::ZERO, ms(1)), 8);
        // Exactly on the boundary: (K − 1) · 1 ms + 160 µs ≤ budget.
        assert_eq!(batch_for_latency(16, ms(1), ms(2) + HANDOFF_COST), 3);
    }
}
