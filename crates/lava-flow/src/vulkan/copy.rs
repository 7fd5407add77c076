//! The CPU side of host transfers: copies between the caller's memory and mapped staging memory,
//! spread over a persistent pool of copy threads.
//!
//! One thread copies about 10 GB/s; the link moves 50. A copy of at least
//! [`PARALLEL_COPY_MIN`] bytes is cut into pieces that the calling thread and the pool's threads
//! claim one at a time from a shared counter: the caller never waits for a thread to wake before
//! it starts, and copies everything itself if every pool thread is busy with another caller's
//! copy. The threads are started once per process (on the first large copy) and park on a
//! condition variable between copies, so a copy costs no thread spawn (the scoped threads of
//! the first version spawned up to 8 per chunk).
//!
//! The pool's size is [`std::thread::available_parallelism`], capped at [`MAX_COPY_THREADS`]
//! (16 threads were slower than 8 on the H200: the staging sweep in BENCHMARKS.md), or
//! `LAVA_FLOW_COPY_THREADS` (1 to 64), read once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::Thread;

/// Host copies of at least this many bytes are split over threads.
pub(crate) const PARALLEL_COPY_MIN: usize = 4 << 20;
/// Each piece of a split copy moves at least this many bytes.
const PIECE_MIN: usize = 1 << 20;
/// Pieces start at multiples of this (cache lines and pages are not shared between threads).
const PIECE_ALIGN: usize = 64 << 10;
/// At most this many threads share one copy by default.
pub(crate) const MAX_COPY_THREADS: usize = 8;
/// How long a caller that has run out of pieces spins for the last ones before it parks.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);
/// The longest a waiting caller parks before it looks again.
const PARK: std::time::Duration = std::time::Duration::from_millis(1);
/// How long a copy thread spins on a closed [`Gate`] before it yields, and yields before it
/// sleeps, and how long it sleeps at a time.
const GATE_SPIN: std::time::Duration = std::time::Duration::from_micros(100);
const GATE_YIELD: std::time::Duration = std::time::Duration::from_millis(2);
const GATE_SLEEP: std::time::Duration = std::time::Duration::from_micros(100);

/// How bytes are moved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CopyKind {
    /// `std::ptr::copy_nonoverlapping` (the C library's `memcpy`).
    Plain,
    /// Non-temporal (streaming) stores: the destination's cache lines are neither read first
    /// nor kept (x86-64 SSE2 `movntdq`; elsewhere plain).
    StreamStores,
    /// Non-temporal (streaming) loads, for reading write-combined memory (x86-64 SSE4.1
    /// `movntdqa` where the CPU has it; elsewhere plain).
    StreamLoads,
}

/// One split copy: `pieces` pieces of `piece` bytes (the last shorter), claimed through `next`.
struct Task {
    src: *const u8,
    dst: *mut u8,
    len: usize,
    piece: usize,
    pieces: usize,
    kind: CopyKind,
    /// The next piece to claim; claims at or past `pieces` find nothing to do.
    next: AtomicUsize,
    /// Pieces copied (or skipped after an abort).
    done: AtomicUsize,
    /// The thread that waits for `done == pieces`.
    caller: Thread,
    /// For a copy through a staging ring ([`RingCopy`]): where the pieces lie in the ring and
    /// when each may be copied.
    ring: Option<Gate>,
}

/// The ring side of a [`RingCopy`]: piece `i` of the caller's memory is piece `i % slots` of
/// the ring, and may be copied once the GPU has completed `i + 1 - lag` pieces.
struct Gate {
    /// The ring's first byte.
    base: *mut u8,
    /// Pieces the ring holds.
    slots: usize,
    /// `true`: the caller's memory is the source (a write: the GPU reads the ring after the
    /// CPU); `false`: the ring is (a read: the CPU reads the ring after the GPU).
    to_ring: bool,
    /// Pieces whose GPU copies have completed, published by the caller.
    gpu: AtomicUsize,
    /// Set when the caller gives up: pieces not yet copied are skipped.
    abort: AtomicBool,
    /// Which pieces have been copied.
    copied: Box<[AtomicBool]>,
}

