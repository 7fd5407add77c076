//! CPU tier: allocate/export/free cycles and refused imports leave no fd, buffer or block
//! behind. The tests of this binary count the process's fds, so they take turns (`FD_COUNT`).

mod common;

use std::sync::Mutex;

use common::{open_fds, Validated};
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
