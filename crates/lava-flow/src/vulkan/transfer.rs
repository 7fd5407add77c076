//! Copies between host memory and buffers or images the CPU cannot map.
//!
//! Two ways to move the bytes, chosen per call:
//!
//! - **Straight from and into the caller's memory** where the device imports host memory
//!   (`VK_EXT_external_memory_host`): the pages holding the caller's bytes are imported (rounded
//!   out to `minImportedHostPointerAlignment`, which is at most a page, so only pages the bytes
//!   live in are imported; the GPU touches the caller's bytes alone) and one `vkCmdCopy*` moves
//!   them. No CPU copy at all. Where the import is refused (read-only or file-backed pages, a
//!   driver's limit), the staged path runs instead.
//! - **Through staging**: a ring of slots (3 by default) of one host-visible buffer (host-cached
//!   where the device has such memory: reading uncached memory back is slow), each with its own
//!   command buffer and fence. The CPU fills (or empties) one slot while the GPU copies another;
//!   slots of several MiB are copied by the persistent copy threads of [`super::copy`].
//!   Asynchronous transfers use the same staging: a write's bytes are in staging when the call
//!   returns, and the last copy signals the transfer timeline; a read leaves its last pieces
//!   *held* there (the pieces before them it reads as a synchronous read does) — their bytes are
//!   copied out as they arrive when the transfer is waited for, or by whichever call needs
//!   staging first. Writes from [`STREAM_MIN`] bytes and reads larger than the ring go through
//!   the streamed pipeline ([`Transfer::streamed`], a read's held bytes in [`Transfer::held`]);
//!   the others through the ring's slots. A slot whose submission belongs to an
//!   asynchronous transfer submitted whole is *covered*: the buffer's or image's drop waits for
//!   the transfer's timeline value, so such a slot does not make the context pending.
//!
//! A wait can time out (`AllocatorOptions::transfer_timeout`): the submission is then still
//! queued — behind work that waits for a semaphore nobody signalled, say — and will run when the
//! queue gets to it. Until its fence has been seen signalled its slot is *busy*: the command
//! buffer, the fence and the staging chunk (whose bytes the copy has yet to read) are the
//! submission's, and nothing records, submits, writes, replaces or destroys them; the context is
//! *pending* while any uncovered slot is. [`Device::with_transfer`] settles a pending context before it
//! lends it out, and [`Device::release_from_transfer`] keeps the copy's buffer or image from
//! being destroyed under it.
//!
//! The caller's memory must never be written by a copy that outlives the call (a synchronous
//! call's slice is the caller's again once it returns). So a synchronous copy through imported
//! memory is submitted only onto a drained queue: an empty batch is submitted and waited for (up
//! to the timeout), and the copy follows it only if nothing else was submitted in between
//! ([`Device::submit_if_last`]). Nothing queued ahead of it can then hold it back, and its own
//! wait needs no timeout. Asynchronous transfers ([`Job`]) own their host memory instead (the
//! caller gave it to the [`PendingTransfer`](super::PendingTransfer)), so they need no drain.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

pub(crate) use super::copy::copy_bytes;
use super::copy::{copy_bytes_as, CopyKind, RingCopy};

use ash::vk;
use ash::vk::Handle;

use super::device::Device;
use super::memory::{MemoryDesc, RawMemory};
use crate::error::{Error, Result, VkResultExt};
use crate::location::MemoryLocation;

/// The largest staging slot by default, and so the largest copy per staged submission.
const STAGING_CHUNK: u64 = 16 << 20;
/// The smallest staging slot made.
const STAGING_MIN: u64 = 1 << 20;
/// Staging slot sizes are multiples of this.
const SLOT_ALIGN: u64 = 4096;
/// Staging slots in the ring by default: one filled by the CPU, one copied by the GPU, one spare.
const SLOTS: usize = 3;
/// How long a staging slot's fence is polled before the wait blocks.
pub(crate) const FENCE_SPIN: std::time::Duration = std::time::Duration::from_millis(2);
/// Transfers of at least this many bytes import the caller's memory where they can; smaller ones
/// stage (an import pins pages and costs driver calls that a small copy does not repay).
pub(crate) const IMPORT_MIN: usize = 256 << 10;
/// Synchronous staged transfers of at least this many bytes stream through the ring
/// ([`Transfer::streamed`]); smaller ones go slot by slot.
const STREAM_MIN: usize = 1 << 20;
/// A streamed transfer's pieces (the unit the copy threads claim and the GPU's progress frees)
/// are at most this large...
const STREAM_PIECE: u64 = 1 << 20;
/// ...and at least this large (a transfer is cut into about 64 of them between the two).
const STREAM_PIECE_MIN: u64 = 256 << 10;
/// A streamed transfer's first GPU copy moves at most this many bytes; each later one at most
/// what was submitted before it, up to [`BATCH_MAX`]: the GPU starts early, and the
/// submissions (each costs the copy engine about 13 µs on the H200) stay few. Full runs on the
/// H200 (BENCHMARKS.md) moved more with these than with 4 MiB / 8 MiB / 8 MiB, which a quick
/// sweep had favoured within its noise.
const BATCH_FIRST: u64 = 2 << 20;
const BATCH_MAX: u64 = 16 << 20;
/// While less than this is queued on the GPU, whatever is ready is submitted at once: the copy
/// engine must not run dry while the CPU copies.
const GPU_LOW: u64 = 4 << 20;
/// How long a streamed transfer that has seen no progress for [`FENCE_SPIN`] blocks at a time
/// before it looks again (at the copy threads' pieces and the GPU's progress).
const STREAM_NAP: std::time::Duration = std::time::Duration::from_micros(100);
/// Command buffers for a streamed transfer's GPU copies (reused once their values are reached).
const BATCH_CMDS: usize = 32;
/// How often a synchronous import copy drains the queue before it gives up and stages: other
/// threads kept submitting between the drain and the copy.
const DRAIN_ATTEMPTS: usize = 3;

/// The staging ring's shape: [`STAGING_CHUNK`] and [`SLOTS`] unless `LAVA_FLOW_STAGING_CHUNK_MIB`
/// (1 to 256) or `LAVA_FLOW_STAGING_SLOTS` (2 to 16) say otherwise, and the CPU copy's
/// instructions (`LAVA_FLOW_STAGING_COPY=stream`: non-temporal stores into staging and loads
/// from it). Read once per process: knobs for measuring on new hardware (BENCHMARKS.md), not
/// an API.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingShape {
    pub chunk: u64,
    pub slots: usize,
    pub stream: bool,
    /// A streamed transfer's largest piece, first batch, largest batch and the GPU backlog below
    /// which whatever is ready is submitted ([`STREAM_PIECE`], [`BATCH_FIRST`], [`BATCH_MAX`],
    /// [`GPU_LOW`] unless `LAVA_FLOW_STREAM=piece_kib,first_kib,max_kib,low_kib` says
    /// otherwise).
    pub piece: u64,
    pub first: u64,
    pub batch: u64,
    pub low: u64,
}

/// The ring's shape (see [`RingShape`]).
pub(crate) fn ring_shape() -> RingShape {
    static SHAPE: OnceLock<RingShape> = OnceLock::new();
    *SHAPE.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let chunk = var("LAVA_FLOW_STAGING_CHUNK_MIB").map_or(STAGING_CHUNK, |m| m.clamp(1, 256) << 20);
        let slots = var("LAVA_FLOW_STAGING_SLOTS").map_or(SLOTS, |n| n.clamp(2, 16) as usize);
        let stream = std::env::var("LAVA_FLOW_STAGING_COPY").is_ok_and(|v| v.trim() == "stream");
        let kib: Vec<u64> = std::env::var("LAVA_FLOW_STREAM")
            .map(|v| {
                v.split(',')
                    .filter_map(|x| x.trim().parse::<u64>().ok())
                    .map(|k| k.clamp(4, 1 << 20) << 10)
                    .collect()
            })
            .unwrap_or_default();
        let at = |i: usize, default: u64| kib.get(i).copied().unwrap_or(default);
        RingShape {
            chunk,
            slots,
            stream,
            piece: at(0, STREAM_PIECE),
            first: at(1, BATCH_FIRST),
            batch: at(2, BATCH_MAX),
            low: at(3, GPU_LOW),
        }
    })
}

/// Units (bytes, or rows of an image) per piece, from `want`, for a transfer of `units` through
/// a ring of `capacity` units: where the transfer fits in the ring, a multiple that makes every
/// piece fit at once (`⌈units / k⌉ ≤ ⌊capacity / k⌋`); otherwise `want`.
fn fit_pieces(units: u64, capacity: u64, want: u64) -> u64 {
    if units > capacity {
        return want.max(1);
    }
    // At most the whole transfer in one piece, which fits (`units ≤ capacity`): the loop ends.
    let mut k = want.clamp(1, units.max(1));
    while units.div_ceil(k) > capacity / k {
        // The pieces the ring holds at this size, spread over the transfer.
        k = units.div_ceil((capacity / k).max(1)).max(k + 1);
    }
    k
}

/// The CPU copy of a staged transfer going `dir`.
fn staging_copy(dir: Direction) -> CopyKind {
    match (ring_shape().stream, dir) {
        (false, _) => CopyKind::Plain,
        (true, Direction::ToDevice) => CopyKind::StreamStores,
        (true, Direction::ToHost) => CopyKind::StreamLoads,
    }
}

/// The usage of staging and imported host buffers.
pub(crate) const HOST_BUFFER_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::TRANSFER_SRC.as_raw() | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

