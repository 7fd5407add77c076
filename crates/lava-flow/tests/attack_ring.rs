//! An outside attack on `lava_flow::Ring` (CPU tier, lavapipe + llvmpipe, validation on): cursors
//! dropped and taken again mid-ring, frame numbers at the end of `u64`, steps of another ring,
//! bad sizes, and file descriptors over repeated rings and imports.

mod common;

use std::time::Duration;

use common::ring::VkProducer;
use common::{assert_bytes_eq, Validated};
use lava_flow::ring::{End, RingError, RingSchedule};
use lava_flow::{Error, MemoryLocation, Ring, RingOptions, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };
const HOST0: MemoryLocation = MemoryLocation::HostVisible { device_id: 0 };
const LONG: Duration = Duration::from_secs(30);

/// One test at a time: the fd count is process-wide, and the rings queue work that waits for
/// each other's values on one device.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A program whose producer cursor goes away after it filled the ring (a producer thread that
/// ends, a loop that is restarted) takes a new one and writes its next content into the step's
/// slot. The new cursor must carry on from frame 2 — a step that waits for the release of
/// frame 0 — not start again at frame 0, whose step waits for nothing: that would overwrite
/// slot 0 before the consumer read it. The consumer reads host-visible slots on the host and
/// checks every byte of every frame.
#[test]
fn a_producer_taken_again_does_not_overwrite_unreleased_frames() {
    let _serial = serial();
    let mut v = Validated::new();
    let slot_size = 4096;
    let (slots, batch, frames) = (2u32, 2u32, 4u64);
    let ring =
        Ring::new_buffers(&mut v, HOST0, slot_size, RingOptions::new(slots).batch(batch).frames(frames))
            .expect("ring");
    let producer = VkProducer::new(&mut v, &ring, frames as usize, slot_size);
    let mut content = 0;
    {
        let mut cursor = ring.producer().expect("producer");
        for _ in 0..slots {
            let step = cursor.next_frame().expect("step");
            producer.submit(&v, content, ring.submission(&step).expect("the ring's step"));
            content += 1;
        }
    }
    ring.written().wait(2, LONG).expect("the first batch written");
    let mut cursor = ring.producer().expect("the producer end is free again");
    assert_eq!(cursor.position(), 2, "a new cursor carries on after the steps already handed out");
    // The program's next content goes where the step says, ordered as the step says.
    let step = cursor.next_frame().expect("step");
    assert_eq!(step.slot, content % slots as usize, "the slot of the content");
    producer.submit(&v, content, ring.submission(&step).expect("the ring's step"));
    content += 1;
    let mut consumer = ring.consumer().expect("consumer");
    let mut got = vec![0u8; slot_size as usize];
    for f in 0..frames as usize {
        let step = consumer.next_frame().expect("consumer step");
        if let Some(value) = step.wait {
            ring.written().wait(value, LONG).expect("consumer wait");
        }
        ring.buffers()[step.slot].read(0, &mut got).expect("read the slot");
        assert_bytes_eq(&got, &producer.data[f], &format!("frame {f} in slot {}", step.slot));
        if let Some(value) = step.signal {
            ring.released().signal(value).expect("consumer signal");
        }
        if f == 1 {
            // The last frame, once the first batch is released.
            let step = cursor.next_frame().expect("step");
            producer.submit(&v, content, ring.submission(&step).expect("the ring's step"));
        }
    }
    ring.released().wait(frames, LONG).expect("every frame released");
    v.wait_idle(0).expect("idle");
}

/// The consumer end too: a consumer cursor taken again after its first batch carries on.
#[test]
fn a_consumer_taken_again_carries_on() {
    let _serial = serial();
    let mut v = Validated::new();
    let ring = Ring::new_buffers(&mut v, HOST0, 256, RingOptions::new(3).batch(2).frames(7)).expect("ring");
    let mut seen = Vec::new();
    for _round in 0..4 {
        let mut consumer = ring.consumer().expect("consumer");
        if let Ok(step) = consumer.next_frame() {
            seen.push(step.frame);
        }
        if let Ok(step) = consumer.next_frame() {
            seen.push(step.frame);
        }
    }
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6], "every frame handed out once, in order");
    let mut consumer = ring.consumer().expect("consumer");
    assert!(matches!(
        consumer.next_frame(),
        Err(Error::Ring(RingError::Finished { frames: 7, end: End::Consumer }))
    ));
}

