//! OpenCL device discovery and its typed errors: with the platforms this machine has (Mesa's
//! PoCL on the CPU tier: no UUID match, no external memory), and with no OpenCL platform at all
//! (the ICD loader pointed at nothing, in a child process). On the GPU machine the NVIDIA
//! platform must be found by UUID, beside PoCL.
#![cfg(feature = "opencl")]

mod common;

use common::Validated;
use lava_flow::{opencl, Api, Error};

#[test]
fn the_device_is_found_by_uuid_or_a_typed_error_says_why() {
    let v = Validated::new();
    let devices = match opencl::devices() {
        Ok(d) => d,
        Err(e @ Error::LibraryNotFound { api: Api::OpenCl, .. }) => {
            assert!(!common::require_gpu(), "the GPU tier has OpenCL: {e}");
            println!("no OpenCL loader: {e}");
            assert!(matches!(opencl::Context::for_device(&v, 0), Err(Error::LibraryNotFound { .. })));
            return;
        }
        Err(e) => panic!("OpenCL is present but unusable: {e}"),
    };
    for d in &devices {
        println!(
            "OpenCL: {} on {} (UUID {:?}), external memory: {}",
            d.name,
            d.platform,
            d.uuid,
            d.has_extension(opencl::EXTERNAL_MEMORY_OPAQUE_FD)
        );
    }
    let uuid = v.device(0).expect("device 0").uuid;
    match opencl::Context::for_device(&v, 0) {
        Ok(ctx) => {
            assert_eq!(ctx.device().uuid, Some(uuid), "chosen by UUID, not by platform order");
            assert!(ctx.device().has_extension(opencl::EXTERNAL_MEMORY_OPAQUE_FD));
            assert!(!ctx.raw().is_null());
        }
        Err(e @ Error::Unsupported { .. }) => {
            assert!(!common::require_gpu(), "the GPU tier's NVIDIA platform imports Vulkan memory: {e}");
            let text = e.to_string();
            let matched = devices.iter().any(|d| d.uuid == Some(uuid));
            if matched {
                assert!(
                    text.contains(opencl::EXTERNAL_MEMORY_OPAQUE_FD),
                    "names the missing extension: {text}"
                );
            } else {
                assert!(text.contains("no OpenCL device has the UUID"), "{text}");
            }
            println!("as expected here: {text}");
        }
        Err(e) => panic!("expected a context or Unsupported, got: {e}"),
    }
    assert!(matches!(opencl::Context::for_device(&v, 9), Err(Error::UnknownDevice { .. })));
}

#[test]
fn no_platform_at_all_is_an_empty_list_and_a_typed_error() {
    let exe = std::env::current_exe().expect("this test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", "child_without_platforms", "--nocapture"])
        .env("LAVA_FLOW_CHILD", "child_without_platforms")
        .env("OCL_ICD_VENDORS", "/nonexistent/vendors")
        .env("OCL_ICD_FILENAMES", "")
        .output()
        .expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("without OpenCL platforms:"), "{text}");
}

#[test]
fn child_without_platforms() {
    if !std::env::var("LAVA_FLOW_CHILD").is_ok_and(|c| c == "child_without_platforms") {
        return;
    }
    let v = Validated::new();
    match opencl::devices() {
        Ok(devices) => {
            assert!(devices.is_empty(), "{devices:?}");
            let e = opencl::Context::for_device(&v, 0).expect_err("no platform");
            assert!(e.to_string().contains("none (no platform)"), "{e}");
            println!("without OpenCL platforms: {e}");
        }
        Err(e @ Error::LibraryNotFound { .. }) => println!("without OpenCL platforms: {e}"),
        Err(e) => panic!("expected an empty list, got: {e}"),
    }
}

/// Eight threads list the OpenCL devices at once: PoCL's lazy device set-up crashed when another
/// thread queried a device meanwhile, before lava-flow enumerated one thread at a time.
#[test]
fn devices_are_listed_from_many_threads_at_once() {
    let lists: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(opencl::devices)).collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect()
    });
    let first = lists[0].as_ref().map(|d| d.len()).map_err(|e| e.to_string());
    for list in &lists {
        assert_eq!(
            list.as_ref().map(|d| d.len()).map_err(|e| e.to_string()),
            first,
            "the same from every thread"
        );
    }
}
