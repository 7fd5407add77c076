//! OpenCL imports on the GPU tier: lava-flow buffers as OpenCL memory objects on NVIDIA's
//! platform (found by UUID beside PoCL). Without an OpenCL platform that can import Vulkan
//! memory the tests check the typed error and skip; under `LAVA_FLOW_REQUIRE_GPU=1` they fail.
#![cfg(feature = "opencl")]

mod common;

use common::{assert_bytes_eq, open_fds, poisoned, random_bytes, Validated};
use lava_flow::opencl::{self, ClBuffer, Context, Queue};
use lava_flow::{AllocationOptions, Buffer, Error, MemoryLocation};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

/// Tests that count this process's fds run alone; the others run in parallel with each other
/// (each opens devices, and NVIDIA's driver opens fds as it goes).
static MEASURING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MEASURING.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    MEASURING.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The OpenCL context of device 0, or `None` (with the reason printed) where there is none.
fn opencl_or_skip(v: &Validated, test: &str) -> Option<Context> {
    let made = Context::for_device(v, 0);
    if let Err(e) = &made {
        assert!(
            matches!(e, Error::Unsupported { .. } | Error::LibraryNotFound { .. }),
            "a typed error without OpenCL imports: {e}"
        );
    }
    common::or_skip(made, test, "OpenCL imports")
}

/// `words[offset + i] = words[offset + i] * 3 + i` for `i < n`.
const TRANSFORM: &str = r#"
__kernel void transform(__global uint* words, ulong offset, uint n) {
    uint i = get_global_id(0);
    if (i < n) { words[offset + i] = words[offset + i] * 3u + i; }
}
"#;

fn words_of(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
}

/// Vulkan writes random words; an OpenCL kernel built from source transforms them in place;
/// Vulkan checks every word. Then both directions byte for byte with poisoned destinations.
fn check_buffer(
    queue: &Queue<'_>,
    program: &opencl::Program<'_>,
    buffer: &Buffer,
    view: &ClBuffer<'_>,
    what: &str,
) {
    let data = random_bytes(buffer.size() as usize);
    buffer.write(0, &data).expect("Vulkan write");
    let n = (buffer.size() / 4) as u32;
    let mut kernel = program.kernel("transform").expect("kernel");
    kernel.arg_buffer(0, view).expect("arg 0");
    kernel.arg_u64(1, view.offset() / 4).expect("arg 1");
    kernel.arg_u32(2, n).expect("arg 2");
    queue.acquire(&[view]).expect("acquire");
    queue.launch(&kernel, n as usize, None).expect("launch");
    queue.release(&[view]).expect("release");
    queue.finish().expect("finish");
    let mut out = poisoned(data.len());
    buffer.read(0, &mut out).expect("Vulkan read");
    let want: Vec<u32> =
        words_of(&data).iter().enumerate().map(|(i, w)| w.wrapping_mul(3).wrapping_add(i as u32)).collect();
    assert_eq!(words_of(&out), want, "{what}: OpenCL kernel on Vulkan's data");
    // Both directions, every byte.
    let from_cl = random_bytes(data.len());
    view.write(queue, 0, &from_cl).expect("OpenCL write");
    let mut out = poisoned(data.len());
    buffer.read(0, &mut out).expect("Vulkan read");
    assert_bytes_eq(&out, &from_cl, &format!("{what}: OpenCL → Vulkan"));
    let from_vk = random_bytes(data.len());
    buffer.write(0, &from_vk).expect("Vulkan write");
    let mut out = poisoned(data.len());
    view.read(queue, 0, &mut out).expect("OpenCL read");
    assert_bytes_eq(&out, &from_vk, &format!("{what}: Vulkan → OpenCL"));
}

