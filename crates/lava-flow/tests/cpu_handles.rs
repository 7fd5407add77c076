//! CPU tier: the exported handle as the one seam between APIs (issue 13), and the fd and memory
//! invariants behind it (issue 18). Vulkan on lavapipe with the validation layer on; OpenGL on
//! llvmpipe. Every data check is random bytes into a poisoned destination, both ways.
//!
//! Unix only: these tests count the process's fds (`/proc/self/fd`) and race fd numbers.
#![cfg(unix)]

mod common;

use common::{assert_bytes_eq, open_fds, poisoned, random_bytes, Side, Validated};
use lava_flow::{Error, ExportedMemory, MemoryAllocator, MemoryDescriptor, MemoryLocation};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

/// One test at a time: some count this process's fds, which the others open and close.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Memory that arrived through an import goes on: exported again (same descriptor, same memory
/// id) and imported by a third device, which sees the first one's bytes both ways.
#[test]
fn imported_memory_is_exported_again_and_passed_on() {
    let _serial = serial();
    let mut producer = Validated::new();
    let mut relay = Validated::new();
    let mut consumer = Validated::new();
    for (size, dedicated) in [(70_000u64, false), (3 << 20, true)] {
        let options = lava_flow::AllocationOptions::default().dedicated(dedicated);
        let original = producer.allocate_with(size, DEV0, options).expect("allocate");
        let relayed = relay.import_memory(0, original.export().expect("export")).expect("relay import");
        let again = relayed.export().expect("an imported buffer exports");
        assert_eq!(again.descriptor(), &original.descriptor(), "the same memory, described the same");
        let last = consumer.import_memory(0, again).expect("consumer import");
        let what = format!("{size} bytes, dedicated {dedicated}: producer ↔ consumer through a relay");
        common::check_both_ways(
            size as usize,
            &what,
            Side::buffer("producer", &original),
            Side::buffer("consumer", &last),
        );
    }
}

/// A dedicated descriptor must describe its allocation's one buffer: offset 0 and that buffer's
/// own memory size (issue 18: a tampered flag reached the driver and the layer reported
/// VUID-VkMemoryDedicatedAllocateInfo-buffer-01435). `Validated` fails on any layer message.
#[test]
fn tampered_dedicated_descriptors_are_refused_before_the_driver() {
    let _serial = serial();
    let mut v = Validated::new();
    let mut other = Validated::new();
    let _first = v.allocate(4096, DEV0).expect("first");
    let second = v.allocate(4096, DEV0).expect("second, at a non-zero offset");
    assert_ne!(second.offset(), 0);
    drop(second.export_fd().expect("the block's first export, which it keeps"));
    // A first import on the other device: drivers open fds of their own on first use (NVIDIA's
    // did, 9 of them), which must not be counted as leaks.
    drop(other.import_memory(0, second.export().expect("export")).expect("a valid import"));
    let before = open_fds();
    let mut tamper = |adjust: &dyn Fn(&mut MemoryDescriptor)| {
        let (handle, mut desc) = second.export().expect("export").into_parts();
        adjust(&mut desc);
        other.import_memory(0, ExportedMemory::from_parts(handle, desc))
    };
    let at_an_offset = tamper(&|d| d.dedicated = true);
    assert!(
        matches!(at_an_offset, Err(Error::InvalidArgument(ref m)) if m.contains("offset 0")),
        "{at_an_offset:?}"
    );
    let not_its_size = tamper(&|d| {
        d.dedicated = true;
        d.offset = 0;
    });
    assert!(
        matches!(not_its_size, Err(Error::InvalidArgument(ref m)) if m.contains("is not the memory of")),
        "{not_its_size:?}"
    );
    assert_eq!(open_fds(), before, "refused imports close their fds");
}

