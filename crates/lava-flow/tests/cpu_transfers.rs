//! CPU tier: host transfers (`Buffer::write`/`read`, image levels, their asynchronous forms)
//! through both paths — straight from and into imported host memory (lavapipe has
//! `VK_EXT_external_memory_host`) and through the staging ring (`host_memory_import` off) —
//! every byte checked both ways, at odd sizes, offsets and host addresses. Validation on.

mod common;

use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, Validated};
use lava_flow::{Error, ImageDesc, ImageFormat, MemoryLocation, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };
/// The staging chunk (16 MiB): sizes around it cross chunk and ring boundaries.
const CHUNK: usize = 16 << 20;

/// An allocator with host-memory import on or off.
fn allocator(import: bool) -> Validated {
    Validated::with_options(|o| o.host_memory_import = import)
}

/// An allocator whose transfers time out after `timeout`, with host-memory import on or off.
fn timed(timeout: Duration, import: bool) -> Validated {
    Validated::with_options(|o| {
        o.transfer_timeout = timeout;
        o.host_memory_import = import;
    })
}

/// `len` bytes at `misalign` bytes past a 4096-byte boundary, inside `storage`.
fn at_address(storage: &mut Vec<u8>, len: usize, misalign: usize) -> &mut [u8] {
    storage.resize(len + misalign + 8192, 0);
    let start = storage.as_ptr().align_offset(4096) + misalign;
    &mut storage[start..start + len]
}

/// Writes `size` random bytes at `offset` inside a buffer that holds random bytes around them,
/// from a host address `misalign` past a page boundary; reads the whole buffer and the range
/// back into poisoned memory at other odd addresses; checks every byte.
fn round_trip(v: &mut Validated, size: usize, offset: usize, misalign: usize, what: &str) {
    let total = offset + size + 13;
    // A small buffer first, so that sub-allocated buffers below sit at non-zero offsets.
    let _before = v.allocate(4096, DEV0).expect("filler");
    let b = v.allocate(total as u64, DEV0).expect("allocate");
    assert!(b.mapped_ptr().is_none(), "GpuVulkan memory is not mapped: {what}");
    if (total as u64) < 2 << 20 {
        assert_ne!(b.offset(), 0, "a sub-allocated buffer past the filler: {what}");
    }
    let background = random_bytes(total);
    b.write(0, &background).expect("background");
    let data = random_bytes(size);
    let mut source = Vec::new();
    let src = at_address(&mut source, size, misalign);
    src.copy_from_slice(&data);
    b.write(offset as u64, src).unwrap_or_else(|e| panic!("write {what}: {e}"));
    let mut want = background;
    want[offset..offset + size].copy_from_slice(&data);

    let mut whole = Vec::new();
    let out = at_address(&mut whole, total, (misalign + 1) % 4096);
    out.fill(0xA5);
    b.read(0, out).unwrap_or_else(|e| panic!("read {what}: {e}"));
    assert_bytes_eq(out, &want, &format!("whole buffer after {what}"));

    let mut part = Vec::new();
    let out = at_address(&mut part, size, (misalign + 4093) % 4096);
    out.fill(0xA5);
    b.read(offset as u64, out).unwrap_or_else(|e| panic!("read back {what}: {e}"));
    assert_bytes_eq(out, &data, &format!("range of {what}"));
}

fn sizes_offsets_and_addresses(import: bool) {
    let mut v = allocator(import);
    let cases = [
        (1, 0, 0),
        (1, 7, 1),
        (4095, 1, 4095),
        (4097, 3, 17),
        ((256 << 10) - 1, 5, 0),
        ((256 << 10) + 3, 0, 1),
        (1_000_003, 255, 8),
        // The smallest transfer streamed through the whole ring (pieces of 256 KiB).
        (1 << 20, 2, 5),
        (CHUNK - 1, 1, 3),
        (CHUNK, 0, 0),
        (CHUNK + 1, 9, 2049),
        // More chunks than the ring has slots: slots are reused.
        (3 * CHUNK + 4099, 4, 7),
    ];
    let before = v.transfer_stats();
    for (size, offset, misalign) in cases {
        let what = format!("{size} bytes at offset {offset}, host address +{misalign} (import {import})");
        round_trip(&mut v, size, offset, misalign, &what);
    }
    let s = v.transfer_stats();
    let imported = s.imported - before.imported;
    if import {
        // Every transfer of at least 256 KiB imports: 7 cases × 3 transfers (the background
        // write counts too).
        assert!(imported >= 21, "imported transfers: {imported} ({s:?})");
    } else {
        assert_eq!(imported, 0, "import off: everything stages ({s:?})");
    }
    assert!(s.staged > before.staged, "small transfers stage ({s:?})");
}