/// Frame numbers at the end of `u64`: the schedule answers with steps or typed errors, never an
/// arithmetic overflow (a panic in debug builds, wrapped values in release builds).
#[test]
fn frames_at_the_end_of_u64_are_typed_errors_not_overflows() {
    for (slots, batch) in [(1, 1), (4, 3), (MAX, MAX), (7, 2)] {
        let endless = RingSchedule::new(slots, batch).expect("shape");
        for frame in [u64::MAX, u64::MAX - 1, u64::MAX - u64::from(batch)] {
            for end in [End::Producer, End::Consumer] {
                match endless.step(end, frame) {
                    Ok(step) => {
                        // A step's values are timeline values: they only grow, and the last
                        // one a timeline can reach is u64::MAX.
                        assert!(step.signal.is_none_or(|v| v == frame + 1), "{step:?}");
                        assert!(step.wait.is_none_or(|v| v > frame.saturating_sub(u64::from(slots))));
                    }
                    Err(RingError::Finished { .. }) => {}
                    Err(e) => panic!("{slots}/{batch}, frame {frame}: {e}"),
                }
            }
        }
        // A ring of u64::MAX frames ends its last batch at its last frame.
        let long = endless.with_frames(u64::MAX).expect("length");
        let last = long.consumer(u64::MAX - 1).expect("the last frame");
        assert_eq!(last.signal, Some(u64::MAX), "{slots}/{batch}");
        assert_eq!(long.producer(u64::MAX - 1).expect("the last frame").signal, Some(u64::MAX));
        assert!(matches!(long.consumer(u64::MAX), Err(RingError::Finished { .. })));
    }
}

const MAX: u32 = lava_flow::ring::MAX_SLOTS;

/// A step handed to a ring it does not belong to is refused, also where the other ring has as
/// many slots (its values belong to another pair of timelines).
#[test]
fn a_step_of_another_ring_of_as_many_slots_is_refused() {
    let _serial = serial();
    let mut v = Validated::new();
    let mine = Ring::new_buffers(&mut v, DEV0, 256, RingOptions::new(2)).expect("ring");
    let theirs = Ring::new_buffers(&mut v, DEV0, 256, RingOptions::new(2).batch(2)).expect("ring");
    let other = Validated::new();
    let imported = mine.import_vulkan(&other, 0).expect("import");
    // Frame 1 of the other ring's producer: it signals `written = 2` of *that* ring.
    let mut cursor = theirs.producer().expect("producer");
    let step = {
        cursor.next_frame().expect("frame 0");
        cursor.next_frame().expect("frame 1")
    };
    let e = imported.submit(&step, Submission::new()).expect_err("a step of another ring");
    imported.wait_idle().expect("idle");
    assert!(matches!(e, Error::Ring(RingError::OtherRing { frame: 1, .. })), "{e}");
    match mine.submission(&step) {
        Err(e) => assert!(matches!(e, Error::Ring(RingError::OtherRing { .. })), "{e}"),
        Ok(_) => panic!("the ring's own submission took a step of another ring"),
    }
    // A step computed from the schedule alone belongs to no ring and passes.
    let computed = mine.schedule().producer(0).expect("frame 0");
    assert!(mine.submission(&computed).is_ok());
}

