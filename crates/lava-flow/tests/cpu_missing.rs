//! Missing pieces: no Vulkan driver, no EGL vendor library. Each case runs in a child process
//! (this test binary, run again with the loader pointed at nothing), so that the environment it
//! needs cannot leak into other tests; the child's assertions decide, the parent checks that it
//! passed and did not crash.

use std::process::Command;

/// Runs the test `name` of this binary in a child with `env`, and returns its output.
fn child(name: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("this test binary");
    let out = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("LAVA_FLOW_CHILD", name)
        .envs(env.iter().copied())
        .output()
        .expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {name} failed:\n{text}");
    assert!(text.contains("1 passed"), "child {name} ran no test:\n{text}");
    text
}

fn is_child(name: &str) -> bool {
    std::env::var("LAVA_FLOW_CHILD").is_ok_and(|c| c == name)
}

#[test]
fn no_vulkan_driver_gives_typed_errors() {
    let text = child(
        "child_without_vulkan_driver",
        &[("VK_DRIVER_FILES", "/nonexistent/none.json"), ("VK_ICD_FILENAMES", "/nonexistent/none.json")],
    );
    assert!(text.contains("without a Vulkan driver:"), "{text}");
}

#[test]
fn child_without_vulkan_driver() {
    if !is_child("child_without_vulkan_driver") {
        return;
    }
    match lava_flow::MemoryAllocator::new() {
        // The loader refuses an instance when it finds no driver...
        Err(e @ lava_flow::Error::Ffi { api: lava_flow::Api::Vulkan, call: "vkCreateInstance", .. }) => {
            println!("without a Vulkan driver: {e}");
        }
        // ... or gives one without devices, depending on its version.
        Ok(mut a) => {
            assert!(a.devices().is_empty());
            let e = a
                .allocate(4096, lava_flow::MemoryLocation::GpuVulkan { device_id: 0 })
                .expect_err("there is no device 0");
            assert!(matches!(e, lava_flow::Error::UnknownDevice { device_id: 0, device_count: 0 }), "{e}");
            println!("without a Vulkan driver: {e}");
        }
        Err(e) => panic!("expected vkCreateInstance to fail or no devices, got: {e}"),
    }
}

#[cfg(feature = "opengl")]
#[test]
fn no_egl_vendor_gives_typed_errors() {
    let text =
        child("child_without_egl_vendor", &[("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/none.json")]);
    assert!(text.contains("without an EGL vendor:"), "{text}");
}

#[cfg(feature = "opengl")]
#[test]
fn child_without_egl_vendor() {
    if !is_child("child_without_egl_vendor") {
        return;
    }
    // NVIDIA's Vulkan driver itself needs its EGL vendor library: there the allocator must fail
    // with a typed error too (seen on the GPU machine: vkCreateInstance →
    // VK_ERROR_INCOMPATIBLE_DRIVER). Mesa's Vulkan does not need EGL.
    let allocator = match lava_flow::MemoryAllocator::new() {
        Ok(a) if !a.devices().is_empty() => a,
        Ok(_) => {
            println!("without an EGL vendor: Vulkan finds no device");
            return;
        }
        Err(e @ lava_flow::Error::Ffi { api: lava_flow::Api::Vulkan, .. }) => {
            println!("without an EGL vendor: Vulkan refused too: {e}");
            return;
        }
        Err(e) => panic!("expected a typed Vulkan error or a working allocator, got: {e}"),
    };
    match lava_flow::opengl::GlContext::headless(allocator.device(0).expect("device 0")) {
        Err(e @ (lava_flow::Error::Unsupported { .. } | lava_flow::Error::LibraryNotFound { .. })) => {
            println!("without an EGL vendor: {e}");
        }
        Err(e) => panic!("expected Unsupported or LibraryNotFound, got: {e}"),
        Ok(ctx) => panic!("a GL context without an EGL vendor library: {:?}", ctx.info()),
    }
}