#[test]
fn kernels_transform_vulkan_buffers_at_offsets_and_dedicated() {
    let _measuring = shared();
    let mut v = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "kernels") else { return };
    println!("OpenCL device: {} on {}", ctx.device().name, ctx.device().platform);
    let queue = ctx.queue().expect("queue");
    let program = ctx.build(TRANSFORM).expect("build");
    // Buffers at several offsets of one block (some aligned for sub-buffers, some not), and a
    // dedicated allocation.
    let buffers: Vec<Buffer> = (0..6).map(|i| v.allocate(1000 + 300 * i, DEV0).expect("allocate")).collect();
    let dedicated =
        v.allocate_with(123_456, DEV0, AllocationOptions::default().dedicated(true)).expect("dedicated");
    let (mut subs, mut offsets) = (0, 0);
    for (i, b) in buffers.iter().chain([&dedicated]).enumerate() {
        let view = ctx.import_buffer(b).expect("import");
        if view.is_sub_buffer() {
            subs += 1;
        } else {
            offsets += 1;
            assert_eq!(view.offset(), b.offset());
        }
        check_buffer(&queue, &program, b, &view, &format!("buffer {i} at offset {}", b.offset()));
    }
    println!("{subs} sub-buffers, {offsets} whole imports with an offset");
    assert!(buffers.iter().any(|b| b.offset() != 0), "some buffers at non-zero offsets");
    // Range checks are typed.
    let view = ctx.import_buffer(&buffers[1]).expect("import");
    assert!(matches!(
        view.read(&queue, 1, &mut vec![0; buffers[1].size() as usize]),
        Err(Error::OutOfRange { .. })
    ));
    // A build error carries the compiler's log.
    let e = ctx.build("__kernel void broken( {").expect_err("a syntax error");
    assert!(e.to_string().contains("clBuildProgram"), "{e}");
}

/// Copies an image texel by texel through `read_image*` and `write_image*`, over `n` texels of
/// rows `width` long (1-D launch).
const IMAGE_COPY: &str = r#"
__constant sampler_t nearest = CLK_NORMALIZED_COORDS_FALSE | CLK_ADDRESS_NONE | CLK_FILTER_NEAREST;
__kernel void copy_f(__read_only image2d_t src, __write_only image2d_t dst, uint width, uint n) {
    uint i = get_global_id(0);
    if (i < n) { int2 p = (int2)(i % width, i / width); write_imagef(dst, p, read_imagef(src, nearest, p)); }
}
__kernel void copy_u(__read_only image2d_t src, __write_only image2d_t dst, uint width, uint n) {
    uint i = get_global_id(0);
    if (i < n) { int2 p = (int2)(i % width, i / width); write_imageui(dst, p, read_imageui(src, nearest, p)); }
}
"#;

