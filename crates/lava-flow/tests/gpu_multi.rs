//! GPU tier, several GPUs: every Vulkan device's buffers, images and semaphores land on the
//! CUDA, OpenCL and EGL device with the same UUID; objects of one GPU offered to another GPU's
//! contexts are a typed error naming both UUIDs; peer copies between lava-flow buffers on two
//! GPUs, every byte checked, both directions, ordered by both GPUs' timelines — between buffers
//! Vulkan allocated (the driver's slow path) and between memory CUDA's virtual memory API
//! allocated, imported into Vulkan and granted to the other GPU (the direct path); and a chain of
//! small copies between `cuMemAlloc` memory, each after the last on the other GPU.
//!
//! Where a GPU, CUDA, OpenCL or EGL is missing each test prints why it skips. With
//! `LAVA_FLOW_REQUIRE_GPU=1` a missing API fails; with `LAVA_FLOW_REQUIRE_GPU=1` and
//! `LAVA_FLOW_REQUIRE_GPUS=2` fewer than two GPUs fail too.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, Side, Validated};
use lava_flow::cuda::{self, Context, DeviceMemory, PeerPath, PeerSide, Stream, TimelineStep};
use lava_flow::{DeviceType, Error, ImageDesc, ImageFormat, MemoryLocation, TimelineSemaphore, Uuid};

