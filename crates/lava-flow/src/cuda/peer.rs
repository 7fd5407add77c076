//! Copies between GPUs: lava-flow memory of one GPU into lava-flow memory of another, through
//! CUDA peer access (`cuCtxEnablePeerAccess`, `cuMemcpyPeerAsync`), ordered by both GPUs'
//! timelines; staged through pinned host memory where the two GPUs cannot reach each other
//! (`cuDeviceCanAccessPeer` says 0), and the result says which path was taken.
//!
//! ```no_run
//! # fn main() -> lava_flow::Result<()> {
//! use lava_flow::cuda::{copy_peer, Context, PeerSide, TimelineStep};
//! use lava_flow::{MemoryAllocator, MemoryLocation};
//!
//! let mut allocator = MemoryAllocator::new()?;
//! // The Vulkan devices of cuda:0 and cuda:1 (by UUID).
//! let a = lava_flow::cuda::device_id_for(&allocator, 0)?;
//! let b = lava_flow::cuda::device_id_for(&allocator, 1)?;
//! let src = allocator.allocate(1 << 20, MemoryLocation::GpuVulkan { device_id: a })?;
//! let dst = allocator.allocate(1 << 20, MemoryLocation::GpuVulkan { device_id: b })?;
//! let (cuda_a, cuda_b) = (Context::for_device(&allocator, a)?, Context::for_device(&allocator, b)?);
//! let (tl_a, tl_b) = (allocator.timeline_semaphore(a)?, allocator.timeline_semaphore(b)?);
//! let (sync_a, sync_b) = (cuda_a.import_timeline(&tl_a)?, cuda_b.import_timeline(&tl_b)?);
//! let (view_a, view_b) = (cuda_a.import_buffer(&src)?, cuda_b.import_buffer(&dst)?);
//! let (stream_a, stream_b) = (cuda_a.stream()?, cuda_b.stream()?);
//! // Vulkan work on GPU a signals tl_a = 1 when `src` is written; GPU b's signals tl_b = 1
//! // when `dst` may be overwritten. The copy waits for both, then signals 2 on each.
//! let step_a = TimelineStep { timeline: &sync_a, wait: 1, signal: 2 };
//! let step_b = TimelineStep { timeline: &sync_b, wait: 1, signal: 2 };
//! let path = copy_peer(
//!     PeerSide { memory: &view_a, offset: 0, stream: &stream_a, step: Some(step_a) },
//!     PeerSide { memory: &view_b, offset: 0, stream: &stream_b, step: Some(step_b) },
//!     1 << 20,
//! )?;
//! println!("copied {path}");
//! # Ok(()) }
//! ```

use std::fmt;

use super::context::{Context, Stream};
use super::memory::DeviceMemory;
use super::raw::check;
use super::semaphore::CudaTimeline;
use super::sys;
use crate::error::{Error, Result};

/// Whether CUDA device `from` can read and write the memory of CUDA device `to` directly
/// (`cuDeviceCanAccessPeer`). A device and itself: `true`.
pub fn can_access_peer(from: &Context, to: &Context) -> Result<bool> {
    if from.raw_device() == to.raw_device() {
        return Ok(true);
    }
    let mut can = 0;
    // SAFETY: both devices are valid (their contexts exist, so the driver is initialised);
    // `can` is a valid out-pointer.
    check("cuDeviceCanAccessPeer", unsafe {
        sys::cuDeviceCanAccessPeer(&mut can, from.raw_device(), to.raw_device())
    })?;
    Ok(can != 0)
}

/// One ordered pair of CUDA devices and whether the first can access the second's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerAccess {
    /// The CUDA ordinal of the device that accesses.
    pub from: i32,
    /// The CUDA ordinal of the device whose memory is accessed.
    pub to: i32,
    /// `cuDeviceCanAccessPeer`.
    pub possible: bool,
}