/// Issue 18, bug 1: lavapipe closes the fd of a refused import; another thread exporting the
/// same block at once got that number for the same file, and the old same-file check closed it
/// (that thread's drop then aborted the process). Without the validation layer: the refusals
/// are made on purpose with an allocation size the memory does not have, which the layer would
/// (rightly) report.
#[test]
fn refused_imports_never_close_another_threads_fd() {
    let _serial = serial();
    let mut allocator = MemoryAllocator::new().expect("Vulkan (lavapipe)");
    let buffer = allocator.allocate(4096, DEV0).expect("allocate");
    drop(buffer.export_fd().expect("the block's first export, which it keeps"));
    let before = open_fds();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let exporter = s.spawn(|| {
            let mut exports = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let fd = buffer.export_fd().expect("export");
                std::hint::black_box(&fd);
                drop(fd); // aborts the process if the fd was closed for us
                exports += 1;
            }
            exports
        });
        let mut refused = 0;
        let mut importer = MemoryAllocator::new().expect("Vulkan (lavapipe)");
        for _ in 0..300 {
            let (handle, mut desc) = buffer.export().expect("export").into_parts();
            desc.allocation_size += 1 << 20;
            desc.memory_id = lava_flow::MemoryId::new_unique();
            if importer.import_memory(0, ExportedMemory::from_parts(handle, desc)).is_err() {
                refused += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let exports = exporter.join().expect("the exporting thread");
        println!("{refused} refused imports while the other thread made {exports} exports");
        assert_eq!(refused, 300, "lavapipe refuses an allocation size the memory does not have");
    });
    assert_eq!(open_fds(), before, "no fd leaked or closed twice");
}

/// Issue 18, bug 2: staging memory is freed and uncharged in one place. A growing series of
/// staged writes under a heap budget fits (it reached a false `OutOfMemory`), and once
/// everything is dropped and trimmed lava-flow holds only the current staging ring (three slots
/// of up to 16 MiB: the budget fits the largest buffer, the largest ring, a test block and
/// 2 MiB, where charges that were never returned would pass it by the fifth write).
#[test]
fn staging_memory_is_uncharged_when_it_is_replaced() {
    let _serial = serial();
    let budget = (16 << 20) + (48 << 20) + common::TEST_BLOCK_SIZE + (2 << 20);
    let mut v = Validated::with_options(|o| o.heap_budget = Some(budget));
    let heap = |v: &Validated| {
        let usage = v.heap_usage(0).expect("heap usage");
        usage.iter().map(|h| h.lava_flow).sum::<u64>()
    };
    for mib in 1..=16u64 {
        let size = mib << 20;
        let buffer = v.allocate(size, DEV0).unwrap_or_else(|e| panic!("{mib} MiB under the budget: {e}"));
        let data = random_bytes(size as usize);
        buffer.write(0, &data).unwrap_or_else(|e| panic!("write {mib} MiB: {e}"));
        let mut out = poisoned(size as usize);
        buffer.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &data, &format!("{mib} MiB"));
    }
    v.trim();
    let held = heap(&v);
    assert!(
        held <= (48 << 20) + (1 << 20),
        "after trim lava-flow holds {held} bytes: more than the staging ring"
    );
}

#[cfg(feature = "opengl")]
mod opengl {
    use super::*;
    use lava_flow::opengl::GlContext;

    fn context(v: &Validated) -> GlContext {
        GlContext::headless(v.device(0).expect("device 0")).expect("a headless GL context on device 0")
    }

    /// GL imports the exported handle itself (no Buffer in its hands): both ways, at an offset
    /// and dedicated; the GL view holds the memory after the Vulkan buffer is gone.
    #[test]
    fn gl_imports_exported_handles_and_holds_the_memory() {
        let _serial = serial();
        let mut v = Validated::new();
        let ctx = context(&v);
        for dedicated in [false, true] {
            let options = lava_flow::AllocationOptions::default().dedicated(dedicated);
            let _before = v.allocate(4096, DEV0).expect("a buffer before, so the next has an offset");
            let buffer = v.allocate_with(100_003, DEV0, options).expect("allocate");
            let view = ctx.import_memory(buffer.export().expect("export")).expect("GL import of the handle");
            let gl = Side {
                name: "GL",
                write: Box::new(|d| view.write(0, d).expect("GL write")),
                read: Box::new(|o| view.read(0, o).expect("GL read")),
            };
            common::check_both_ways(
                100_003,
                &format!("dedicated {dedicated}"),
                Side::buffer("Vulkan", &buffer),
                gl,
            );
            // Outliving the Vulkan buffer: Vulkan writes, GL imports (its first access to these
            // bytes: GL sees another API's later writes only after a semaphore wait), Vulkan's
            // buffer goes, GL reads.
            let data = random_bytes(100_003);
            let fresh = v.allocate_with(100_003, DEV0, options).expect("allocate");
            fresh.write(0, &data).expect("Vulkan write");
            v.wait_idle(0).expect("idle");
            let held = ctx.import_memory(fresh.export().expect("export")).expect("GL import");
            drop(fresh);
            v.trim();
            let mut out = poisoned(100_003);
            held.read(0, &mut out).expect("GL read after the Vulkan buffer is gone");
            assert_bytes_eq(&out, &data, "GL's import outlives the Vulkan buffer");
        }
    }

