//! Soak: 100,000 allocate/export/free cycles of random sizes from 8 threads, with the OpenGL
//! importer in the loop, data verified on a sample, and every count back to its baseline.
//! Alone in its binary, because it counts the process's fds.

mod common;

use common::{assert_bytes_eq, poisoned, random_bytes, Validated};
use lava_flow::{AllocationOptions, MemoryLocation};
use rand::{Rng, SeedableRng};

const THREADS: u64 = 8;
const CYCLES: u64 = 100_000;

#[test]
fn hundred_thousand_cycles_from_eight_threads_leak_nothing() {
    let v = Validated::new();
    let location = MemoryLocation::GpuVulkan { device_id: 0 };
    // Warm-up: the device, its staging context and the EGL display exist from here on.
    {
        let mut a = v.clone();
        let b = a.allocate(4096, location).expect("warm-up");
        b.write(0, &[1; 16]).expect("warm-up write");
        #[cfg(feature = "opengl")]
        {
            let gl = lava_flow::opengl::GlContext::headless(a.device(0).expect("device")).expect("GL");
            drop(gl.import_buffer(&b).expect("warm-up import"));
        }
    }
    v.trim();
    let fd_list = common::fd_targets();
    let stats = v.stats();
    let verified = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let mut allocator = v.clone();
            let verified = &verified;
            scope.spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed + t);
                #[cfg(feature = "opengl")]
                let gl =
                    lava_flow::opengl::GlContext::headless(allocator.device(0).expect("device")).expect("GL");
                let mut live = Vec::new();
                for i in 0..CYCLES / THREADS {
                    let size = rng.random_range(1..=256 * 1024u64);
                    let options = AllocationOptions::default().dedicated(rng.random_ratio(1, 50));
                    let b = allocator.allocate_with(size, location, options).expect("allocate");
                    drop(b.export().expect("export"));
                    if i % 97 == 0 {
                        // A sample: random bytes written by Vulkan, read back by GL (or by
                        // Vulkan where there is no GL), then written by GL and read by Vulkan.
                        let len = size.min(4096) as usize;
                        let at = size - len as u64;
                        let data = random_bytes(len);
                        b.write(at, &data).expect("write");
                        let mut out = poisoned(len);
                        #[cfg(feature = "opengl")]
                        {
                            let view = gl.import_buffer(&b).expect("GL import");
                            view.read(at, &mut out).expect("GL read");
                            assert_bytes_eq(&out, &data, &format!("thread {t} cycle {i}: Vulkan → GL"));
                            let back = random_bytes(len);
                            view.write(at, &back).expect("GL write");
                            gl.finish().expect("glFinish");
                            b.read(at, &mut out).expect("Vulkan read");
                            assert_bytes_eq(&out, &back, &format!("thread {t} cycle {i}: GL → Vulkan"));
                        }
                        #[cfg(not(feature = "opengl"))]
                        {
                            b.read(at, &mut out).expect("read");
                            assert_bytes_eq(&out, &data, &format!("thread {t} cycle {i}"));
                        }
                        verified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Keep a few alive for a while, so that blocks fill, fragment and drain.
                    if live.len() < 24 {
                        live.push(b);
                    }
                    if !live.is_empty() && rng.random_ratio(1, 2) {
                        live.swap_remove(rng.random_range(0..live.len()));
                    }
                }
            });
        }
    });
    v.trim();
    // NVIDIA's driver opens its device files itself when it needs more channels (2 of 3 runs on
    // two H200s ended with one more `/dev/nvidia0` than the baseline): `assert_fds_back` allows that.
    common::assert_fds_back(&fd_list, "after the soak");
    assert_eq!(v.stats(), stats, "buffers, blocks and bytes back to the baseline");
    let sampled = verified.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sampled >= CYCLES / 100, "{sampled} samples verified");
    println!(
        "{CYCLES} cycles from {THREADS} threads, {sampled} samples verified both ways, nothing left behind"
    );
}
