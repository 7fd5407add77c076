//! An outside attack on the streamed synchronous transfers (issue 20: staged `write`/`read` of
//! 1 MiB or more through the whole staging ring, copy threads gated by the GPU's progress). CPU
//! tier, lavapipe, validation on, host-memory import off (everything stages). Every byte checked.

mod common;

use std::sync::{mpsc, RwLock};
use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, Validated};
use lava_flow::{Error, ImageDesc, ImageFormat, MemoryLocation, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };
const MIB: usize = 1 << 20;

/// The fork test takes it for writing: no other test of this binary runs lava-flow calls (and
/// holds the driver's or the copy pool's locks) while it forks.
static FORKING: RwLock<()> = RwLock::new(());

fn not_forking() -> std::sync::RwLockReadGuard<'static, ()> {
    FORKING.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything staged; `timeout` for every wait.
fn staging_only(timeout: Duration) -> Validated {
    Validated::with_options(|o| {
        o.host_memory_import = false;
        o.transfer_timeout = timeout;
    })
}

/// Signals the gate when dropped (also when the test fails), so that the queue drains before
/// the allocator waits for it.
struct Release<'a>(&'a lava_flow::TimelineSemaphore);
impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.0.value().is_ok_and(|v| v < 1) {
            self.0.signal(1).expect("release the queue");
        }
    }
}

/// Runs `transfer` while another thread, `delay` after the start, queues a submission that waits
/// for `gate` (nobody signals it): the queue stalls somewhere in the middle of the streamed
/// transfer (or before it, or after it, depending on the delay). Returns the transfer's result.
fn with_stall_after<T>(
    v: &Validated,
    gate: &lava_flow::TimelineSemaphore,
    delay: Duration,
    transfer: impl FnOnce() -> lava_flow::Result<T>,
) -> lava_flow::Result<T> {
    std::thread::scope(|scope| {
        let stall = scope.spawn(move || {
            std::thread::sleep(delay);
            v.submit(0, &Submission::new().wait(gate, 1)).expect("a submission waiting for the gate");
        });
        let result = transfer();
        stall.join().expect("the stalling thread");
        result
    })
}

/// `got` is `new` up to some byte and `old` from there on: what a write whose tail never reached
/// the GPU leaves (its pieces are submitted in order). Returns where the new bytes end.
fn prefix_of_new_then_old(got: &[u8], new: &[u8], old: &[u8], what: &str) -> usize {
    let end = got.iter().zip(new).position(|(g, n)| g != n).unwrap_or(got.len());
    if let Some(i) = (end..got.len()).find(|&i| got[i] != old[i]) {
        panic!(
            "{what}: byte {i} is neither the write's (which ended at {end}) nor the old one: {:#04x}",
            got[i]
        );
    }
    end
}