#[test]
fn every_byte_both_ways_through_imported_host_memory() {
    sizes_offsets_and_addresses(true);
}

#[test]
fn every_byte_both_ways_through_the_staging_ring() {
    sizes_offsets_and_addresses(false);
}

/// The asynchronous forms: the memory moves into the transfer and comes back filled; the
/// buffer may be dropped before the transfer is waited for (its drop waits).
#[test]
fn asynchronous_transfers_own_their_memory_until_waited_for() {
    for import in [true, false] {
        let mut v = allocator(import);
        for size in [1usize, 4097, (256 << 10) + 1, CHUNK + 3] {
            let what = format!("{size} bytes (import {import})");
            let b = v.allocate(size as u64 + 100, DEV0).expect("allocate");
            let data = random_bytes(size);
            let pending = b.write_async(100, data.clone()).expect("write_async");
            let back = pending.wait().expect("wait for the write");
            assert_eq!(back, data, "the source comes back unchanged: {what}");
            let pending = b.read_async(100, poisoned(size).into_boxed_slice()).expect("read_async");
            let out = pending.wait().expect("wait for the read");
            assert_bytes_eq(&out, &data, &what);
            // Several in flight at once, then the buffer dropped before they are waited for.
            let second = random_bytes(size);
            let w = b.write_async(100, second.clone()).expect("write_async");
            let r = b.read_async(100, poisoned(size)).expect("read_async");
            assert!(matches!(b.read_async(99 + 2, vec![0u8; size]), Err(Error::OutOfRange { .. })));
            let out = r.wait().expect("the read queued after the write");
            assert_bytes_eq(&out, &second, &format!("read after write, {what}"));
            let w2 = b.write_async(0, random_bytes(100)).expect("write_async");
            drop(b);
            assert!(w.is_done().expect("is_done"), "the drop waited: {what}");
            assert!(w2.is_done().expect("is_done"), "the drop waited: {what}");
            drop((w, w2));
        }
        let s = v.transfer_stats();
        if import {
            assert!(s.imported > 0, "{s:?}");
        } else {
            assert_eq!(s.imported, 0, "{s:?}");
        }
    }
}

/// Image levels both ways through both paths, synchronous and asynchronous, from host
/// addresses that are texel-aligned (imported) and not (staged).
#[test]
fn image_levels_both_ways_through_both_paths() {
    for import in [true, false] {
        let mut v = allocator(import);
        // A buffer transfer of an odd size between the ring's smallest and largest slots first:
        // the ring's slots must still start at texel-aligned offsets for the images after it.
        let odd = (2 << 20) + 1;
        let b = v.allocate(odd as u64, DEV0).expect("allocate");
        let data = random_bytes(odd);
        b.write(0, &data).expect("write");
        let mut out = poisoned(odd);
        b.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &data, "the odd-sized buffer");
        let before = v.transfer_stats();
        for (format, width, height) in [
            (ImageFormat::Rgba8Unorm, 512, 300),
            (ImageFormat::R8Unorm, 1021, 3),
            (ImageFormat::Rgba32Float, 300, 77),
            // Levels of more than 1 MiB stream through the ring in pieces of whole rows (odd
            // row sizes, a piece not a multiple of 4096).
            (ImageFormat::R8Unorm, 1021, 1100),
            (ImageFormat::Rgba8Unorm, 700, 500),
        ] {
            let desc = ImageDesc::new(format, width, height).mip_levels(2);
            let image = v.allocate_image(0, desc).expect("image");
            for level in 0..2 {
                let len = desc.level_size(level) as usize;
                for misalign in [0, 1, 16] {
                    let what = format!("{format:?} level {level}, host +{misalign}, import {import}");
                    let data = common::texel_data(format, len);
                    let mut source = Vec::new();
                    let src = at_address(&mut source, len, misalign);
                    src.copy_from_slice(&data);
                    image.write_level(level, src).unwrap_or_else(|e| panic!("write {what}: {e}"));
                    let mut back = Vec::new();
                    let out = at_address(&mut back, len, misalign);
                    out.fill(0xA5);
                    image.read_level(level, out).unwrap_or_else(|e| panic!("read {what}: {e}"));
                    assert_bytes_eq(out, &data, &what);
                }
                let data = common::texel_data(format, len);
                let w = image.write_level_async(level, data.clone()).expect("write_level_async");
                let r = image.read_level_async(level, poisoned(len)).expect("read_level_async");
                w.wait().expect("write");
                assert_bytes_eq(
                    &r.wait().expect("read"),
                    &data,
                    &format!("{format:?} async, import {import}"),
                );
            }
        }
        let s = v.transfer_stats();
        if import {
            assert!(s.imported > before.imported, "levels of 600 KiB import: {s:?}");
        } else {
            assert_eq!(s.imported, 0, "{s:?}");
        }
    }
}