/// A host-visible buffer, persistently mapped.
pub(crate) struct Staging {
    buffer: vk::Buffer,
    memory: RawMemory,
    /// Bytes per ring slot (the ring's staging), or the whole size (a bench probe's).
    slot: u64,
    /// The memory type index.
    memory_type: u32,
}

impl Staging {
    fn mapped(&self) -> Result<*mut u8> {
        self.memory
            .mapped
            .map(|m| m.0.as_ptr())
            .ok_or_else(|| Error::Unsupported { what: "the staging buffer is not mapped".into() })
    }
}

/// The caller's host memory imported for one transfer, and the buffer bound to it.
pub(crate) struct HostImport {
    buffer: vk::Buffer,
    memory: RawMemory,
    /// Where the caller's first byte is in the buffer (the import starts at an aligned address
    /// at or before it).
    offset: u64,
    /// How many bytes of the caller's are copied, from `offset`.
    len: u64,
}

/// One ring slot: a command buffer and the fence of its submission.
struct Slot {
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    /// Submitted and not yet seen complete.
    busy: bool,
    /// Busy with a copy of an asynchronous transfer that was submitted whole: the buffer's or
    /// image's drop waits for that transfer's timeline value, so the slot does not make the
    /// context pending (it is still waited for before it is reused).
    covered: bool,
    /// An asynchronous read's bytes in this slot, not yet copied out.
    held: Option<Held>,
}

/// Where an asynchronous read's bytes in a ring slot go once its copy has completed.
struct Held {
    /// The transfer's timeline value.
    value: u64,
    /// The destination of these bytes in the transfer's host memory.
    dst: SendPtr,
    /// Where the bytes are in the staging buffer, and how many.
    at: usize,
    len: usize,
}

/// A pointer into an asynchronous read's host memory, kept by the ring.
struct SendPtr(*mut u8);
// SAFETY: the memory belongs to a `PendingTransfer` (which is `Send`), or to the device once the
// transfer was dropped or leaked; the ring writes it under the context's lock only, and only
// while that memory is still owned by the transfer (`Transfer::finish_ring` and `reap` clear the
// entry before the memory is handed back or freed).
unsafe impl Send for SendPtr {}

/// The staging context of one device.
pub(crate) struct Transfer {
    pool: vk::CommandPool,
    slots: Vec<Slot>,
    staging: Option<Staging>,
    /// The raw handle of the buffer or image the busy uncovered slots' copies use (0 for none).
    target: u64,
    /// The slot the next staged transfer starts at: consecutive asynchronous transfers use
    /// different slots, so several are in flight at once.
    cursor: usize,
    /// The timeline asynchronous transfers signal, and the last value submitted.
    timeline: vk::Semaphore,
    timeline_value: u64,
    /// Asynchronous jobs whose waits timed out, with the host memory they own: destroyed and
    /// freed once their values are reached (seen by the next transfer, or at the device's end).
    orphans: Vec<(Job, Box<dyn Send>)>,
    /// The command buffers of streamed transfers' GPU copies, each with the timeline value of
    /// its last submission (free once reached), and the next one to use.
    batch_cmds: Vec<(vk::CommandBuffer, u64)>,
    batch_next: usize,
    /// The timeline value of the last GPU copy of a streamed transfer that returned before it
    /// completed (an error or a timeout; 0: none): the context is pending on `target` until it is
    /// reached.
    streaming: u64,
    /// The timeline value of the last GPU copy an asynchronous streamed transfer left in flight
    /// through the staging buffer (0: none): no piece of the buffer is reused until it is reached
    /// (and, for a read, its [`held`](Transfer::held) bytes were copied out). Nothing is pending
    /// on a target for it: the buffer's or image's own value covers that.
    staging_busy: u64,
    /// An asynchronous streamed read's last pieces, in the staging buffer (or on their way there)
    /// when the call returned: copied into the transfer's memory once its value is reached.
    held: Option<HeldRun>,
}

/// The pieces an asynchronous streamed read left in the staging buffer (or on their way there):
/// pieces `next..` of `host`, in a ring of `ring_pieces` pieces of `piece` bytes, brought by the
/// GPU copies in `batches` (timeline value, pieces done once it is reached), in order.
struct HeldRun {
    /// The transfer's timeline value (its last GPU copy's).
    value: u64,
    host: SendPtr,
    len: usize,
    piece: usize,
    ring_pieces: usize,
    next: usize,
    batches: std::collections::VecDeque<(u64, usize)>,
}

impl HeldRun {
    /// The runs of pieces `self.next..end` in staging: `(offset in staging, destination, bytes)`,
    /// one, or two where the ring wraps.
    fn runs(&self, end: usize) -> Vec<(usize, *mut u8, usize)> {
        let mut runs = Vec::with_capacity(2);
        let mut k = self.next;
        while k < end && k * self.piece < self.len {
            let slot = k % self.ring_pieces;
            let stop = end.min(k + self.ring_pieces - slot);
            let len = (stop * self.piece).min(self.len) - k * self.piece;
            runs.push((slot * self.piece, self.host.0.wrapping_add(k * self.piece), len));
            k = stop;
        }
        runs
    }
}

/// What [`Error::Timeout`] names when a call finds an earlier submission still pending.
pub(crate) const EARLIER_COPY: &str =
    "an earlier staging copy that timed out and is still queued (nothing of this call was done)";

/// What [`Error::Timeout`] names when an asynchronous streamed transfer's GPU copies still use
/// the staging buffer.
const STAGING_IN_USE: &str =
    "an earlier asynchronous transfer's copies through the staging buffer (nothing of this call was done)";

/// What [`Error::Timeout`] names when the queue did not drain before an import copy.
const QUEUED_BEFORE: &str = "work queued before this copy (nothing of this call was done)";

/// Which way a copy goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Direction {
    ToDevice,
    ToHost,
}

/// What a transfer copies to or from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// A buffer, from byte `offset`.
    Buffer { buffer: vk::Buffer, offset: u64 },
    /// Mip `level` of an image in `GENERAL` layout, `width` texels of `texel` bytes per row,
    /// tightly packed in host memory.
    Image { image: vk::Image, level: u32, width: u32, texel: u32 },
}

impl Target {
    fn raw(self) -> u64 {
        match self {
            Target::Buffer { buffer, .. } => buffer.as_raw(),
            Target::Image { image, .. } => image.as_raw(),
        }
    }

    /// Bytes per staged piece with slots of `slot` bytes: whole rows for images.
    fn step(self, slot: u64) -> u64 {
        match self {
            Target::Buffer { .. } => slot,
            Target::Image { .. } => (slot / self.row_bytes()).max(1) * self.row_bytes(),
        }
    }

    fn row_bytes(self) -> u64 {
        match self {
            Target::Buffer { .. } => 1,
            Target::Image { width, texel, .. } => u64::from(width) * u64::from(texel),
        }
    }

    /// Records the copy of bytes `start..start + len` of the target (for images, whole rows)
    /// from or into `host` at `host_offset`, and for reads the barrier that makes them visible
    /// to the host.
    #[allow(clippy::too_many_arguments, reason = "one copy's full description")]
    fn record(
        self,
        d: &ash::Device,
        cmd: vk::CommandBuffer,
        dir: Direction,
        host: vk::Buffer,
        host_offset: u64,
        start: u64,
        len: u64,
    ) {
        match self {
            Target::Buffer { buffer, offset } => {
                let (src, dst, region) = match dir {
                    Direction::ToDevice => (
                        host,
                        buffer,
                        vk::BufferCopy { src_offset: host_offset, dst_offset: offset + start, size: len },
                    ),
                    Direction::ToHost => (
                        buffer,
                        host,
                        vk::BufferCopy { src_offset: offset + start, dst_offset: host_offset, size: len },
                    ),
                };
                // SAFETY: a recording command buffer; both buffers are live buffers of this
                // device and the region lies inside both (checked by the callers).
                unsafe { d.cmd_copy_buffer(cmd, src, dst, &[region]) };
            }
            Target::Image { image, level, width, .. } => {
                let rows = self.row_bytes();
                let first_row = u32::try_from(start / rows).unwrap_or(u32::MAX);
                let count = u32::try_from(len / rows).unwrap_or(u32::MAX);
                let region = image_region(host_offset, level, width, first_row, count);
                let general = vk::ImageLayout::GENERAL;
                let layout = match dir {
                    Direction::ToDevice => vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                    Direction::ToHost => vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                };
                layout_barrier(d, cmd, image, (level, 1), general, layout);
                match dir {
                    // SAFETY: a recording command buffer; the region lies inside the level and
                    // the host buffer, and the level is in the layout the copy names.
                    Direction::ToDevice => unsafe {
                        d.cmd_copy_buffer_to_image(cmd, host, image, layout, &[region])
                    },
                    // SAFETY: as above.
                    Direction::ToHost => unsafe {
                        d.cmd_copy_image_to_buffer(cmd, image, layout, host, &[region])
                    },
                }
                layout_barrier(d, cmd, image, (level, 1), layout, general);
            }
        }
        if dir == Direction::ToHost {
            host_read_barrier(d, cmd);
        }
    }
}

/// Host memory of a transfer: the bytes to write, or the bytes to read into. A raw range, so
/// that one code path serves both; the public callers hold the slice (or own the memory) for as
/// long as the transfer may touch it.
#[derive(Clone, Copy)]
pub(crate) struct HostRange {
    pub ptr: *mut u8,
    pub len: usize,
}

impl HostRange {
    /// Bytes to write from (never written through).
    pub fn source(data: &[u8]) -> Self {
        HostRange { ptr: data.as_ptr().cast_mut(), len: data.len() }
    }

    /// Bytes to read into.
    pub fn destination(out: &mut [u8]) -> Self {
        HostRange { ptr: out.as_mut_ptr(), len: out.len() }
    }
}

