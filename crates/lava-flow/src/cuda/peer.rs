//! Copies between GPUs: lava-flow memory of one GPU into lava-flow memory of another, through
//! CUDA peer access (`cuMemcpyPeerAsync`), ordered by both GPUs' timelines; staged through
//! pinned host memory where the two GPUs cannot reach each other (`cuDeviceCanAccessPeer` says
//! 0), and the result ([`PeerPath`]) says which path was taken.
//!
//! **Full speed needs memory that peer access maps.** `cuCtxEnablePeerAccess` maps a peer's
//! `cuMemAlloc` allocations, not memory imported from an external handle: a lava-flow buffer
//! allocated by Vulkan and imported into CUDA ([`Context::import_buffer`]) is such memory, and
//! between two such buffers the driver moves the bytes at a staged-like rate (37.5 GB/s against
//! 383.5 GB/s for `cuMemAlloc` memory between two H200s over NVLink, BENCHMARKS.md). The copy
//! still works, queued like a direct one, and says so: [`PeerPath::ThroughDriver`]. For full
//! speed, let CUDA allocate the memory ([`Context::alloc_exportable`], CUDA's virtual memory
//! API), give it to Vulkan ([`ExportableAllocation::import_into`](super::ExportableAllocation::import_into)),
//! grant the other GPU access to the source
//! ([`ExportableAllocation::grant_access`](super::ExportableAllocation::grant_access),
//! `cuMemSetAccess`), and copy between the allocations: [`PeerPath::Direct`].
//!
//! ```no_run
//! # fn main() -> lava_flow::Result<()> {
//! use lava_flow::cuda::{copy_peer, Context, PeerSide, TimelineStep};
//! use lava_flow::MemoryAllocator;
//!
//! let mut allocator = MemoryAllocator::new()?;
//! // The Vulkan devices of cuda:0 and cuda:1 (by UUID).
//! let a = lava_flow::cuda::device_id_for(&allocator, 0)?;
//! let b = lava_flow::cuda::device_id_for(&allocator, 1)?;
//! let (cuda_a, cuda_b) = (Context::for_device(&allocator, a)?, Context::for_device(&allocator, b)?);
//! // CUDA allocates on each GPU; Vulkan (and GL, CL) use the same bytes as lava-flow buffers.
//! let (src, dst) = (cuda_a.alloc_exportable(1 << 20)?, cuda_b.alloc_exportable(1 << 20)?);
//! let (src_buffer, dst_buffer) = (src.import_into(&mut allocator, a)?, dst.import_into(&mut allocator, b)?);
//! src.grant_access(&cuda_b)?; // GPU b may read the source: the copy runs over NVLink / PCIe P2P
//! let (tl_a, tl_b) = (allocator.timeline_semaphore(a)?, allocator.timeline_semaphore(b)?);
//! let (sync_a, sync_b) = (cuda_a.import_timeline(&tl_a)?, cuda_b.import_timeline(&tl_b)?);
//! let (stream_a, stream_b) = (cuda_a.stream()?, cuda_b.stream()?);
//! // Vulkan work on GPU a signals tl_a = 1 when `src_buffer` is written; GPU b's signals
//! // tl_b = 1 when `dst_buffer` may be overwritten. The copy waits for both, then signals 2 on
//! // each.
//! let step_a = TimelineStep { timeline: &sync_a, wait: 1, signal: 2 };
//! let step_b = TimelineStep { timeline: &sync_b, wait: 1, signal: 2 };
//! let path = copy_peer(
//!     PeerSide { memory: &src, offset: 0, stream: &stream_a, step: Some(step_a) },
//!     PeerSide { memory: &dst, offset: 0, stream: &stream_b, step: Some(step_b) },
//!     1 << 20,
//! )?;
//! // PeerPath::Direct where GPU b can access GPU a's memory (cuDeviceCanAccessPeer).
//! println!("copied {path}");
//! # drop((src_buffer, dst_buffer));
//! # Ok(()) }
//! ```
//!
//! Buffers Vulkan allocated are copied the same way, through their CUDA views
//! (`PeerSide { memory: &cuda_a.import_buffer(&buffer)?, .. }`), at the driver's rate.