/// GL contexts, CUDA primary contexts and Vulkan devices of several GPUs: the tests run one at a
/// time (NVIDIA's `vkDestroyDevice` can deadlock with GL in other threads, RELIABILITY.md).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many GPUs the run must have (`LAVA_FLOW_REQUIRE_GPUS`, counted only with
/// `LAVA_FLOW_REQUIRE_GPU=1`).
fn required_gpus() -> usize {
    if !common::require_gpu() {
        return 0;
    }
    std::env::var("LAVA_FLOW_REQUIRE_GPUS").ok().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// One GPU both Vulkan and CUDA see.
#[derive(Debug, Clone)]
struct Gpu {
    device_id: u32,
    ordinal: i32,
    uuid: Uuid,
}

/// The GPUs (Vulkan devices that are not CPUs) with their CUDA ordinals, matched by UUID; `None`
/// with the reason printed where there are fewer than `at_least` (a failure where the run
/// requires that many, or where CUDA is required and missing).
fn gpus_or_skip(v: &Validated, test: &str, at_least: usize) -> Option<Vec<Gpu>> {
    let cuda = common::or_skip(cuda::devices(), test, "CUDA")?;
    let gpus: Vec<Gpu> = v
        .devices()
        .iter()
        .filter(|d| d.device_type != DeviceType::Cpu)
        .filter_map(|d| {
            let ordinal = cuda.iter().find(|c| c.uuid == d.uuid)?.ordinal;
            Some(Gpu { device_id: d.index, ordinal, uuid: d.uuid })
        })
        .collect();
    if gpus.len() >= at_least {
        return Some(gpus);
    }
    let why = format!(
        "{test}: {} GPU(s) with both Vulkan and CUDA ({} CUDA device(s)), {at_least} needed",
        gpus.len(),
        cuda.len()
    );
    assert!(required_gpus() < at_least, "LAVA_FLOW_REQUIRE_GPUS={}: {why}", required_gpus());
    assert!(at_least > 1 || !common::require_gpu(), "the GPU tier needs a GPU: {why}");
    println!("{why}: skipped");
    None
}

/// A buffer at a non-zero offset of a shared block (another buffer before it), so that a
/// mapping at the wrong offset or of the wrong GPU's memory shows in the bytes.
fn offset_buffer(v: &mut Validated, device_id: u32, size: u64) -> (lava_flow::Buffer, lava_flow::Buffer) {
    let location = MemoryLocation::GpuVulkan { device_id };
    let before = v.allocate(4096, location).expect("the buffer before");
    let buffer = v.allocate(size, location).expect("buffer");
    assert_ne!(buffer.offset(), 0, "a non-zero offset in its block");
    (before, buffer)
}

fn expect_mismatch<T>(made: lava_flow::Result<T>, what: &str, expected: Uuid, found: Uuid) {
    match made {
        Err(Error::DeviceMismatch { expected: e, found: f, .. }) => {
            assert_eq!((e, f), (expected, found), "{what}: the UUIDs named");
            let text = Error::DeviceMismatch { what: "x", expected: e, found: f }.to_string();
            assert!(text.contains(&expected.to_string()) && text.contains(&found.to_string()), "{text}");
        }
        Err(e) => panic!("{what}: expected DeviceMismatch, got {e}"),
        Ok(_) => panic!("{what}: an object of GPU {found} was accepted by GPU {expected}"),
    }
}

/// For each GPU: the CUDA ordinal and the Vulkan device agree by UUID both ways; a buffer at an
/// offset, an image and a timeline of that Vulkan device work in the CUDA context of the same
/// UUID, every byte both ways.
/// The CUDA side of two GPUs `a` and `b`: each one's context, and a stream of each.
struct CudaPair {
    ctx_a: Context,
    ctx_b: Context,
    stream_a: Stream,
    stream_b: Stream,
}

fn cuda_pair(v: &Validated, a: &Gpu, b: &Gpu) -> CudaPair {
    let (ctx_a, ctx_b) = (
        Context::for_device(v, a.device_id).expect("CUDA a"),
        Context::for_device(v, b.device_id).expect("CUDA b"),
    );
    let (stream_a, stream_b) = (ctx_a.stream().expect("stream a"), ctx_b.stream().expect("stream b"));
    CudaPair { ctx_a, ctx_b, stream_a, stream_b }
}

/// A timeline on each of two GPUs and its import into that GPU's CUDA context (the imports
/// first: they go first).
struct Timelines {
    cuda: [cuda::CudaTimeline<'static>; 2],
    vk: [Arc<TimelineSemaphore>; 2],
}

fn timelines(v: &mut Validated, pair: &CudaPair, a: &Gpu, b: &Gpu) -> Timelines {
    let vk = [
        Arc::new(v.timeline_semaphore(a.device_id).expect("tl a")),
        Arc::new(v.timeline_semaphore(b.device_id).expect("tl b")),
    ];
    let cuda = [
        pair.ctx_a.import_timeline_owned(Arc::clone(&vk[0])).expect("import tl a"),
        pair.ctx_b.import_timeline_owned(Arc::clone(&vk[1])).expect("import tl b"),
    ];
    Timelines { cuda, vk }
}

#[test]
fn every_gpu_lands_on_the_cuda_device_with_its_uuid() {
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "CUDA per device", 1) else { return };
    let cuda_devices = cuda::devices().expect("CUDA devices");
    for gpu in &gpus {
        let id = gpu.device_id;
        assert_eq!(cuda::ordinal_for(&v, id).expect("ordinal_for"), gpu.ordinal);
        assert_eq!(cuda::device_id_for(&v, gpu.ordinal).expect("device_id_for"), id);
        assert_eq!(cuda_devices[gpu.ordinal as usize].uuid, gpu.uuid, "the ordinal is the position");
        let ctx = Context::for_device(&v, id).expect("CUDA context");
        assert_eq!(ctx.uuid(), gpu.uuid, "device {id}: the context of its UUID");

        let (_before, buffer) = offset_buffer(&mut v, id, 1_000_003);
        let view = ctx.import_buffer(&buffer).expect("import buffer");
        let cuda_side = Side {
            name: "CUDA",
            write: Box::new(|d| view.copy_from_host(0, d).expect("CUDA write")),
            read: Box::new(|o| view.copy_to_host(0, o).expect("CUDA read")),
        };
        common::check_both_ways(
            buffer.size() as usize,
            &format!("device {id} = cuda:{}: buffer", gpu.ordinal),
            Side::buffer("Vulkan", &buffer),
            cuda_side,
        );

        let desc = ImageDesc::new(ImageFormat::Rgba8Unorm, 67, 33);
        let image = v.allocate_image(id, desc).expect("image");
        let cuda_image = ctx.import_image(&image).expect("import image");
        let data = random_bytes(desc.level_size(0) as usize);
        image.write_level(0, &data).expect("Vulkan write");
        let mut out = poisoned(data.len());
        cuda_image.level(0).expect("level").copy_to_host(&mut out).expect("CUDA read");
        assert_bytes_eq(&out, &data, &format!("device {id}: image, Vulkan → CUDA"));
        let back = random_bytes(data.len());
        cuda_image.level(0).expect("level").copy_from_host(&back).expect("CUDA write");
        ctx.synchronize().expect("sync");
        let mut out = poisoned(back.len());
        image.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &back, &format!("device {id}: image, CUDA → Vulkan"));

        // The timeline: CUDA's stream waits for Vulkan's 1, fills, signals 2; Vulkan sees it.
        let timeline = v.timeline_semaphore(id).expect("timeline");
        let sync = ctx.import_timeline(&timeline).expect("import timeline");
        let stream = ctx.stream().expect("stream");
        buffer.write(0, &poisoned(buffer.size() as usize)).expect("poison");
        sync.wait(1, &stream).expect("wait");
        cuda::fill_async(&view, 0, buffer.size() as usize, 0xA5, &stream).expect("fill");
        sync.signal(2, &stream).expect("signal");
        timeline.signal(1).expect("host signal");
        timeline.wait(2, Duration::from_secs(30)).expect("CUDA's signal reaches Vulkan");
        let mut out = poisoned(buffer.size() as usize);
        buffer.read(0, &mut out).expect("read");
        assert_bytes_eq(
            &out,
            &vec![0xA5; out.len()],
            &format!("device {id}: CUDA fill ordered by the timeline"),
        );
    }
    // CUDA moved these timelines: the Debian layer's known orphaned-pending-signal report.
    common::tolerate_orphaned_pending_signal(&v.validation_log().unwrap_or_default());
}