/// A streamed write stalls in the middle (the queue blocked behind a wait nobody signals): it
/// times out with GPU copies still queued. The caller's source is overwritten as soon as the call
/// returns; a transfer to another buffer times out without touching the staging those copies
/// still read; after the release, the buffer holds a prefix of the write's bytes and its old
/// bytes after it — never the overwritten source, never the other transfer's bytes — and the
/// ring works again.
#[test]
fn a_streamed_write_stalled_midway_keeps_its_staging_and_never_reads_the_source_afterwards() {
    let _serial = not_forking();
    let timeout = Duration::from_millis(300);
    let mut stalled_midway = false;
    for delay_ms in [1u64, 3, 8, 20, 50] {
        let mut v = staging_only(timeout);
        let size = 96 * MIB + 4099;
        let _pad = v.allocate(4096, DEV0).expect("pad");
        let a = v.allocate(size as u64 + 8, DEV0).expect("a");
        let other = v.allocate(3 * MIB as u64, DEV0).expect("other");
        let old = random_bytes(size);
        a.write(5, &old).expect("the old bytes");
        let gate = v.timeline_semaphore(0).expect("timeline");
        let release = Release(&gate);
        let mut new = random_bytes(size);
        let want = new.clone();
        let result = with_stall_after(&v, &gate, Duration::from_millis(delay_ms), || a.write(5, &new));
        match result {
            Ok(()) => {
                // The stall came after the whole write: nothing to attack this round.
                drop(release);
                let mut out = poisoned(size);
                a.read(5, &mut out).expect("read");
                assert_bytes_eq(&out, &want, "a write that finished before the stall");
                continue;
            }
            Err(Error::Timeout(t, _)) => assert_eq!(t, timeout),
            Err(e) => panic!("expected Ok or Timeout, got {e}"),
        }
        // The call returned: the source is the caller's again. Anything still copying from it
        // would now move zeros.
        new.fill(0);
        let in_flight = v.transfer_stats().in_flight;
        let third = random_bytes(3 * MIB);
        match other.write(0, &third) {
            Err(Error::Timeout(..)) => {}
            other => panic!("a transfer behind the stalled one: expected Timeout, got {other:?}"),
        }
        drop(release);
        // The other buffer's write now reuses the whole ring: the stalled copies must have
        // completed before (or it would overwrite staging they still read).
        other.write(0, &third).expect("a write once released");
        let mut out = poisoned(size);
        a.read(5, &mut out).expect("read once released");
        let end = prefix_of_new_then_old(&out, &want, &old, &format!("stall after {delay_ms} ms"));
        println!(
            "stall after {delay_ms} ms: {end} of {size} bytes landed, {in_flight} in flight at the timeout"
        );
        let mut back = poisoned(3 * MIB);
        other.read(0, &mut back).expect("read other");
        assert_bytes_eq(&back, &third, "the other buffer");
        assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
        if end > 0 && end < size {
            stalled_midway = true;
            break;
        }
    }
    // Not an assertion on timing: the checks above ran for every delay; this says whether a
    // stall in the middle was among them.
    println!("a stall in the middle of the write: {stalled_midway}");
}

/// A streamed read stalls in the middle: the call times out with GPU copies still queued into
/// staging. The caller's memory must never be written once the call has returned: it is marked
/// right after, the queue released and drained, and the mark checked.
#[test]
fn a_streamed_read_stalled_midway_never_writes_the_callers_memory_afterwards() {
    let _serial = not_forking();
    let timeout = Duration::from_millis(300);
    for delay_ms in [1u64, 3, 8, 20, 50] {
        let mut v = staging_only(timeout);
        let size = 80 * MIB + 77;
        let _pad = v.allocate(4096, DEV0).expect("pad");
        let a = v.allocate(size as u64 + 3, DEV0).expect("a");
        let data = random_bytes(size);
        a.write(3, &data).expect("write");
        let gate = v.timeline_semaphore(0).expect("timeline");
        let release = Release(&gate);
        let mut out = poisoned(size);
        let result = with_stall_after(&v, &gate, Duration::from_millis(delay_ms), || a.read(3, &mut out));
        match result {
            Ok(()) => {
                drop(release);
                assert_bytes_eq(&out, &data, "a read that finished before the stall");
                continue;
            }
            Err(Error::Timeout(t, _)) => assert_eq!(t, timeout),
            Err(e) => panic!("expected Ok or Timeout, got {e}"),
        }
        // What arrived before the timeout is the buffer's bytes, piece by piece, the rest
        // untouched.
        let end = out.iter().zip(&data).position(|(o, d)| o != d).unwrap_or(size);
        assert!(out[end..].iter().all(|&b| b == 0xA5), "stall after {delay_ms} ms: a gap in what was read");
        out.fill(0x3C);
        drop(release);
        // Drain: another read (of the same buffer) waits for the stalled copies first.
        let mut again = poisoned(size);
        a.read(3, &mut again).expect("read once released");
        assert_bytes_eq(&again, &data, "the read after the release");
        assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
        assert!(
            out.iter().all(|&b| b == 0x3C),
            "stall after {delay_ms} ms: the caller's memory was written after the read returned"
        );
        println!("stall after {delay_ms} ms: {end} of {size} bytes read before the timeout");
        if end > 0 {
            return;
        }
    }
}