use std::fmt;

use super::context::{Context, Stream};
use super::memory::DeviceMemory;
use super::raw::check;
use super::semaphore::CudaTimeline;
use super::sys;
use crate::error::{Error, Result};

/// Whether CUDA device `from` can read and write the memory of CUDA device `to` directly
/// (`cuDeviceCanAccessPeer`, asked once per pair and remembered by `from`). A device and itself:
/// `true`.
pub fn can_access_peer(from: &Context, to: &Context) -> Result<bool> {
    if from.raw_device() == to.raw_device() {
        return Ok(true);
    }
    let mut peers = from.inner.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    peers.can_access(to.raw_device(), || {
        let mut can = 0;
        // SAFETY: both devices are valid (their contexts exist, so the driver is initialised);
        // `can` is a valid out-pointer.
        check("cuDeviceCanAccessPeer", unsafe {
            sys::cuDeviceCanAccessPeer(&mut can, from.raw_device(), to.raw_device())
        })?;
        Ok(can != 0)
    })
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

/// How other GPUs reach a memory's bytes ([`DeviceMemory::peer_mapping`]): what decides
/// whether [`copy_peer`] runs at the interconnect's rate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerMapping {
    /// Mapped into a peer's context by `cuCtxEnablePeerAccess`, which [`copy_peer`] calls:
    /// `cuMemAlloc` memory ([`Context::alloc`]), and the default for memory that does not say.
    Context,
    /// Memory imported from an external handle (`cuImportExternalMemory`: a lava-flow buffer
    /// made by Vulkan and imported with [`Context::import_buffer`]), which peer access does not
    /// map: copies to or from another GPU run at a staged-like rate
    /// ([`PeerPath::ThroughDriver`]).
    Imported,
    /// Memory of CUDA's virtual memory API ([`Context::alloc_exportable`]), which peer access
    /// does not map either: each mapping names the devices that may access it
    /// (`cuMemSetAccess`). These CUDA devices (`CUdevice`), its own first.
    Granted(Vec<sys::CUdevice>),
}

/// How a peer copy went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerPath {
    /// `cuMemcpyPeerAsync` over a peer mapping (or a copy within one GPU): GPU to GPU at the
    /// interconnect's rate, queued, the host not blocked.
    Direct,
    /// `cuMemcpyPeerAsync`, queued, the host not blocked, but without a peer mapping: the source
    /// is memory imported from an external handle ([`PeerMapping::Imported`]), and the driver
    /// moves the bytes at a staged-like rate (a tenth of [`PeerPath::Direct`]'s between two
    /// H200s over NVLink). Memory from [`Context::alloc_exportable`] with access granted takes
    /// the direct path.
    ThroughDriver {
        /// Why, and what to use instead.
        reason: String,
    },
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
            PeerPath::ThroughDriver { reason } => {
                write!(f, "through the driver at a staged-like rate ({reason})")
            }
            PeerPath::StagedThroughHost { reason } => write!(f, "staged through host memory ({reason})"),
        }
    }
}

/// One side of a copy as [`choose_path`] sees it.
struct Endpoint {
    /// The CUDA device of the memory.
    device: sys::CUdevice,
    /// Its UUID, for messages.
    uuid: crate::device::Uuid,
    mapping: PeerMapping,
}

impl Endpoint {
    fn of(memory: &dyn DeviceMemory) -> Self {
        let ctx = memory.context();
        Endpoint { device: ctx.raw_device(), uuid: ctx.uuid(), mapping: memory.peer_mapping() }
    }
}