impl Transfer {
    pub fn new(device: &Device) -> Result<Self> {
        let d = &device.device;
        let pool = create_pool(d, device.physical.queue_family)?;
        let mut transfer = Transfer {
            pool,
            slots: Vec::new(),
            staging: None,
            target: 0,
            cursor: 0,
            timeline: vk::Semaphore::null(),
            timeline_value: 0,
            orphans: Vec::new(),
            batch_cmds: Vec::new(),
            batch_next: 0,
            streaming: 0,
            staging_busy: 0,
            held: None,
        };
        match transfer.make_objects(d) {
            Ok(()) => {
                // Set only now that the semaphore is sure to live as long as the device; a
                // second context is never made (`with_transfer` keeps the first).
                let _ = device.transfer_timeline.set(transfer.timeline);
                Ok(transfer)
            }
            Err(e) => {
                // SAFETY: the objects belong to `d` and were never submitted.
                unsafe { transfer.destroy(d) };
                Err(e)
            }
        }
    }

    fn make_objects(&mut self, d: &ash::Device) -> Result<()> {
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(ring_shape().slots as u32);
        // SAFETY: the pool was created on this device.
        let cmds = unsafe { d.allocate_command_buffers(&alloc) }.vk("vkAllocateCommandBuffers")?;
        for cmd in cmds {
            // SAFETY: a plain object creation on a live device.
            let fence =
                unsafe { d.create_fence(&vk::FenceCreateInfo::default(), None) }.vk("vkCreateFence")?;
            self.slots.push(Slot { cmd, fence, busy: false, covered: false, held: None });
        }
        let mut kind = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut kind);
        // SAFETY: as above.
        self.timeline = unsafe { d.create_semaphore(&info, None) }.vk("vkCreateSemaphore")?;
        Ok(())
    }

    /// Copies `data` into `target`.
    pub fn write(&mut self, device: &Device, target: Target, data: &[u8]) -> Result<()> {
        self.copy(device, Direction::ToDevice, target, HostRange::source(data))
    }

    /// Copies `out.len()` bytes of `target` into `out`.
    pub fn read(&mut self, device: &Device, target: Target, out: &mut [u8]) -> Result<()> {
        self.copy(device, Direction::ToHost, target, HostRange::destination(out))
    }

    /// A synchronous copy: straight from or into `host` where it can be imported, else staged —
    /// streamed through the whole staging buffer from [`STREAM_MIN`] bytes, slot by slot below.
    fn copy(&mut self, device: &Device, dir: Direction, target: Target, host: HostRange) -> Result<()> {
        check_rows(target)?;
        if let Some(import) = self.import(device, target, host) {
            // `false`: others kept submitting between the drain and the copy; stage instead.
            if self.direct(device, dir, target, import)? {
                device.imported_transfers.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        device.staged_transfers.fetch_add(1, Ordering::Relaxed);
        if host.len >= STREAM_MIN {
            self.streamed(device, dir, target, host, false).map(drop)
        } else {
            self.staged(device, dir, target, host, None)
        }
    }

    /// Imports the pages of `host` for a copy to or from `target`, where the device can, the
    /// transfer is large enough to repay it, and the driver accepts these pages; `None`
    /// otherwise (the reason logged at debug level).
    fn import(&self, device: &Device, target: Target, host: HostRange) -> Option<HostImport> {
        let ext = device.host_import.as_ref()?;
        if host.len < IMPORT_MIN {
            return None;
        }
        let start = host.ptr as u64;
        let base = start & !(ext.alignment - 1);
        let offset = start - base;
        if let Target::Image { texel, .. } = target {
            // VUID-vkCmdCopyBufferToImage-dstImage-07975: bufferOffset is a multiple of the
            // texel size.
            if !offset.is_multiple_of(u64::from(texel)) {
                return None;
            }
        }
        let size = (offset + host.len as u64).next_multiple_of(ext.alignment);
        let base_ptr = host.ptr.wrapping_sub(offset as usize).cast::<std::ffi::c_void>();
        let refused = |what: &str, e: &dyn std::fmt::Display| {
            log::debug!(
                "importing {size} bytes of host memory at {base_ptr:p}: {what}: {e}; staging instead"
            );
        };
        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: `base_ptr` is aligned and lies in the page of the caller's first byte, which
        // is mapped (the caller holds the bytes).
        let r = unsafe {
            (ext.loader.fp().get_memory_host_pointer_properties_ext)(
                ext.loader.device(),
                vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT,
                base_ptr.cast_const(),
                &mut props,
            )
        }
        .result();
        if let Err(e) = r {
            refused("vkGetMemoryHostPointerPropertiesEXT", &e);
            return None;
        }
        let d = &device.device;
        let mut external = vk::ExternalMemoryBufferCreateInfo::default()
            .handle_types(vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(HOST_BUFFER_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        // SAFETY: the device can import host allocations for this usage (probed); `info`
        // points at live locals.
        let buffer = match unsafe { d.create_buffer(&info, None) } {
            Ok(b) => b,
            Err(e) => {
                refused("vkCreateBuffer", &e);
                return None;
            }
        };
        // SAFETY: the buffer is live.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let types = req.memory_type_bits & props.memory_type_bits;
        let memory = if types == 0 || req.size > size {
            refused("no memory type or size fits", &format_args!("{req:?}, {props:?}"));
            None
        } else {
            // SAFETY: `base_ptr..base_ptr + size` is aligned at both ends and covers only pages
            // that hold the caller's bytes (alignment ≤ page size), which stay mapped for as
            // long as the import lives (the callers' rule); the type is one the pointer allows.
            match unsafe { RawMemory::import_host(device, base_ptr, size, types.trailing_zeros()) } {
                Ok(m) => Some(m),
                Err(e) => {
                    refused("import", &e);
                    None
                }
            }
        };
        let bound = memory.and_then(|memory| {
            // SAFETY: fresh buffer and memory of a type its requirements allow, offset 0.
            match unsafe { d.bind_buffer_memory(buffer, memory.memory, 0) } {
                Ok(()) => Some(memory),
                Err(e) => {
                    refused("vkBindBufferMemory", &e);
                    None
                }
            }
        });
        match bound {
            Some(memory) => Some(HostImport { buffer, memory, offset, len: host.len as u64 }),
            None => {
                // SAFETY: the buffer is unused (its memory, if any, is freed by its drop).
                unsafe { d.destroy_buffer(buffer, None) };
                None
            }
        }
    }

    /// A synchronous copy through `import`, onto a drained queue (see the module's docs).
    /// `false` where others kept submitting: nothing was done.
    fn direct(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        import: HostImport,
    ) -> Result<bool> {
        let d = &device.device;
        let unused = |import: HostImport, e: Error| {
            // SAFETY: the import was never submitted.
            unsafe { import.destroy(d) };
            Err(e)
        };
        for _ in 0..DRAIN_ATTEMPTS {
            let i = self.free_slot();
            let probe = match self.submit_slot(device, i, 0, |_, _| {}, SubmitWhen::Always, None) {
                Ok(probe) => probe.unwrap_or(0),
                Err(e) => return unused(import, e),
            };
            if let Err(e) = self.settle(device, QUEUED_BEFORE) {
                return unused(import, e);
            }
            let record = |d: &ash::Device, cmd| {
                target.record(d, cmd, dir, import.buffer, import.offset, 0, import.len)
            };
            match self.submit_slot(device, i, target.raw(), record, SubmitWhen::NothingSince(probe), None) {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => return unused(import, e),
            }
            // Nothing queued ahead could hold the copy back: wait for it however long it takes
            // (it reads or writes the caller's memory, which is theirs again after the return).
            let fence = self.slots[i].fence;
            // SAFETY: the fence belongs to this device.
            if let Err(e) = unsafe { d.wait_for_fences(&[fence], true, u64::MAX) } {
                // The device is lost or the wait failed: the copy's fate is unknown, so the
                // import is leaked rather than freed under it (the slot stays busy).
                std::mem::forget(import);
                return Err(Error::vk("vkWaitForFences", e));
            }
            self.settle(device, "a copy from or into imported host memory")?;
            // SAFETY: the copy has completed.
            unsafe { import.destroy(d) };
            return Ok(true);
        }
        // SAFETY: the import was never submitted.
        unsafe { import.destroy(d) };
        Ok(false)
    }

    /// A copy through the staging ring, starting at the slot after the last one used.
    ///
    /// `signal: None`: synchronous, every copy waited for. `Some(value)`: an asynchronous
    /// transfer's next timeline value, signalled by its last copy: the last slots' copies are
    /// left in flight — covered, and for a read their bytes held until
    /// [`Transfer::finish_ring`] or the slot's next user copies them out (the pieces before the
    /// last `slots` go as in a synchronous transfer).
    fn staged(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        host: HostRange,
        signal: Option<u64>,
    ) -> Result<()> {
        check_rows(target)?;
        // The slots are pieces of the buffer an asynchronous streamed write may still read.
        self.settle_staging(device)?;
        let slot = self.staging(device, host.len as u64)?;
        let (buffer, mapped) = match &self.staging {
            Some(s) => (s.buffer, s.mapped()?),
            None => return Err(Error::Unsupported { what: "no staging buffer".into() }),
        };
        let slots = self.slots.len();
        let step = target.step(slot) as usize;
        let pieces = host.len.div_ceil(step);
        let first = self.cursor;
        self.cursor = (first + pieces) % slots;
        let ring = |k: usize| (first + k) % slots;
        let piece = |k: usize| (k * step, step.min(host.len - k * step));
        let staged_at = |k: usize| ring(k) as u64 * slot;
        let kind = staging_copy(dir);
        let submit = |t: &mut Transfer, k: usize| -> Result<()> {
            let (at, len) = piece(k);
            let record = |d: &ash::Device, cmd| {
                target.record(d, cmd, dir, buffer, staged_at(k), at as u64, len as u64)
            };
            let value = if k + 1 == pieces { signal } else { None };
            t.submit_slot(device, ring(k), target.raw(), record, SubmitWhen::Always, value).map(drop)
        };
        match (dir, signal) {
            (Direction::ToDevice, _) => {
                for k in 0..pieces {
                    // The slot's last copy has read its bytes before they are overwritten.
                    self.settle_slot(device, ring(k), "a staging copy")?;
                    let (at, len) = piece(k);
                    // SAFETY: the slot holds `slot ≥ step ≥ len` bytes and is idle; `host`
                    // holds `at + len` bytes (the caller's slice, or memory the asynchronous
                    // transfer owns).
                    unsafe {
                        copy_bytes_as(
                            kind,
                            host.ptr.wrapping_add(at),
                            mapped.wrapping_add(staged_at(k) as usize),
                            len,
                        )
                    };
                    submit(self, k)?;
                }
            }
            (Direction::ToHost, signal) => {
                // Every piece is read here once its copy completed, as a synchronous read reads
                // them — except, for an asynchronous read, the last `slots`: they stay in
                // flight, their bytes held in their slots.
                let held = if signal.is_some() { slots } else { 0 };
                let tail = pieces.saturating_sub(held);
                for k in 0..pieces.min(slots) {
                    submit(self, k)?;
                }
                for k in 0..tail {
                    self.settle_slot(device, ring(k), "a staging copy")?;
                    let (at, len) = piece(k);
                    // SAFETY: `host` is the caller's writable range of `host.len` bytes; the
                    // slot's copy has completed and a TRANSFER→HOST barrier made it visible to
                    // the host; the piece lies inside both.
                    unsafe {
                        copy_bytes_as(
                            kind,
                            mapped.wrapping_add(staged_at(k) as usize),
                            host.ptr.wrapping_add(at),
                            len,
                        )
                    };
                    if k + slots < pieces {
                        submit(self, k + slots)?;
                    }
                }
                // Every copy is queued: from here on, the held bytes go to the transfer's memory
                // once their copies complete (never before: nothing was held while a submission
                // could still fail).
                if let Some(value) = signal {
                    for k in tail..pieces {
                        let (at, len) = piece(k);
                        self.slots[ring(k)].held = Some(Held {
                            value,
                            dst: SendPtr(host.ptr.wrapping_add(at)),
                            at: staged_at(k) as usize,
                            len,
                        });
                    }
                }
            }
        }
        match signal {
            None => self.settle(device, "a staging copy"),
            Some(_) => {
                // The whole transfer is queued and its value is the buffer's or image's to wait
                // for: its slots no longer make the context pending.
                for s in &mut self.slots {
                    s.covered |= s.busy;
                }
                self.release_target(device);
                Ok(())
            }
        }
    }

    /// A copy streamed through the whole staging buffer (see [`RingCopy`]): the copy threads
    /// fill (or empty) pieces of it without pause while this thread submits the GPU's copies of
    /// the pieces ready so far, first small, then larger, and publishes the GPU's progress, which
    /// frees pieces for the threads. The CPU copy and the DMA overlap for the whole transfer
    /// instead of slot by slot. Returns the transfer timeline value of its last GPU copy.
    ///
    /// Synchronous unless `in_flight`: then it returns once every GPU copy is submitted, leaving
    /// the last ones in flight (the buffer is not reused until they complete:
    /// [`Transfer::staging_busy`]). A write's bytes are all in staging by then (the host memory is
    /// no longer read); a read's last pieces, those the copies in flight bring (at most the
    /// staging buffer's worth), are [`held`](Transfer::held) there until the transfer's value is
    /// reached, and copied into `host` then ([`Transfer::finish_ring`]).
    fn streamed(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        host: HostRange,
        in_flight: bool,
    ) -> Result<u64> {
        // The whole buffer is this call's: asynchronous transfers still in it are waited for
        // (they are ahead of this one on the queue anyway).
        self.settle_all(device, EARLIER_COPY)?;
        let slot = self.staging(device, host.len as u64)?;
        let ring_bytes = slot * self.slots.len() as u64;
        let shape = ring_shape();
        let want = (host.len as u64 / 64).clamp(STREAM_PIECE_MIN.min(shape.piece), shape.piece);
        // Whole rows for images (a row fits in a slot: `check_rows`), and two pieces at least.
        let piece = target.step(want).min(target.step(ring_bytes / 2));
        // A transfer that fits in the ring is cut into pieces that all fit at once: then no piece
        // waits for the GPU to empty its place (an asynchronous write returns even behind a
        // stalled queue), whatever the rounding of the piece size.
        let unit = target.row_bytes();
        let piece = unit * fit_pieces(host.len as u64 / unit, ring_bytes / unit, piece / unit);
        let ring_pieces = (ring_bytes / piece) as usize;
        let (buffer, mapped) = match &self.staging {
            Some(s) => (s.buffer, s.mapped()?),
            None => return Err(Error::Unsupported { what: "no staging buffer".into() }),
        };
        self.batch_commands(device)?;
        // SAFETY: `host` is the caller's range (readable for a write, writable for a read) and
        // nothing else touches it until this returns (the callers hold the slice); the staging
        // buffer holds `ring_pieces * piece` bytes and nothing uses it (settled above) but this
        // call's GPU copies, which the gates keep apart from the threads' (`RingCopy`); the
        // copy is dropped, which waits for its threads, before this returns.
        let copy = unsafe {
            RingCopy::start(
                host.ptr,
                mapped,
                host.len,
                piece as usize,
                ring_pieces,
                dir == Direction::ToDevice,
                staging_copy(dir),
            )
        };
        let mut queued = std::collections::VecDeque::new();
        let result =
            self.drive(device, dir, target, buffer, &copy, (piece, ring_pieces), in_flight, &mut queued);
        // A read returning in flight: the pieces from the first one not yet copied out are still
        // to come (the copy threads may copy a few more before they stop below: those bytes are
        // copied again, the same, from the same place). They are the last `ring_pieces` at most
        // (a piece's GPU copy is submitted only once the piece `ring_pieces` before it, in the
        // same place, was copied out), so no later copy overwrites them.
        let pieces = copy.pieces();
        let held_from = (in_flight && dir == Direction::ToHost)
            .then(|| (0..pieces).find(|&k| !copy.copied(k)).unwrap_or(pieces));
        // Waits until no copy thread touches either memory (after an error, skipping the rest).
        drop(copy);
        if let Ok(value) = result {
            if in_flight {
                self.staging_busy = value;
                if let Some(next) = held_from {
                    // Every batch already seen complete: the held pieces are there (value 0).
                    if queued.is_empty() {
                        queued.push_back((0, pieces));
                    }
                    self.held = Some(HeldRun {
                        value,
                        host: SendPtr(host.ptr),
                        len: host.len,
                        piece: piece as usize,
                        ring_pieces,
                        next,
                        batches: queued,
                    });
                }
            }
            // Every GPU copy has completed, or is covered by the value the caller keeps: the
            // target is no longer pending (a drop of it need not take the context's lock).
            self.release_target(device);
        }
        result
    }

    /// The submitting side of [`Transfer::streamed`]: `(piece, ring_pieces)` is the geometry.
    /// Returns the timeline value of the last GPU copy once every piece has reached its
    /// destination (with `in_flight`: once every GPU copy is submitted, and for a write every
    /// piece is in staging), or with the error that stopped it (then the GPU copies still queued keep the
    /// context pending: [`Transfer::streaming`]). `queued` is left with the batches submitted and
    /// not seen complete: (timeline value, pieces done once it is reached).
    #[allow(clippy::too_many_arguments, reason = "one streamed transfer's full description")]
    fn drive(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        staging: vk::Buffer,
        copy: &RingCopy,
        (piece, ring_pieces): (u64, usize),
        in_flight: bool,
        queued: &mut std::collections::VecDeque<(u64, usize)>,
    ) -> Result<u64> {
        let d = &device.device;
        let shape = ring_shape();
        let n = copy.pieces();
        let total = copy.len() as u64;
        let len = |k: usize, end: usize| (end as u64 * piece).min(total) - k as u64 * piece;
        let (mut ready, mut submitted, mut done) = (0usize, 0usize, 0usize);
        // The value of the last batch submitted (every earlier one completes before it).
        let mut last = self.timeline_value;
        // The transfer timeline's value as last seen.
        // SAFETY: the semaphore belongs to this device.
        let mut reached =
            unsafe { d.get_semaphore_counter_value(self.timeline) }.vk("vkGetSemaphoreCounterValue")?;
        let mut moved = std::time::Instant::now();
        let fail = |t: &mut Transfer, queued: &std::collections::VecDeque<(u64, usize)>, e: Error| {
            if let Some(&(value, _)) = queued.back() {
                t.streaming = value;
            }
            Err(e)
        };
        loop {
            let mut progress = false;
            while ready < n && copy.copied(ready) {
                ready += 1;
                progress = true;
            }
            // Pieces whose GPU copies may be queued now: the copied ones (a write), or those
            // whose ring slots have been emptied (a read).
            let limit = match dir {
                Direction::ToDevice => ready,
                Direction::ToHost => n.min(ready + ring_pieces),
            };
            let on_gpu = (submitted - done) as u64 * piece;
            let cap = ((submitted as u64 * piece).clamp(shape.first, shape.batch.max(shape.first)) / piece)
                .max(1) as usize;
            let avail = limit - submitted;
            // A batch before the last leaves a command buffer free for the last one: behind a
            // stalled queue the batches then grow instead of waiting for a command buffer.
            let spare = {
                let after_next = (self.batch_next + 1) % self.batch_cmds.len();
                self.batch_cmds[after_next].1 <= reached
            };
            if avail > 0 && ((spare && (avail >= cap || on_gpu < shape.low)) || limit == n) {
                // Without a spare command buffer, the last batch takes everything left: capped,
                // it would leave pieces for one more batch, whose command buffer may still be
                // queued behind the stall (found flaky under load: the 33rd batch waited).
                let end = if spare { submitted + avail.min(cap) } else { limit };
                match self.submit_batch(
                    device,
                    dir,
                    target,
                    staging,
                    (submitted, end),
                    (piece, ring_pieces),
                    &len,
                ) {
                    Ok(value) => {
                        queued.push_back((value, end));
                        submitted = end;
                        last = value;
                        progress = true;
                    }
                    Err(e) => return fail(self, queued, e),
                }
            }
            // SAFETY: the semaphore belongs to this device.
            reached = match unsafe { d.get_semaphore_counter_value(self.timeline) } {
                Ok(v) => v,
                Err(e) => return fail(self, queued, Error::vk("vkGetSemaphoreCounterValue", e)),
            };
            while let Some(&(value, end)) = queued.front() {
                if value > reached {
                    break;
                }
                done = end;
                queued.pop_front();
                progress = true;
            }
            copy.publish(done);
            let finished = match dir {
                // Every GPU copy is queued (a read's last pieces are held: `streamed`).
                _ if in_flight => submitted == n,
                Direction::ToDevice => done == n,
                // Every piece copied out: every GPU copy has completed.
                Direction::ToHost => ready == n,
            };
            if finished {
                return Ok(last);
            }
            if progress {
                moved = std::time::Instant::now();
            } else if !copy.help() {
                let idle = moved.elapsed();
                if idle > device.transfer_timeout {
                    return fail(self, queued, Error::Timeout(device.transfer_timeout, "a staging copy"));
                }
                if idle < FENCE_SPIN {
                    // In the normal flow a piece is copied or a batch completes within
                    // microseconds: poll.
                    std::hint::spin_loop();
                } else if let Some(&(value, _)) = queued.front() {
                    // Nothing moved for a while (the queue is held up behind other work): block
                    // in short steps rather than burn a core for up to the timeout.
                    let semaphores = [self.timeline];
                    let values = [value];
                    let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
                    let nap = u64::try_from(STREAM_NAP.as_nanos()).unwrap_or(u64::MAX);
                    // SAFETY: the semaphore belongs to this device.
                    match unsafe { d.wait_semaphores(&info, nap) } {
                        Ok(()) | Err(vk::Result::TIMEOUT) => {}
                        Err(e) => return fail(self, queued, Error::vk("vkWaitSemaphores", e)),
                    }
                } else {
                    // Only the copy threads can move (they are busy with other callers' copies).
                    std::thread::sleep(STREAM_NAP);
                }
            }
        }
    }

    /// Records and submits the GPU copies of pieces `first..end` of a streamed transfer (the ring
    /// slots they occupy: one or two runs), signalling the transfer timeline's next value, which
    /// it returns. `len(k, end)` is the bytes of pieces `k..end`.
    #[allow(clippy::too_many_arguments, reason = "one batch's full description")]
    fn submit_batch(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        staging: vk::Buffer,
        (first, end): (usize, usize),
        (piece, ring_pieces): (u64, usize),
        len: &dyn Fn(usize, usize) -> u64,
    ) -> Result<u64> {
        let d = &device.device;
        let i = self.batch_next;
        let (cmd, last) = self.batch_cmds[i];
        if last > 0 {
            // The command buffer's last submission must have completed before it is recorded
            // again (in practice long since: there are more of them than batches in flight).
            device.wait_transfer_value(last)?;
        }
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the command buffer's last submission has completed (above) and its pool
        // allows resetting it.
        unsafe { d.begin_command_buffer(cmd, &begin) }.vk("vkBeginCommandBuffer")?;
        let mut k = first;
        while k < end {
            let slot = k % ring_pieces;
            let run = (ring_pieces - slot).min(end - k);
            target.record(d, cmd, dir, staging, slot as u64 * piece, k as u64 * piece, len(k, k + run));
            k += run;
        }
        // SAFETY: as above.
        unsafe { d.end_command_buffer(cmd) }.vk("vkEndCommandBuffer")?;
        let value = self.timeline_value + 1;
        let cmds = [cmd];
        let semaphores = [self.timeline];
        let values = [value];
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&values);
        let submit = vk::SubmitInfo::default()
            .command_buffers(&cmds)
            .signal_semaphores(&semaphores)
            .push_next(&mut timeline);
        // SAFETY: the command buffer belongs to this device and is not pending; values increase
        // (taken under the context's lock).
        unsafe { device.submit_counted(&[submit], vk::Fence::null()) }?;
        self.timeline_value = value;
        self.batch_cmds[i].1 = value;
        self.batch_next = (i + 1) % self.batch_cmds.len();
        self.target = target.raw();
        device.transfer_target.store(self.target, Ordering::Release);
        Ok(value)
    }

    /// Allocates the streamed transfers' command buffers, once.
    fn batch_commands(&mut self, device: &Device) -> Result<()> {
        if !self.batch_cmds.is_empty() {
            return Ok(());
        }
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(BATCH_CMDS as u32);
        // SAFETY: the pool was created on this device; its command buffers are freed with it.
        let cmds =
            unsafe { device.device.allocate_command_buffers(&alloc) }.vk("vkAllocateCommandBuffers")?;
        self.batch_cmds = cmds.into_iter().map(|c| (c, 0)).collect();
        self.batch_next = 0;
        Ok(())
    }

    /// Makes sure the ring's staging buffer has slots of at least `min(len, chunk)` bytes;
    /// returns the slot size.
    fn staging(&mut self, device: &Device, len: u64) -> Result<u64> {
        // Slots start at multiples of the page size: image copies need texel-aligned buffer
        // offsets, and slot 1 of an odd slot size would not be.
        let want = len.clamp(STAGING_MIN, ring_shape().chunk).next_multiple_of(SLOT_ALIGN);
        if let Some(s) = &self.staging {
            if s.slot >= want {
                return Ok(s.slot);
            }
        }
        // Never replaced under a submission, nor with an asynchronous read's bytes in it.
        self.settle_all(device, EARLIER_COPY)?;
        if let Some(old) = self.staging.take() {
            // SAFETY: every copy through it was waited for (nothing is busy: settled above).
            unsafe { old.destroy(&device.device) };
        }
        let staging = make_staging(device, want * self.slots.len() as u64, want)?;
        self.staging = Some(staging);
        Ok(want)
    }

    /// For the bench: the GPU copy between `host`, imported once, and `target`, timed alone —
    /// `iters` copies, each submitted and waited for; seconds per copy. `None` where the device
    /// does not import these pages. What a registration of host memory (imported once, copied
    /// many times) would move, beside the per-call import that `write`/`read` pay.
    pub fn time_imported_copies(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        host: &mut [u8],
        iters: usize,
    ) -> Result<Option<f64>> {
        let Some(import) = self.import(device, target, HostRange::destination(host)) else {
            return Ok(None);
        };
        let start = std::time::Instant::now();
        for _ in 0..iters.max(1) {
            let i = self.free_slot();
            let record = |d: &ash::Device, cmd| {
                target.record(d, cmd, dir, import.buffer, import.offset, 0, import.len)
            };
            let copied = self
                .submit_slot(device, i, target.raw(), record, SubmitWhen::Always, None)
                .and_then(|_| self.settle_slot(device, i, "a copy from or into imported host memory"));
            if let Err(e) = copied {
                // A copy may still be queued: the import is leaked, never freed under the GPU.
                std::mem::forget(import);
                return Err(e);
            }
        }
        let seconds = start.elapsed().as_secs_f64() / iters.max(1) as f64;
        // SAFETY: every copy through it was waited for.
        unsafe { import.destroy(&device.device) };
        Ok(Some(seconds))
    }

    /// For the bench: what importing `host`'s pages and releasing them costs per call, without
    /// a copy; seconds per import. `None` where the device does not import these pages.
    pub fn time_imports(
        &self,
        device: &Device,
        target: Target,
        host: &mut [u8],
        iters: usize,
    ) -> Option<f64> {
        let start = std::time::Instant::now();
        for _ in 0..iters.max(1) {
            let import = self.import(device, target, HostRange::destination(host))?;
            // SAFETY: never submitted.
            unsafe { import.destroy(&device.device) };
        }
        Some(start.elapsed().as_secs_f64() / iters.max(1) as f64)
    }

    /// Moves every level of a fresh image from `UNDEFINED` to `GENERAL`.
    pub fn initialize_image(&mut self, device: &Device, image: vk::Image, levels: u32) -> Result<()> {
        self.run(device, image.as_raw(), |d, cmd| {
            layout_barrier(d, cmd, image, (0, levels), vk::ImageLayout::UNDEFINED, vk::ImageLayout::GENERAL);
        })
    }

    /// Waits until everything submitted to the queue before this call has completed: an empty
    /// batch with the fence, which signals only after every earlier batch on the queue.
    pub fn wait_idle(&mut self, device: &Device) -> Result<()> {
        self.run(device, 0, |_, _| {})
    }

    /// Records commands with `record` into an idle slot, submits them and waits for them. `target` is
    /// the raw handle of the buffer or image the commands use (0 for none): if the wait times
    /// out, the context stays pending on it.
    fn run(
        &mut self,
        device: &Device,
        target: u64,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<()> {
        let i = self.free_slot();
        self.submit_slot(device, i, target, record, SubmitWhen::Always, None)?;
        self.settle_slot(device, i, "a staging copy")
    }

    /// A slot for a single submission: an idle one where there is one (asynchronous transfers
    /// in flight keep theirs), else the next in the ring.
    fn free_slot(&self) -> usize {
        self.slots.iter().position(|s| !s.busy).unwrap_or(self.cursor)
    }

    /// Records commands with `record` into slot `i` and submits them with its fence (if `when`
    /// allows: `None` otherwise), signalling the transfer timeline with `signal` if given.
    /// Returns the queue's submission count after it.
    fn submit_slot(
        &mut self,
        device: &Device,
        i: usize,
        target: u64,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
        when: SubmitWhen,
        signal: Option<u64>,
    ) -> Result<Option<u64>> {
        // Every caller settled the slot; this keeps the rule where the objects are reused.
        self.settle_slot(device, i, EARLIER_COPY)?;
        if self.target != target && self.pending().is_some() {
            // Busy slots of another target: settle them first, so that one target is pending.
            self.settle(device, EARLIER_COPY)?;
        }
        let d = &device.device;
        let slot = &self.slots[i];
        let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the command buffer is not in use (its slot is idle: settled above) and its
        // pool allows resetting it.
        unsafe { d.begin_command_buffer(slot.cmd, &begin) }.vk("vkBeginCommandBuffer")?;
        record(d, slot.cmd);
        // SAFETY: as above.
        unsafe { d.end_command_buffer(slot.cmd) }.vk("vkEndCommandBuffer")?;
        let cmds = [slot.cmd];
        let semaphores = [self.timeline];
        let values = [signal.unwrap_or(0)];
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&values);
        let mut submit = vk::SubmitInfo::default().command_buffers(&cmds);
        if signal.is_some() {
            // Values increase: they are taken under the context's lock (`timeline_value + 1`).
            submit = submit.signal_semaphores(&semaphores).push_next(&mut timeline);
        }
        let count = match when {
            // SAFETY: the command buffer and fence belong to this device; the fence is
            // unsignalled and no pending submission uses it (its slot is idle).
            SubmitWhen::Always => Some(unsafe { device.submit_counted(&[submit], slot.fence) }?),
            SubmitWhen::NothingSince(last) => {
                // SAFETY: as above.
                unsafe { device.submit_if_last(last, &[submit], slot.fence) }?.then_some(last + 1)
            }
        };
        if count.is_some() {
            self.slots[i].busy = true;
            self.target = target;
            device.transfer_target.store(target, Ordering::Release);
            if let Some(value) = signal {
                self.timeline_value = value;
            }
        }
        Ok(count)
    }

    /// Waits (up to the device's transfer timeout) for slot `i`'s submission, if any, and makes
    /// the slot idle: its fence reset, an asynchronous read's bytes held in it copied out. Fails
    /// with [`Error::Timeout`] naming `what` while the submission is still queued, leaving the
    /// slot busy.
    fn settle_slot(&mut self, device: &Device, i: usize, what: &'static str) -> Result<()> {
        let slot = &mut self.slots[i];
        if !slot.busy {
            return Ok(());
        }
        let d = &device.device;
        // Poll first: a chunk's copy takes about 0.3 ms on the H200, and waking from a blocking
        // fence wait took long enough there that polling moved 1 MiB staged transfers from 7 to
        // 10–12 GB/s and 64 MiB ones from 27–29 to 29–31 GB/s (BENCHMARKS.md, the staging sweep).
        // Past `FENCE_SPIN`, block: a copy queued behind other work must not burn a core.
        let spin = std::time::Instant::now();
        // SAFETY: the fence belongs to this device.
        while spin.elapsed() < FENCE_SPIN && !unsafe { d.get_fence_status(slot.fence) }.unwrap_or(true) {
            std::hint::spin_loop();
        }
        let timeout = u64::try_from(device.transfer_timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device.
        match unsafe { d.wait_for_fences(&[slot.fence], true, timeout) } {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => return Err(Error::Timeout(device.transfer_timeout, what)),
            Err(e) => return Err(Error::vk("vkWaitForFences", e)),
        }
        // SAFETY: the fence is signalled, so the submission that used it has completed.
        unsafe { d.reset_fences(&[slot.fence]) }.vk("vkResetFences")?;
        slot.busy = false;
        slot.covered = false;
        if let Some(held) = slot.held.take() {
            let mapped = self.staging.as_ref().map(Staging::mapped);
            if let Some(Ok(mapped)) = mapped {
                // SAFETY: the slot's copy has completed and was made visible to the host; the
                // destination is the asynchronous read's memory, still the transfer's (the entry
                // is cleared before that memory is handed back or freed), and nothing else
                // touches it; both ranges hold `held.len` bytes.
                unsafe {
                    copy_bytes_as(
                        staging_copy(Direction::ToHost),
                        mapped.wrapping_add(held.at),
                        held.dst.0,
                        held.len,
                    )
                };
            }
        }
        self.release_target(device);
        Ok(())
    }

    /// Forgets the pending target once nothing uncovered is in flight.
    fn release_target(&mut self, device: &Device) {
        if self.streaming == 0 && self.slots.iter().all(|s| !s.busy || s.covered) {
            self.target = 0;
            device.transfer_target.store(0, Ordering::Release);
        }
    }

    /// Waits (up to the device's transfer timeout) for the GPU copies a streamed transfer left
    /// queued when it returned early; fails with [`Error::Timeout`] naming `what` while they are.
    fn settle_streaming(&mut self, device: &Device, what: &'static str) -> Result<()> {
        if self.streaming == 0 {
            return Ok(());
        }
        device.wait_transfer_value_of(self.streaming, what)?;
        self.streaming = 0;
        self.release_target(device);
        Ok(())
    }

    /// Waits (up to the device's transfer timeout) until no asynchronous streamed transfer's GPU
    /// copy still uses the staging buffer, and copies a read's held bytes out.
    fn settle_staging(&mut self, device: &Device) -> Result<()> {
        if self.staging_busy != 0 {
            device.wait_transfer_value_of(self.staging_busy, STAGING_IN_USE)?;
            self.staging_busy = 0;
        }
        self.copy_out_held(u64::MAX);
        Ok(())
    }

    /// Copies into an asynchronous streamed read's memory the held pieces whose GPU copies
    /// completed by timeline value `reached`; the entry goes once all are out.
    fn copy_out_held(&mut self, reached: u64) {
        let Some(held) = self.held.as_mut() else { return };
        let Some(Ok(mapped)) = self.staging.as_ref().map(Staging::mapped) else {
            // No staging, no held bytes.
            self.held = None;
            return;
        };
        while let Some(&(value, end)) = held.batches.front() {
            if value > reached {
                return;
            }
            for (at, dst, len) in held.runs(end) {
                // SAFETY: the batch's GPU copies have completed (its value was reached) and were
                // made visible to the host (their barrier); the destination is the read's memory,
                // still the transfer's (the entry is cleared before that memory is handed back or
                // freed: `finish_ring`, `reap`) and touched by nothing else; both ranges hold
                // `len` bytes.
                unsafe { copy_bytes_as(staging_copy(Direction::ToHost), mapped.wrapping_add(at), dst, len) };
            }
            held.next = held.next.max(end);
            held.batches.pop_front();
        }
        self.held = None;
    }

    /// Copies out, without waiting, the held bytes of an asynchronous read (transfer value
    /// `value`) whose GPU copies have completed: ring slots in the order they were submitted, up
    /// to the first still on its way, and streamed batches in order. Returns the transfer
    /// timeline value to wait for before more can be copied (`None`: nothing of the read is held
    /// any more). Held slots are waited for through `value` (only the last of them signals
    /// the timeline), streamed batches each through its own.
    pub fn drain_ready(&mut self, device: &Device, value: u64) -> Result<Option<u64>> {
        let d = &device.device;
        let slots = self.slots.len();
        for j in 0..slots {
            let i = (self.cursor + j) % slots;
            if self.slots[i].held.as_ref().is_some_and(|h| h.value == value) {
                // SAFETY: the fence belongs to this device (held slots are busy: their fence
                // signals once their copy completes).
                if !unsafe { d.get_fence_status(self.slots[i].fence) }.vk("vkGetFenceStatus")? {
                    return Ok(Some(value));
                }
                // Signalled: settling waits for nothing, and copies the held bytes out.
                self.settle_slot(device, i, "an asynchronous transfer")?;
            }
        }
        if self.held.as_ref().is_none_or(|h| h.value != value) {
            return Ok(None);
        }
        // SAFETY: the semaphore belongs to this device.
        let reached =
            unsafe { d.get_semaphore_counter_value(self.timeline) }.vk("vkGetSemaphoreCounterValue")?;
        self.copy_out_held(reached);
        Ok(self.held.as_ref().filter(|h| h.value == value).and_then(|h| h.batches.front().map(|&(v, _)| v)))
    }

    /// Settles every uncovered slot (see [`Transfer::settle_slot`]): the context is no longer
    /// pending afterwards, or the result is [`Error::Timeout`] naming `what` and it stays
    /// pending. Covered slots (asynchronous transfers in flight) stay as they are.
    pub fn settle(&mut self, device: &Device, what: &'static str) -> Result<()> {
        self.settle_streaming(device, what)?;
        for i in 0..self.slots.len() {
            if !self.slots[i].covered {
                self.settle_slot(device, i, what)?;
            }
        }
        Ok(())
    }

    /// Settles every slot, covered ones too: nothing uses the staging buffer afterwards.
    fn settle_all(&mut self, device: &Device, what: &'static str) -> Result<()> {
        self.settle_streaming(device, what)?;
        self.settle_staging(device)?;
        for i in 0..self.slots.len() {
            self.settle_slot(device, i, what)?;
        }
        Ok(())
    }

    /// The raw handle of the buffer or image a pending submission uses (`Some(0)`: none).
    pub fn pending(&self) -> Option<u64> {
        (self.streaming != 0 || self.slots.iter().any(|s| s.busy && !s.covered)).then_some(self.target)
    }

    /// How many copies are still in flight, without waiting: ring slots whose submissions have
    /// not completed or that hold bytes of an asynchronous read not yet copied out, and
    /// asynchronous transfers the device keeps after their waits timed out (those that completed
    /// are counted until [`reap`](Transfer::reap) ran). Completed slots are settled on the way.
    pub fn in_flight(&mut self, device: &Device) -> u64 {
        let d = &device.device;
        let mut count = self.orphans.len() as u64;
        if self.streaming != 0 || self.staging_busy != 0 {
            // SAFETY: the semaphore belongs to this device.
            let reached = unsafe { d.get_semaphore_counter_value(self.timeline) }.unwrap_or(0);
            if self.streaming != 0 && reached >= self.streaming {
                self.streaming = 0;
                self.release_target(device);
            }
            if self.staging_busy != 0 && reached >= self.staging_busy {
                self.staging_busy = 0;
                // Reached: a read's held bytes go to its memory now, as a settled slot's do.
                self.copy_out_held(reached);
            }
            count += u64::from(self.streaming != 0) + u64::from(self.staging_busy != 0);
        }
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            // SAFETY: the fence belongs to this device.
            let done = slot.busy && unsafe { d.get_fence_status(slot.fence) }.unwrap_or(false);
            // A signalled fence: settling waits for nothing (and copies held bytes out).
            if done && self.settle_slot(device, i, "a completed staging copy").is_err() {
                count += 1;
                continue;
            }
            let slot = &self.slots[i];
            if slot.busy || slot.held.is_some() {
                count += 1;
            }
        }
        count
    }

    /// Completes an asynchronous transfer through the ring whose timeline value was reached:
    /// copies a read's bytes still held in slots into its memory (`Job::finish` for the other
    /// kinds).
    pub fn finish_ring(&mut self, value: u64) {
        let mapped = match self.staging.as_ref().map(Staging::mapped) {
            Some(Ok(mapped)) => mapped,
            // No staging, no held bytes.
            _ => return,
        };
        if self.held.as_ref().is_some_and(|h| h.value == value) {
            self.copy_out_held(value);
        }
        let kind = staging_copy(Direction::ToHost);
        for slot in &mut self.slots {
            if slot.held.as_ref().is_some_and(|h| h.value == value) {
                if let Some(held) = slot.held.take() {
                    // SAFETY: the value was reached, so the slot's copy has completed and was
                    // made visible to the host (its barrier); the destination is the transfer's
                    // memory, which its owner hands back only after this returns.
                    unsafe { copy_bytes_as(kind, mapped.wrapping_add(held.at), held.dst.0, held.len) };
                }
            }
        }
    }

    /// Starts an asynchronous transfer between `host` and `target` (see [`Job`]) in the ring's
    /// slots: one copy straight from or into `host` where it can be imported, else through
    /// staging ([`Transfer::staged`]). Its last submission signals the next value of the
    /// transfer timeline.
    ///
    /// # Safety
    /// `host` stays valid (and, for reads, untouched by anything else) until the job's
    /// timeline value is reached, or forever if it never is.
    pub unsafe fn submit_job(
        &mut self,
        device: &Device,
        dir: Direction,
        target: Target,
        host: HostRange,
    ) -> Result<Job> {
        let value = self.timeline_value + 1;
        if host.len == 0 {
            // Nothing to copy: done once everything submitted so far is.
            return Ok(Job { value: self.timeline_value, host: JobHost::Ring });
        }
        let Some(import) = self.import(device, target, host) else {
            // A read that fits in the ring's slots gains nothing from the copy threads (nothing
            // can be copied out before the call returns): its slots are held whole.
            let streams = match dir {
                Direction::ToDevice => host.len >= STREAM_MIN,
                // In pieces of whole rows, as `staged` cuts them (`check_rows` refuses rows
                // longer than a slot): image rows that do not divide into the slots may need one
                // piece more than there are slots, though the bytes would fit.
                Direction::ToHost => {
                    let step = target.step(ring_shape().chunk).max(1);
                    (host.len as u64).div_ceil(step) > self.slots.len() as u64
                }
            };
            let value = if streams {
                // Streamed on the copy threads; the last GPU copies stay in flight: a write's
                // bytes are all in staging, a read's last ones are held there.
                check_rows(target)?;
                self.streamed(device, dir, target, host, true)?
            } else {
                self.staged(device, dir, target, host, Some(value))?;
                value
            };
            device.staged_transfers.fetch_add(1, Ordering::Relaxed);
            return Ok(Job { value, host: JobHost::Ring });
        };
        let i = self.cursor;
        self.cursor = (i + 1) % self.slots.len();
        let record =
            |d: &ash::Device, cmd| target.record(d, cmd, dir, import.buffer, import.offset, 0, import.len);
        if let Err(e) = self.submit_slot(device, i, target.raw(), record, SubmitWhen::Always, Some(value)) {
            // SAFETY: nothing was submitted (every failure of `submit_slot` comes before, or is,
            // the submission).
            unsafe { import.destroy(&device.device) };
            return Err(e);
        }
        // Submitted whole: the buffer's or image's drop waits for the value.
        self.slots[i].covered = true;
        self.release_target(device);
        device.imported_transfers.fetch_add(1, Ordering::Relaxed);
        Ok(Job { value, host: JobHost::Import(import) })
    }

    /// Keeps an asynchronous job whose wait timed out, and the host memory it owns, until its
    /// value is reached.
    pub fn adopt(&mut self, job: Job, host: Box<dyn Send>) {
        self.orphans.push((job, host));
    }

    /// Destroys the adopted jobs that have completed and returns their host memory, for the
    /// caller to drop once it has released the context's lock: dropping it runs the owner's code
    /// (a [`HostBytes`](super::HostBytes) type's drop), which may call back into lava-flow and
    /// take that lock again.
    #[must_use = "the memory is dropped by the caller, after it released the context's lock"]
    pub fn reap(&mut self, device: &Device) -> Vec<Box<dyn Send>> {
        if self.orphans.is_empty() {
            return Vec::new();
        }
        let d = &device.device;
        // SAFETY: the semaphore belongs to this device.
        let reached = match unsafe { d.get_semaphore_counter_value(self.timeline) } {
            Ok(v) => v,
            Err(e) => {
                log::error!("vkGetSemaphoreCounterValue failed: {e}");
                return Vec::new();
            }
        };
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.orphans).into_iter().partition(|(job, _)| job.value <= reached);
        self.orphans = waiting;
        let mut freed = Vec::with_capacity(done.len());
        for (job, host) in done {
            // A read's bytes still held in slots are nobody's to see: forgotten before the
            // memory they were for is freed.
            for slot in &mut self.slots {
                if slot.held.as_ref().is_some_and(|h| h.value == job.value) {
                    slot.held = None;
                }
            }
            if self.held.as_ref().is_some_and(|h| h.value == job.value) {
                self.held = None;
            }
            // SAFETY: the job's value was reached: nothing uses its objects or its memory.
            unsafe { job.destroy(d) };
            freed.push(host);
        }
        freed
    }

    /// Destroys every object of the context.
    ///
    /// # Safety
    /// The objects belong to `d` and none is in use (a pending submission has completed: the
    /// queue was waited idle).
    pub unsafe fn destroy(mut self, d: &ash::Device) {
        for (job, host) in self.orphans.drain(..) {
            // SAFETY: the caller's contract: the queue is idle, so the job has completed.
            unsafe { job.destroy(d) };
            drop(host);
        }
        if let Some(s) = self.staging.take() {
            // SAFETY: the caller's contract.
            unsafe { s.destroy(d) };
        }
        for slot in &self.slots {
            // SAFETY: the caller's contract.
            unsafe { d.destroy_fence(slot.fence, None) };
        }
        // SAFETY: as above; destroying null handles is a no-op; destroying the pool frees its
        // command buffers.
        unsafe { d.destroy_semaphore(self.timeline, None) };
        // SAFETY: as above.
        unsafe { d.destroy_command_pool(self.pool, None) };
    }
}

/// When [`Transfer::submit_slot`] submits.
#[derive(Clone, Copy)]
enum SubmitWhen {
    Always,
    /// Only if the queue has received nothing since the submission this counted.
    NothingSince(u64),
}

/// Where an asynchronous job's bytes pass through.
pub(crate) enum JobHost {
    /// The caller's memory, imported: destroyed once the value is reached.
    Import(HostImport),
    /// Slots of the staging ring ([`Transfer::finish_ring`] completes it).
    Ring,
}

/// An asynchronous transfer in flight: the timeline value its last submission signals, and
/// the imported host memory it copies through, if any, kept until the value is reached. Its
/// command buffers are the ring's.
pub(crate) struct Job {
    pub value: u64,
    host: JobHost,
}

impl Job {
    /// Whether the job went through the staging ring: [`Transfer::finish_ring`] completes it,
    /// under the context's lock.
    pub fn is_ring(&self) -> bool {
        matches!(self.host, JobHost::Ring)
    }

    /// Destroys a job's imported memory.
    ///
    /// # Safety
    /// Nothing uses it any more (never submitted, or the job's value was reached).
    pub unsafe fn destroy(self, d: &ash::Device) {
        if let JobHost::Import(i) = self.host {
            // SAFETY: the caller's contract.
            unsafe { i.destroy(d) };
        }
    }
}

impl Staging {
    /// # Safety
    /// The staging buffer belongs to `d` and is not in use.
    unsafe fn destroy(self, d: &ash::Device) {
        // SAFETY: the caller's contract.
        unsafe { d.destroy_buffer(self.buffer, None) };
        // The memory is freed (and uncharged) by its drop, now that its buffer is gone.
        drop(self.memory);
    }
}

impl HostImport {
    /// # Safety
    /// The buffer belongs to `d` and is not in use.
    unsafe fn destroy(self, d: &ash::Device) {
        // SAFETY: the caller's contract.
        unsafe { d.destroy_buffer(self.buffer, None) };
        drop(self.memory);
    }
}

/// A mapped host-visible buffer of `size` bytes (slots of `slot`), in host-cached memory where
/// the device has coherent host-cached memory.
fn make_staging(device: &Device, size: u64, slot: u64) -> Result<Staging> {
    make_staging_in(device, size, slot, StagingMemory::Ring)
}

/// Which memory a staging buffer is made in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StagingMemory {
    /// What the ring uses: [`staging_memory_type`].
    Ring,
    /// A host-visible, coherent type that is not host-cached (write-combined on most
    /// discrete GPUs), for comparison.
    Uncached,
}