/// For each GPU: the OpenCL device with its UUID (across platforms, never by order) imports its
/// buffers, images and binary semaphores, every byte both ways.
#[cfg(feature = "opencl")]
#[test]
fn every_gpu_lands_on_the_opencl_device_with_its_uuid() {
    use lava_flow::opencl;
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "OpenCL per device", 1) else { return };
    for gpu in &gpus {
        let id = gpu.device_id;
        let Some(ctx) =
            common::or_skip(opencl::Context::for_device(&v, id), "OpenCL per device", "OpenCL imports")
        else {
            return;
        };
        assert_eq!(ctx.device().uuid, Some(gpu.uuid), "device {id}: the OpenCL device of its UUID");
        let queue = ctx.queue().expect("queue");
        let (_before, buffer) = offset_buffer(&mut v, id, 1_000_003);
        let view = ctx.import_buffer(&buffer).expect("import buffer");
        let cl_side = Side {
            name: "OpenCL",
            write: Box::new(|d| view.write(&queue, 0, d).expect("OpenCL write")),
            read: Box::new(|o| view.read(&queue, 0, o).expect("OpenCL read")),
        };
        common::check_both_ways(
            buffer.size() as usize,
            &format!("device {id}: OpenCL buffer"),
            Side::buffer("Vulkan", &buffer),
            cl_side,
        );
        let desc = ImageDesc::new(ImageFormat::Rgba8Unorm, 67, 33);
        let image = v.allocate_image(id, desc).expect("image");
        let cl_image = ctx.import_image(&image).expect("import image");
        let data = random_bytes(desc.level_size(0) as usize);
        image.write_level(0, &data).expect("Vulkan write");
        let mut out = poisoned(data.len());
        cl_image.read(&queue, &mut out).expect("OpenCL read");
        assert_bytes_eq(&out, &data, &format!("device {id}: image, Vulkan → OpenCL"));
        let back = random_bytes(data.len());
        cl_image.write(&queue, &back).expect("OpenCL write");
        queue.finish().expect("finish");
        let mut out = poisoned(back.len());
        image.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &back, &format!("device {id}: image, OpenCL → Vulkan"));
        let semaphore = v.binary_semaphore(id).expect("binary semaphore");
        ctx.import_semaphore(&semaphore).expect("the semaphore of the same GPU imports");
    }
}

