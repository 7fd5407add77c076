//! Issue 18, semaphores in flight: safe calls that used to reach invalid usage, a hang or a
//! deadlock. A semaphore dropped while a submission waits on it or will signal it; an allocator
//! dropped while a submission waits for a value nobody signals; binary semaphores signalled twice
//! or waited on with no signal; host and queue signals below pending ones. Every case runs with
//! the validation layer on, and any message fails it.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_bytes_eq, poisoned, require_gpu, Validated};
use lava_flow::{Error, MemoryLocation, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

fn invalid(result: lava_flow::Result<()>, what: &str, says: &str) {
    match result {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{what}: the error says why: {m}"),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

/// Timelines dropped while two chained submissions still wait on and signal them: the work
/// completes once the gate opens, nothing is destroyed under it (the layer reported
/// VUID-vkDestroySemaphore-semaphore-01137 before), and the deferred semaphores are destroyed
/// by the device's drop at the latest (the layer reports leaked objects there).
#[test]
fn semaphores_dropped_under_pending_submissions_live_until_the_work_is_done() {
    let mut v = Validated::new();
    let src = v.allocate(64 * 1024, DEV0).expect("src");
    let dst = v.allocate(64 * 1024, DEV0).expect("dst");
    dst.write(0, &poisoned(64 * 1024)).expect("poison");
    let chain = common::FillThenCopy::record(&v, &src, &dst, 0x5EED_F00D);
    let (fill, copy) = chain.submissions();
    let gate = v.timeline_semaphore(0).expect("gate");
    let middle = v.timeline_semaphore(0).expect("middle");
    let binary = v.binary_semaphore(0).expect("binary");
    let done = v.timeline_semaphore(0).expect("done");
    // (The binary semaphore's wait is not in the chain: Mesa's `vkQueueSubmit` blocks until a
    // binary signal it waits for has executed, which here needs the gate.)
    v.submit(0, &fill.wait(&gate, 1).signal(&middle, 1).signal_binary(&binary)).expect("fill");
    v.submit(0, &copy.wait(&middle, 1).signal(&done, 1)).expect("copy");
    drop(middle);
    drop(binary);
    // Another submission meanwhile reaps what completed, and must keep what did not.
    let other = v.timeline_semaphore(0).expect("other");
    v.submit(0, &Submission::new().signal(&other, 1)).expect("an unrelated submission");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(done.value().expect("value"), 0, "the chain still waits for the gate");
    gate.signal(1).expect("open the gate");
    done.wait(1, Duration::from_secs(10)).expect("the chain completes");
    let mut out = poisoned(64 * 1024);
    dst.read(0, &mut out).expect("read");
    let want: Vec<u8> = (0..16 * 1024).flat_map(|_| 0x5EED_F00Du32.to_le_bytes()).collect();
    assert_bytes_eq(&out, &want, "fill → dropped semaphores → copy");
    drop(chain);
}

/// A submission waits for a value nobody will ever signal (its semaphore was dropped): dropping
/// everything returns soon after the transfer timeout. The device then signals the dropped
/// timelines its queued work waits for, so that the work completes and every object is destroyed
/// (the layer reports leaked ones); before, the semaphore was destroyed under the wait and the
/// drop hung in `vkQueueWaitIdle` — and leaking the device instead made NVIDIA's driver hang at
/// process exit.
#[test]
fn dropping_everything_under_a_wait_nobody_signals_does_not_hang() {
    log::capture();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Validated::with_options(|o| o.transfer_timeout = Duration::from_millis(300));
        let never = v.timeline_semaphore(0).expect("never signalled");
        let done = v.timeline_semaphore(0).expect("done");
        let binary = v.binary_semaphore(0).expect("binary");
        let gate = v.timeline_semaphore(0).expect("gate");
        v.submit(
            0,
            &Submission::new().wait(&never, 1).wait(&gate, 4).signal(&done, 1).signal_binary(&binary),
        )
        .expect("submit");
        // A second submission waits for the first's signal and a higher value of the gate.
        let after = v.timeline_semaphore(0).expect("after");
        v.submit(0, &Submission::new().wait(&done, 1).wait(&gate, 9).signal(&after, 1)).expect("submit");
        drop(never);
        assert!(matches!(v.wait_idle(0), Err(Error::Timeout(..))), "wait_idle says the queue is stuck");
        let start = Instant::now();
        drop((done, binary, gate, after));
        drop(v);
        tx.send(start.elapsed()).expect("send");
    });
    let took = rx.recv_timeout(Duration::from_secs(60)).expect("dropping everything returned (no deadlock)");
    println!("dropping an allocator under a stuck submission took {took:?}");
    let logged = log::take();
    assert!(
        logged.iter().any(|m| m.contains("signalled from the host") && !m.contains("in vain")),
        "the device released the waits: {logged:?}"
    );
    assert!(!logged.iter().any(|m| m.contains("leaked")), "nothing leaked: {logged:?}");
}

/// What the library logged (warnings and errors), for the test that checks the device's drop.
mod log {
    use std::sync::Mutex;

    static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;

    impl ::log::Log for Capture {
        fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
            metadata.level() <= ::log::Level::Warn
        }
        fn log(&self, record: &::log::Record<'_>) {
            if self.enabled(record.metadata()) {
                LOGGED
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    /// Starts capturing (once per process).
    pub fn capture() {
        static CAPTURE: Capture = Capture;
        if ::log::set_logger(&CAPTURE).is_ok() {
            ::log::set_max_level(::log::LevelFilter::Warn);
        }
    }

    /// Everything captured so far.
    pub fn take() -> Vec<String> {
        std::mem::take(&mut *LOGGED.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// A binary semaphore holds one signal: a second signal before a wait consumed the first, and a
/// wait with no signal submitted (Mesa's `vkQueueSubmit` never returned), are refused; a refused
/// submission changes nothing; a wait and a signal of one semaphore in one submission consume
/// and then signal.
#[test]
fn binary_semaphores_refuse_a_second_signal_and_a_wait_with_none() {
    let mut v = Validated::new();
    let binary = v.binary_semaphore(0).expect("binary");
    let done = v.timeline_semaphore(0).expect("done");
    invalid(
        v.submit(0, &Submission::new().wait_binary(&binary).signal(&done, 1)),
        "a wait with no signal",
        "no signal submitted",
    );
    assert_eq!(done.value().expect("value"), 0);
    v.submit(0, &Submission::new().signal_binary(&binary)).expect("signal");
    invalid(v.submit(0, &Submission::new().signal_binary(&binary)), "a second signal", "signalled again");
    invalid(
        v.submit(0, &Submission::new().signal_binary(&binary).signal_binary(&binary)),
        "two signals in one submission",
        "signalled again",
    );
    // Consume and signal again in one submission, then consume.
    v.submit(0, &Submission::new().wait_binary(&binary).signal_binary(&binary)).expect("wait, then signal");
    v.submit(0, &Submission::new().wait_binary(&binary).signal(&done, 1)).expect("wait");
    invalid(
        v.submit(0, &Submission::new().wait_binary(&binary).signal(&done, 2)),
        "a second wait for one signal",
        "no signal submitted",
    );
    done.wait(1, Duration::from_secs(10)).expect("the waits completed");
    // A refused submission leaves the state as it was: the semaphore is unsignalled still.
    v.submit(0, &Submission::new().signal_binary(&binary)).expect("signal after the refusals");
    v.submit(0, &Submission::new().wait_binary(&binary).signal(&done, 2)).expect("and its wait");
    done.wait(2, Duration::from_secs(10)).expect("done");
}

/// Timeline signals must increase in the order they are made: a queue signal at or below a
/// pending one is refused (it could run below the counter), a host signal at or above a pending
/// one is refused (Vulkan: VUID-VkSemaphoreSignalInfo-value-03259), and a host signal below it
/// is fine.
#[test]
fn timeline_signals_below_or_above_pending_ones_are_refused() {
    let mut v = Validated::new();
    let gate = v.timeline_semaphore(0).expect("gate");
    let t = v.timeline_semaphore(0).expect("t");
    v.submit(0, &Submission::new().wait(&gate, 1).signal(&t, 5)).expect("a pending signal of 5");
    invalid(v.submit(0, &Submission::new().signal(&t, 3)), "a queue signal below", "still pending");
    invalid(v.submit(0, &Submission::new().signal(&t, 5)), "a queue signal equal", "still pending");
    invalid(t.signal(6), "a host signal above", "still pending");
    invalid(t.signal(5), "a host signal equal", "still pending");
    invalid(
        v.submit(0, &Submission::new().wait(&gate, 1).signal(&t, 7).signal(&t, 7)),
        "one value twice in a submission",
        "still pending",
    );
    t.signal(2).expect("a host signal below the pending one");
    assert_eq!(t.value().expect("value"), 2);
    v.submit(0, &Submission::new().wait(&gate, 1).signal(&t, 8))
        .expect("a queue signal above the pending one");
    gate.signal(1).expect("open the gate");
    t.wait(8, Duration::from_secs(10)).expect("both signals ran");
    t.signal(9).expect("a host signal once nothing is pending");
    invalid(v.submit(0, &Submission::new().signal(&t, 9)), "a queue signal at the counter", "must increase");
}

/// Where the driver exports binary semaphores (the GPU tier), an fd handed out ends lava-flow's
/// checks: the checked forms refuse, the unsafe unchecked ones work when the rule is kept.
#[test]
fn binary_semaphores_whose_fd_left_are_unchecked_only() {
    let mut v = Validated::new();
    let binary = v.binary_semaphore(0).expect("binary");
    let done = v.timeline_semaphore(0).expect("done");
    // The handle taken out of its export (`into_parts`) leaves lava-flow, as `export_fd` does.
    let handle = match binary.export().map(lava_flow::Exported::into_parts) {
        Ok(parts) => parts,
        Err(e) if !require_gpu() => {
            println!("binary_semaphores_whose_fd_left_are_unchecked_only: skipped, no binary export: {e}");
            // Still checked: the failed export did not end the checks.
            v.submit(0, &Submission::new().signal_binary(&binary)).expect("signal");
            invalid(v.submit(0, &Submission::new().signal_binary(&binary)), "second", "signalled again");
            v.submit(0, &Submission::new().wait_binary(&binary).signal(&done, 1)).expect("wait");
            done.wait(1, Duration::from_secs(10)).expect("done");
            return;
        }
        Err(e) => panic!("the GPU tier exports binary semaphores: {e}"),
    };
    drop(handle);
    invalid(v.submit(0, &Submission::new().signal_binary(&binary)), "checked signal", "has left");
    // SAFETY: nothing else signals or waits on the payload: one signal, then one wait.
    let signal = unsafe { Submission::new().signal_binary_unchecked(&binary) };
    v.submit(0, &signal).expect("unchecked signal");
    // SAFETY: the signal above was submitted first and nothing else consumes it.
    let wait = unsafe { Submission::new().wait_binary_unchecked(&binary) }.signal(&done, 1);
    v.submit(0, &wait).expect("unchecked wait");
    done.wait(1, Duration::from_secs(10)).expect("done");
    // An export kept within lava-flow (imported here) stays checked.
    let fresh = v.binary_semaphore(0).expect("binary");
    let mut other = Validated::new();
    let imported = other.import_binary_semaphore(0, fresh.export().expect("export")).expect("import");
    v.submit(0, &Submission::new().signal_binary(&fresh)).expect("signal through the original");
    invalid(
        other.submit(0, &Submission::new().signal_binary(&imported)),
        "a second signal through the import",
        "signalled again",
    );
    other
        .submit(0, &Submission::new().wait_binary(&imported).signal(&done, 2))
        .expect_err("another device's timeline is refused (the import's own device waits)");
    let done2 = other.timeline_semaphore(0).expect("done on the other device");
    other
        .submit(0, &Submission::new().wait_binary(&imported).signal(&done2, 1))
        .expect("wait through the import");
    done2.wait(1, Duration::from_secs(10)).expect("the import's wait completes");
}