/// Every format OpenCL has: Vulkan writes an image and OpenCL reads it; OpenCL writes it and
/// Vulkan reads it; a kernel copies it into a second image through `read_image*`/`write_image*`
/// and Vulkan reads that. Every byte, poisoned destinations. What OpenCL cannot import is a
/// typed error that says why.
#[test]
fn images_of_every_format_both_ways_and_through_a_kernel() {
    let _measuring = shared();
    use lava_flow::{ImageDesc, ImageFormat, ImageTiling};
    let mut v = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "images") else { return };
    let queue = ctx.queue().expect("queue");
    let program = ctx.build(IMAGE_COPY).expect("build");
    let (width, height) = (67u32, 33u32);
    let mut imported = Vec::new();
    for format in ImageFormat::ALL {
        let desc = ImageDesc::new(format, width, height);
        let (a, b) = (v.allocate_image(0, desc).expect("image"), v.allocate_image(0, desc).expect("image"));
        let (cl_a, cl_b) = match (ctx.import_image(&a), ctx.import_image(&b)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) | (_, Err(e)) => {
                assert!(matches!(e, Error::Unsupported { .. }), "{format:?}: a typed error: {e}");
                // OpenCL requires every other format of this list for read-write images.
                assert_eq!(format, ImageFormat::Rg8Unorm, "{format:?} must import: {e}");
                println!("{format:?}: {e}");
                continue;
            }
        };
        let len = desc.level_size(0) as usize;
        let data = common::texel_data(format, len);
        a.write_level(0, &data).expect("Vulkan write");
        let mut out = poisoned(len);
        cl_a.read(&queue, &mut out).expect("OpenCL read");
        assert_bytes_eq(&out, &data, &format!("{format:?}: Vulkan → OpenCL"));
        let data = common::texel_data(format, len);
        cl_a.write(&queue, &data).expect("OpenCL write");
        let mut out = poisoned(len);
        a.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &data, &format!("{format:?}: OpenCL → Vulkan"));
        b.write_level(0, &poisoned(len)).expect("poison");
        let name = if format == ImageFormat::R32Uint { "copy_u" } else { "copy_f" };
        let mut kernel = program.kernel(name).expect("kernel");
        kernel.arg_image(0, &cl_a).expect("arg 0");
        kernel.arg_image(1, &cl_b).expect("arg 1");
        kernel.arg_u32(2, width).expect("arg 2");
        kernel.arg_u32(3, width * height).expect("arg 3");
        queue.acquire(&[&cl_a, &cl_b]).expect("acquire");
        queue.launch(&kernel, (width * height) as usize, None).expect("launch");
        queue.release(&[&cl_a, &cl_b]).expect("release");
        queue.finish().expect("finish");
        let mut out = poisoned(len);
        b.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &data, &format!("{format:?}: OpenCL kernel copy → Vulkan"));
        // A write of the wrong size is refused before OpenCL sees it.
        assert!(matches!(cl_a.write(&queue, &data[1..]), Err(Error::InvalidArgument(_))));
        imported.push(format);
    }
    println!("OpenCL imported {imported:?}");
    // Levels and the other tiling are refused with a reason.
    let mipped =
        v.allocate_image(0, ImageDesc::new(ImageFormat::Rgba8Unorm, 64, 64).mip_levels(3)).expect("image");
    let e = ctx.import_image(&mipped).expect_err("mip levels");
    assert!(matches!(e, Error::Unsupported { .. }) && e.to_string().contains("mip levels"), "{e}");
    let linear = ImageDesc::new(ImageFormat::Rgba8Unorm, 64, 64).tiling(ImageTiling::Linear);
    if let Ok(linear) = v.allocate_image(0, linear) {
        match ctx.import_image(&linear) {
            Ok(_) => println!("the device imports opaque-fd images as linear ones"),
            Err(e) => assert!(e.to_string().contains("tiling"), "{e}"),
        }
    }
}

#[test]
fn a_thousand_import_release_cycles_leak_nothing() {
    let _measuring = exclusive();
    let mut v = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "import cycles") else { return };
    let queue = ctx.queue().expect("queue");
    let buffer = v.allocate(1 << 20, DEV0).expect("buffer");
    drop(ctx.import_buffer(&buffer).expect("warm-up"));
    let fds = open_fds();
    let baseline = common::fd_targets();
    let held: Vec<ClBuffer<'_>> = (0..10).map(|_| ctx.import_buffer(&buffer).expect("import")).collect();
    println!("fds with 10 imports alive: {:+}", open_fds() as i64 - fds as i64);
    drop(held);
    for i in 0..1000u32 {
        let view = ctx.import_buffer(&buffer).expect("import");
        view.write(&queue, 0, &i.to_le_bytes()).expect("use it");
    }
    common::assert_fds_back(&baseline, "1,000 OpenCL imports and releases");
    let mut out = [0u8; 4];
    buffer.read(0, &mut out).expect("read");
    assert_eq!(u32::from_le_bytes(out), 999, "the last write is what Vulkan sees");
}

