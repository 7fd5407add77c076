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
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Pieces copied.
    done: AtomicUsize,
    /// The thread that waits for `done == pieces`.
    caller: Thread,
}

// SAFETY: the pointers are only dereferenced for a piece claimed below `pieces`, and the caller
// of `copy_bytes` does not return (so the ranges stay valid and untouched) until every piece
// has been copied; a pool thread holding the task after that claims nothing.
unsafe impl Send for Task {}
// SAFETY: as above; the counters are atomics.
unsafe impl Sync for Task {}

impl Task {
    /// Claims and copies pieces until none is left; the one that copies the last piece wakes
    /// the caller.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.pieces {
                return;
            }
            let start = i * self.piece;
            let n = self.piece.min(self.len - start);
            // SAFETY: piece `i` was claimed by this thread alone, `start + n ≤ len`, and the
            // caller of `copy_bytes` keeps both ranges valid until `done` reaches `pieces`,
            // which needs this piece's increment below.
            unsafe { copy_with(self.kind, self.src.wrapping_add(start), self.dst.wrapping_add(start), n) };
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.pieces {
                self.caller.unpark();
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
    let workers = if pool.pid == std::process::id() { pool.workers.load(Ordering::Acquire) } else { 0 };
    let threads = pool.threads.min(workers + 1);
    let piece = len.div_ceil(threads.max(1)).max(PIECE_MIN).next_multiple_of(PIECE_ALIGN);
    let pieces = len.div_ceil(piece);
    if pieces <= 1 {
        // SAFETY: the caller's contract.
        unsafe { copy_with(kind, src, dst, len) };
        return;
    }
    let task = Arc::new(Task {
        src,
        dst,
        len,
        piece,
        pieces,
        kind,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        caller: std::thread::current(),
    });
    {
        let mut queue = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 1..pieces.min(threads) {
            queue.push_back(Arc::clone(&task));
        }
    }
    pool.ready.notify_all();
    task.work();
    // Every piece is claimed; wait until the last ones, copied by pool threads, are done. The
    // ranges are the caller's again only then: this wait must not be skipped.
    let spin = std::time::Instant::now();
    while task.done.load(Ordering::Acquire) < pieces {
        if spin.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            // `work` unparks this thread after the last piece (an unpark before the park
            // makes the park return at once; a spurious return loops).
            std::thread::park();
        }
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
}