/// A mapped buffer of `size` bytes in `memory` for measuring the CPU copy (the bench's
/// ceiling rows): the buffer, its mapping and its memory type's property flags. Freed by
/// [`StagingProbe`]'s drop.
pub(crate) struct StagingProbe {
    device: std::sync::Arc<Device>,
    staging: Option<Staging>,
    pub flags: vk::MemoryPropertyFlags,
}

impl StagingProbe {
    pub fn new(device: &std::sync::Arc<Device>, size: u64, memory: StagingMemory) -> Result<Self> {
        let staging = make_staging_in(device, size, size, memory)?;
        let index = staging.memory_type;
        let flags = device.physical.memory.memory_types[index as usize].property_flags;
        Ok(StagingProbe { device: std::sync::Arc::clone(device), staging: Some(staging), flags })
    }

    /// The mapped bytes.
    pub fn mapped(&self) -> Result<*mut u8> {
        match &self.staging {
            Some(s) => s.mapped(),
            None => Err(Error::Unsupported { what: "the staging buffer is gone".into() }),
        }
    }
}

impl Drop for StagingProbe {
    fn drop(&mut self) {
        if let Some(s) = self.staging.take() {
            // SAFETY: the probe's buffer is never used by the GPU.
            unsafe { s.destroy(&self.device.device) };
        }
    }
}

