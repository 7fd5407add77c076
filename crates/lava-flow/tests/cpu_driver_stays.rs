//! The Vulkan drivers stay loaded once lava-flow has made an instance, after every allocator is
//! gone (ADR 0016): the loader would unload them, and NVIDIA's driver could then fail to load
//! again in a process whose static TLS other libraries used up meanwhile (measured on the H200
//! after JAX: every later `MemoryAllocator::new` failed with "Unable to find a Vulkan driver").
//! Its own test binary: no other test's allocator may keep the drivers loaded for it.

use std::collections::BTreeSet;

use lava_flow::MemoryAllocator;

/// The shared libraries mapped into this process now.
fn libraries() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_drivers_stay_loaded_after_the_last_allocator_is_gone() {
    let before = libraries();
    let allocator = MemoryAllocator::new().expect("an allocator on the CPU tier's lavapipe or a GPU");
    let device = allocator.device(0).expect("device 0").name.clone();
    // Layers (the validation layer under LAVA_FLOW_VALIDATION=1) belong to the allocator's own
    // instance and go with it; the loader and the driver must stay.
    let loaded: BTreeSet<String> =
        libraries().difference(&before).filter(|l| !l.contains("libVkLayer_")).cloned().collect();
    assert!(!loaded.is_empty(), "making an instance loads the loader and a driver");
    drop(allocator);
    let gone: Vec<&String> = loaded.iter().filter(|l| !libraries().contains(*l)).collect();
    assert!(gone.is_empty(), "unloaded once the allocator on {device} was dropped: {gone:?}");
    // And a new allocator can be made afterwards.
    MemoryAllocator::new().expect("a second allocator");
}