    /// Memory imported into Vulkan goes on to GL.
    #[test]
    fn gl_imports_memory_that_vulkan_imported() {
        let _serial = serial();
        let mut producer = Validated::new();
        let mut relay = Validated::new();
        let ctx = context(&relay);
        let original = producer.allocate(65_536, DEV0).expect("allocate");
        let relayed = relay.import_memory(0, original.export().expect("export")).expect("relay");
        let view = ctx.import_buffer(&relayed).expect("GL import of an imported buffer");
        let gl = Side {
            name: "GL",
            write: Box::new(|d| view.write(0, d).expect("GL write")),
            read: Box::new(|o| view.read(0, o).expect("GL read")),
        };
        common::check_both_ways(
            65_536,
            "producer ↔ GL through an import",
            Side::buffer("producer", &original),
            gl,
        );
    }

    /// A descriptor that disagrees with the import of the same memory already held is refused,
    /// and the refused fd is closed.
    #[test]
    fn descriptors_that_disagree_with_a_held_import_are_refused() {
        let _serial = serial();
        let mut v = Validated::new();
        let ctx = context(&v);
        let buffer = v.allocate(4096, DEV0).expect("allocate");
        let _held = ctx.import_buffer(&buffer).expect("first import");
        let before = open_fds();
        let (handle, mut desc) = buffer.export().expect("export").into_parts();
        desc.allocation_size *= 2;
        let refused = ctx.import_memory(ExportedMemory::from_parts(handle, desc));
        assert!(
            matches!(refused, Err(Error::InvalidArgument(ref m)) if m.contains("is imported here as")),
            "{refused:?}"
        );
        assert_eq!(open_fds(), before, "the fd of the refused import is closed");
    }

    /// A timeline by its exported handle orders GL after Vulkan and Vulkan after GL. Lavapipe
    /// cannot export timelines (the test says so and skips on the CPU tier); NVIDIA can.
    #[test]
    fn gl_orders_work_with_an_exported_timeline() {
        let _serial = serial();
        let mut v = Validated::new();
        let ctx = context(&v);
        let timeline = v.timeline_semaphore(0).expect("timeline");
        let test = "GL exported timeline";
        let Some(exported) = common::or_skip(timeline.export(), test, "exportable timeline semaphores")
        else {
            return;
        };
        let Some(sync) =
            common::or_skip(ctx.import_exported_semaphore(exported), test, "GL timeline imports")
        else {
            return;
        };
        assert!(sync.is_gpu_path());
        let buffer = v.allocate(65_536, DEV0).expect("allocate");
        let view = ctx.import_memory(buffer.export().expect("export")).expect("GL import");
        buffer.write(0, &poisoned(65_536)).expect("poison");
        let data = random_bytes(65_536);
        v.submit(0, &lava_flow::Submission::new().signal(&timeline, 1)).expect("Vulkan signals 1");
        sync.wait(1, &[&view], &[]).expect("GL waits for 1");
        view.write(0, &data).expect("GL write");
        sync.signal(2, &[&view], &[]).expect("GL signals 2");
        assert!(
            matches!(sync.signal(2, &[&view], &[]), Err(Error::InvalidArgument(_))),
            "values signalled through the import must increase"
        );
        timeline.wait(2, std::time::Duration::from_secs(10)).expect("Vulkan sees GL's 2");
        let mut out = poisoned(65_536);
        buffer.read(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &data, "GL → Vulkan ordered by the exported timeline");
        v.wait_idle(0).expect("idle");
    }
}
