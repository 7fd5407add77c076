//! Both tiers: CUDA's entry points where libcuda is absent (typed errors, no panic) and where it
//! is present (the same calls succeed). On the GPU machine (`LAVA_FLOW_REQUIRE_GPU=1`) CUDA must
//! be there.
#![cfg(feature = "cuda")]

mod common;

use common::Validated;
use lava_flow::{cuda, Api, Error, MemoryLocation};

#[test]
fn entry_points_without_libcuda_give_typed_errors_and_with_it_work() {
    let mut v = Validated::new();
    let require_gpu = common::require_gpu();
    let buffer = v.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 }).expect("allocate");
    let timeline = v.timeline_semaphore(0).expect("semaphore");
    match cuda::devices() {
        Err(e @ Error::LibraryNotFound { api: Api::Cuda, .. }) => {
            assert!(!require_gpu, "the GPU tier needs CUDA: {e}");
            println!("no CUDA here, as expected on the CPU tier: {e}");
            let is_missing = |r: &Error| matches!(r, Error::LibraryNotFound { api: Api::Cuda, .. });
            assert!(is_missing(&cuda::Context::for_device(&v, 0).expect_err("no CUDA")));
            assert!(is_missing(&cuda::ordinal_for(&v, 0).expect_err("no CUDA")));
            assert!(is_missing(&cuda::device_id_for(&v, 0).expect_err("no CUDA")));
            // The second call answers from the remembered outcome, the same way.
            assert!(is_missing(&cuda::devices().expect_err("no CUDA")));
            // An unknown device is reported as such before CUDA is looked at.
            assert!(matches!(cuda::Context::for_device(&v, 9), Err(Error::UnknownDevice { .. })));
        }
        Err(e) => panic!("CUDA is present but unusable: {e}"),
        Ok(devices) => {
            println!("CUDA devices: {devices:?}");
            let ctx = cuda::Context::for_device(&v, 0).expect("the CUDA device with device 0's UUID");
            assert_eq!(ctx.uuid().0, buffer.device_uuid());
            let ordinal = cuda::ordinal_for(&v, 0).expect("ordinal");
            assert_eq!(cuda::device_id_for(&v, ordinal).expect("device id"), 0);
            let view = ctx.import_buffer(&buffer).expect("import");
            drop(view);
            let _ = &timeline;
        }
    }
}