/// A buffer dropped while a streamed write into it is still queued (stalled, then released from
/// another thread while the drop waits): the drop waits for the copies instead of destroying
/// the buffer under them (the validation layer reports a buffer destroyed in use), and the
/// device works afterwards.
#[test]
fn a_buffer_dropped_under_a_stalled_streamed_write_waits_for_it() {
    let _serial = not_forking();
    let timeout = Duration::from_secs(5);
    let mut v = staging_only(Duration::from_millis(300));
    let size = 40 * MIB + 1;
    let a = v.allocate(size as u64, DEV0).expect("a");
    let gate = v.timeline_semaphore(0).expect("timeline");
    let release = Release(&gate);
    v.submit(0, &Submission::new().wait(&gate, 1)).expect("a submission waiting for the gate");
    match a.write(0, &random_bytes(size)) {
        Err(Error::Timeout(..)) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(v.transfer_stats().in_flight >= 1, "{:?}", v.transfer_stats());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            drop(release);
            let _ = tx.send(());
        });
        // Waits up to the transfer timeout: the release comes within it.
        drop(a);
        rx.recv_timeout(timeout).expect("the release");
    });
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
    let b = v.allocate(size as u64, DEV0).expect("b");
    let data = random_bytes(size);
    b.write(0, &data).expect("write");
    let mut out = poisoned(size);
    b.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &data, "after the drop");
}

/// Sizes around the piece and ring boundaries (pieces are `len / 64` clamped to 256 KiB..1 MiB;
/// the ring is 3 slots of `min(len, 16 MiB)` rounded up to 4 KiB), at odd offsets inside a
/// sub-allocated buffer and from odd host addresses; both ways, every byte, the bytes around the
/// range untouched.
#[test]
fn streamed_sizes_around_piece_and_ring_boundaries_at_odd_offsets() {
    let _serial = not_forking();
    let mut v = staging_only(Duration::from_secs(30));
    let sizes = [
        MIB - 1,
        MIB,
        MIB + 1,
        MIB + 4095,
        (256 << 10) * 5 + 1,
        16 * MIB - 1,
        16 * MIB + 1,
        // 40 MiB: pieces of 640 KiB, 76 in the 48 MiB ring (a remainder at its end).
        40 * MIB + 7,
        48 * MIB - 1,
        48 * MIB + 1,
        // More pieces than the ring holds: slots reused twice.
        100 * MIB + 3,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let offset = 1 + 13 * i;
        let what = format!("{size} bytes at offset {offset}");
        let total = size + offset + 29;
        let _pad = v.allocate(4096 + i as u64, DEV0).expect("pad");
        let b = v.allocate(total as u64, DEV0).expect("allocate");
        let background = random_bytes(total);
        b.write(0, &background).unwrap_or_else(|e| panic!("background {what}: {e}"));
        let data = random_bytes(size);
        let mut storage = vec![0u8; size + 64];
        let src = &mut storage[(i % 61) + 1..(i % 61) + 1 + size];
        src.copy_from_slice(&data);
        b.write(offset as u64, src).unwrap_or_else(|e| panic!("write {what}: {e}"));
        let mut want = background;
        want[offset..offset + size].copy_from_slice(&data);
        let mut whole = poisoned(total + 3);
        b.read(0, &mut whole[3..]).unwrap_or_else(|e| panic!("read {what}: {e}"));
        assert!(whole[..3].iter().all(|&x| x == 0xA5), "{what}: written before the range");
        assert_bytes_eq(&whole[3..], &want, &format!("the whole buffer after {what}"));
        let mut part = poisoned(size + 2);
        b.read(offset as u64, &mut part[1..=size]).unwrap_or_else(|e| panic!("read back {what}: {e}"));
        assert!(part[0] == 0xA5 && part[size + 1] == 0xA5, "{what}: written around the range");
        assert_bytes_eq(&part[1..=size], &data, &what);
    }
}