/// For each GPU: the EGL display whose GL context reports its UUID imports its buffers, images
/// and timelines, every byte both ways.
#[cfg(feature = "opengl")]
#[test]
fn every_gpu_lands_on_the_egl_device_with_its_uuid() {
    use lava_flow::opengl::GlContext;
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "EGL per device", 1) else { return };
    for gpu in &gpus {
        let id = gpu.device_id;
        let info: lava_flow::DeviceInfo = v.device(id).expect("device").clone();
        let Some(ctx) = common::or_skip(GlContext::headless(&info), "EGL per device", "EGL") else { return };
        assert!(ctx.info().device_uuids.contains(&gpu.uuid), "device {id}: the GL context of its UUID");
        let (_before, buffer) = offset_buffer(&mut v, id, 1_000_003);
        let view = ctx.import_buffer(&buffer).expect("import buffer");
        let gl_side = Side {
            name: "OpenGL",
            write: Box::new(|d| view.write(0, d).expect("GL write")),
            read: Box::new(|o| view.read(0, o).expect("GL read")),
        };
        common::check_both_ways(
            buffer.size() as usize,
            &format!("device {id}: GL buffer"),
            Side::buffer("Vulkan", &buffer),
            gl_side,
        );
        let desc = ImageDesc::new(ImageFormat::Rgba8Unorm, 67, 33);
        let image = v.allocate_image(id, desc).expect("image");
        let texture = ctx.import_image(&image).expect("import image");
        let data = random_bytes(desc.level_size(0) as usize);
        image.write_level(0, &data).expect("Vulkan write");
        let mut out = poisoned(data.len());
        texture.read_level(0, &mut out).expect("GL read");
        assert_bytes_eq(&out, &data, &format!("device {id}: texture, Vulkan → GL"));
        let back = random_bytes(data.len());
        texture.write_level(0, &back).expect("GL write");
        ctx.finish().expect("glFinish");
        let mut out = poisoned(back.len());
        image.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &back, &format!("device {id}: texture, GL → Vulkan"));
        // The timeline: GL waits for Vulkan's 1, writes, signals 2; Vulkan waits for 2.
        let timeline = v.timeline_semaphore(id).expect("timeline");
        let gl_timeline = ctx.import_timeline(&timeline).expect("import timeline");
        let data = random_bytes(buffer.size() as usize);
        // Each signal is made before the wait for it: NVIDIA's GL did not hold a wait issued
        // before its signal (docs/opengl_interop.md).
        timeline.signal(1).expect("host signal");
        gl_timeline.wait(1, &[&view], &[]).expect("GL wait");
        view.write(0, &data).expect("GL write");
        gl_timeline.signal(2, &[&view], &[]).expect("GL signal");
        timeline.wait(2, Duration::from_secs(30)).expect("GL's signal reaches Vulkan");
        ctx.finish().expect("glFinish");
        // GL moved the timeline: the Debian layer's known orphaned-pending-signal report.
        common::tolerate_orphaned_pending_signal(&v.validation_log().unwrap_or_default());
        let mut out = poisoned(data.len());
        buffer.read(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &data, &format!("device {id}: GL write ordered by the timeline"));
    }
}

/// Memory, images and timelines of GPU A offered to GPU B's CUDA, OpenCL and GL contexts, and a
/// stream of A used with B's timeline: every one is `DeviceMismatch` naming both UUIDs, in both
/// directions; nothing is mapped.
#[test]
fn objects_of_one_gpu_are_refused_by_the_others_contexts_naming_both_uuids() {
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "cross-GPU imports", 2) else { return };
    for (a, b) in [(&gpus[0], &gpus[1]), (&gpus[1], &gpus[0])] {
        let buffer =
            v.allocate(65_536, MemoryLocation::GpuVulkan { device_id: a.device_id }).expect("buffer");
        let image =
            v.allocate_image(a.device_id, ImageDesc::new(ImageFormat::R32Float, 16, 16)).expect("image");
        let timeline = v.timeline_semaphore(a.device_id).expect("timeline");
        let ctx_a = Context::for_device(&v, a.device_id).expect("CUDA a");
        let ctx_b = Context::for_device(&v, b.device_id).expect("CUDA b");
        expect_mismatch(ctx_b.import_buffer(&buffer), "CUDA buffer", b.uuid, a.uuid);
        expect_mismatch(ctx_b.import_memory(buffer.export().expect("export")), "CUDA memory", b.uuid, a.uuid);
        expect_mismatch(ctx_b.import_image(&image), "CUDA image", b.uuid, a.uuid);
        expect_mismatch(ctx_b.import_timeline(&timeline), "CUDA timeline", b.uuid, a.uuid);
        let timeline_b = v.timeline_semaphore(b.device_id).expect("timeline b");
        let sync_b = ctx_b.import_timeline(&timeline_b).expect("b's own timeline");
        let stream_a = ctx_a.stream().expect("stream a");
        expect_mismatch(sync_b.wait(1, &stream_a), "a stream of A for B's timeline", b.uuid, a.uuid);
        // The same memory does import on its own GPU.
        ctx_a.import_buffer(&buffer).expect("A's buffer in A's context");
        #[cfg(feature = "opencl")]
        if let Some(cl_b) = common::or_skip(
            lava_flow::opencl::Context::for_device(&v, b.device_id),
            "cross-GPU",
            "OpenCL imports",
        ) {
            expect_mismatch(cl_b.import_buffer(&buffer), "OpenCL buffer", b.uuid, a.uuid);
            expect_mismatch(cl_b.import_image(&image), "OpenCL image", b.uuid, a.uuid);
        }
        #[cfg(feature = "opengl")]
        {
            let info_b: lava_flow::DeviceInfo = v.device(b.device_id).expect("device b").clone();
            if let Some(gl_b) =
                common::or_skip(lava_flow::opengl::GlContext::headless(&info_b), "cross-GPU", "EGL")
            {
                expect_mismatch(gl_b.import_buffer(&buffer), "GL buffer", b.uuid, a.uuid);
                expect_mismatch(gl_b.import_image(&image), "GL texture", b.uuid, a.uuid);
                expect_mismatch(gl_b.import_timeline(&timeline), "GL timeline", b.uuid, a.uuid);
            }
        }
    }
}