impl Gate {
    /// Pieces the GPU must have completed before piece `i` may be copied: for a write, the
    /// piece that last used its ring slot (`i - slots`); for a read, piece `i` itself.
    fn needs(&self, i: usize) -> usize {
        if self.to_ring {
            (i + 1).saturating_sub(self.slots)
        } else {
            i + 1
        }
    }

    fn open(&self, i: usize) -> bool {
        self.gpu.load(Ordering::Acquire) >= self.needs(i)
    }

    /// Waits until piece `i` may be copied: `false` if the copy was aborted meanwhile. Spins
    /// briefly, then yields, then sleeps in short steps: a GPU held up behind other work must
    /// not keep the copy threads busy.
    fn wait(&self, i: usize) -> bool {
        let start = std::time::Instant::now();
        loop {
            if self.abort.load(Ordering::Acquire) {
                return false;
            }
            if self.open(i) {
                return true;
            }
            let waited = start.elapsed();
            if waited < GATE_SPIN {
                std::hint::spin_loop();
            } else if waited < GATE_YIELD {
                std::thread::yield_now();
            } else {
                std::thread::sleep(GATE_SLEEP);
            }
        }
    }
}

// SAFETY: the pointers are only dereferenced for a piece claimed below `pieces`, and the caller
// of `copy_bytes` (or the owner of a `RingCopy`) does not return (so the ranges stay valid and
// untouched) until every piece has been copied or skipped; a pool thread holding the task after
// that claims nothing.
unsafe impl Send for Task {}
// SAFETY: as above; the counters and flags are atomics.
unsafe impl Sync for Task {}

impl Task {
    /// A copy of `len` bytes from `src` to `dst` in pieces of `piece` bytes, claimed by the
    /// calling thread; `ring`: through a ring of `slots` pieces at its first byte, `true` where
    /// `src` is copied into the ring (a [`RingCopy`]; the other side is then read from or
    /// written into the ring instead).
    fn new(
        src: *const u8,
        dst: *mut u8,
        len: usize,
        piece: usize,
        kind: CopyKind,
        ring: Option<(*mut u8, usize, bool)>,
    ) -> Arc<Task> {
        let pieces = len.div_ceil(piece);
        Arc::new(Task {
            src,
            dst,
            len,
            piece,
            pieces,
            kind,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            caller: std::thread::current(),
            ring: ring.map(|(base, slots, to_ring)| Gate {
                base,
                slots,
                to_ring,
                gpu: AtomicUsize::new(0),
                abort: AtomicBool::new(false),
                copied: (0..pieces).map(|_| AtomicBool::new(false)).collect(),
            }),
        })
    }

    /// Claims and copies pieces until none is left; the one that finishes the last piece wakes
    /// the caller.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.pieces {
                return;
            }
            self.copy_piece(i);
        }
    }

    /// Copies piece `i`, claimed by the calling thread alone (for a ring copy: once its gate
    /// opens, or skipped after an abort), and counts it done.
    fn copy_piece(&self, i: usize) {
        let start = i * self.piece;
        let n = self.piece.min(self.len - start);
        match &self.ring {
            None => {
                // SAFETY: piece `i` was claimed by this thread alone, `start + n ≤ len`, and
                // the caller of `copy_bytes` keeps both ranges valid until `done` reaches
                // `pieces`, which needs this piece's increment below.
                unsafe {
                    copy_with(self.kind, self.src.wrapping_add(start), self.dst.wrapping_add(start), n)
                };
            }
            Some(gate) => {
                if gate.wait(i) {
                    let at = gate.base.wrapping_add((i % gate.slots) * self.piece);
                    let (src, dst) = if gate.to_ring {
                        (self.src.wrapping_add(start), at)
                    } else {
                        (at.cast_const(), self.dst.wrapping_add(start))
                    };
                    // SAFETY: as above for the caller's memory; the ring slot holds `piece ≥ n`
                    // bytes inside the ring (`i % slots < slots`), and its gate is open: the
                    // GPU no longer reads it (a write) or has written it (a read), and no other
                    // piece using the slot is claimable before this one is done (the gates of
                    // later pieces of the slot need this piece's GPU copy, which the owner
                    // submits only once `copied[i]` is set).
                    unsafe { copy_with(self.kind, src, dst, n) };
                    gate.copied[i].store(true, Ordering::Release);
                }
            }
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.pieces {
            self.caller.unpark();
        }
    }

    /// Waits until every piece is done (copied, or skipped after an abort). The memory is the
    /// caller's again only then: this wait must not be skipped.
    fn wait_done(&self) {
        let spin = std::time::Instant::now();
        while self.done.load(Ordering::Acquire) < self.pieces {
            if spin.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                // `copy_piece` unparks the caller after the last piece (an unpark before the
                // park makes the park return at once; a spurious return loops). Parking with a
                // timeout: a `RingCopy` may be finished from a thread other than the one that
                // started it.
                std::thread::park_timeout(PARK);
            }
        }
    }
}