/// The path of a copy from `src` to `dst` (queued on the destination's device), given whether
/// that device can access the source's (`cuDeviceCanAccessPeer`). Pure: the rules, testable
/// without a GPU.
fn choose_path(src: &Endpoint, dst: &Endpoint, can_access: bool, force_staging: bool) -> PeerPath {
    if force_staging {
        return PeerPath::StagedThroughHost { reason: "staging was asked for".into() };
    }
    if src.device == dst.device {
        return PeerPath::Direct;
    }
    if !can_access {
        return PeerPath::StagedThroughHost {
            reason: format!(
                "cuDeviceCanAccessPeer({}, {}) is 0: GPU {} cannot access GPU {}'s memory",
                dst.device, src.device, dst.uuid, src.uuid
            ),
        };
    }
    if let PeerMapping::Granted(devices) = &src.mapping {
        if !devices.contains(&dst.device) {
            // Without the grant the destination's GPU has no mapping of the source: the bytes go
            // through the host rather than through a driver path no document promises.
            return PeerPath::StagedThroughHost {
                reason: format!(
                    "the source's mapping (cuMemCreate) does not grant GPU {} access: call \
                     ExportableAllocation::grant_access with the destination's context first",
                    dst.uuid
                ),
            };
        }
    }
    // The copy runs on the destination's GPU, which reads the source through its mapping and
    // writes its own memory: only the source's mapping matters. (Measured on two H200s: a
    // granted source into a Vulkan-allocated destination ran at 0.95× of cuMemAlloc → cuMemAlloc,
    // as fast as granted into granted; an imported source at 0.10×.)
    if src.mapping == PeerMapping::Imported {
        return PeerPath::ThroughDriver {
            reason: "the source is memory imported from an external handle, which CUDA peer access \
                     does not map; for full speed allocate it with cuda::Context::alloc_exportable, \
                     import it into Vulkan with import_into and grant the peer access (grant_access)"
                .into(),
        };
    }
    PeerPath::Direct
}