/// A copy from a lava-flow buffer on one GPU into one on the other, at non-zero offsets, ordered
/// by both timelines (wait for each side's value, signal after), in both directions: direct
/// (peer access) where the GPUs have it, and staged through host memory on purpose, with a size
/// that crosses the staging chunks. Every byte of the destination is checked, including the
/// poisoned bytes around the copied range.
#[test]
fn peer_copies_every_byte_both_directions_ordered_by_both_timelines() {
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "peer copies", 2) else { return };
    let len = (40 << 20) + 4099; // more than one 32 MiB staging chunk, not a multiple of anything
    let (src_at, dst_at) = (4096u64, 12_288u64);
    for (a, b) in [(&gpus[0], &gpus[1]), (&gpus[1], &gpus[0])] {
        let src = v
            .allocate(src_at + len as u64, MemoryLocation::GpuVulkan { device_id: a.device_id })
            .expect("src");
        let dst = v
            .allocate(dst_at + len as u64 + 777, MemoryLocation::GpuVulkan { device_id: b.device_id })
            .expect("dst");
        let pair = cuda_pair(&v, a, b);
        let CudaPair { ctx_a, ctx_b, stream_a, stream_b } = &pair;
        let (view_a, view_b) =
            (ctx_a.import_buffer(&src).expect("import src"), ctx_b.import_buffer(&dst).expect("import dst"));
        let timelines = timelines(&mut v, &pair, a, b);
        let direct = cuda::can_access_peer(ctx_b, ctx_a).expect("cuDeviceCanAccessPeer");
        println!("peer copy cuda:{} -> cuda:{}: peer access {direct}", a.ordinal, b.ordinal);

        // Bad input is refused before anything is queued.
        let src_side = PeerSide { memory: &view_a, offset: src_at, stream: stream_a, step: None };
        let dst_side = PeerSide { memory: &view_b, offset: dst_at, stream: stream_b, step: None };
        assert!(matches!(cuda::copy_peer(src_side, dst_side, len + 1), Err(Error::OutOfRange { .. })));
        expect_mismatch(
            cuda::copy_peer(src_side, PeerSide { stream: stream_a, ..dst_side }, len),
            "the destination's stream on the source's GPU",
            b.uuid,
            a.uuid,
        );

        // Round 1 waits for 1 and signals 2; round 2 waits for 3 and signals 4.
        let round = OrderedRound {
            src: &src,
            dst: &dst,
            sides: (src_side, dst_side),
            timelines: &timelines,
            len,
            what: format!("cuda:{} -> cuda:{}", a.ordinal, b.ordinal),
        };
        for (wait, staged) in [(1u64, false), (3, true)] {
            let copy = if staged { cuda::copy_peer_staged } else { cuda::copy_peer };
            let path = round.run(wait, staged, copy);
            match (&path, staged, direct) {
                // Buffers Vulkan allocated are imported memory: the driver's slow path, said so.
                (PeerPath::ThroughDriver { reason }, false, true) => {
                    assert!(reason.contains("imported") && reason.contains("alloc_exportable"), "{reason}")
                }
                (PeerPath::StagedThroughHost { .. }, true, _) => {}
                (PeerPath::StagedThroughHost { reason }, false, false) => {
                    assert!(reason.contains("cuDeviceCanAccessPeer"), "{reason}")
                }
                other => panic!("unexpected path {other:?}"),
            }
        }
    }
    // CUDA moved these timelines: the Debian layer's known orphaned-pending-signal report.
    common::tolerate_orphaned_pending_signal(&v.validation_log().unwrap_or_default());
}

/// One round of a peer copy between two GPUs, ordered by both GPUs' timelines: the source and
/// destination as lava-flow buffers (written, poisoned and read back through Vulkan), the same
/// memory as `sides` for CUDA (offsets, streams; no steps), and each GPU's timeline with its
/// CUDA import (source's first).
struct OrderedRound<'a> {
    src: &'a lava_flow::Buffer,
    dst: &'a lava_flow::Buffer,
    sides: (PeerSide<'a>, PeerSide<'a>),
    timelines: &'a Timelines,
    len: usize,
    what: String,
}