/// A binary semaphore shared with OpenCL, and the handle Vulkan uses for it: imported from the
/// semaphore's own fd, so that the validation layer knows another API signals and waits on the
/// payload (it follows only what Vulkan does with semaphores it made).
fn shared_binary(v: &mut Validated) -> (lava_flow::BinarySemaphore, lava_flow::BinarySemaphore) {
    let semaphore = v.binary_semaphore(0).expect("binary semaphore");
    let for_vulkan = v.import_binary_semaphore(0, semaphore.export().expect("export")).expect("import");
    (semaphore, for_vulkan)
}

/// Vulkan fills a buffer and signals A; OpenCL waits for A, transforms the buffer with a kernel
/// and signals B; Vulkan waits for B, copies the result and signals a timeline. Only the final
/// check waits on the host.
#[test]
fn vulkan_opencl_vulkan_ordered_by_binary_semaphores() {
    let _measuring = shared();
    let mut v = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "binary semaphores") else { return };
    let words = 65_536usize;
    let _pad = v.allocate(8192, DEV0).expect("pad");
    let shared = v.allocate((words * 4) as u64, DEV0).expect("shared");
    let result = v.allocate((words * 4) as u64, DEV0).expect("result");
    result.write(0, &poisoned(words * 4)).expect("poison");
    let ((a, a_vk), (b, b_vk)) = (shared_binary(&mut v), shared_binary(&mut v));
    let done = v.timeline_semaphore(0).expect("timeline");
    let queue = ctx.queue().expect("queue");
    let program = ctx.build(TRANSFORM).expect("build");
    let view = ctx.import_buffer(&shared).expect("import");
    let (cl_a, cl_b) =
        (ctx.import_semaphore(&a).expect("import A"), ctx.import_semaphore(&b).expect("import B"));
    let pattern = 0x0102_0304u32;
    let chain = common::FillThenCopy::record(&v, &shared, &result, pattern);
    let (fill, copy) = chain.submissions();
    v.submit(0, &fill.signal_binary(&a_vk)).expect("Vulkan fills, signals A");
    let mut kernel = program.kernel("transform").expect("kernel");
    kernel.arg_buffer(0, &view).expect("arg");
    kernel.arg_u64(1, view.offset() / 4).expect("arg");
    kernel.arg_u32(2, words as u32).expect("arg");
    queue.wait_semaphore(&cl_a).expect("OpenCL waits for A");
    queue.acquire(&[&view]).expect("acquire");
    queue.launch(&kernel, words, None).expect("launch");
    queue.release(&[&view]).expect("release");
    queue.signal_semaphore(&cl_b).expect("OpenCL signals B");
    v.submit(0, &copy.wait_binary(&b_vk).signal(&done, 1)).expect("Vulkan waits for B, copies");
    done.wait(1, std::time::Duration::from_secs(30)).expect("the chain completes");
    queue.finish().expect("finish");
    drop(chain);
    let mut out = poisoned(words * 4);
    result.read(0, &mut out).expect("read");
    let want: Vec<u32> = (0..words as u32).map(|i| pattern.wrapping_mul(3).wrapping_add(i)).collect();
    assert_eq!(words_of(&out), want, "Vulkan fill → OpenCL kernel → Vulkan copy");
}

/// 1,000 Vulkan → OpenCL → Vulkan hand-offs on two binary semaphores, no host wait until the end.
#[test]
fn a_thousand_binary_semaphore_round_trips() {
    let _measuring = shared();
    let mut v = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "semaphore round trips") else { return };
    let ((a, a_vk), (b, b_vk)) = (shared_binary(&mut v), shared_binary(&mut v));
    let done = v.timeline_semaphore(0).expect("timeline");
    let queue = ctx.queue().expect("queue");
    let (cl_a, cl_b) =
        (ctx.import_semaphore(&a).expect("import A"), ctx.import_semaphore(&b).expect("import B"));
    let n = 1000;
    let start = std::time::Instant::now();
    for i in 0..n {
        let submission = lava_flow::Submission::new().signal_binary(&a_vk);
        let submission = if i > 0 { submission.wait_binary(&b_vk) } else { submission };
        v.submit(0, &submission).expect("Vulkan");
        queue.wait_semaphore(&cl_a).expect("OpenCL waits");
        queue.signal_semaphore(&cl_b).expect("OpenCL signals");
    }
    v.submit(0, &lava_flow::Submission::new().wait_binary(&b_vk).signal(&done, 1)).expect("last");
    done.wait(1, std::time::Duration::from_secs(60)).expect("all round trips");
    println!(
        "{n} Vulkan → OpenCL → Vulkan round trips: {:.1} µs each",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    queue.finish().expect("finish");
    v.wait_idle(0).expect("queue idle");
}