/// Peer access of every ordered pair of distinct CUDA devices (`cuDeviceCanAccessPeer`), for
/// reports such as `lava-flow info`; empty with one device.
pub fn peer_access() -> Result<Vec<PeerAccess>> {
    let devices = super::devices()?;
    let mut handles = Vec::with_capacity(devices.len());
    for d in &devices {
        let mut device = 0;
        // SAFETY: the driver is initialised (by `devices`); the ordinal exists.
        check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, d.ordinal) })?;
        handles.push((d.ordinal, device));
    }
    let mut pairs = Vec::new();
    for &(from, a) in &handles {
        for &(to, b) in &handles {
            if from == to {
                continue;
            }
            let mut can = 0;
            // SAFETY: both devices are valid; `can` is a valid out-pointer.
            check("cuDeviceCanAccessPeer", unsafe { sys::cuDeviceCanAccessPeer(&mut can, a, b) })?;
            pairs.push(PeerAccess { from, to, possible: can != 0 });
        }
    }
    Ok(pairs)
}

/// A timeline step around a peer copy: the copy waits until `timeline` reaches `wait`, and
/// `timeline` is set to `signal` once the copy is done.
#[derive(Clone, Copy)]
pub struct TimelineStep<'a> {
    /// A timeline imported into the CUDA context of this side's GPU.
    pub timeline: &'a CudaTimeline<'a>,
    /// The value the copy waits for (0: no wait).
    pub wait: u64,
    /// The value signalled after the copy; above every value signalled before.
    pub signal: u64,
}

/// One side of a peer copy: memory in the CUDA context of one GPU, the range's first byte, a
/// stream of that context, and optionally the timeline step that orders it.
#[derive(Clone, Copy)]
pub struct PeerSide<'a> {
    /// The memory (a lava-flow buffer imported with `import_buffer`, or `cuMemAlloc` memory).
    pub memory: &'a dyn DeviceMemory,
    /// The first byte of the range.
    pub offset: u64,
    /// A stream of the memory's context: the side's waits and signals are queued on it.
    pub stream: &'a Stream,
    /// The side's timeline step, or `None` (the copy is then ordered by the stream alone).
    pub step: Option<TimelineStep<'a>>,
}

/// How a peer copy went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerPath {
    /// `cuMemcpyPeerAsync` with peer access enabled (or a copy within one GPU): GPU to GPU,
    /// queued, the host not blocked.
    Direct,
    /// Through pinned host memory, in chunks, because the destination GPU cannot access the
    /// source's memory (or staging was asked for); the call returned after the copy completed.
    StagedThroughHost {
        /// Why: e.g. `cuDeviceCanAccessPeer(1, 0) is 0`.
        reason: String,
    },
}

impl fmt::Display for PeerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerPath::Direct => f.write_str("directly (CUDA peer access)"),
            PeerPath::StagedThroughHost { reason } => write!(f, "staged through host memory ({reason})"),
        }
    }
}

/// Copies `len` bytes from `src` to `dst`, on two GPUs or one, ordered by both sides' timeline
/// steps: the copy starts once the source's timeline reached its `wait` value (its bytes are
/// written) and the destination's reached its own (its bytes may be overwritten); afterwards the
/// destination's timeline is set to its `signal` (the bytes have arrived) and the source's to
/// its own (the source may be reused). Nothing blocks the host on the direct path.
///
/// Where the destination GPU can access the source's memory, peer access is enabled (once per
/// context pair; `cuCtxEnablePeerAccess`) and the copy is one `cuMemcpyPeerAsync` on the
/// destination's stream. Where it cannot, the result says so ([`PeerPath::StagedThroughHost`],
/// also logged at `warn`) and the bytes go through pinned host memory; that path returns once
/// they have arrived.
///
/// Errors: [`Error::OutOfRange`] for a range outside either memory; [`Error::DeviceMismatch`]
/// for a stream or timeline of another context than its side's memory; timeline values that do
/// not increase ([`Error::InvalidArgument`]); CUDA errors as [`Error::Ffi`]. All of them before
/// anything is queued, apart from the driver's own.
pub fn copy_peer(src: PeerSide<'_>, dst: PeerSide<'_>, len: usize) -> Result<PeerPath> {
    copy(src, dst, len, false)
}