impl OrderedRound<'_> {
    /// Random bytes into the source's range, poison over all of the destination, then `copy`
    /// waiting for `wait` on both timelines and signalling `wait + 1`. A copy that `stages`
    /// returns once the bytes arrived, so its waits are satisfied first; a queued one must hold
    /// until they are (checked). Every byte of the destination is checked; returns the path.
    fn run(
        &self,
        wait: u64,
        stages: bool,
        copy: fn(PeerSide<'_>, PeerSide<'_>, usize) -> lava_flow::Result<PeerPath>,
    ) -> PeerPath {
        let (src_side, dst_side) = self.sides;
        let ([sync_a, sync_b], [tl_a, tl_b]) = (&self.timelines.cuda, &self.timelines.vk);
        let data = random_bytes(self.len);
        self.src.write(src_side.offset, &data).expect("the source written through Vulkan");
        let poison = poisoned(self.dst.size() as usize);
        self.dst.write(0, &poison).expect("the destination poisoned through Vulkan");
        let step = |timeline| Some(TimelineStep { timeline, wait, signal: wait + 1 });
        let (from, to) =
            (PeerSide { step: step(sync_a), ..src_side }, PeerSide { step: step(sync_b), ..dst_side });
        let release = || {
            tl_a.signal(wait).expect("a's bytes are written");
            tl_b.signal(wait).expect("b's bytes may be overwritten");
        };
        let path = if stages {
            release();
            copy(from, to, self.len).expect("staged copy")
        } else {
            let path = copy(from, to, self.len).expect("queued copy");
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(tl_b.value().expect("value"), wait - 1, "the copy waits for the timelines");
            release();
            path
        };
        tl_b.wait(wait + 1, Duration::from_secs(60)).expect("the destination's signal");
        tl_a.wait(wait + 1, Duration::from_secs(60)).expect("the source's signal");
        let what = format!("{} ({path})", self.what);
        check_landed(self.dst, dst_side.offset as usize, &data, &poison, &what);
        path
    }
}

/// Checks `dst` (read back through Vulkan) after a copy of `data` to `at`: the range holds the
/// data, every byte around it still the poison.
fn check_landed(dst: &lava_flow::Buffer, at: usize, data: &[u8], poison: &[u8], what: &str) {
    let mut out = poisoned(dst.size() as usize);
    dst.read(0, &mut out).expect("dst read through Vulkan");
    assert_bytes_eq(&out[..at], &poison[..at], &format!("{what}: before the range"));
    assert_bytes_eq(&out[at..at + data.len()], data, what);
    assert_bytes_eq(&out[at + data.len()..], &poison[at + data.len()..], &format!("{what}: after"));
}

