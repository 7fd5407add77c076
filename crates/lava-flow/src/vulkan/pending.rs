//! Asynchronous transfers: [`PendingTransfer`], and [`HostBytes`], the host memory they own
//! while the GPU copies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::device::Device;
use super::transfer::{Direction, HostRange, Job, Target};
use crate::error::{Error, Result};

/// Host memory that an asynchronous transfer owns until it completes: its bytes stay at one
/// address while the value lives, even when the value itself moves.
///
/// A transfer started by [`Buffer::write_async`](crate::Buffer::write_async) (and its kin) takes
/// the value, so nothing can free or change the bytes while the GPU copies them: the borrow
/// checker refuses any use of it until [`PendingTransfer::wait`] gives it back. A transfer that
/// is never seen complete (dropped after a timeout, or leaked with `std::mem::forget`) never gives
/// it back: the memory is freed only once the copy is seen complete, or never.
///
/// # Safety
/// [`host_bytes`](HostBytes::host_bytes) (and [`host_bytes_mut`](HostBytesMut::host_bytes_mut))
/// return the same address and length every time they are called on one value, also after it
/// moved; the bytes stay valid until the value is dropped; and while a transfer holds the value,
/// nothing else writes them (and, for a destination, nothing else reads them).
pub unsafe trait HostBytes: Send + 'static {
    /// The bytes.
    fn host_bytes(&self) -> &[u8];
}

/// [`HostBytes`] that a transfer may write into: the destination of a read.
///
/// # Safety
/// As for [`HostBytes`].
pub unsafe trait HostBytesMut: HostBytes {
    /// The bytes, to write into.
    fn host_bytes_mut(&mut self) -> &mut [u8];
}

// SAFETY: a vector's bytes live in its heap allocation, which moving the vector does not move;
// without `&mut` access (the transfer holds the only one) neither length nor allocation change.
unsafe impl HostBytes for Vec<u8> {
    fn host_bytes(&self) -> &[u8] {
        self
    }
}

// SAFETY: as for `HostBytes`.
unsafe impl HostBytesMut for Vec<u8> {
    fn host_bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

// SAFETY: as for `Vec<u8>`: the bytes are in the box's heap allocation.
unsafe impl HostBytes for Box<[u8]> {
    fn host_bytes(&self) -> &[u8] {
        self
    }
}

// SAFETY: as above.
unsafe impl HostBytesMut for Box<[u8]> {
    fn host_bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A transfer between host memory and a buffer or image level that the GPU may still be
/// copying: it owns the host memory (`S`) until then.
///
/// [`wait`](PendingTransfer::wait) returns the memory — for a read, filled — once the copy has
/// completed; [`is_done`](PendingTransfer::is_done) asks without waiting. Dropping it waits too
/// (up to [`AllocatorOptions::transfer_timeout`](crate::AllocatorOptions::transfer_timeout)). A
/// transfer still queued after the timeout (behind work that waits for a semaphore nobody
/// signals, say) keeps its memory until it completes: the device holds it (and frees it once
/// the copy is seen complete, or when the device ends after its queue drained), never freeing
/// it under the GPU. One leaked with `std::mem::forget` keeps its memory forever. The buffer or image may be dropped before the
/// transfer is waited for: its drop waits for the transfer first (and leaks the buffer or image,
/// rather than destroy it under the GPU, if that times out).
///
/// Transfers queue in submission order behind everything submitted to the device before them.
#[must_use = "a transfer is complete, and its memory returned, only once waited for"]
pub struct PendingTransfer<S: HostBytes> {
    device: Arc<Device>,
    job: Option<Job>,
    /// `host`'s bytes, taken when the transfer started (the same at every call: `HostBytes`).
    range: HostRange,
    host: Option<S>,
}

// SAFETY: `range` points into `host`, which is `Send`; the job's objects are plain handles whose
// destruction needs no particular thread.
unsafe impl<S: HostBytes> Send for PendingTransfer<S> {}

impl<S: HostBytes> std::fmt::Debug for PendingTransfer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTransfer")
            .field("bytes", &self.range.len)
            .field("value", &self.job.as_ref().map(|j| j.value))
            .finish()
    }
}

