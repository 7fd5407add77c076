//! An outside attack on the asynchronous host transfers (CPU tier, lavapipe, validation on): host
//! memory whose drop calls back into lava-flow, many threads on one buffer at once through both
//! paths, every byte checked.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, Validated};
use lava_flow::{HostBytes, MemoryAllocator, MemoryLocation, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

/// Runs `f` on its own thread and fails if it has not finished after `limit` (a deadlock leaves
/// the thread behind; the test fails rather than hang).
fn within(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => worker.join().expect("the worker"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: not finished after {limit:?} (deadlock)"),
    }
}

/// Host memory whose drop asks the allocator for its transfer statistics, as a pool that
/// recycles buffers, or logging, might.
struct CallsBack {
    bytes: Vec<u8>,
    allocator: MemoryAllocator,
    dropped: Arc<AtomicBool>,
}

// SAFETY: the bytes live in the vector's heap allocation, which moving the value does not move
// and nothing changes while a transfer holds the value.
unsafe impl HostBytes for CallsBack {
    fn host_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for CallsBack {
    fn drop(&mut self) {
        let stats = self.allocator.transfer_stats();
        println!("CallsBack dropped; transfers: {stats:?}");
        self.dropped.store(true, Ordering::Release);
    }
}

/// An asynchronous write whose wait timed out leaves its memory with the device, which frees it
/// once the copy completed — from inside a later call's transfer context. A drop of that memory
/// that calls back into the allocator must not find the context locked by its own thread.
#[test]
fn host_memory_freed_by_the_device_may_call_back_into_the_allocator() {
    within(Duration::from_secs(20), "a drop that calls back", || {
        let mut v = Validated::with_options(|o| {
            o.transfer_timeout = Duration::from_millis(200);
            o.host_memory_import = false;
        });
        let size = 70_001;
        let b = v.allocate(size as u64, DEV0).expect("allocate");
        let gate = v.timeline_semaphore(0).expect("timeline");
        v.submit(0, &Submission::new().wait(&gate, 1)).expect("a submission waiting for a value");
        let data = random_bytes(size);
        let dropped = Arc::new(AtomicBool::new(false));
        let host = CallsBack { bytes: data.clone(), allocator: (*v).clone(), dropped: Arc::clone(&dropped) };
        let pending = b.write_async(0, host).expect("queued behind the wait");
        // Its wait times out: the device keeps the memory until the copy completes.
        drop(pending);
        assert!(!dropped.load(Ordering::Acquire), "kept while the copy is queued");
        gate.signal(1).expect("release the queue");
        let mut out = poisoned(size);
        b.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &data, "the write whose wait timed out");
        // Whichever call sees the copy complete frees the memory.
        let stats = v.transfer_stats();
        assert_eq!(stats.in_flight, 0, "{stats:?}");
        assert!(dropped.load(Ordering::Acquire), "freed once the copy completed");
    });
}

/// Four threads on one buffer, each on its own range, and on buffers of their own, through the
/// staging ring and through imported host memory: synchronous and asynchronous writes and reads
/// interleaved in the one ring, reads of several slots left held while the other threads' copies
/// need those slots. Every byte of every range checked, and nothing left in flight.
#[test]
fn many_threads_on_one_buffer_and_on_many() {
    for import in [false, true] {
        let mut v = Validated::with_options(|o| o.host_memory_import = import);
        let threads = 4;
        let range = (1 << 20) + 4099;
        let shared = v.allocate((threads * range) as u64, DEV0).expect("allocate");
        let own: Vec<_> = (0..threads).map(|_| v.allocate(range as u64, DEV0).expect("allocate")).collect();
        std::thread::scope(|scope| {
            for (t, mine) in own.iter().enumerate() {
                let shared = &shared;
                scope.spawn(move || {
                    let at = (t * range) as u64;
                    for round in 0..2 {
                        let what = format!("thread {t}, round {round}, import {import}");
                        let (a, b) = (random_bytes(range), random_bytes(range));
                        let w1 = shared.write_async(at, a.clone()).expect("write_async");
                        let w2 = mine.write_async(0, b.clone()).expect("write_async");
                        let r1 = shared.read_async(at, poisoned(range)).expect("read_async");
                        let mut out = poisoned(range);
                        mine.read(0, &mut out).expect("read");
                        assert_bytes_eq(&out, &b, &format!("own buffer, {what}"));
                        let r2 = mine.read_async(0, poisoned(range).into_boxed_slice()).expect("read_async");
                        // Waited for out of order, and on another thread for one of them.
                        let got =
                            std::thread::spawn(move || r2.wait().expect("wait")).join().expect("thread");
                        assert_bytes_eq(&got, &b, &format!("own buffer, async, {what}"));
                        assert_bytes_eq(&r1.wait().expect("wait"), &a, &format!("shared range, {what}"));
                        assert_eq!(w2.wait().expect("wait"), b);
                        assert_eq!(w1.wait().expect("wait"), a);
                    }
                });
            }
        });
        let s = v.transfer_stats();
        assert_eq!(s.in_flight, 0, "{s:?}");
        if import {
            assert!(s.imported > 0, "{s:?}");
        }
    }
}

/// `wait_done` times out without giving the transfer up: waited for again once the queue moves,
/// it completes and `wait` hands the bytes back (a read's, filled).
#[test]
fn a_timed_out_wait_done_can_be_waited_for_again() {
    within(Duration::from_secs(20), "wait_done", || {
        let timeout = Duration::from_millis(200);
        let mut v = Validated::with_options(|o| {
            o.transfer_timeout = timeout;
            o.host_memory_import = false;
        });
        let size = 3 << 20;
        let b = v.allocate(size as u64, DEV0).expect("allocate");
        let data = random_bytes(size);
        b.write(0, &data).expect("write");
        let gate = v.timeline_semaphore(0).expect("timeline");
        v.submit(0, &Submission::new().wait(&gate, 1)).expect("a submission waiting for a value");
        let reading = b.read_async(0, poisoned(size)).expect("queued behind the wait");
        match reading.wait_done() {
            Err(lava_flow::Error::Timeout(t, _)) => assert_eq!(t, timeout),
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(!reading.is_done().expect("is_done"), "still queued, still the transfer's");
        gate.signal(1).expect("release the queue");
        reading.wait_done().expect("completes once the queue moves");
        assert!(reading.is_done().expect("is_done"));
        assert_bytes_eq(&reading.wait().expect("at once"), &data, "the read after a timed-out wait_done");
        assert_eq!(v.transfer_stats().in_flight, 0);
    });
}