#[test]
fn semaphores_without_opencl_support_are_typed_errors() {
    let _measuring = shared();
    let mut v = Validated::new();
    let binary = v.binary_semaphore(0).expect("binary semaphore");
    match Context::for_device(&v, 0) {
        Ok(ctx) => {
            // With OpenCL imports (the GPU tier) the import works or says why not.
            match ctx.import_semaphore(&binary) {
                Ok(_) => {}
                Err(e) => assert!(matches!(e, Error::Unsupported { .. }), "{e}"),
            }
        }
        Err(e) => assert!(matches!(e, Error::Unsupported { .. } | Error::LibraryNotFound { .. }), "{e}"),
    }
}

/// Issue 13: OpenCL reached by exported handles alone — buffers at an offset and dedicated
/// through a kernel and both ways, memory Vulkan itself imported, and a binary semaphore that
/// orders Vulkan → OpenCL → Vulkan; the OpenCL import outlives the Vulkan buffer.
#[test]
fn exported_handles_alone_reach_opencl() {
    let _measuring = shared();
    let mut v = Validated::new();
    let mut relay = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "exported handles") else { return };
    let queue = ctx.queue().expect("queue");
    let program = ctx.build(TRANSFORM).expect("build");
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let at_offset = v.allocate(40_000, DEV0).expect("at an offset");
    let dedicated =
        v.allocate_with(123_456, DEV0, AllocationOptions::default().dedicated(true)).expect("dedicated");
    for (buffer, what) in [(&at_offset, "exported, at an offset"), (&dedicated, "exported, dedicated")] {
        let view = ctx.import_memory(buffer.export().expect("export")).expect("import_memory");
        check_buffer(&queue, &program, buffer, &view, what);
    }
    let relayed = relay.import_memory(0, at_offset.export().expect("export")).expect("relay");
    let view = ctx.import_memory(relayed.export().expect("re-export")).expect("import re-export");
    check_buffer(&queue, &program, &at_offset, &view, "through a Vulkan import");
    drop(view);

    let data = random_bytes(dedicated.size() as usize);
    dedicated.write(0, &data).expect("write");
    let held = ctx.import_memory(dedicated.export().expect("export")).expect("import");
    v.wait_idle(0).expect("idle");
    drop(dedicated);
    v.trim();
    let mut out = poisoned(data.len());
    held.read(&queue, 0, &mut out).expect("OpenCL read after the Vulkan buffer is gone");
    assert_bytes_eq(&out, &data, "OpenCL's import outlives the Vulkan buffer");

    // A binary semaphore by its exported handle: Vulkan signals, OpenCL waits and signals a
    // second one, Vulkan waits for that.
    let (a, a_vk) = shared_binary(&mut v);
    let (b, b_vk) = shared_binary(&mut v);
    let cl_a = ctx.import_exported_semaphore(a.export().expect("export A")).expect("import A");
    let cl_b = ctx.import_exported_semaphore(b.export().expect("export B")).expect("import B");
    let done = v.timeline_semaphore(0).expect("timeline");
    v.submit(0, &lava_flow::Submission::new().signal_binary(&a_vk)).expect("Vulkan signals A");
    queue.wait_semaphore(&cl_a).expect("OpenCL waits for A");
    queue.signal_semaphore(&cl_b).expect("OpenCL signals B");
    v.submit(0, &lava_flow::Submission::new().wait_binary(&b_vk).signal(&done, 1)).expect("Vulkan waits");
    done.wait(1, std::time::Duration::from_secs(30)).expect("the chain completes");
    queue.finish().expect("finish");
    let timeline = v.timeline_semaphore(0).expect("timeline");
    let refused = ctx.import_exported_semaphore(timeline.export().expect("export timeline"));
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "OpenCL imports binary semaphores: {refused:?}"
    );
    v.wait_idle(0).expect("idle");
}

