//! CPU tier: allocate/export/free cycles and refused imports leave no fd, buffer or block
//! behind; exhausting a heap budget is a typed error that loses nothing. The tests of this binary
//! count the process's fds, so they take turns (`FD_COUNT`).
//!
//! Unix only: fds are counted in `/proc/self/fd`.
#![cfg(unix)]

mod common;

use std::sync::Mutex;

use common::{assert_bytes_eq, open_fds, poisoned, random_bytes, Validated};
use lava_flow::{AllocationOptions, Error, ExportedMemory, ExternalHandle, MemoryLocation, Uuid};

/// Held by every test here: no other test opens or closes fds while one counts.
static FD_COUNT: Mutex<()> = Mutex::new(());

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

#[test]
fn ten_thousand_allocate_export_free_cycles_leak_nothing() {
    let _turn = FD_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = Validated::new();
    // Warm up: the device and its staging context exist from here on.
    drop(v.allocate(4096, DEV0).expect("warm-up"));
    v.trim();
    let fds = open_fds();
    let stats = v.stats();
    let heaps = v.heap_usage(0).expect("heap usage");
    for i in 0..10_000u64 {
        let size = 1 + (i * 7919) % 65_536;
        let options = AllocationOptions::default().dedicated(i % 10 == 0);
        let b = v.allocate_with(size, DEV0, options).expect("allocate");
        let fd = b.export_fd().expect("export");
        drop(fd);
        if i % 1000 == 0 {
            let (handle, _) = b.export().expect("export").into_parts();
            drop(handle);
        }
    }
    v.trim();
    assert_eq!(open_fds(), fds, "every exported fd was closed");
    assert_eq!(v.stats(), stats, "buffers, blocks and bytes are back to the baseline");
    let after = v.heap_usage(0).expect("heap usage");
    for (i, (a, b)) in heaps.iter().zip(&after).enumerate() {
        assert_eq!(a.lava_flow, b.lava_flow, "heap {i}: lava-flow's memory back to the baseline");
        // The driver's own count (VK_EXT_memory_budget), where it has one.
        if let (Some(x), Some(y)) = (a.driver_usage, b.driver_usage) {
            println!("heap {i}: driver usage {x} before, {y} after");
            assert!(y <= x + (4 << 20), "heap {i}: the driver's usage back to the baseline: {x} then {y}");
        }
    }
}

#[test]
fn refused_imports_close_their_fds() {
    let _turn = FD_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = Validated::new();
    let b = v.allocate(1000, DEV0).expect("allocate");
    // The block keeps the fd of its first export (later exports duplicate it): make it now.
    drop(b.export_fd().expect("export"));
    let fds = open_fds();
    let stats = v.stats();

    // Memory of another device (a different UUID) is refused, and its fd is closed.
    let (handle, mut desc) = b.export().expect("export").into_parts();
    desc.device_uuid = Uuid([0xEE; 16]);
    match v.import_memory(0, ExportedMemory::from_parts(handle, desc)) {
        Err(e @ Error::DeviceMismatch { .. }) => assert!(e.to_string().contains("eeeeeeee"), "{e}"),
        other => panic!("expected DeviceMismatch, got {other:?}"),
    }
    // Descriptors that do not fit their allocation are refused before any Vulkan call.
    let (handle, mut desc) = b.export().expect("export").into_parts();
    desc.offset = desc.allocation_size;
    assert!(matches!(
        v.import_memory(0, ExportedMemory::from_parts(handle, desc)),
        Err(Error::InvalidArgument(_))
    ));
    let (handle, mut desc) = b.export().expect("export").into_parts();
    desc.memory_type_index = 31;
    assert!(matches!(
        v.import_memory(0, ExportedMemory::from_parts(handle, desc)),
        Err(Error::InvalidArgument(_))
    ));
    let (handle, mut desc) = b.export().expect("export").into_parts();
    desc.size = 0;
    assert!(matches!(
        v.import_memory(0, ExportedMemory::from_parts(handle, desc)),
        Err(Error::InvalidArgument(_))
    ));
    // An fd that is not GPU memory reaches the driver, which refuses it; the fd is closed.
    let not_memory: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").expect("/dev/null").into();
    match v.import_memory(0, ExportedMemory::from_parts(ExternalHandle::OpaqueFd(not_memory), b.descriptor()))
    {
        Err(e @ Error::Ffi { .. }) => {
            assert!(e.to_string().starts_with("Vulkan vkAllocateMemory failed: VK_"), "{e}")
        }
        other => panic!("expected the driver to refuse /dev/null, got {other:?}"),
    }
    // The layer reports the driver's refusal; that message, and only that, is expected here.
    let messages = v.validation_log().expect("validation is on").take();
    assert!(messages.iter().all(|m| m.contains("VK_ERROR_INVALID_EXTERNAL_HANDLE")), "{messages:?}");

    assert_eq!(open_fds(), fds, "every refused import closed its fd");
    assert_eq!(v.stats(), stats, "no buffer or allocation is left from the refused imports");
}