/// Copies `len` bytes from `src` to `dst`, on two GPUs or one, ordered by both sides' timeline
/// steps: the copy starts once the source's timeline reached its `wait` value (its bytes are
/// written) and the destination's reached its own (its bytes may be overwritten); afterwards the
/// destination's timeline is set to its `signal` (the bytes have arrived) and the source's to
/// its own (the source may be reused). Nothing blocks the host on the direct path.
///
/// Where the destination GPU can access the source's memory, peer access is enabled (once per
/// context pair; `cuCtxEnablePeerAccess`) and the copy is one `cuMemcpyPeerAsync` on the
/// destination's stream. Its rate depends on the memory ([`DeviceMemory::peer_mapping`]):
/// - `cuMemAlloc` memory, and memory of [`Context::alloc_exportable`] whose source side grants
///   the destination's GPU access (`ExportableAllocation::grant_access`): [`PeerPath::Direct`],
///   the interconnect's rate.
/// - A source imported from an external handle (a Vulkan-allocated lava-flow buffer's
///   [`Context::import_buffer`] view): [`PeerPath::ThroughDriver`], queued the same way but
///   moved by the driver at a staged-like rate (a tenth of the direct path's between two H200s).
///   For full speed use `alloc_exportable` memory as above. The destination may be any memory
///   of its GPU, imported too: its GPU writes its own memory.
///
/// Where the destination GPU cannot access the source's memory, or the source is
/// `alloc_exportable` memory that does not grant the destination's GPU access, the result says
/// so ([`PeerPath::StagedThroughHost`], also logged at `warn`) and the bytes go through pinned
/// host memory; that path returns once they have arrived.
///
/// The copy's use of both memories is recorded on their streams
/// ([`DeviceMemory::release_after`]): memory dropped while the copy is queued is released once
/// it has completed (ADR 0014).
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
    let can_access = force_staging || can_access_peer(dst_ctx, src_ctx)?;
    let src_end = Endpoint::of(src.memory);
    let path = choose_path(&src_end, &Endpoint::of(dst.memory), can_access, force_staging);
    match &path {
        PeerPath::StagedThroughHost { reason } if !force_staging => {
            log::warn!("peer copy staged through host memory: {reason}")
        }
        PeerPath::ThroughDriver { reason } => warn_once(reason),
        _ => {}
    }
    // Waits: each side's stream waits for its own timeline, then the destination's stream waits
    // for the source's (an event: cross-device waits are allowed).
    if let Some(step) = src.step.filter(|s| s.wait > 0) {
        step.timeline.wait(step.wait, src.stream)?;
    }
    if let Some(step) = dst.step.filter(|s| s.wait > 0) {
        step.timeline.wait(step.wait, dst.stream)?;
    }
    dst.stream.wait_for(src.stream)?;
    match path {
        PeerPath::Direct | PeerPath::ThroughDriver { .. } => {
            // Maps the source context's `cuMemAlloc` memory into the destination's. Memory of
            // the virtual memory API is mapped by its own grant: no context peer access for it
            // (whose failure, say past the driver's peer limit, would refuse a copy that works).
            if !matches!(src_end.mapping, PeerMapping::Granted(_)) {
                enable_peer_access(dst_ctx, src_ctx)?;
            }
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
    // The copy is queued. Before anything else can fail, both memories record it (the source's
    // stream first follows the copy): an error below must not leave a memory free to go under
    // it. Where the source's stream cannot follow, the copy is waited for instead.
    if let Err(e) = src.stream.wait_for(dst.stream) {
        dst.stream.synchronize()?;
        return Err(e);
    }
    record_uses(&src, &dst)?;
    // Signals: the destination's after the copy on its stream; the source's after the source's
    // stream has waited for the copy (its bytes are read).
    if let Some(step) = dst.step {
        step.timeline.signal(step.signal, dst.stream)?;
    }
    if let Some(step) = src.step {
        step.timeline.signal(step.signal, src.stream)?;
    }
    Ok(path)
}

/// Records the copy on both memories (each on its own stream, which by now follows the copy),
/// so that neither is released under it; where recording fails, waits for the copy instead.
fn record_uses(src: &PeerSide<'_>, dst: &PeerSide<'_>) -> Result<()> {
    let recorded = dst.memory.release_after(dst.stream).and_then(|()| src.memory.release_after(src.stream));
    if let Err(e) = recorded {
        // The memory must be safe to release whatever happens next.
        dst.stream.synchronize()?;
        src.stream.synchronize()?;
        return Err(e);
    }
    Ok(())
}

/// Logs the first copy through the driver at `warn` and the later ones at `debug`: a loop of
/// copies between imported buffers should say once, not each time, that it runs slowly.
fn warn_once(reason: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::debug!("peer copy through the driver: {reason}");
    } else {
        log::warn!("peer copy through the driver at a staged-like rate: {reason}");
    }
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
/// Called once per pair of contexts: `ctx` remembers the peers it mapped (while they live; a
/// program that disables peer access itself, `cuCtxDisablePeerAccess`, leaves copies correct but
/// at the driver's rate).
fn enable_peer_access(ctx: &Context, peer: &Context) -> Result<()> {
    if ctx.raw() == peer.raw() {
        return Ok(());
    }
    let mut peers = ctx.inner.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if peers.is_enabled(&peer.inner) {
        return Ok(());
    }
    ctx.bind()?;
    // SAFETY: both contexts are valid; `ctx` is current; flags must be 0.
    let r = unsafe { sys::cuCtxEnablePeerAccess(peer.raw(), 0) };
    if r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
        check("cuCtxEnablePeerAccess", r)?;
    }
    peers.set_enabled(&peer.inner);
    Ok(())
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
        // it completed (`staged` synchronises before it returns or fails). Freed at once, not
        // held back under a pending wait: the staged path blocks on its streams anyway, and
        // 32 MiB of pinned memory per copy must not pile up (ADR 0018).
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
            src.stream.wait_for(dst.stream)?;
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
        dst.stream.wait_for(src.stream)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Uuid;

    fn end(device: sys::CUdevice, mapping: PeerMapping) -> Endpoint {
        Endpoint { device, uuid: Uuid([device as u8 + 0x0a; 16]), mapping }
    }

    fn staged_because(path: PeerPath, says: &str) {
        match path {
            PeerPath::StagedThroughHost { reason } => assert!(reason.contains(says), "{reason}"),
            other => panic!("expected a staged copy ({says}), got {other:?}"),
        }
    }

    #[test]
    fn vmm_memory_granted_to_the_destination_goes_direct_and_ungranted_is_staged() {
        let granted = end(0, PeerMapping::Granted(vec![0, 1]));
        let own_only = end(0, PeerMapping::Granted(vec![0]));
        let dst = end(1, PeerMapping::Granted(vec![1]));
        assert_eq!(choose_path(&granted, &dst, true, false), PeerPath::Direct);
        // The destination's own grants do not matter: its GPU writes its own memory.
        assert_eq!(choose_path(&granted, &end(1, PeerMapping::Context), true, false), PeerPath::Direct);
        staged_because(choose_path(&own_only, &dst, true, false), "grant_access");
        // cuDeviceCanAccessPeer's 0 wins over any grant.
        staged_because(choose_path(&granted, &dst, false, false), "cuDeviceCanAccessPeer(1, 0) is 0");
        staged_because(choose_path(&granted, &dst, true, true), "asked for");
    }

    #[test]
    fn an_imported_source_is_through_the_driver_and_an_imported_destination_is_not() {
        let imported = |d| end(d, PeerMapping::Imported);
        for dst in [end(1, PeerMapping::Context), imported(1), end(1, PeerMapping::Granted(vec![1]))] {
            match choose_path(&imported(0), &dst, true, false) {
                PeerPath::ThroughDriver { reason } => assert!(
                    reason.contains("the source is memory imported")
                        && reason.contains("alloc_exportable")
                        && reason.contains("grant_access"),
                    "{reason}"
                ),
                other => {
                    panic!("an imported source into {:?}: expected ThroughDriver, got {other:?}", dst.mapping)
                }
            }
        }
        // The destination GPU writes its own memory, imported or not.
        assert_eq!(choose_path(&end(0, PeerMapping::Context), &imported(1), true, false), PeerPath::Direct);
        assert_eq!(
            choose_path(&end(0, PeerMapping::Granted(vec![0, 1])), &imported(1), true, false),
            PeerPath::Direct
        );
        // Without peer access, the host stages even imported memory.
        staged_because(choose_path(&imported(0), &imported(1), false, false), "cuDeviceCanAccessPeer");
    }

    #[test]
    fn cumemalloc_memory_and_copies_within_one_gpu_go_direct() {
        let (a, b) = (end(0, PeerMapping::Context), end(1, PeerMapping::Context));
        assert_eq!(choose_path(&a, &b, true, false), PeerPath::Direct);
        staged_because(choose_path(&a, &b, false, false), "cannot access GPU");
        // One GPU: a local copy, whatever the memory and the grants.
        let (x, y) = (end(2, PeerMapping::Imported), end(2, PeerMapping::Granted(vec![2])));
        assert_eq!(choose_path(&x, &y, true, false), PeerPath::Direct);
        assert_eq!(choose_path(&y, &x, true, false), PeerPath::Direct);
    }

    #[test]
    fn every_path_names_itself() {
        assert_eq!(PeerPath::Direct.to_string(), "directly (CUDA peer access)");
        let slow = PeerPath::ThroughDriver { reason: "r".into() }.to_string();
        assert!(slow.contains("staged-like rate") && slow.contains("(r)"), "{slow}");
        let staged = PeerPath::StagedThroughHost { reason: "s".into() }.to_string();
        assert_eq!(staged, "staged through host memory (s)");
    }
}