/// Image levels of more than 1 MiB whose rows do not divide the piece (pieces of whole rows at
/// offsets that are no multiple of 4 or 64), texels of 1, 2, 8 and 16 bytes, rows longer than
/// the smallest piece; both ways, every byte.
#[test]
fn streamed_image_levels_with_odd_rows() {
    let _serial = not_forking();
    let mut v = staging_only(Duration::from_secs(30));
    for (format, width, height) in [
        (ImageFormat::R8Unorm, 1023, 1500),
        (ImageFormat::Rg8Unorm, 1021, 700),
        (ImageFormat::Rgba16Float, 333, 500),
        // Rows of 192,000 bytes: one row per piece.
        (ImageFormat::Rgba32Float, 12_000, 30),
        (ImageFormat::R16Float, 4097, 131),
    ] {
        let desc = ImageDesc::new(format, width, height);
        let image = v.allocate_image(0, desc).expect("image");
        let len = desc.level_size(0) as usize;
        assert!(len >= MIB, "{format:?}: streamed levels only");
        let what = format!("{format:?} {width}×{height}");
        let data = common::texel_data(format, len);
        image.write_level(0, &data).unwrap_or_else(|e| panic!("write {what}: {e}"));
        let mut out = poisoned(len + 1);
        image.read_level(0, &mut out[1..]).unwrap_or_else(|e| panic!("read {what}: {e}"));
        assert_eq!(out[0], 0xA5, "{what}: written before the range");
        assert_bytes_eq(&out[1..], &data, &what);
    }
}

/// Two allocators (two Vulkan devices) stream at once from several threads each, beside small
/// transfers, sharing the process's copy threads; every byte checked both ways.
#[test]
fn streamed_transfers_on_two_devices_and_many_threads_at_once() {
    let _serial = not_forking();
    let mut first = staging_only(Duration::from_secs(60));
    let mut second = staging_only(Duration::from_secs(60));
    let sizes = [5 * MIB + 3, 4097, 17 * MIB + 1, MIB, 77, 33 * MIB + 4095];
    let mut work = Vec::new();
    for (d, v) in [&mut first, &mut second].into_iter().enumerate() {
        for t in 0..3 {
            let _pad = v.allocate(4096, DEV0).expect("pad");
            work.push((d, t, v.allocate((34 * MIB) as u64, DEV0).expect("allocate")));
        }
    }
    std::thread::scope(|scope| {
        for (d, t, b) in &work {
            scope.spawn(move || {
                for (i, &size) in sizes.iter().enumerate() {
                    let size = if (t + i) % 2 == 0 { size } else { size.min(3 * MIB) + t };
                    let what = format!("device {d}, thread {t}, {size} bytes");
                    let offset = (t * 5 + i) as u64;
                    let data = random_bytes(size);
                    b.write(offset, &data).unwrap_or_else(|e| panic!("write {what}: {e}"));
                    let mut out = poisoned(size);
                    b.read(offset, &mut out).unwrap_or_else(|e| panic!("read {what}: {e}"));
                    assert_bytes_eq(&out, &data, &what);
                }
            });
        }
    });
    for v in [&first, &second] {
        assert_eq!(v.transfer_stats().in_flight, 0);
    }
}

/// Streamed transfers interleaved with asynchronous ones on the same device: the timeline values
/// of the streamed batches and of the asynchronous jobs share one timeline; each job completes
/// with its own bytes, and a buffer dropped right after its asynchronous write waits for it.
#[test]
fn streamed_and_asynchronous_transfers_share_the_timeline() {
    let _serial = not_forking();
    let mut v = staging_only(Duration::from_secs(30));
    let big = 6 * MIB + 5;
    let a = v.allocate(big as u64, DEV0).expect("a");
    for round in 0..4 {
        let small = v.allocate(70_001, DEV0).expect("small");
        let pending_data = random_bytes(70_001);
        let w = small.write_async(0, pending_data.clone()).expect("write_async");
        let data = random_bytes(big);
        a.write(0, &data).expect("streamed write behind the asynchronous one");
        let r = small.read_async(0, poisoned(70_001)).expect("read_async");
        let mut out = poisoned(big);
        a.read(0, &mut out).expect("streamed read");
        assert_bytes_eq(&out, &data, &format!("round {round}: streamed"));
        assert_eq!(w.wait().expect("write"), pending_data);
        assert_bytes_eq(&r.wait().expect("read"), &pending_data, &format!("round {round}: async"));
        let last = random_bytes(70_001);
        let _pending = small.write_async(0, last).expect("write_async");
        // Dropped with the write queued: the drop waits for its value on the shared timeline.
        drop(small);
    }
    assert_eq!(v.transfer_stats().in_flight, 0);
}