/// [`make_staging`] in the memory `kind` asks for.
fn make_staging_in(device: &Device, size: u64, slot: u64, kind: StagingMemory) -> Result<Staging> {
    let d = &device.device;
    let info = vk::BufferCreateInfo::default()
        .size(size.max(1))
        .usage(HOST_BUFFER_USAGE)
        .sharing_mode(vk::SharingMode::EXCLUSIVE);
    // SAFETY: a plain object creation on a live device.
    let buffer = unsafe { d.create_buffer(&info, None) }.vk("vkCreateBuffer")?;
    // SAFETY: the buffer was just created on this device.
    let req = unsafe { d.get_buffer_memory_requirements(buffer) };
    let chosen = match kind {
        StagingMemory::Ring => staging_memory_type(device, req.memory_type_bits),
        StagingMemory::Uncached => uncached_memory_type(device, req.memory_type_bits),
    };
    let mut memory_type = 0;
    let memory = chosen
        .and_then(|memory_type_index| {
            memory_type = memory_type_index;
            let desc = MemoryDesc {
                size: req.size,
                memory_type_index,
                exportable: false,
                dedicated_to: None,
                map: true,
            };
            RawMemory::allocate(device, desc, None)
        })
        .and_then(|memory| {
            // SAFETY: fresh buffer and memory of a type its requirements allow, offset 0.
            match unsafe { d.bind_buffer_memory(buffer, memory.memory, 0) } {
                Ok(()) => Ok(memory),
                // `memory` is freed by its drop: nothing is bound to it.
                Err(e) => Err(Error::vk("vkBindBufferMemory", e)),
            }
        });
    match memory {
        Ok(memory) => Ok(Staging { buffer, memory, slot, memory_type }),
        Err(e) => {
            // SAFETY: the buffer is unused.
            unsafe { d.destroy_buffer(buffer, None) };
            Err(e)
        }
    }
}

