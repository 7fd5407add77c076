//! `AllocatorOptions::queue_global_priority`: where the device has `VK_KHR_global_priority` or
//! `VK_EXT_global_priority`, the device is created with that queue priority and works (random
//! bytes round-trip through a buffer) or the driver refuses the priority with the typed error
//! `vkCreateDevice` gives; where it has neither (lavapipe), the first use of the device fails
//! with `Unsupported` naming both extensions. No fallback either way.

mod common;

use common::{assert_bytes_eq, random_bytes, Validated};
use lava_flow::{Error, MemoryLocation, QueueGlobalPriority};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

#[test]
fn a_queue_priority_works_or_is_refused_with_a_typed_error() {
    for priority in [
        QueueGlobalPriority::Low,
        QueueGlobalPriority::Medium,
        QueueGlobalPriority::High,
        QueueGlobalPriority::Realtime,
    ] {
        let mut allocator = Validated::with_options(|o| o.queue_global_priority = Some(priority));
        match allocator.allocate(1 << 16, DEV0) {
            Ok(buffer) => {
                let bytes = random_bytes(1 << 16);
                buffer.write(0, &bytes).expect("write");
                let mut back = vec![0xA5; bytes.len()];
                buffer.read(0, &mut back).expect("read");
                assert_bytes_eq(&back, &bytes, &format!("a buffer on a queue of priority {priority:?}"));
                println!("{priority:?}: the device took it");
            }
            Err(Error::Unsupported { what }) => {
                assert!(
                    what.contains("neither VK_KHR_global_priority nor VK_EXT_global_priority"),
                    "{priority:?}: {what}"
                );
                println!("{priority:?}: {what}");
            }
            Err(e @ Error::Ffi { call: "vkCreateDevice", .. }) => {
                // Above what this process may have: the driver's refusal, named.
                assert!(e.to_string().contains("VK_ERROR_NOT_PERMITTED"), "{priority:?}: {e}");
                println!("{priority:?}: refused: {e}");
            }
            Err(e) => panic!("{priority:?}: not the typed refusal: {e}"),
        }
    }
}