/// As [`copy_peer`], always through pinned host memory: for comparison, and to test the path
/// taken where peer access is impossible.
pub fn copy_peer_staged(src: PeerSide<'_>, dst: PeerSide<'_>, len: usize) -> Result<PeerPath> {
    copy(src, dst, len, true)
}

fn copy(src: PeerSide<'_>, dst: PeerSide<'_>, len: usize, force_staging: bool) -> Result<PeerPath> {
    validate(&src, "source", len)?;
    validate(&dst, "destination", len)?;
    let (src_ctx, dst_ctx) = (src.memory.context(), dst.memory.context());
    let path = if force_staging {
        PeerPath::StagedThroughHost { reason: "staging was asked for".into() }
    } else if can_access_peer(dst_ctx, src_ctx)? {
        PeerPath::Direct
    } else {
        let reason = format!(
            "cuDeviceCanAccessPeer({}, {}) is 0: GPU {} cannot access GPU {}'s memory",
            dst_ctx.raw_device(),
            src_ctx.raw_device(),
            dst_ctx.uuid(),
            src_ctx.uuid()
        );
        log::warn!("peer copy staged through host memory: {reason}");
        PeerPath::StagedThroughHost { reason }
    };
    // Waits: each side's stream waits for its own timeline, then the destination's stream waits
    // for the source's (an event: cross-device waits are allowed).
    if let Some(step) = src.step.filter(|s| s.wait > 0) {
        step.timeline.wait(step.wait, src.stream)?;
    }
    if let Some(step) = dst.step.filter(|s| s.wait > 0) {
        step.timeline.wait(step.wait, dst.stream)?;
    }
    follow(dst.stream, src.stream)?;
    match path {
        PeerPath::Direct => {
            enable_peer_access(dst_ctx, src_ctx)?;
            dst_ctx.bind()?;
            // SAFETY: both ranges lie inside their memory (validated); each pointer belongs to
            // the context passed beside it; the stream is the destination context's, which is
            // current.
            check("cuMemcpyPeerAsync", unsafe {
                sys::cuMemcpyPeerAsync(
                    dst.memory.device_ptr() + dst.offset,
                    dst_ctx.raw(),
                    src.memory.device_ptr() + src.offset,
                    src_ctx.raw(),
                    len,
                    dst.stream.raw(),
                )
            })?;
        }
        PeerPath::StagedThroughHost { .. } => staged(&src, &dst, len)?,
    }
    // Signals: the destination's after the copy on its stream; the source's after the source's
    // stream has waited for the copy (its bytes are read).
    if let Some(step) = dst.step {
        step.timeline.signal(step.signal, dst.stream)?;
    }
    follow(src.stream, dst.stream)?;
    if let Some(step) = src.step {
        step.timeline.signal(step.signal, src.stream)?;
    }
    Ok(path)
}

/// The checks of one side, before anything is queued.
fn validate(side: &PeerSide<'_>, which: &'static str, len: usize) -> Result<()> {
    Error::check_range(side.offset, len, side.memory.size())?;
    let ctx = side.memory.context();
    ctx.check_device(
        if which == "source" { "the source's stream" } else { "the destination's stream" },
        side.stream.ctx.uuid(),
    )?;
    if let Some(step) = side.step {
        ctx.check_device(
            if which == "source" { "the source's timeline" } else { "the destination's timeline" },
            step.timeline.context().uuid(),
        )?;
        if step.signal <= step.wait {
            return Err(Error::InvalidArgument(format!(
                "the {which}'s timeline step signals {} after waiting for {}: the signal must be above the wait",
                step.signal, step.wait
            )));
        }
    }
    Ok(())
}

/// `cuCtxEnablePeerAccess` with `ctx` current, for `peer`'s memory; already enabled is fine.
fn enable_peer_access(ctx: &Context, peer: &Context) -> Result<()> {
    if ctx.raw() == peer.raw() {
        return Ok(());
    }
    ctx.bind()?;
    // SAFETY: both contexts are valid; `ctx` is current; flags must be 0.
    let r = unsafe { sys::cuCtxEnablePeerAccess(peer.raw(), 0) };
    if r == sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
        return Ok(());
    }
    check("cuCtxEnablePeerAccess", r)
}