/// The process's copy threads: tasks wait in `queue`, one entry per thread asked to help.
struct Pool {
    queue: Mutex<VecDeque<Arc<Task>>>,
    ready: Condvar,
    /// Threads running (the pool's size less any the OS refused).
    workers: AtomicUsize,
    /// Threads per copy, the caller included.
    threads: usize,
    /// The process that started the threads: a child made by `fork` has none of them, and
    /// copies alone (tickets queued there would never be taken).
    pid: u32,
}

static POOL: OnceLock<Pool> = OnceLock::new();

impl Pool {
    /// The pool, its threads started on the first call.
    fn get() -> &'static Pool {
        static STARTED: std::sync::Once = std::sync::Once::new();
        let pool = POOL.get_or_init(|| Pool {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            workers: AtomicUsize::new(0),
            threads: copy_threads_setting(),
            pid: std::process::id(),
        });
        STARTED.call_once(|| {
            for k in 1..pool.threads {
                let spawned = std::thread::Builder::new()
                    .name(format!("lava-flow-copy-{k}"))
                    // Copies need little stack, but drivers' signal handlers and hooks may run
                    // on any thread: not the bare minimum.
                    .stack_size(256 << 10)
                    .spawn(move || pool.serve());
                match spawned {
                    Ok(_) => {
                        pool.workers.fetch_add(1, Ordering::Release);
                    }
                    Err(e) => {
                        // The caller copies what the thread would have: slower, never wrong.
                        log::warn!("starting a host-copy thread: {e}; copies use fewer threads");
                        break;
                    }
                }
            }
        });
        pool
    }

    /// Pool threads running for this process: none in a child made by `fork` (the threads
    /// were not copied; tickets queued there would never be taken).
    fn workers(&self) -> usize {
        if self.pid == std::process::id() {
            self.workers.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Queues `helpers` tickets of `task` for the pool's threads and wakes them.
    fn hand_out(&self, task: &Arc<Task>, helpers: usize) {
        if helpers == 0 {
            return;
        }
        {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            for _ in 0..helpers {
                queue.push_back(Arc::clone(task));
            }
        }
        self.ready.notify_all();
    }

    /// A pool thread: runs the tasks it is handed, parked while there are none.
    fn serve(&self) {
        loop {
            let task = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    match queue.pop_front() {
                        Some(task) => break task,
                        None => queue = self.ready.wait(queue).unwrap_or_else(PoisonError::into_inner),
                    }
                }
            };
            task.work();
        }
    }
}

/// Threads per copy: `LAVA_FLOW_COPY_THREADS` (1 to 64) if set, else the available
/// parallelism capped at [`MAX_COPY_THREADS`].
fn copy_threads_setting() -> usize {
    if let Some(n) = std::env::var("LAVA_FLOW_COPY_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok())
    {
        return n.clamp(1, 64);
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_COPY_THREADS))
}

/// Threads per large copy (the caller included), as the pool was started.
pub(crate) fn copy_threads() -> usize {
    Pool::get().threads
}