/// The full-speed path: memory CUDA allocates on each GPU (`alloc_exportable`, virtual memory
/// API) imported into each GPU's Vulkan device, random bytes written through Vulkan on GPU a,
/// copied at non-zero offsets to GPU b ordered by both timelines, and every byte read back
/// through Vulkan on b (the poison around the range included), in both directions. Before the
/// source grants b access the copy is staged through the host and says `grant_access`; after,
/// it is `Direct` (where `cuDeviceCanAccessPeer` allows; elsewhere the grant is a typed error
/// and the copy stays staged).
#[cfg(unix)]
#[test]
fn peer_copies_between_vmm_buffers_are_direct_once_granted_every_byte_both_directions() {
    use lava_flow::cuda::PeerMapping;
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "VMM peer copies", 2) else { return };
    let len = (40 << 20) + 4099; // more than one 32 MiB staging chunk, not a multiple of anything
    let (src_at, dst_at) = (4096usize, 12_288usize);
    for (a, b) in [(&gpus[0], &gpus[1]), (&gpus[1], &gpus[0])] {
        let pair = cuda_pair(&v, a, b);
        let CudaPair { ctx_a, ctx_b, stream_a, stream_b } = &pair;
        let src_memory = ctx_a.alloc_exportable((src_at + len) as u64).expect("cuMemCreate on a");
        let dst_memory = ctx_b.alloc_exportable((dst_at + len + 777) as u64).expect("cuMemCreate on b");
        let src = src_memory.import_into(&mut v, a.device_id).expect("a's memory into a's Vulkan");
        let dst = dst_memory.import_into(&mut v, b.device_id).expect("b's memory into b's Vulkan");
        let timelines = timelines(&mut v, &pair, a, b);
        let direct = cuda::can_access_peer(ctx_b, ctx_a).expect("cuDeviceCanAccessPeer");
        println!("VMM peer copy cuda:{} -> cuda:{}: peer access {direct}", a.ordinal, b.ordinal);
        assert_eq!(src_memory.peer_mapping(), PeerMapping::Granted(vec![ctx_a.raw_device()]));
        assert!(!src_memory.is_accessible_from(ctx_b), "not granted yet");

        let src_side = PeerSide { memory: &src_memory, offset: src_at as u64, stream: stream_a, step: None };
        let dst_side = PeerSide { memory: &dst_memory, offset: dst_at as u64, stream: stream_b, step: None };
        let round = OrderedRound {
            src: &src,
            dst: &dst,
            sides: (src_side, dst_side),
            timelines: &timelines,
            len,
            what: format!("VMM cuda:{} -> cuda:{}", a.ordinal, b.ordinal),
        };
        // Round 1 (waits for 1, signals 2): not granted, so staged; round 2 (3, 4): granted.
        for (wait, granted) in [(1u64, false), (3, true)] {
            if granted {
                match src_memory.grant_access(ctx_b) {
                    Ok(()) => {
                        assert!(direct, "granted although cuDeviceCanAccessPeer says no");
                        src_memory.grant_access(ctx_b).expect("granting twice is fine");
                        assert!(src_memory.is_accessible_from(ctx_b));
                        assert_eq!(
                            src_memory.peer_mapping(),
                            PeerMapping::Granted(vec![ctx_a.raw_device(), ctx_b.raw_device()]),
                            "the owner, then the peer, once"
                        );
                    }
                    Err(Error::Unsupported { what }) if !direct => {
                        assert!(
                            what.contains(&a.uuid.to_string()) && what.contains(&b.uuid.to_string()),
                            "{what}"
                        );
                        assert!(!src_memory.is_accessible_from(ctx_b));
                    }
                    Err(e) => panic!("grant_access: {e}"),
                }
            }
            let will_stage = !(granted && direct);
            let path = round.run(wait, will_stage, cuda::copy_peer);
            match (&path, will_stage) {
                (PeerPath::Direct, false) => {}
                (PeerPath::StagedThroughHost { reason }, true) => assert!(
                    reason.contains(if direct { "grant_access" } else { "cuDeviceCanAccessPeer" }),
                    "{reason}"
                ),
                other => panic!("granted {granted}, peer access {direct}: unexpected path {other:?}"),
            }
        }
    }
    // CUDA moved these timelines: the Debian layer's known orphaned-pending-signal report.
    common::tolerate_orphaned_pending_signal(&v.validation_log().unwrap_or_default());
}

/// A chain of small peer copies, queued without a host wait, each reading what the one before
/// wrote on the other GPU: `cuMemAlloc` memory on both GPUs, copy `i` from slot `i` of one side
/// to slot `i + 1` of the other, directions alternating. Each copy is ordered only by
/// `copy_peer`'s own cross-GPU orderings, whose events are reused call after call (spares of
/// each context) and whose fences replace one another per stream: a reused event that moved an
/// earlier wait, or a copy that did not wait for the one before, leaves a slot unlike the
/// source's bytes. Slots no copy writes keep their poison.
#[test]
fn a_chain_of_small_peer_copies_each_after_the_last_on_the_other_gpu_lands_every_byte() {
    let _serial = serial();
    let v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "peer copy chain", 2) else { return };
    let CudaPair { ctx_a, ctx_b, stream_a, stream_b } = cuda_pair(&v, &gpus[0], &gpus[1]);
    let (slot, copies) = (4096 + 13, 200usize); // odd-sized slots, many more copies than spares
    let size = (slot * (copies + 1)) as u64;
    let (on_a, on_b) =
        (ctx_a.alloc(size).expect("cuMemAlloc on a"), ctx_b.alloc(size).expect("cuMemAlloc on b"));
    let poison = poisoned(size as usize);
    on_a.copy_from_host(0, &poison).expect("poison a");
    on_b.copy_from_host(0, &poison).expect("poison b");
    let data = random_bytes(slot);
    on_a.copy_from_host(0, &data).expect("slot 0 of a");
    let direct = cuda::can_access_peer(&ctx_b, &ctx_a).expect("cuDeviceCanAccessPeer")
        && cuda::can_access_peer(&ctx_a, &ctx_b).expect("cuDeviceCanAccessPeer");
    let sides = [(&on_a as &dyn DeviceMemory, &stream_a), (&on_b as &dyn DeviceMemory, &stream_b)];
    for i in 0..copies {
        let ((from, from_stream), (to, to_stream)) = (sides[i % 2], sides[(i + 1) % 2]);
        let path = cuda::copy_peer(
            PeerSide { memory: from, offset: (i * slot) as u64, stream: from_stream, step: None },
            PeerSide { memory: to, offset: ((i + 1) * slot) as u64, stream: to_stream, step: None },
            slot,
        )
        .unwrap_or_else(|e| panic!("copy {i}: {e}"));
        match (&path, direct) {
            (PeerPath::Direct, true) | (PeerPath::StagedThroughHost { .. }, false) => {}
            other => panic!("copy {i}, peer access {direct}: unexpected path {other:?}"),
        }
    }
    stream_a.synchronize().expect("stream a");
    stream_b.synchronize().expect("stream b");
    for (k, (memory, name)) in [(&on_a, "a"), (&on_b, "b")].into_iter().enumerate() {
        let mut out = vec![0u8; size as usize];
        memory.copy_to_host(0, &mut out).expect("read back");
        for s in 0..=copies {
            // Slot s of side k was written when s and k have the same parity (slot 0 of a by the
            // host, slot s > 0 by copy s - 1).
            let want: &[u8] = if s % 2 == k { &data } else { &poison[..slot] };
            assert_bytes_eq(&out[s * slot..(s + 1) * slot], want, &format!("slot {s} of {name}"));
        }
    }
}