/// A child made by `fork` has none of the parent's copy threads: its streamed transfers are
/// copied by the calling thread alone (`RingCopy::help`), every byte, without waiting for
/// threads that do not exist. The child reports through its exit status; `alarm` ends it if it
/// hangs.
#[cfg(unix)]
#[test]
fn a_forked_child_streams_without_the_parents_copy_threads() {
    let _alone = FORKING.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    {
        // The parent starts the copy threads (a streamed transfer).
        let mut v = staging_only(Duration::from_secs(30));
        let device = v.device(0).expect("device 0");
        if device.device_type != lava_flow::DeviceType::Cpu {
            // A child of a process that has used a GPU driver may not use it (NVIDIA's: the
            // child inherits the parent's driver state, and its device calls broke the parent's
            // device on the H200: VK_ERROR_DEVICE_LOST in the parent's later vkCreateDevice).
            // What this test checks (no copy threads in a child) does not depend on the driver.
            println!("skipped on {}: only a CPU Vulkan driver may be used from a forked child", device.name);
            return;
        }
        let b = v.allocate((5 * MIB) as u64, DEV0).expect("allocate");
        b.write(0, &random_bytes(5 * MIB)).expect("write in the parent");
    }
    let data = random_bytes(9 * MIB + 3);
    // SAFETY: the child only calls lava-flow (which opens its own devices) and exits with
    // `_exit`; no other test of this binary runs lava-flow meanwhile (the lock above).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain libc calls in the child.
        unsafe { libc::alarm(120) };
        let ok = std::panic::catch_unwind(|| {
            let mut options = lava_flow::AllocatorOptions::default();
            options.host_memory_import = false;
            let mut allocator =
                lava_flow::MemoryAllocator::with_options(options).expect("allocator in the child");
            let b = allocator.allocate(data.len() as u64 + 7, DEV0).expect("allocate in the child");
            b.write(7, &data).expect("write in the child");
            let mut out = poisoned(data.len());
            b.read(7, &mut out).expect("read in the child");
            out == data
        });
        let code = match ok {
            Ok(true) => 0,
            Ok(false) => 2,
            Err(_) => 3,
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    assert!(libc::WIFEXITED(status), "the child did not exit (killed by signal {})", libc::WTERMSIG(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child's streamed transfer (2: bytes differ, 3: it panicked)"
    );
}

/// After a streamed transfer into a buffer completed, nothing of it is pending: dropping that
/// buffer must not wait for the transfer context, which another thread's streamed transfer —
/// stalled behind a wait nobody signals — holds until its timeout (a minute here). The drop
/// finishes while the stall lasts; only then is the queue released.
#[test]
fn a_finished_streamed_transfer_leaves_nothing_for_its_buffers_drop_to_wait_for() {
    let _serial = not_forking();
    let mut v = staging_only(Duration::from_secs(60));
    let size = 24 * MIB + 1;
    let done = v.allocate(size as u64, DEV0).expect("done");
    done.write(0, &random_bytes(size)).expect("a streamed write that completes");
    let busy = v.allocate(size as u64, DEV0).expect("busy");
    let gate = v.timeline_semaphore(0).expect("timeline");
    let release = Release(&gate);
    v.submit(0, &Submission::new().wait(&gate, 1)).expect("a submission waiting for the gate");
    let data = random_bytes(size);
    std::thread::scope(|scope| {
        // Holds the transfer context, stalled, until the gate opens.
        let stalled = scope.spawn(|| busy.write(0, &data));
        // Let it take the context (if it has not yet, the drop below does not wait either).
        std::thread::sleep(Duration::from_millis(300));
        let (tx, rx) = mpsc::channel();
        scope.spawn(move || {
            drop(done);
            let _ = tx.send(());
        });
        let dropped = rx.recv_timeout(Duration::from_secs(20));
        drop(release);
        stalled.join().expect("the stalled writer").expect("the stalled write completes once released");
        dropped.expect("the drop of a buffer with nothing pending waited for another thread's transfer");
    });
    let mut out = poisoned(size);
    busy.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &data, "the write that was stalled");
}