/// A timeline, and a submission on device 0 waiting for its value 1, which nobody signals until
/// the test's [`Release`] does: the queue is stalled behind it.
fn stalled(v: &mut Validated) -> lava_flow::TimelineSemaphore {
    let gate = v.timeline_semaphore(0).expect("timeline");
    v.submit(0, &Submission::new().wait(&gate, 1)).expect("a submission waiting for a value");
    gate
}

/// Signals the gate when dropped, also when the test fails, so that the queue drains before
/// the allocator (declared first, dropped last) waits for it.
struct Release<'a>(&'a lava_flow::TimelineSemaphore);
impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.0.value().is_ok_and(|v| v < 1) {
            self.0.signal(1).expect("release the queue");
        }
    }
}

/// Behind a submission that waits for a value nobody signals: a synchronous copy straight from
/// the caller's memory is never submitted (it could outlive the call and write into memory
/// the caller has freed): `Timeout`, nothing done. An asynchronous one is submitted and owns its
/// memory; waiting for it times out and leaks that memory rather than hand it back under the
/// GPU. Once the value is signalled, everything completes and the buffers are intact.
#[test]
fn timeouts_never_leave_a_copy_into_the_callers_memory() {
    let timeout = Duration::from_millis(200);
    let mut v = timed(timeout, true);
    let size = (1 << 20) + 4097;
    let b = v.allocate(size as u64, DEV0).expect("allocate");
    let first = random_bytes(size);
    b.write(0, &first).expect("a write before anything blocks the queue");
    assert!(v.transfer_stats().imported > 0, "the driver imports host memory: {:?}", v.transfer_stats());

    let gate = stalled(&mut v);
    let release = Release(&gate);
    let stuck = random_bytes(size);
    let pending = b.write_async(0, stuck.clone()).expect("an asynchronous write is queued");
    assert!(!pending.is_done().expect("is_done"), "queued behind the wait");
    let pending_read = b.read_async(0, poisoned(size)).expect("an asynchronous read is queued");
    let mut out = poisoned(size);
    match b.read(0, &mut out) {
        Err(e @ Error::Timeout(..)) => {
            assert!(e.to_string().contains("work queued before this copy"), "{e}")
        }
        other => panic!(
            "a read straight into the caller's memory behind the wait: expected Timeout, got {other:?}"
        ),
    }
    assert!(out.iter().all(|&x| x == 0xA5), "nothing was read");
    match pending.wait() {
        Err(Error::Timeout(t, what)) => assert_eq!((t, what), (timeout, "an asynchronous transfer")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    drop(release);
    // The drain probe of the refused read timed out too: the next call waits for it first.
    let out = pending_read.wait().expect("the read completes once the queue drained");
    assert_bytes_eq(&out, &stuck, "the asynchronous read, queued after the asynchronous write");
    let mut out = poisoned(size);
    b.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &stuck, "the write whose wait timed out landed with its own bytes");
}

/// A staged write of more chunks than the ring holds, behind the wait: the first chunks are
/// queued, the call times out when it needs a slot back, later calls fail with a typed
/// `Timeout` (staging is never overwritten under a queued copy), and after the release
/// everything works again.
#[test]
fn a_timed_out_ring_keeps_its_slots_until_they_complete() {
    let timeout = Duration::from_millis(200);
    let mut v = timed(timeout, false);
    let size = 4 * CHUNK + 5;
    let b = v.allocate(size as u64, DEV0).expect("allocate");
    let gate = stalled(&mut v);
    let release = Release(&gate);
    let data = random_bytes(size);
    match b.write(0, &data) {
        Err(Error::Timeout(t, what)) => assert_eq!((t, what), (timeout, "a staging copy")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let mut out = poisoned(CHUNK);
    match b.read(0, &mut out) {
        Err(e @ Error::Timeout(..)) => assert!(e.to_string().contains("earlier staging copy"), "{e}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    drop(release);
    b.read(0, &mut out).expect("read once the queue drained");
    assert_bytes_eq(&out, &data[..CHUNK], "the queued first chunk landed with its own bytes");
    b.write(0, &data).expect("write");
    let mut out = poisoned(size);
    b.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &data, "after the recovery");
}

/// An allocator that stages everything (host-memory import off): the ring and its copy threads.
fn ring_allocator() -> Validated {
    allocator(false)
}

/// The copy threads shared by several threads at once: each thread has its own buffer and
/// moves sizes that split over the pool (4 MiB and up) and sizes that do not, synchronously and
/// asynchronously, through one device's ring; every byte checked both ways.
#[test]
fn the_copy_pool_serves_several_threads_at_once() {
    let mut v = ring_allocator();
    let sizes = [(5 << 20) + 3, 4097, CHUNK + 4099, (4 << 20) + 1, 1];
    let buffers: Vec<_> =
        (0..4).map(|_| v.allocate((CHUNK + 8192) as u64, DEV0).expect("allocate")).collect();
    std::thread::scope(|scope| {
        for (t, b) in buffers.iter().enumerate() {
            scope.spawn(move || {
                for round in 0..3 {
                    for (i, &size) in sizes.iter().enumerate() {
                        let what = format!("thread {t}, round {round}, {size} bytes");
                        let offset = (t * 7 + i) as u64;
                        let data = random_bytes(size);
                        if (round + i) % 2 == 0 {
                            b.write(offset, &data).unwrap_or_else(|e| panic!("write {what}: {e}"));
                            let mut out = poisoned(size);
                            b.read(offset, &mut out).unwrap_or_else(|e| panic!("read {what}: {e}"));
                            assert_bytes_eq(&out, &data, &what);
                        } else {
                            let w = b.write_async(offset, data.clone()).expect("write_async");
                            let r = b.read_async(offset, poisoned(size)).expect("read_async");
                            let out = r.wait().unwrap_or_else(|e| panic!("read_async {what}: {e}"));
                            assert_bytes_eq(&out, &data, &format!("async {what}"));
                            assert_eq!(w.wait().expect("write_async"), data, "{what}");
                        }
                    }
                }
            });
        }
    });
    let s = v.transfer_stats();
    assert_eq!(s.imported, 0, "{s:?}");
    assert_eq!(s.in_flight, 0, "everything was waited for: {s:?}");
}

/// Asynchronous transfers through the ring: several in flight at once (more than the ring has
/// slots, to different buffers), waited for in reverse order; a read larger than the ring
/// (read as a synchronous one but for its last slots); every byte checked; nothing left in flight.
#[test]
fn asynchronous_transfers_share_the_ring() {
    let mut v = ring_allocator();
    let sizes = [1usize, 4096, 65_537, (1 << 20) + 1, 3 * CHUNK + 5];
    let buffers: Vec<_> = sizes.iter().map(|&n| v.allocate(n as u64 + 64, DEV0).expect("allocate")).collect();
    let data: Vec<_> = sizes.iter().map(|&n| random_bytes(n)).collect();
    let writes: Vec<_> =
        buffers.iter().zip(&data).map(|(b, d)| b.write_async(64, d.clone()).expect("write_async")).collect();
    let reads: Vec<_> = buffers
        .iter()
        .zip(&sizes)
        .map(|(b, &n)| b.read_async(64, poisoned(n).into_boxed_slice()).expect("read_async"))
        .collect();
    for (k, r) in reads.into_iter().enumerate().rev() {
        let out = r.wait().expect("wait for the read");
        assert_bytes_eq(&out, &data[k], &format!("read {k} of {} bytes", sizes[k]));
    }
    for (k, w) in writes.into_iter().enumerate() {
        assert_eq!(w.wait().expect("wait for the write"), data[k], "the source comes back unchanged");
    }
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}

/// A read through the ring whose `PendingTransfer` is dropped unwaited (its drop waits and
/// frees the memory), and one that is leaked with `std::mem::forget`: its bytes land in the
/// leaked memory once a later call needs the slot, never anywhere else; the ring carries on.
#[test]
fn dropped_and_leaked_asynchronous_reads_through_the_ring() {
    let mut v = ring_allocator();
    let size = 100_003;
    let b = v.allocate(size as u64, DEV0).expect("allocate");
    let data = random_bytes(size);
    b.write(0, &data).expect("write");
    drop(b.read_async(0, poisoned(size)).expect("read_async"));
    assert_eq!(v.transfer_stats().in_flight, 0, "the drop waited: {:?}", v.transfer_stats());

    let leaked = poisoned(size).into_boxed_slice();
    let at = leaked.as_ptr();
    std::mem::forget(b.read_async(0, leaked).expect("read_async"));
    // Other transfers need the ring's slots: the held bytes are handed over on the way.
    for _ in 0..4 {
        let other = random_bytes(size);
        b.write(0, &other).expect("write");
        let mut out = poisoned(size);
        b.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &other, "the ring after a leaked read");
    }
    b.write(0, &data).expect("write");
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
    // SAFETY: the leaked box's heap bytes are never freed (its transfer was forgotten); every
    // copy into them has completed (nothing is in flight).
    let landed = unsafe { std::slice::from_raw_parts(at, size) };
    assert_bytes_eq(landed, &data, "the leaked read's bytes, copied out when its slot was reused");
}

/// Behind a submission that waits for a value nobody signals, through the ring: asynchronous
/// transfers are queued in their slots; a wait times out (the device keeps the memory); a
/// synchronous write to another buffer times out with its copy queued; once the ring is full,
/// later calls fail with a typed `Timeout` and nothing overwritten (issue 18, item 4). After the
/// release everything lands, and nothing is left in flight.
#[test]
fn ring_timeouts_leave_nothing_in_flight_once_released() {
    let timeout = Duration::from_millis(200);
    let mut v = timed(timeout, false);
    let size = 70_001;
    let a = v.allocate(size as u64, DEV0).expect("allocate");
    let b = v.allocate(size as u64, DEV0).expect("allocate");
    let first = random_bytes(size);
    a.write(0, &first).expect("write before the gate");
    let gate = stalled(&mut v);
    let release = Release(&gate);

    let second = random_bytes(size);
    let w = a.write_async(0, second.clone()).expect("an asynchronous write is queued");
    let r = a.read_async(0, poisoned(size)).expect("an asynchronous read is queued");
    assert!(!r.is_done().expect("is_done"), "queued behind the wait");
    match r.wait() {
        Err(Error::Timeout(t, what)) => assert_eq!((t, what), (timeout, "an asynchronous transfer")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let third = random_bytes(size);
    match b.write(0, &third) {
        Err(Error::Timeout(t, what)) => assert_eq!((t, what), (timeout, "a staging copy")),
        other => panic!("a synchronous write behind the wait: expected Timeout, got {other:?}"),
    }
    // Every slot is busy: a fourth transfer neither reuses one nor overwrites its staging.
    match a.write_async(0, random_bytes(size)) {
        Err(e @ Error::Timeout(..)) => assert!(e.to_string().contains("staging copy"), "{e}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(v.transfer_stats().in_flight >= 3, "{:?}", v.transfer_stats());
    drop(release);
    assert_eq!(w.wait().expect("the write completes once released"), second);
    let mut out = poisoned(size);
    a.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &second, "the queued asynchronous write");
    b.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &third, "the synchronous write that timed out landed with its own bytes");
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}

/// An asynchronous write of 1 MiB or more is streamed through the whole staging buffer by the
/// copy threads and returns with its last GPU copies in flight. Behind a submission that waits
/// for a value nobody signals, it still returns (every byte is in staging), and a transfer
/// through the ring's slots right after it would reuse that staging: it is refused with a typed
/// `Timeout` naming the write's copies, nothing overwritten. After the release every byte of
/// the asynchronous write lands, and the ring carries on.
#[test]
fn an_asynchronous_streamed_write_keeps_its_staging_until_its_copies_complete() {
    let timeout = Duration::from_millis(200);
    let mut v = timed(timeout, false);
    let big = (5 << 20) + 7;
    let a = v.allocate(big as u64 + 64, DEV0).expect("allocate");
    let small = v.allocate(70_001, DEV0).expect("allocate");
    let gate = stalled(&mut v);
    let release = Release(&gate);
    let data = random_bytes(big);
    let w = a.write_async(64, data.clone()).expect("the streamed write returns with its copies queued");
    assert!(!w.is_done().expect("is_done"), "queued behind the wait");
    let other = random_bytes(70_001);
    match small.write(0, &other) {
        Err(e @ Error::Timeout(..)) => {
            assert!(
                e.to_string().contains("asynchronous transfer's copies through the staging buffer"),
                "{e}"
            )
        }
        other => panic!("a slot write over the streamed write's staging: expected Timeout, got {other:?}"),
    }
    match small.read_async(0, poisoned(4096)) {
        Err(e @ Error::Timeout(..)) => assert!(e.to_string().contains("staging"), "{e}"),
        other => panic!("an asynchronous slot read over it: expected Timeout, got {other:?}"),
    }
    drop(release);
    assert_eq!(w.wait().expect("the write completes once released"), data, "the source comes back");
    let mut out = poisoned(big);
    a.read(64, &mut out).expect("read");
    assert_bytes_eq(&out, &data, "the asynchronous streamed write, every byte from staging");
    small.write(0, &other).expect("the ring carries on");
    let mut out = poisoned(70_001);
    small.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &other, "the slot write after it");
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}

/// Asynchronous streamed writes back to back, a slot-sized one between them and one dropped
/// unwaited, larger than the staging buffer (its pieces reused while the write runs): each
/// waits for the last one's copies before reusing staging; every byte lands.
#[test]
fn asynchronous_streamed_writes_back_to_back_each_land_whole() {
    let mut v = ring_allocator();
    let sizes = [3 * CHUNK + 5, (1 << 20) + 1, 70_001, 5 * CHUNK + 4099];
    let buffers: Vec<_> = sizes.iter().map(|&n| v.allocate(n as u64 + 3, DEV0).expect("allocate")).collect();
    let data: Vec<_> = sizes.iter().map(|&n| random_bytes(n)).collect();
    let mut writes: Vec<_> = buffers
        .iter()
        .zip(&data)
        .map(|(b, d)| Some(b.write_async(3, d.clone()).expect("write_async")))
        .collect();
    // One dropped unwaited: its drop waits for it.
    drop(writes[1].take());
    for (k, w) in writes.into_iter().enumerate() {
        if let Some(w) = w {
            assert_eq!(w.wait().expect("wait"), data[k], "write {k}: the source comes back");
        }
    }
    for (k, b) in buffers.iter().enumerate() {
        let mut out = poisoned(sizes[k]);
        b.read(3, &mut out).expect("read");
        assert_bytes_eq(&out, &data[k], &format!("write {k} of {} bytes", sizes[k]));
    }
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}

/// Asynchronous streamed writes that fit in the staging buffer return behind a stalled queue
/// whatever their geometry (found by an outside attack): 48 MiB - 1 bytes through the 48 MiB
/// ring (pieces of ⌊len / 64⌋ bytes made 65 pieces for 64 places, and the last one waited for
/// the GPU), and an image level of 120 rows of 128 KiB (single-row batches used up the 32
/// command buffers, and the next one waited for the GPU). After the release every byte lands.
#[test]
fn asynchronous_streamed_writes_that_fit_in_staging_return_behind_a_stalled_queue() {
    let timeout = Duration::from_millis(200);
    let mut v = timed(timeout, false);
    let size = 3 * CHUNK - 1;
    let a = v.allocate(size as u64, DEV0).expect("allocate");
    let format = ImageFormat::Rgba32Float;
    let desc = ImageDesc::new(format, 8200, 120);
    let image = v.allocate_image(0, desc).expect("image");
    let level = desc.level_size(0) as usize;
    a.write(0, &random_bytes(size)).expect("old bytes, and the staging at its full size");
    let gate = stalled(&mut v);
    let release = Release(&gate);
    let data = random_bytes(size);
    let w = a.write_async(0, data.clone()).expect("48 MiB - 1 returns behind the stalled queue");
    drop(release);
    assert_eq!(w.wait().expect("wait"), data);
    let mut out = poisoned(size);
    a.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &data, "48 MiB - 1 through the 48 MiB ring");

    let gate = stalled(&mut v);
    let release = Release(&gate);
    let texels = common::texel_data(format, level);
    let w = image.write_level_async(0, texels.clone()).expect("rows of 128 KiB return behind the stall");
    drop(release);
    w.wait().expect("wait");
    let mut out = poisoned(level);
    image.read_level(0, &mut out).expect("read");
    assert_bytes_eq(&out, &texels, "120 rows of 128 KiB");
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}

/// Asynchronous reads return once every GPU copy is queued, their last pieces still on the way
/// into staging: those are copied into the read's memory at its wait, as they arrive, or first
/// by the next transfer that needs staging. Sizes that fit in the ring's slots (held whole) and
/// sizes beyond the 48 MiB staging buffer (streamed, then held), at an odd offset: a synchronous
/// write and a second asynchronous read right behind each (both reuse staging), one read
/// dropped unwaited, one leaked (its bytes land in the leaked memory when staging is next
/// needed, never anywhere else); every byte checked.
#[test]
fn asynchronous_reads_hold_their_last_pieces_until_waited_for() {
    let mut v = ring_allocator();
    let small = v.allocate(70_001, DEV0).expect("allocate");
    for size in [(1 << 20) + 1, 3 * CHUNK - 1, 3 * CHUNK + 1, 5 * CHUNK + 4099] {
        let a = v.allocate(size as u64 + 3, DEV0).expect("allocate");
        let b = v.allocate(size as u64 + 3, DEV0).expect("allocate");
        let (data_a, data_b) = (random_bytes(size), random_bytes(size));
        a.write(3, &data_a).expect("write");
        b.write(3, &data_b).expect("write");
        let first = a.read_async(3, poisoned(size)).expect("read_async");
        // Through the ring's slots, over the staging the read's last pieces are held in.
        let other = random_bytes(70_001);
        small.write(0, &other).expect("a slot write right behind the read");
        let second = b.read_async(3, poisoned(size).into_boxed_slice()).expect("a second streamed read");
        assert_bytes_eq(
            &first.wait().expect("wait"),
            &data_a,
            &format!("{size} B read, then staging reused"),
        );
        assert_bytes_eq(&second.wait().expect("wait"), &data_b, &format!("{size} B read, waited second"));
        let mut out = poisoned(70_001);
        small.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &other, "the slot write between the reads");

        drop(a.read_async(3, poisoned(size)).expect("read_async"));
        assert_eq!(v.transfer_stats().in_flight, 0, "the drop waited: {:?}", v.transfer_stats());
        let leaked = poisoned(size).into_boxed_slice();
        let at = leaked.as_ptr();
        std::mem::forget(b.read_async(3, leaked).expect("read_async"));
        let again = random_bytes(size);
        a.write(3, &again).expect("a streamed write after a leaked read");
        let mut out = poisoned(size);
        a.read(3, &mut out).expect("read");
        assert_bytes_eq(&out, &again, &format!("{size} B: staging after a leaked read"));
        assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
        // SAFETY: the leaked box's heap bytes are never freed (its transfer was forgotten); every
        // copy into them has completed (nothing is in flight).
        let landed = unsafe { std::slice::from_raw_parts(at, size) };
        assert_bytes_eq(
            landed,
            &data_b,
            &format!("{size} B: the leaked read's bytes, copied out when staging was reused"),
        );
    }
}

/// Asynchronous reads that fit in the staging buffer return behind a stalled queue, as writes
/// do (48 MiB - 1 bytes, an image level of 120 rows of 128 KiB, and one whose rows do not divide
/// into the slots); a slot transfer behind one
/// is refused with a typed `Timeout`, nothing overwritten. One whose wait times out keeps its
/// memory until its copies complete, and leaves nothing in flight after that. One larger than
/// staging (streamed: it must copy pieces out to go on) fails with a typed `Timeout` and holds
/// nothing. After the release every byte arrives.
#[test]
fn asynchronous_reads_that_fit_in_staging_return_behind_a_stalled_queue() {
    let timeout = Duration::from_millis(200);
    let mut v = timed(timeout, false);
    let size = 3 * CHUNK - 1;
    let a = v.allocate(size as u64, DEV0).expect("allocate");
    let small = v.allocate(70_001, DEV0).expect("allocate");
    let format = ImageFormat::Rgba32Float;
    let desc = ImageDesc::new(format, 8200, 120);
    let image = v.allocate_image(0, desc).expect("image");
    let level = desc.level_size(0) as usize;
    let data = random_bytes(size);
    a.write(0, &data).expect("write");
    let texels = common::texel_data(format, level);
    image.write_level(0, &texels).expect("write_level");

    let gate = stalled(&mut v);
    let release = Release(&gate);
    let r = a.read_async(0, poisoned(size)).expect("48 MiB - 1 returns behind the stalled queue");
    assert!(!r.is_done().expect("is_done"), "queued behind the wait");
    match small.write(0, &random_bytes(70_001)) {
        Err(e @ Error::Timeout(..)) => assert!(e.to_string().contains("staging"), "{e}"),
        other => panic!("a slot write over the read's held pieces: expected Timeout, got {other:?}"),
    }
    drop(release);
    assert_bytes_eq(&r.wait().expect("wait"), &data, "48 MiB - 1 read behind a stalled queue");

    let gate = stalled(&mut v);
    let release = Release(&gate);
    let r = image.read_level_async(0, poisoned(level)).expect("rows of 128 KiB return behind the stall");
    drop(release);
    assert_bytes_eq(&r.wait().expect("wait"), &texels, "120 rows of 128 KiB read behind a stall");

    // Just under 48 MiB in rows of 16,388 bytes: 1,023 rows fill a 16 MiB slot, so the 3,071
    // rows take 4 slot pieces for 3 slots though the bytes fit (found by an outside review: it
    // timed out inside the call). It streams instead, and returns.
    let odd = ImageDesc::new(ImageFormat::Rgba8Unorm, 4097, 3071);
    let odd_image = v.allocate_image(0, odd).expect("image");
    let odd_level = odd.level_size(0) as usize;
    assert!(odd_level < 3 * CHUNK, "{odd_level}");
    let odd_texels = common::texel_data(ImageFormat::Rgba8Unorm, odd_level);
    odd_image.write_level(0, &odd_texels).expect("write_level");
    let gate = stalled(&mut v);
    let release = Release(&gate);
    let r =
        odd_image.read_level_async(0, poisoned(odd_level)).expect("rows that do not divide into the slots");
    drop(release);
    assert_bytes_eq(&r.wait().expect("wait"), &odd_texels, "3,071 rows of 16,388 bytes read behind a stall");
    drop(odd_image);

    let gate = stalled(&mut v);
    let release = Release(&gate);
    let r = a.read_async(0, poisoned(size)).expect("read_async");
    match r.wait() {
        Err(Error::Timeout(t, what)) => assert_eq!((t, what), (timeout, "an asynchronous transfer")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(v.transfer_stats().in_flight >= 1, "{:?}", v.transfer_stats());
    drop(release);
    let mut left = v.transfer_stats().in_flight;
    for _ in 0..200 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        left = v.transfer_stats().in_flight;
    }
    assert_eq!(left, 0, "the timed-out read's memory went once its copies completed");
    let mut out = poisoned(size);
    a.read(0, &mut out).expect("the pipeline carries on");
    assert_bytes_eq(&out, &data, "a synchronous read after it");

    let big_size = 5 * CHUNK + 4099;
    let big = v.allocate(big_size as u64, DEV0).expect("allocate");
    let big_data = random_bytes(big_size);
    big.write(0, &big_data).expect("write");
    let gate = stalled(&mut v);
    let release = Release(&gate);
    match big.read_async(0, poisoned(big_size)) {
        Err(Error::Timeout(t, what)) => assert_eq!((t, what), (timeout, "a staging copy")),
        other => panic!("a streamed read behind the stall: expected Timeout, got {other:?}"),
    }
    drop(release);
    let r = big.read_async(0, poisoned(big_size)).expect("read_async after the release");
    assert_bytes_eq(&r.wait().expect("wait"), &big_data, "a streamed read after one that timed out");
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}

/// The wait of an asynchronous read never holds the context across a wait (found by an outside
/// review). Behind a stalled queue, one thread waits for a read's held pieces while another
/// takes the transfer statistics and only then releases the queue, as a thread whose own
/// transfer comes before what the queue waits for would. Before, the wait held the context's
/// lock: the statistics waited for the read's wait to time out (30 s), and the read failed.
#[test]
fn a_reads_wait_leaves_the_context_to_other_threads() {
    let mut v = timed(Duration::from_secs(30), false);
    let size = 3 * CHUNK - 1;
    let a = v.allocate(size as u64, DEV0).expect("allocate");
    let data = random_bytes(size);
    a.write(0, &data).expect("write");
    let gate = stalled(&mut v);
    let release = Release(&gate);
    let r = a.read_async(0, poisoned(size)).expect("returns behind the stalled queue");
    std::thread::scope(|s| {
        let waiter = s.spawn(move || r.wait());
        // Time for the waiter to reach its wait for the held pieces (the test holds without it).
        std::thread::sleep(Duration::from_millis(100));
        let stats = v.transfer_stats();
        assert!(stats.in_flight >= 1, "the read's pieces are in flight: {stats:?}");
        assert!(!waiter.is_finished(), "the read waits for the stalled queue");
        drop(release);
        let out = waiter.join().expect("the waiter").expect("the read completes once released");
        assert_bytes_eq(&out, &data, "48 MiB - 1 read, waited for on another thread");
    });
    assert_eq!(v.transfer_stats().in_flight, 0, "{:?}", v.transfer_stats());
}
