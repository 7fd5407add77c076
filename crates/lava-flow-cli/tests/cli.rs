//! The `lava-flow` command, run as a user runs it.

use std::path::PathBuf;
use std::process::Command;

/// The binary cargo built; on the GPU machine, which runs staged test binaries without cargo,
/// the staged copy (`.gpu/bin/bin-lava-flow`, relative to the repository root it runs in).
fn exe() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_lava-flow"));
    let staged = PathBuf::from(".gpu/bin/bin-lava-flow");
    if !built.exists() && staged.exists() {
        staged
    } else {
        built
    }
}

fn lava_flow(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(exe()).args(args).output().expect("run lava-flow");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn info_lists_every_device_and_api() {
    let (ok, text, err) = lava_flow(&["info"]);
    assert!(ok, "{err}");
    assert!(text.contains("device 0:"), "{text}");
    for api in ["Vulkan  yes", "CUDA", "OpenGL", "OpenCL"] {
        assert!(text.contains(api), "{api} missing from:\n{text}");
    }
}

#[test]
fn info_json_is_machine_readable() {
    let (ok, json, err) = lava_flow(&["info", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let device = &v["devices"][0];
    assert_eq!(device["device_id"], 0);
    assert_eq!(device["vulkan"]["available"], true);
    assert_eq!(device["uuid"].as_str().map(str::len), Some(36), "UUID in 8-4-4-4-12 form");
    for api in ["cuda", "opengl", "opencl"] {
        let r = &device[api];
        assert!(
            r["available"].is_boolean() && r["detail"].as_str().is_some_and(|s| !s.is_empty()),
            "{api}: {r}"
        );
    }
    if std::env::var("LAVA_FLOW_REQUIRE_GPU").is_ok_and(|x| x == "1") {
        assert_eq!(device["cuda"]["available"], true, "the GPU tier has CUDA on device 0");
        assert_eq!(device["opengl"]["available"], true, "the GPU tier has GL on device 0");
    }
}

/// The peer-access section: its pairs where CUDA has two GPUs or more (every ordered pair, both
/// ordinals named, a yes or a no), the reason where it has none, in text and in JSON.
#[test]
fn info_shows_which_gpu_pairs_have_peer_access() {
    let (ok, json, err) = lava_flow(&["info", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let peer = &v["peer_access"];
    let detail = peer["detail"].as_str().expect("detail");
    assert!(!detail.is_empty(), "{peer}");
    let pairs = peer["pairs"].as_array().expect("pairs");
    if peer["available"] == true {
        let cuda: std::collections::BTreeSet<i64> =
            pairs.iter().flat_map(|p| [p["from_cuda"].as_i64(), p["to_cuda"].as_i64()]).flatten().collect();
        assert_eq!(pairs.len(), cuda.len() * cuda.len().saturating_sub(1), "every ordered pair: {peer}");
        assert!(pairs.iter().all(|p| p["possible"].is_boolean() && p["from_cuda"] != p["to_cuda"]), "{peer}");
    } else {
        assert!(pairs.is_empty(), "{peer}");
    }
    let (ok, text, err) = lava_flow(&["info"]);
    assert!(ok, "{err}");
    assert!(text.contains(&format!("peer access between GPUs (CUDA): {detail}")), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("  cuda:")).count(), pairs.len(), "{text}");
}

/// `bench --peer-only`: with fewer than two GPUs (or no CUDA) it says so and succeeds; with two
/// it prints the three rows per size (each with its bytes checked, or the run fails).
#[cfg(feature = "cuda")]
#[test]
fn bench_peer_only_skips_with_a_reason_or_measures() {
    let (ok, text, err) = lava_flow(&["bench", "--quick", "--peer-only"]);
    assert!(ok, "{err}\n{text}");
    if text.contains("peer rows: skipped: ") {
        assert!(!text.contains("cuMemcpyPeerAsync"), "{text}");
    } else {
        for path in [
            "cuMemcpyPeerAsync, cuMemAlloc",
            "lava-flow buffers, cuda::copy_peer",
            "copy_peer + both timelines",
        ] {
            assert!(text.contains(path), "{path} missing from:\n{text}");
        }
    }
}

#[test]
fn unknown_commands_fail_with_usage() {
    let (ok, _, err) = lava_flow(&["frobnicate"]);
    assert!(!ok);
    assert!(err.contains("Usage"), "{err}");
}

/// Runs the demo with `consumer` under the validation layer; the output, when it succeeded.
fn demo(consumer: &str, buffers: u32) -> Result<String, String> {
    demo_batched(consumer, buffers, 1)
}

/// As `demo`, with one hand-off per `batch` frames.
fn demo_batched(consumer: &str, buffers: u32, batch: u32) -> Result<String, String> {
    demo_with(consumer, buffers, batch, 1)
}

/// As `demo_batched`, with the consumer in `processes` processes' worth (1, or 2: a child).
fn demo_with(consumer: &str, buffers: u32, batch: u32, processes: u32) -> Result<String, String> {
    let out = Command::new(exe())
        .args(["demo", "--frames", "12", "--frame-kib", "256", "--consumer", consumer])
        .args(["--buffers", &buffers.to_string(), "--batch", &batch.to_string()])
        .args(["--processes", &processes.to_string()])
        .env("LAVA_FLOW_VALIDATION", "1")
        .output()
        .expect("run lava-flow demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("{text}\n{err}"));
    }
    assert!(text.contains("all 12 frame checksums verified, in both pipelines"), "{text}");
    assert!(text.contains("frames/s") && text.contains("staging through host memory"), "{text}");
    assert!(!err.contains("validation:"), "{err}");
    Ok(text)
}

fn require_gpu() -> bool {
    std::env::var("LAVA_FLOW_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[test]
fn demo_verifies_every_frame_under_validation() {
    let text = demo("opengl", 2).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("→ OpenGL compute on"), "{text}");
    // The default picks CUDA where it has the device, else OpenGL; a ring of 5 buffers.
    let text = demo("auto", 5).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("in 5 shared buffers"), "{text}");
    if require_gpu() {
        assert!(text.contains("→ CUDA kernel on"), "{text}");
    }
}

#[test]
fn demo_with_the_cuda_consumer() {
    match demo("cuda", 2) {
        Ok(text) => assert!(text.contains("→ CUDA kernel on") && text.contains("(GPU semaphores)"), "{text}"),
        Err(e) if !require_gpu() => {
            assert!(e.contains("CUDA is not available"), "a typed error without CUDA: {e}");
            println!("skipped: no CUDA here: {e}");
        }
        Err(e) => panic!("the GPU tier needs the CUDA consumer: {e}"),
    }
}

/// `--processes 2`: the CUDA consumer in a child process that gets the ring and the timelines
/// over a Unix socket; every checksum verified. Without CUDA, the typed reason.
#[test]
fn demo_with_the_consumer_in_another_process() {
    match demo_with("cuda", 4, 2, 2) {
        Ok(text) => {
            assert!(text.contains("in a child process") && text.contains("(GPU semaphores)"), "{text}")
        }
        Err(e) if !require_gpu() => {
            assert!(e.contains("CUDA is not available"), "a typed error without CUDA: {e}");
            println!("skipped: no CUDA here: {e}");
        }
        Err(e) => panic!("the GPU tier needs the consumer process: {e}"),
    }
    let other = demo_with("opengl", 2, 1, 2).expect_err("only the CUDA consumer runs in a child process");
    assert!(other.contains("--processes 2 runs the CUDA consumer"), "{other}");
}

#[test]
fn demo_with_the_vulkan_consumer_on_a_second_device() {
    let text = demo("vulkan", 3).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("→ Vulkan compute on a second VkDevice of"), "{text}");
    if require_gpu() {
        assert!(text.contains("(GPU semaphores)"), "NVIDIA exports timelines to the second device: {text}");
    }
}

#[test]
fn demo_with_the_opencl_consumer() {
    match demo("opencl", 2) {
        Ok(text) => assert!(text.contains("→ OpenCL kernel on"), "{text}"),
        Err(e) if !require_gpu() => {
            assert!(e.contains("OpenCL"), "a typed error without an OpenCL device that imports: {e}");
            println!("skipped: no OpenCL import here: {e}");
        }
        Err(e) => panic!("the GPU tier needs the OpenCL consumer: {e}"),
    }
}

/// One semaphore hand-off per batch of frames, each frame still verified: with the OpenGL and
/// the second-Vulkan-device consumers everywhere, and the default (CUDA on the GPU tier); batches
/// that do not divide the ring too (the ring handles them).
#[test]
fn demo_hands_off_once_per_batch() {
    demo_batched("opengl", 8, 4).unwrap_or_else(|e| panic!("{e}"));
    demo_batched("vulkan", 4, 2).unwrap_or_else(|e| panic!("{e}"));
    demo_batched("opengl", 6, 4).unwrap_or_else(|e| panic!("{e}"));
    demo_batched("vulkan", 5, 3).unwrap_or_else(|e| panic!("{e}"));
    let text = demo_batched("auto", 16, 8).unwrap_or_else(|e| panic!("{e}"));
    if require_gpu() {
        assert!(text.contains("→ CUDA kernel on"), "{text}");
    }
}

/// Calibrated work on each side and a bound on how far ahead the host queues: every frame still
/// verified, and the report has the ceiling and the latency.
#[test]
fn demo_with_work_and_a_bound_on_queueing_ahead() {
    for consumer in ["opengl", "vulkan", "auto"] {
        let out = Command::new(exe())
            .args(["demo", "--frames", "12", "--frame-kib", "256", "--consumer", consumer])
            .args(["--buffers", "4", "--batch", "2", "--ahead", "2", "--work-ms", "1"])
            .env("LAVA_FLOW_VALIDATION", "1")
            .output()
            .expect("run lava-flow demo");
        let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}\n{err}");
        assert!(text.contains("all 12 frame checksums verified, in both pipelines"), "{text}");
        assert!(text.contains("both at once, no hand-off (the ceiling):"), "{text}");
        assert!(text.contains("per-frame latency (producer submit → consumer done): p50"), "{text}");
        assert!(text.contains("work rounds per word: producer"), "{text}");
        // Not a terminal: no progress bar.
        assert!(!err.contains('\r'), "{err}");
    }
}

#[test]
fn demo_refuses_consumers_it_does_not_have() {
    let (ok, _, err) = lava_flow(&["demo", "--consumer", "metal", "--frames", "2"]);
    assert!(!ok);
    assert!(err.contains("invalid value 'metal'") && err.contains("possible values"), "{err}");
    let (ok, _, err) = lava_flow(&["demo", "--buffers", "1"]);
    assert!(!ok);
    assert!(err.contains("2 to 16 shared buffers"), "{err}");
    // The ring's own rule, its typed error.
    let (ok, _, err) = lava_flow(&["demo", "--buffers", "6", "--batch", "7"]);
    assert!(!ok);
    assert!(err.contains("ring: a ring of 6 slot(s) hands off batches of 1 to 6 frames, not 7"), "{err}");
    let (ok, _, err) = lava_flow(&["demo", "--buffers", "8", "--batch", "4", "--ahead", "2"]);
    assert!(!ok);
    assert!(err.contains("--ahead 2 must be at least --batch 4"), "{err}");
    let (ok, _, err) = lava_flow(&["demo", "--work-ms", "0"]);
    assert!(!ok);
    assert!(err.contains("--work-ms is more than 0"), "{err}");
    let (ok, _, err) = lava_flow(&["demo", "--frames", "1"]);
    assert!(!ok);
    assert!(err.contains("at least 2 frames"), "{err}");
}

#[cfg(unix)]
#[test]
fn bench_quick_runs_and_writes_json() {
    let path = std::env::temp_dir().join(format!("lava-flow-bench-{}.json", std::process::id()));
    let (ok, text, err) = lava_flow(&["bench", "--quick", "--json", path.to_str().expect("utf-8 path")]);
    assert!(ok, "{text}\n{err}");
    assert!(text.contains("| path | median | vs baseline |"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the JSON file")).expect("valid JSON");
    let _ = std::fs::remove_file(&path);
    let rows = json["rows"].as_array().expect("rows");
    assert!(rows.len() >= 15, "{json}");
    for r in rows {
        assert!(r["value"].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()), "{r}");
        if !r["baseline"].is_null() {
            assert!(r["speedup"].as_f64().is_some_and(|s| s > 0.0), "{r}");
        }
    }
    assert!(rows.iter().any(|r| r["group"] == "Vulkan → OpenGL hand-off, 4 MiB frames"), "{json}");
    // The pipeline against its measured ceiling, with latency, at both frame sizes; the knobs.
    for group in [
        "Vulkan → consumer pipeline vs its ceiling, 4 MiB frames",
        "Vulkan → consumer pipeline vs its ceiling, 3840×2160 RGBA8, ~1 ms work per side",
    ] {
        let in_group: Vec<_> = rows.iter().filter(|r| r["group"] == group).collect();
        assert!(
            in_group.iter().any(|r| r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("the ceiling: both sides at once"))),
            "{json}"
        );
        let rings: Vec<_> = in_group
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("ring of")))
            .collect();
        assert!(rings.len() >= 2, "{json}");
        for r in rings {
            let l = &r["latency_us"];
            assert!(l[0].as_f64().is_some_and(|p50| p50 > 0.0) && l[1].as_f64() >= l[0].as_f64(), "{r}");
        }
    }
    let knobs =
        rows.iter().filter(|r| r["group"].as_str().is_some_and(|g| g.starts_with("hand-off knobs"))).count();
    assert!(knobs >= 5, "batch, depth and queueing-ahead rows: {json}");
    // Host transfers: both asynchronous paths, and the CPU-copy ceiling of the staging ring in
    // both directions at every size.
    let paths =
        |needle: &str| rows.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.contains(needle))).count();
    assert_eq!(paths("write_async + wait, staging ring"), 3, "4 KiB, 1 MiB, 64 MiB: {json}");
    assert_eq!(paths("read_async + wait, host memory import"), 3, "{json}");
    assert!(paths("ceiling: CPU copy pageable → staging") >= 3, "{json}");
    assert!(paths("ceiling: CPU copy staging → pageable") >= 3, "{json}");
    // wgpu's own buffer, a sub-allocated and a dedicated lava-flow buffer.
    #[cfg(feature = "wgpu")]
    assert_eq!(rows.iter().filter(|r| r["group"] == "wgpu compute pass").count(), 3, "{json}");
}