/// Copies `len` bytes from `src` to `dst`; split over the pool's threads from
/// [`PARALLEL_COPY_MIN`] bytes.
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `len` bytes, they do not overlap, and
/// nothing else writes either range until this returns.
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy_bytes_as(CopyKind::Plain, src, dst, len) }
}

/// [`copy_bytes`] with the copy instructions of `kind`.
///
/// # Safety
/// As for [`copy_bytes`].
pub(crate) unsafe fn copy_bytes_as(kind: CopyKind, src: *const u8, dst: *mut u8, len: usize) {
    if len < PARALLEL_COPY_MIN {
        // SAFETY: the caller's contract.
        unsafe { copy_with(kind, src, dst, len) };
        return;
    }
    let pool = Pool::get();
    let threads = pool.threads.min(pool.workers() + 1);
    let piece = len.div_ceil(threads.max(1)).max(PIECE_MIN).next_multiple_of(PIECE_ALIGN);
    let pieces = len.div_ceil(piece);
    if pieces <= 1 {
        // SAFETY: the caller's contract.
        unsafe { copy_with(kind, src, dst, len) };
        return;
    }
    let task = Task::new(src, dst, len, piece, kind, None);
    pool.hand_out(&task, pieces.min(threads) - 1);
    task.work();
    // Every piece is claimed; wait until the last ones, copied by pool threads, are done.
    task.wait_done();
}

/// A copy between the caller's memory and a ring of staging pieces that the GPU copies from or
/// into at the same time: the pool's threads copy pieces in order, each once the GPU's progress
/// (which the owner publishes with [`RingCopy::publish`]) frees its ring slot (a write) or has
/// filled it (a read), and mark it copied; the owner submits the GPU's copies of the pieces
/// marked so far. The copy threads never wait for each other between pieces, so the CPU copy
/// and the GPU's run side by side for the whole transfer.
///
/// Dropping it aborts what is left and waits until no thread touches either memory.
pub(crate) struct RingCopy {
    task: Arc<Task>,
}

impl RingCopy {
    /// Starts copying `len` bytes between `host` and a ring of `slots` pieces of `piece` bytes
    /// at `ring` (`to_ring`: from `host` into the ring; else from the ring into `host`), on the
    /// pool's threads. Nothing is copied before the first [`publish`](RingCopy::publish) of a
    /// read.
    ///
    /// # Safety
    /// `host` is valid for `len` bytes (reads if `to_ring`, else writes) and `ring` for
    /// `slots * piece` bytes (both), the two do not overlap, and nothing else touches
    /// `host`, or the ring slots whose gates are open, until the value is dropped.
    pub unsafe fn start(
        host: *mut u8,
        ring: *mut u8,
        len: usize,
        piece: usize,
        slots: usize,
        to_ring: bool,
        kind: CopyKind,
    ) -> RingCopy {
        let task =
            Task::new(host.cast_const(), host, len, piece.max(1), kind, Some((ring, slots.max(1), to_ring)));
        let pool = Pool::get();
        // Every pool thread the copy may use, the caller not among them: it submits.
        pool.hand_out(&task, task.pieces.min(pool.threads.min(pool.workers())));
        RingCopy { task }
    }

    fn gate(&self) -> &Gate {
        // Always set by `start`.
        self.task.ring.as_ref().expect("a ring copy has a gate")
    }

    /// How many bytes the copy moves.
    pub fn len(&self) -> usize {
        self.task.len
    }

    /// How many pieces the copy has.
    pub fn pieces(&self) -> usize {
        self.task.pieces
    }

    /// Whether piece `i` has been copied (the CPU's writes to it happen before this returns
    /// `true`).
    pub fn copied(&self, i: usize) -> bool {
        self.gate().copied.get(i).is_some_and(|c| c.load(Ordering::Acquire))
    }

    /// Tells the copy threads that the GPU's copies of the first `pieces` pieces have completed.
    pub fn publish(&self, pieces: usize) {
        self.gate().gpu.fetch_max(pieces, Ordering::AcqRel);
    }