/// Exhaustion, on any machine: a heap budget of 40 MiB is filled with 1 MiB buffers of random
/// data until allocation fails; the error is typed and names the heap and the budget; every
/// buffer allocated before still reads back; freeing half makes room for as many again.
#[test]
fn exhausting_a_heap_budget_is_typed_keeps_data_and_recovers() {
    let _turn = FD_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let budget = 40u64 << 20;
    let mut v = Validated::with_options(|o| o.heap_budget = Some(budget));
    let heaps = v.device(0).expect("device 0").heaps.len();
    let (mut kept, mut data) = (Vec::new(), Vec::new());
    let error = loop {
        match v.allocate(1 << 20, DEV0) {
            Ok(b) => {
                let d = random_bytes(1 << 20);
                b.write(0, &d).expect("write");
                kept.push(b);
                data.push(d);
            }
            Err(e) => break e,
        }
        assert!(kept.len() < 64, "a 40 MiB budget holds fewer than 64 buffers of 1 MiB");
    };
    match &error {
        Error::OutOfMemory { heap_index, device_id: 0, cause, .. } => {
            assert!((*heap_index as usize) < heaps, "{error}");
            assert!(cause.contains(&format!("heap budget of {budget} bytes")), "{error}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    println!("{} buffers of 1 MiB before: {error}", kept.len());
    let full: u64 = v.heap_usage(0).expect("heap usage").iter().map(|h| h.lava_flow).max().unwrap_or(0);
    assert!(full <= budget, "lava-flow holds {full} bytes of a heap, within the {budget}-byte budget");
    assert!(kept.len() >= 20, "the budget holds at least 20 of them: {}", kept.len());
    for (i, (b, d)) in kept.iter().zip(&data).enumerate() {
        let mut out = poisoned(d.len());
        b.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, d, &format!("buffer {i} after exhaustion"));
    }
    let n = kept.len() / 2;
    kept.truncate(n);
    v.trim();
    let again: Vec<_> =
        (0..n).map(|_| v.allocate(1 << 20, DEV0).expect("room again after freeing")).collect();
    assert_eq!(again.len(), n);
}

/// A handle of the wrong type: a semaphore's fd offered as memory. Refused with a typed error,
/// and the fd closed. (Where the driver cannot export semaphores, a plain file stands in.)
#[test]
fn a_semaphore_fd_offered_as_memory_is_refused_and_closed() {
    let _turn = FD_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = Validated::new();
    let b = v.allocate(4096, DEV0).expect("allocate");
    drop(b.export_fd().expect("export"));
    let semaphore = v.binary_semaphore(0).expect("binary semaphore");
    let fds = open_fds();
    let (_, descriptor) = b.export().expect("export").into_parts();
    let wrong = match semaphore.export_fd() {
        Ok(fd) => fd,
        Err(e) => {
            println!("semaphores do not export here ({e}); a plain file stands in");
            std::fs::File::open("/proc/self/status").expect("a file").into()
        }
    };
    match v.import_memory(0, ExportedMemory::from_parts(ExternalHandle::OpaqueFd(wrong), descriptor)) {
        Err(e @ Error::Ffi { .. }) => {
            assert!(e.to_string().starts_with("Vulkan vkAllocateMemory failed: VK_"), "{e}")
        }
        // lava-flow's own check, before the driver: a file too small for the memory.
        Err(Error::InvalidArgument(m)) => assert!(m.contains("cannot hold an allocation"), "{m}"),
        other => panic!("expected the driver (or lava-flow) to refuse a non-memory fd, got {other:?}"),
    }
    // The layer relays the driver's refusal (Mesa's `[ERROR GENERAL] VK_ERROR_...`); that, and
    // only that, is expected here.
    let messages = v.validation_log().expect("validation is on").take();
    assert!(messages.iter().all(|m| m.contains("GENERAL") && m.contains("VK_ERROR_")), "{messages:?}");
    assert_eq!(open_fds(), fds, "the refused fd was closed");
}