/// Spins `spins` steps of a 64-bit LCG per work-item (long enough for the host to drop what it
/// writes while it runs), then copies word `i`; `mask` is 0 at run time, so the spin cannot be
/// compiled away.
const SPIN_COPY: &str = r#"
__kernel void spin_copy(__global uint* dst, ulong dst_offset, __global const uint* src, ulong src_offset,
                        uint n, ulong spins, uint mask) {
    uint i = get_global_id(0);
    ulong acc = i;
    for (ulong k = 0; k < spins; k++) { acc = acc * 6364136223846793005UL + 1442695040888963407UL; }
    if (i < n) { dst[dst_offset + i] = src[src_offset + i] ^ ((uint)acc & mask); }
}
"#;

/// ADR 0014 on the GPU: OpenCL views dropped while a kernel that writes them still runs. A view
/// that borrows a buffer of a shared block finishes the queues it was acquired on before its
/// drop returns (so Vulkan, unordered with OpenCL, reads every byte the kernel wrote); an import
/// of an exported handle is kept by OpenCL itself until the kernel is done.
#[test]
fn views_dropped_under_a_running_kernel_keep_their_memory_until_it_completes() {
    let _measuring = shared();
    let mut v = Validated::new();
    let Some(ctx) = opencl_or_skip(&v, "drop under a running kernel") else { return };
    let queue = ctx.queue().expect("queue");
    let program = ctx.build(SPIN_COPY).expect("build");
    let bytes = 1usize << 20;
    let n = (bytes / 4) as u32;
    let data = random_bytes(bytes);
    let source =
        v.allocate_with(bytes as u64, DEV0, AllocationOptions::default().dedicated(true)).expect("source");
    source.write(0, &data).expect("data");
    let src = ctx.import_buffer(&source).expect("import source");
    let _pad = v.allocate(4096, DEV0).expect("pad");
    for exported in [false, true] {
        let target = v.allocate(bytes as u64, DEV0).expect("target");
        target.write(0, &poisoned(bytes)).expect("poison");
        let view = if exported {
            ctx.import_memory(target.export().expect("export")).expect("import exported")
        } else {
            ctx.import_buffer(&target).expect("import")
        };
        let mut kernel = program.kernel("spin_copy").expect("kernel");
        kernel.arg_buffer(0, &view).expect("arg 0");
        kernel.arg_u64(1, view.offset() / 4).expect("arg 1");
        kernel.arg_buffer(2, &src).expect("arg 2");
        kernel.arg_u64(3, src.offset() / 4).expect("arg 3");
        kernel.arg_u32(4, n).expect("arg 4");
        kernel.arg_u64(5, 1 << 24).expect("arg 5");
        kernel.arg_u32(6, 0).expect("arg 6");
        queue.acquire(&[&view, &src]).expect("acquire");
        queue.launch(&kernel, n as usize, None).expect("launch");
        queue.release(&[&view, &src]).expect("release");
        drop(kernel);
        drop(view);
        if exported {
            // OpenCL keeps the import until the kernel is done; wait for it here.
            queue.finish().expect("the kernel completes on memory that is still imported");
        }
        let mut out = poisoned(bytes);
        target.read(0, &mut out).expect("read");
        let what = if exported { "an exported import" } else { "a borrowed view of a shared block" };
        assert_bytes_eq(&out, &data, &format!("a kernel's writes through {what} dropped while it ran"));
    }
    queue.finish().expect("finish");
}