    /// Copies the next piece on the calling thread if its gate is open and no thread has claimed
    /// it: for an owner whose pool threads are busy with other copies (or that has none).
    /// Returns whether it copied one.
    pub fn help(&self) -> bool {
        let i = self.task.next.load(Ordering::Relaxed);
        if i >= self.task.pieces || !self.gate().open(i) {
            return false;
        }
        if self.task.next.compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        self.task.copy_piece(i);
        true
    }
}

impl Drop for RingCopy {
    fn drop(&mut self) {
        let gate = self.gate();
        gate.abort.store(true, Ordering::Release);
        // Pieces nobody claimed: claimed here and skipped (the gate is aborted).
        while self.task.next.load(Ordering::Relaxed) < self.task.pieces {
            let i = self.task.next.fetch_add(1, Ordering::Relaxed);
            if i < self.task.pieces {
                self.task.copy_piece(i);
            }
        }
        self.task.wait_done();
    }
}

/// Copies `len` bytes on this thread with the instructions of `kind`.
///
/// # Safety
/// As for [`copy_bytes`].
unsafe fn copy_with(kind: CopyKind, src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    match kind {
        // SAFETY: the caller's contract.
        CopyKind::StreamStores => return unsafe { x86::copy_stream_stores(src, dst, len) },
        CopyKind::StreamLoads if x86::has_stream_loads() => {
            // SAFETY: the caller's contract; the CPU has SSE4.1 (checked).
            return unsafe { x86::copy_stream_loads(src, dst, len) };
        }
        _ => {}
    }
    let _ = kind;
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Streaming copies on x86-64.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_sfence, _mm_storeu_si128, _mm_stream_load_si128, _mm_stream_si128,
    };

    /// Bytes per loop step: four 16-byte vectors, one cache line.
    const LINE: usize = 64;

    /// Whether the CPU has `movntdqa` (SSE4.1).
    pub fn has_stream_loads() -> bool {
        std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// How many bytes from `p` (at most `len`) come before its next multiple of 16.
    fn head(p: *const u8, len: usize) -> usize {
        (p.align_offset(16)).min(len)
    }

    /// Copies with non-temporal stores (SSE2, part of x86-64), the destination aligned to 16 by
    /// a plain head; a fence orders the streamed stores before the return.
    ///
    /// # Safety
    /// As for `copy_bytes`.
    pub unsafe fn copy_stream_stores(src: *const u8, dst: *mut u8, len: usize) {
        let h = head(dst, len);
        // SAFETY: the caller's contract; `h ≤ len`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, h) };
        let mut i = h;
        while i + LINE <= len {
            for k in 0..4 {
                let at = i + 16 * k;
                // SAFETY: `at + 16 ≤ len`: inside the source; unaligned loads are allowed.
                let v: __m128i = unsafe { _mm_loadu_si128(src.wrapping_add(at).cast()) };
                // SAFETY: inside the destination, at a multiple of 16 past `dst`'s aligned head.
                unsafe { _mm_stream_si128(dst.wrapping_add(at).cast(), v) };
            }
            i += LINE;
        }
        // SAFETY: streamed stores are weakly ordered: the fence makes them visible before any
        // later store (the submission that tells the GPU to read them).
        unsafe { _mm_sfence() };
        // SAFETY: the caller's contract; `i ≤ len`.
        unsafe { std::ptr::copy_nonoverlapping(src.wrapping_add(i), dst.wrapping_add(i), len - i) };
    }

    /// Copies with non-temporal loads (SSE4.1 `movntdqa`), the source aligned to 16 by a plain
    /// head: faster than plain loads from write-combined memory on some CPUs.
    ///
    /// # Safety
    /// As for `copy_bytes`; the CPU has SSE4.1.
    #[target_feature(enable = "sse4.1")]
    pub unsafe fn copy_stream_loads(src: *const u8, dst: *mut u8, len: usize) {
        let h = head(src, len);
        // SAFETY: the caller's contract; `h ≤ len`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, h) };
        let mut i = h;
        while i + LINE <= len {
            let s = src.wrapping_add(i);
            // Four loads, each at a multiple of 16 past `src`'s aligned head, `i + 64 ≤ len`.
            // SAFETY: inside the source, aligned.
            let a: __m128i = unsafe { _mm_stream_load_si128(s.cast()) };
            // SAFETY: as above.
            let b: __m128i = unsafe { _mm_stream_load_si128(s.wrapping_add(16).cast()) };
            // SAFETY: as above.
            let c: __m128i = unsafe { _mm_stream_load_si128(s.wrapping_add(32).cast()) };
            // SAFETY: as above.
            let e: __m128i = unsafe { _mm_stream_load_si128(s.wrapping_add(48).cast()) };
            for (k, value) in [a, b, c, e].into_iter().enumerate() {
                // SAFETY: inside the destination; unaligned stores are allowed.
                unsafe { _mm_storeu_si128(dst.wrapping_add(i + 16 * k).cast(), value) };
            }
            i += LINE;
        }
        // SAFETY: the caller's contract; `i ≤ len`.
        unsafe { std::ptr::copy_nonoverlapping(src.wrapping_add(i), dst.wrapping_add(i), len - i) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ from their neighbours (a 64-bit LCG).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Copies `len` bytes from `src_at` bytes into a source buffer to `dst_at` bytes into a
    /// poisoned destination with `kind`; checks every byte, and that nothing around the range
    /// was written.
    fn check(kind: CopyKind, len: usize, src_at: usize, dst_at: usize) {
        let src = pattern(len + src_at, len as u64);
        let mut dst = vec![0xA5u8; len + dst_at + 64];
        // SAFETY: both ranges lie inside their vectors, which do not overlap.
        unsafe {
            copy_bytes_as(kind, src.as_ptr().wrapping_add(src_at), dst.as_mut_ptr().wrapping_add(dst_at), len)
        };
        let what = format!("{kind:?}, {len} bytes, source +{src_at}, destination +{dst_at}");
        assert!(dst[..dst_at].iter().all(|&b| b == 0xA5), "before the range: {what}");
        if let Some(i) = (0..len).find(|&i| dst[dst_at + i] != src[src_at + i]) {
            panic!("byte {i} differs: {what}");
        }
        assert!(dst[dst_at + len..].iter().all(|&b| b == 0xA5), "after the range: {what}");
    }

    #[test]
    fn every_kind_copies_every_byte_at_odd_sizes_and_addresses() {
        for kind in [CopyKind::Plain, CopyKind::StreamStores, CopyKind::StreamLoads] {
            for len in [
                0,
                1,
                15,
                16,
                17,
                63,
                64,
                65,
                127,
                4095,
                65_537,
                PARALLEL_COPY_MIN - 1,
                PARALLEL_COPY_MIN + 17,
            ] {
                for (src_at, dst_at) in [(0, 0), (1, 3), (15, 1), (8, 8), (3, 0)] {
                    check(kind, len, src_at, dst_at);
                }
            }
        }
        // Split over the pool: more pieces than threads, a short last piece.
        check(CopyKind::Plain, (9 << 20) + 3, 5, 11);
        check(CopyKind::StreamStores, (9 << 20) + 3, 5, 11);
    }

    /// Several threads copy through the pool at once, each its own buffers, many times.
    #[test]
    fn several_callers_share_the_pool() {
        std::thread::scope(|scope| {
            for t in 0..6 {
                scope.spawn(move || {
                    for round in 0..8 {
                        let len = (5 << 20) + 1 + t * 4097 + round;
                        let kind = if round % 2 == 0 { CopyKind::Plain } else { CopyKind::StreamStores };
                        check(kind, len, t, round % 7);
                    }
                });
            }
        });
    }
    /// A ring copy against a stand-in for the GPU: a write's pieces go from the ring into a
    /// "device" vector as soon as each is marked copied; a read's pieces come from the device
    /// vector into free ring slots. Every byte arrives, with fewer slots than pieces, so the
    /// gates are what keep the two sides from overwriting each other.
    fn ring_round(len: usize, piece: usize, slots: usize, help: bool) {
        let data = pattern(len, (len ^ piece) as u64);
        let mut ring = vec![0u8; piece * slots];
        let mut device = vec![0x5Au8; len];
        // A write: host → ring (threads) → device (here).
        {
            // SAFETY: `data` and `ring` outlive the copy, which is dropped below; this test
            // touches a ring slot only after the gate logic allows (piece marked copied).
            let copy = unsafe {
                RingCopy::start(
                    data.as_ptr().cast_mut(),
                    ring.as_mut_ptr(),
                    len,
                    piece,
                    slots,
                    true,
                    CopyKind::Plain,
                )
            };
            for k in 0..copy.pieces() {
                while !copy.copied(k) {
                    if !(help && copy.help()) {
                        std::hint::spin_loop();
                    }
                }
                let n = piece.min(len - k * piece);
                let at = (k % slots) * piece;
                device[k * piece..k * piece + n].copy_from_slice(&ring[at..at + n]);
                copy.publish(k + 1);
            }
        }
        assert!(device == data, "write: {len} bytes, pieces of {piece}, {slots} slots");
        // A read: device → ring (here) → host (threads).
        let mut out = vec![0xA5u8; len];
        {
            // SAFETY: as above.
            let copy = unsafe {
                RingCopy::start(
                    out.as_mut_ptr(),
                    ring.as_mut_ptr(),
                    len,
                    piece,
                    slots,
                    false,
                    CopyKind::Plain,
                )
            };
            let pieces = copy.pieces();
            let mut filled = 0;
            while filled < pieces {
                // A slot is free once the piece that used it before has been copied out.
                if filled < slots || copy.copied(filled - slots) {
                    let n = piece.min(len - filled * piece);
                    let at = (filled % slots) * piece;
                    ring[at..at + n].copy_from_slice(&device[filled * piece..filled * piece + n]);
                    filled += 1;
                    copy.publish(filled);
                } else if !(help && copy.help()) {
                    std::hint::spin_loop();
                }
            }
            while !(0..pieces).all(|k| copy.copied(k)) {
                std::hint::spin_loop();
            }
        }
        assert!(out == data, "read: {len} bytes, pieces of {piece}, {slots} slots");
    }

    #[test]
    fn ring_copies_move_every_byte_both_ways() {
        for (len, piece, slots) in
            [(1, 64, 2), (65_537, 4096, 2), ((3 << 20) + 5, 64 << 10, 3), (5 << 20, 1 << 20, 5)]
        {
            ring_round(len, piece, slots, false);
            ring_round(len, piece, slots, true);
        }
    }

    /// Dropping a ring copy whose GPU side never moves returns (the gated pieces are skipped)
    /// and leaves the ring untouched past what was open.
    #[test]
    fn an_abandoned_ring_copy_returns_without_the_gpu() {
        let data = pattern(1 << 20, 7);
        let mut ring = vec![0u8; 4 * 4096];
        let mut out = vec![0xA5u8; 1 << 20];
        {
            // SAFETY: the buffers outlive the copy.
            let copy = unsafe {
                RingCopy::start(
                    out.as_mut_ptr(),
                    ring.as_mut_ptr(),
                    out.len(),
                    4096,
                    4,
                    false,
                    CopyKind::Plain,
                )
            };
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert!(!copy.copied(0), "a read copies nothing before the GPU's progress");
        }
        assert!(out.iter().all(|&b| b == 0xA5), "nothing was copied out");
        {
            // SAFETY: as above.
            let copy = unsafe {
                RingCopy::start(
                    data.as_ptr().cast_mut(),
                    ring.as_mut_ptr(),
                    data.len(),
                    4096,
                    4,
                    true,
                    CopyKind::Plain,
                )
            };
            while !(0..4).all(|k| copy.copied(k)) {
                std::hint::spin_loop();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert!(!copy.copied(4), "a write fills only the free slots before the GPU's progress");
        }
        assert!(ring[..] == data[..4 * 4096], "the four free slots hold the first four pieces");
    }
}