/// Orders `stream` after the work queued on `other` so far, across contexts and devices: an
/// event of `other`'s context recorded there and waited for on `stream` (`cuStreamWaitEvent`
/// accepts an event of another context or device).
fn follow(stream: &Stream, other: &Stream) -> Result<()> {
    if stream.raw() == other.raw() && stream.ctx.raw() == other.ctx.raw() {
        return Ok(());
    }
    let event = other.ctx.event(false)?;
    event.record(other)?;
    stream.ctx.bind()?;
    // SAFETY: `stream` is valid in its context, which is current; the event is valid (it lives
    // to the end of this function; a wait already queued refers to its captured work).
    check("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(stream.raw(), event.raw(), 0) })
}

/// The staging chunk: large enough that the per-chunk hand-offs cost little, small enough not
/// to pin much host memory.
const STAGING_CHUNK: usize = 32 << 20;

/// Pinned host memory (`cuMemHostAlloc`, portable), freed on drop.
struct PinnedHost {
    ctx: Context,
    ptr: *mut std::ffi::c_void,
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        // SAFETY: allocated by `cuMemHostAlloc` and freed once, after the copies that used
        // it completed (`staged` synchronises before it returns or fails).
        self.ctx.release("cuMemFreeHost", || unsafe { sys::cuMemFreeHost(self.ptr) });
    }
}

/// The host-staged copy: chunk by chunk, device → pinned host on the source's stream, then
/// pinned host → device on the destination's, each after the other; returns once the last
/// chunk has arrived.
fn staged(src: &PeerSide<'_>, dst: &PeerSide<'_>, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let chunk = len.min(STAGING_CHUNK);
    let src_ctx = src.memory.context();
    src_ctx.bind()?;
    let mut ptr = std::ptr::null_mut();
    // Portable: pinned for every context, the destination's too (otherwise its upload would be
    // treated as one from pageable memory).
    // SAFETY: the source's context is current; `ptr` is a valid out-pointer.
    check("cuMemHostAlloc", unsafe { sys::cuMemHostAlloc(&mut ptr, chunk, sys::CU_MEMHOSTALLOC_PORTABLE) })?;
    let host = PinnedHost { ctx: src_ctx.clone(), ptr };
    let result = staged_chunks(src, dst, len, chunk, &host);
    // The pinned memory is freed only after every queued copy that uses it completed, on
    // success and on failure alike.
    let done = src.stream.synchronize().and(dst.stream.synchronize());
    result.and(done)
}

fn staged_chunks(
    src: &PeerSide<'_>,
    dst: &PeerSide<'_>,
    len: usize,
    chunk: usize,
    host: &PinnedHost,
) -> Result<()> {
    let (src_ctx, dst_ctx) = (src.memory.context(), dst.memory.context());
    let mut done = 0usize;
    while done < len {
        let n = chunk.min(len - done);
        if done > 0 {
            // The previous chunk left the host buffer before this one overwrites it.
            follow(src.stream, dst.stream)?;
        }
        src_ctx.bind()?;
        // SAFETY: the range lies inside the source memory (validated); `host` holds `chunk` ≥ n
        // bytes and lives until both streams are synchronised; the stream is of the current
        // context.
        check("cuMemcpyDtoHAsync_v2", unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                host.ptr,
                src.memory.device_ptr() + src.offset + done as u64,
                n,
                src.stream.raw(),
            )
        })?;
        follow(dst.stream, src.stream)?;
        dst_ctx.bind()?;
        // SAFETY: as above, for the destination range and its stream.
        check("cuMemcpyHtoDAsync_v2", unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dst.memory.device_ptr() + dst.offset + done as u64,
                host.ptr,
                n,
                dst.stream.raw(),
            )
        })?;
        done += n;
    }
    Ok(())
}