/// The staging memory type: `HOST_VISIBLE | HOST_COHERENT | HOST_CACHED` where there is one
/// (the CPU reads it back at full speed), else what `HostVisible` buffers get.
fn staging_memory_type(device: &Device, type_bits: u32) -> Result<u32> {
    use vk::MemoryPropertyFlags as F;
    let memory = &device.physical.memory;
    let want = F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED;
    let cached = (0..memory.memory_type_count).find(|&i| {
        type_bits & (1 << i) != 0 && memory.memory_types[i as usize].property_flags.contains(want)
    });
    match cached {
        Some(i) => Ok(i),
        None => {
            let host = MemoryLocation::HostVisible { device_id: device.physical.info.index };
            device.physical.memory_type(type_bits, host, "the staging buffer")
        }
    }
}

/// A host-visible, coherent memory type that is not host-cached, if the device has one.
fn uncached_memory_type(device: &Device, type_bits: u32) -> Result<u32> {
    use vk::MemoryPropertyFlags as F;
    let memory = &device.physical.memory;
    (0..memory.memory_type_count)
        .find(|&i| {
            let flags = memory.memory_types[i as usize].property_flags;
            type_bits & (1 << i) != 0
                && flags.contains(F::HOST_VISIBLE | F::HOST_COHERENT)
                && !flags.contains(F::HOST_CACHED)
        })
        .ok_or_else(|| Error::Unsupported {
            what: format!(
                "device {}: no host-visible memory type that is not host-cached",
                device.physical.info.name
            ),
        })
}

