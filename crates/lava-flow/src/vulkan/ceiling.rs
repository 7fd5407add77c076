//! What the CPU side of a staged transfer can reach on this machine: the host copy between
//! ordinary (pageable) memory and mapped staging memory, with the copy threads and
//! instructions the staging ring uses. `lava-flow bench` reports it beside the transfers so
//! that their figures read as a fraction of the reachable ceiling. Not a stable API.

use std::time::Instant;

use super::allocator::MemoryAllocator;
use super::buffer::Buffer;
use super::copy::{copy_bytes_as, copy_threads, CopyKind};
use super::transfer::{ring_shape, Direction, StagingMemory, StagingProbe};
use crate::error::Result;

/// The copy's instructions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostCopy {
    /// `memcpy`.
    Plain,
    /// Non-temporal stores (x86-64 `movntdq`; plain elsewhere).
    StreamStores,
    /// Non-temporal loads (x86-64 SSE4.1 `movntdqa` where present; plain elsewhere).
    StreamLoads,
}

/// Which staging memory is measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StagingKind {
    /// The memory the staging ring uses (host-cached where the device has it).
    Ring,
    /// Host-visible memory that is not host-cached (write-combined), where the device has it.
    Uncached,
}

/// One measurement of [`host_copy`].
#[derive(Clone, Debug)]
pub struct CopyCeiling {
    /// Seconds per copy (the median of the repetitions).
    pub seconds: f64,
    /// The staging memory type's property flags, as Vulkan names them.
    pub memory_flags: String,
    /// Threads per copy (the caller's included), as the staging ring uses them.
    pub threads: usize,
    /// The staging ring's slot size and slot count.
    pub ring: (u64, usize),
}

/// Times copies of `host` into (`to_staging`) or out of mapped staging memory on device
/// `device_id` the way the staging ring moves them, without the GPU: pieces of the ring's slot
/// size, each into (or out of) the next of the ring's slots, with the ring's copy threads —
/// `iters` copies of all of `host` per repetition, the median of `reps`.
pub fn host_copy(
    allocator: &MemoryAllocator,
    device_id: u32,
    host: &mut [u8],
    to_staging: bool,
    how: HostCopy,
    memory: StagingKind,
    (iters, reps): (usize, usize),
) -> Result<CopyCeiling> {
    let ctx = allocator.context(device_id)?;
    let shape = ring_shape();
    let len = host.len();
    let slot = usize::try_from(shape.chunk).unwrap_or(usize::MAX).min(len).max(1);
    let kind = match memory {
        StagingKind::Ring => StagingMemory::Ring,
        StagingKind::Uncached => StagingMemory::Uncached,
    };
    let probe = StagingProbe::new(&ctx.device, (slot * shape.slots) as u64, kind)?;
    let mapped = probe.mapped()?;
    let kind = match how {
        HostCopy::Plain => CopyKind::Plain,
        HostCopy::StreamStores => CopyKind::StreamStores,
        HostCopy::StreamLoads => CopyKind::StreamLoads,
    };
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        for _ in 0..iters.max(1) {
            for (k, at) in (0..len).step_by(slot).enumerate() {
                let n = slot.min(len - at);
                let staged = mapped.wrapping_add((k % shape.slots) * slot);
                if to_staging {
                    // SAFETY: the mapping holds `slots × slot` bytes and lives as long as
                    // `probe`; `at + n ≤ len`; `host` is borrowed mutably, so nothing else
                    // touches it.
                    unsafe { copy_bytes_as(kind, host.as_ptr().wrapping_add(at), staged, n) };
                } else {
                    // SAFETY: as above.
                    unsafe {
                        copy_bytes_as(kind, staged.cast_const(), host.as_mut_ptr().wrapping_add(at), n)
                    };
                }
            }
        }
        times.push(start.elapsed().as_secs_f64() / iters.max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(CopyCeiling {
        seconds: times[times.len() / 2],
        memory_flags: format!("{:?}", probe.flags),
        threads: copy_threads(),
        ring: (shape.chunk, shape.slots),
    })
}

/// Times the GPU copy between `host` and `buffer` (from byte 0) with `host`'s pages imported
/// once (`VK_EXT_external_memory_host`; the buffer's allocator needs `host_memory_import`):
/// `iters` copies per repetition, each waited for, the median of `reps`; and, second, what
/// importing and releasing those pages costs per call without a copy. `None` where the device
/// does not import them.
pub fn imported_copy(
    buffer: &Buffer,
    host: &mut [u8],
    to_device: bool,
    (iters, reps): (usize, usize),
) -> Result<Option<(f64, f64)>> {
    let (device, target) = buffer.transfer_target(0);
    let dir = if to_device { Direction::ToDevice } else { Direction::ToHost };
    let mut copies = Vec::new();
    let mut imports = Vec::new();
    for _ in 0..reps.max(1) {
        let copy = device.with_transfer(|t| t.time_imported_copies(device, dir, target, host, iters))?;
        let import = device.with_transfer(|t| Ok(t.time_imports(device, target, host, iters)))?;
        match (copy, import) {
            (Some(c), Some(i)) => {
                copies.push(c);
                imports.push(i);
            }
            _ => return Ok(None),
        }
    }
    copies.sort_by(f64::total_cmp);
    imports.sort_by(f64::total_cmp);
    Ok(Some((copies[copies.len() / 2], imports[imports.len() / 2])))
}