/// The rules of grants and copies of VMM memory, on any number of GPUs: granting the
/// allocation's own GPU (through another handle to its context) is a no-op, as often as asked;
/// no allocation of zero bytes; ranges outside the memory and streams of another GPU are typed
/// errors before anything is queued; a copy within one GPU is direct and lands every byte.
#[cfg(unix)]
#[test]
fn vmm_grants_to_the_own_gpu_are_no_ops_and_bad_inputs_are_typed() {
    use lava_flow::cuda::PeerMapping;
    let _serial = serial();
    let mut v = Validated::new();
    let Some(gpus) = gpus_or_skip(&v, "VMM grants", 1) else { return };
    let gpu = &gpus[0];
    let ctx = Context::for_device(&v, gpu.device_id).expect("CUDA");
    assert!(matches!(ctx.alloc_exportable(0), Err(Error::ZeroSize)));
    let (src_memory, dst_memory) =
        (ctx.alloc_exportable(1 << 20).expect("src"), ctx.alloc_exportable((1 << 20) + 5).expect("dst"));
    let same_gpu = Context::for_device(&v, gpu.device_id).expect("another handle to the context");
    for _ in 0..2 {
        src_memory.grant_access(&ctx).expect("its own context");
        src_memory.grant_access(&same_gpu).expect("another handle of its GPU");
    }
    assert!(src_memory.is_accessible_from(&same_gpu));
    assert_eq!(src_memory.peer_mapping(), PeerMapping::Granted(vec![ctx.raw_device()]), "nothing added");

    let stream = ctx.stream().expect("stream");
    let src_side = PeerSide { memory: &src_memory, offset: 0, stream: &stream, step: None };
    let dst_side = PeerSide { memory: &dst_memory, offset: 5, stream: &stream, step: None };
    match cuda::copy_peer(src_side, dst_side, (1 << 20) + 1) {
        Err(Error::OutOfRange { size, .. }) => assert_eq!(size, 1 << 20),
        other => panic!("a range past the source: {other:?}"),
    }
    match cuda::copy_peer(src_side, PeerSide { offset: 6, ..dst_side }, 1 << 20) {
        Err(Error::OutOfRange { offset: 6, .. }) => {}
        other => panic!("a range past the destination: {other:?}"),
    }
    if let Some(other) = gpus.get(1) {
        let other_ctx = Context::for_device(&v, other.device_id).expect("CUDA of the other GPU");
        let other_stream = other_ctx.stream().expect("a stream of the other GPU");
        expect_mismatch(
            cuda::copy_peer(src_side, PeerSide { stream: &other_stream, ..dst_side }, 1 << 20),
            "the destination's stream on another GPU",
            gpu.uuid,
            other.uuid,
        );
    }

    // Within one GPU: direct, every byte, read back through Vulkan.
    let dst = dst_memory.import_into(&mut v, gpu.device_id).expect("into Vulkan");
    let data = random_bytes(1 << 20);
    src_memory.copy_from_host(0, &data).expect("CUDA write");
    let poison = poisoned(dst.size() as usize);
    dst.write(0, &poison).expect("poison through Vulkan");
    assert_eq!(cuda::copy_peer(src_side, dst_side, 1 << 20).expect("copy"), PeerPath::Direct);
    stream.synchronize().expect("sync");
    check_landed(&dst, 5, &data, &poison, "VMM copy within one GPU");
}