fn create_pool(d: &ash::Device, queue_family: u32) -> Result<vk::CommandPool> {
    let info = vk::CommandPoolCreateInfo::default()
        .queue_family_index(queue_family)
        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
    // SAFETY: `d` is a live device; the family index is the one its queue came from.
    unsafe { d.create_command_pool(&info, None) }.vk("vkCreateCommandPool")
}

/// Refuses image copies whose rows do not fit in a staging slot.
fn check_rows(target: Target) -> Result<()> {
    let row = target.row_bytes();
    let chunk = ring_shape().chunk;
    if row > chunk {
        return Err(Error::InvalidArgument(format!(
            "one row of {row} bytes exceeds the {chunk}-byte staging chunk"
        )));
    }
    Ok(())
}

/// Makes transfer writes visible to the host.
fn host_read_barrier(d: &ash::Device, cmd: vk::CommandBuffer) {
    let barrier = vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::HOST_READ);
    // SAFETY: a recording command buffer of this device.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        )
    };
}

/// Moves mip levels `base..base + count` between layouts, making all earlier memory access available to all later.
fn layout_barrier(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    image: vk::Image,
    (base_mip_level, level_count): (u32, u32),
    from: vk::ImageLayout,
    to: vk::ImageLayout,
) {
    let barrier = vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
        .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE)
        .old_layout(from)
        .new_layout(to)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(image)
        .subresource_range(vk::ImageSubresourceRange {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            base_mip_level,
            level_count,
            base_array_layer: 0,
            layer_count: 1,
        });
    // SAFETY: a recording command buffer of this device; the image is live.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &[barrier],
        )
    };
}