/// Slots of no bytes, and of more bytes than any device has, are typed errors; a failed ring
/// leaves nothing allocated behind.
#[test]
fn slot_sizes_of_zero_and_of_everything_are_typed_errors() {
    let _serial = serial();
    let mut v = Validated::new();
    let before = v.stats();
    for size in [0, u64::MAX, u64::MAX / 4, 1 << 50] {
        match Ring::new_buffers(&mut v, DEV0, size, RingOptions::new(4)) {
            Err(Error::Ring(e)) => panic!("{size} bytes: a shape error for a size: {e}"),
            Err(e) => println!("{size}-byte slots: {e}"),
            Ok(_) => panic!("a ring of {size}-byte slots"),
        }
    }
    let after = v.stats();
    assert_eq!(after.buffers, before.buffers, "no slot of a failed ring stays allocated");
    drop(v);
    // A budget that holds two of four 12 MiB slots (dedicated allocations, above the test block
    // size's threshold): the third fails, and the first two are freed again.
    let slot = 12u64 << 20;
    let mut v = Validated::with_options(|o| o.heap_budget = Some(30 << 20));
    match Ring::new_buffers(&mut v, DEV0, slot, RingOptions::new(4)) {
        Err(Error::OutOfMemory { .. }) => {}
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let s = v.stats();
    assert_eq!((s.buffers, s.dedicated_allocations, s.dedicated_bytes), (0, 0, 0), "{s:?}");
    let ring = Ring::new_buffers(&mut v, DEV0, slot, RingOptions::new(2)).expect("two slots fit");
    assert_eq!(ring.buffers().len(), 2);
}

/// Rings made, imported into a second Vulkan device or into OpenGL, and dropped, many times:
/// every exported fd is closed again. Each importer is counted on its own, so a leak names it
/// (on NVIDIA an exported handle is itself a `/dev/nvidia*` fd, so none is left out here).
#[test]
fn rings_and_their_imports_leave_no_fd_behind() {
    let _serial = serial();
    let mut v = Validated::new();
    let other = Validated::new();
    let into_vulkan = |v: &mut Validated| {
        let ring = Ring::new_buffers(v, DEV0, 4096, RingOptions::new(4).batch(2)).expect("ring");
        let theirs = ring.import_vulkan(&other, 0).expect("import into the second device");
        drop(theirs);
        drop(ring);
    };
    check_rounds("a second Vulkan device", &mut v, into_vulkan);
    #[cfg(feature = "opengl")]
    {
        let ctx = lava_flow::opengl::GlContext::headless(v.device(0).expect("device 0")).expect("GL context");
        let into_gl = |v: &mut Validated| {
            let ring = Ring::new_buffers(v, DEV0, 4096, RingOptions::new(4).batch(2)).expect("ring");
            let gl = ring.import_gl(&ctx).expect("import into GL");
            ctx.finish().expect("GL finish");
            drop(gl);
            drop(ring);
            // Memory objects dropped under queued GL work go once it completed (ADR 0014).
            assert_eq!(ctx.reclaim().expect("reclaim"), 0, "nothing left to delete after glFinish");
        };
        check_rounds("OpenGL", &mut v, into_gl);
    }
}

/// Ten rounds of `round` after a first (which may open what drivers keep for the process):
/// the same fds open after them as before.
fn check_rounds(what: &str, v: &mut Validated, mut round: impl FnMut(&mut Validated)) {
    round(v);
    let targets = common::fd_targets();
    for _ in 0..10 {
        round(v);
    }
    common::assert_fds_back(&targets, &format!("10 rings imported into {what}"));
}

/// Semaphores dropped on a device that never submitted are destroyed at once: they were kept
/// until the device's drop (the first submission is number 1, and "used by submission 0 or
/// later" held while nothing had completed), each with a driver fd on NVIDIA — 3 fds per ring
/// imported into a second device there.
#[test]
fn semaphores_of_a_device_that_never_submitted_are_destroyed_when_dropped() {
    let _serial = serial();
    let mut v = Validated::new();
    let other = Validated::new();
    for _ in 0..5 {
        let ring = Ring::new_buffers(&mut v, DEV0, 4096, RingOptions::new(4).batch(2)).expect("ring");
        drop(ring.import_vulkan(&other, 0).expect("import into the second device"));
        drop(ring);
        drop(v.timeline_semaphore(0).expect("a timeline"));
    }
    assert_eq!(other.stats().retired_semaphores, 0, "the second device's imported and own timelines");
    assert_eq!(v.stats().retired_semaphores, 0, "the ring's timelines and the loose one");
}