impl<S: HostBytes> PendingTransfer<S> {
    /// A transfer already complete (a copy through a mapping, or of nothing).
    pub(crate) fn done(device: &Arc<Device>, host: S, range: HostRange) -> Self {
        PendingTransfer { device: Arc::clone(device), job: None, range, host: Some(host) }
    }

    /// Submits the copy between `host` (whose bytes are `range`) and `target`, and returns it in
    /// flight; `last_async` (the buffer's or image's) keeps the highest job value, which its drop
    /// waits for.
    pub(crate) fn start(
        device: &Arc<Device>,
        last_async: &AtomicU64,
        dir: Direction,
        target: Target,
        host: S,
        range: HostRange,
    ) -> Result<Self> {
        // SAFETY: `range` is `host`'s bytes, which the pending transfer owns (at a fixed
        // address: `HostBytes`) until the job's value is reached, or forever.
        let job = device.with_transfer(|t| unsafe { t.submit_job(device, dir, target, range) })?;
        last_async.fetch_max(job.value, Ordering::AcqRel);
        Ok(PendingTransfer { device: Arc::clone(device), job: Some(job), range, host: Some(host) })
    }

    /// Whether the copy has completed (then [`wait`](PendingTransfer::wait) returns at once).
    pub fn is_done(&self) -> Result<bool> {
        match &self.job {
            Some(job) => self.device.transfer_value_reached(job.value),
            None => Ok(true),
        }
    }

    /// Waits for the copy (up to [`AllocatorOptions::transfer_timeout`](crate::AllocatorOptions::transfer_timeout))
    /// and keeps the transfer: [`wait`](PendingTransfer::wait) then returns at once. Unlike
    /// `wait`, an [`Error::Timeout`] here leaves the transfer as it was, to wait for again (or
    /// to drop).
    pub fn wait_done(&self) -> Result<()> {
        match &self.job {
            Some(job) => self.device.wait_transfer_value(job.value),
            None => Ok(()),
        }
    }

    /// Waits for the copy (up to [`AllocatorOptions::transfer_timeout`](crate::AllocatorOptions::transfer_timeout))
    /// and returns the host memory: for a read, holding the bytes read.
    ///
    /// [`Error::Timeout`] if the copy is still queued after that: the memory then stays with the
    /// device until the copy completes, never freed or handed back while the GPU may use it.
    pub fn wait(mut self) -> Result<S> {
        self.complete()?;
        self.host.take().ok_or_else(|| Error::Unsupported { what: "the transfer's memory was taken".into() })
    }

    /// Waits for the job, if any, and finishes it; on failure leaks the job and the memory.
    fn complete(&mut self) -> Result<()> {
        let Some(job) = self.job.take() else { return Ok(()) };
        // A read's held bytes are copied out as they arrive, the first while the GPU still brings
        // the rest (a write holds none: that returns at once); then the job's last copy.
        let drained = if job.is_ring() { self.device.drain_held(job.value) } else { Ok(()) };
        if let Err(e) = drained.and_then(|()| self.device.wait_transfer_value(job.value)) {
            // Still queued, or the device is lost: the GPU may still use both. The device keeps
            // them until the job completes (or the device ends, after its queue drained).
            match self.host.take() {
                Some(host) => self.device.adopt(job, Box::new(host)),
                None => std::mem::forget(job),
            }
            return Err(e);
        }
        if job.is_ring() {
            // Bytes of a read still held in ring slots are copied into `self.host` now, before
            // it is handed back.
            self.device.finish_ring(job.value);
        }
        // SAFETY: the job's value was reached: its copy from or into imported memory, if any,
        // has completed.
        unsafe { job.destroy(&self.device.device) };
        Ok(())
    }
}

impl<S: HostBytes> Drop for PendingTransfer<S> {
    fn drop(&mut self) {
        if let Err(e) = self.complete() {
            log::error!(
                "{e}: an asynchronous transfer dropped unfinished; its memory is freed once it completes"
            );
        }
    }
}