/// `rows` rows of mip `level`, starting at row `first_row`, tightly packed from `buffer_offset`.
fn image_region(
    buffer_offset: u64,
    level: u32,
    width: u32,
    first_row: u32,
    rows: u32,
) -> vk::BufferImageCopy {
    vk::BufferImageCopy {
        buffer_offset,
        buffer_row_length: 0,
        buffer_image_height: 0,
        image_subresource: vk::ImageSubresourceLayers {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            mip_level: level,
            base_array_layer: 0,
            layer_count: 1,
        },
        image_offset: vk::Offset3D { x: 0, y: first_row as i32, z: 0 },
        image_extent: vk::Extent3D { width, height: rows, depth: 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::fit_pieces;

    #[test]
    fn pieces_of_a_transfer_that_fits_in_the_ring_all_fit_at_once() {
        // 48 MiB - 1 bytes through 48 MiB in pieces of ⌊len / 64⌋ = 786,431 bytes: 65 pieces,
        // one more than the ring's 64 places, before the fit.
        let ring = 48u64 << 20;
        let k = fit_pieces(ring - 1, ring, (ring - 1) / 64);
        assert!((ring - 1).div_ceil(k) <= ring / k, "{k}");
        // Every size up to the ring, every capacity and starting piece in a sweep.
        for capacity in [1u64, 2, 3, 7, 64, 100, 4099] {
            for units in 1..=capacity {
                for want in [1, 2, 3, 5, 64, 1000] {
                    let k = fit_pieces(units, capacity, want);
                    assert!(k >= 1 && k <= units, "{units} in {capacity} from {want}: {k}");
                    assert!(units.div_ceil(k) <= capacity / k, "{units} in {capacity} from {want}: {k}");
                }
            }
        }
        // A piece asked larger than the transfer: the whole transfer, one piece.
        assert_eq!(fit_pieces(50, 64, 1000), 50);
        // A transfer larger than the ring keeps the piece it asked for.
        assert_eq!(fit_pieces(1000, 100, 7), 7);
    }
}
