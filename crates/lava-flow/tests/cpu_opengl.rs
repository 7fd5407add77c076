//! CPU tier for OpenGL: lavapipe exports, llvmpipe imports (real in CI). On the GPU machine the
//! same tests run on NVIDIA's Vulkan and GL through the EGL device platform.
#![cfg(feature = "opengl")]

mod common;

use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, FillThenCopy, Side, Validated};
use glow::HasContext;
use lava_flow::opengl::{GlBuffer, GlContext};
use lava_flow::{AllocationOptions, Buffer, Error, Exportable, MemoryLocation, Submission};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

/// These tests run in parallel threads, each with its own allocator and GL context: that is the
/// regression test of the NVIDIA `vkDestroyDevice` deadlock (driver 580.159.04: the destroying
/// thread waited in the driver for a worker that waited for a lock other threads' GL calls held;
/// 1 run in 8 to 14 hung on the H200). The library now defers `vkDestroyDevice` on NVIDIA until
/// no GL context is alive (`teardown.rs`); 174 parallel runs in a row then passed, none hung
/// (docs/RELIABILITY.md). `LAVA_FLOW_GL_SERIAL=1` runs them one at a time.
fn serial() -> Option<std::sync::MutexGuard<'static, ()>> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !std::env::var("LAVA_FLOW_GL_SERIAL").is_ok_and(|v| v == "1") {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn context(v: &Validated) -> GlContext {
    let ctx = GlContext::headless(v.device(0).expect("device 0")).expect("a headless GL context on device 0");
    let info = ctx.info();
    println!(
        "GL: {} / {} / {} on {:?}; ignores memory offsets: {}; semaphores: {}",
        info.vendor,
        info.renderer,
        info.version,
        info.platform,
        info.ignores_memory_offset,
        info.has_extension("GL_EXT_semaphore_fd")
    );
    assert!(info.has_extension("GL_EXT_memory_object_fd"), "both tiers' GL drivers import opaque fds");
    if common::require_gpu() {
        assert!(!info.ignores_memory_offset, "NVIDIA takes the plain path");
    }
    ctx
}

/// Vulkan writes, GL reads; GL writes, Vulkan reads; every byte, random data, poisoned outputs.
fn check_both_directions(buffer: &Buffer, view: &GlBuffer<'_>, what: &str) {
    let gl = Side {
        name: "GL",
        write: Box::new(|d| view.write(0, d).expect("GL write")),
        read: Box::new(|o| view.read(0, o).expect("GL read")),
    };
    common::check_both_ways(buffer.size() as usize, what, Side::buffer("Vulkan", buffer), gl);
}

#[test]
fn buffers_are_shared_both_ways_at_offsets_and_dedicated() {
    let _serial = serial();
    let mut v = Validated::new();
    let first = v.allocate(70_000, DEV0).expect("first");
    let second = v.allocate(123_457, DEV0).expect("second");
    let dedicated =
        v.allocate_with(99_999, DEV0, AllocationOptions::default().dedicated(true)).expect("dedicated");
    assert_ne!(second.offset(), 0);
    assert_eq!(first.vk_memory(), second.vk_memory(), "both in one block");
    let ctx = context(&v);
    let a = ctx.import_buffer(&first).expect("import first");
    let b = ctx.import_buffer(&second).expect("import second");
    let d = ctx.import_buffer(&dedicated).expect("import dedicated");
    if ctx.info().ignores_memory_offset {
        assert_eq!(a.gl_buffer(), b.gl_buffer(), "one GL buffer over the block");
        assert_eq!(b.offset(), second.offset());
    } else {
        assert_eq!(b.offset(), 0);
    }
    check_both_directions(&second, &b, "sub-allocated at a non-zero offset");
    check_both_directions(&first, &a, "sub-allocated at offset 0");
    check_both_directions(&dedicated, &d, "dedicated");
    // Writes through one view stay inside its range: the neighbour is untouched.
    let keep = random_bytes(first.size() as usize);
    first.write(0, &keep).expect("write");
    b.write(0, &random_bytes(second.size() as usize)).expect("GL write");
    let mut out = poisoned(keep.len());
    first.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &keep, "the neighbouring buffer");
    assert!(matches!(b.read(1, &mut vec![0; second.size() as usize]), Err(Error::OutOfRange { .. })));
}

/// Runs a GL compute shader (through `glow`, as a user would) over the `words` u32s of `view`:
/// `words[i] = f(words[i], i)` with `f` given as GLSL.
#[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of GL calls, as users write it")]
fn run_compute(ctx: &GlContext, view: &GlBuffer<'_>, words: usize, f: &str) {
    // SAFETY: the context is current on this thread; the loader is its own.
    let gl = unsafe { glow::Context::from_loader_function(|s| ctx.proc_address(s)) };
    let source = format!(
        r#"#version 450
        layout(local_size_x = 64) in;
        layout(std430, binding = 0) buffer Data {{ uint words[]; }};
        uniform uint count;
        void main() {{
            uint i = gl_GlobalInvocationID.x;
            if (i < count) {{ uint w = words[i]; words[i] = {f}; }}
        }}"#
    );
    ctx.make_current().expect("current");
    // SAFETY: plain GL calls on the current context with valid arguments.
    unsafe {
        let shader = gl.create_shader(glow::COMPUTE_SHADER).expect("shader");
        gl.shader_source(shader, &source);
        gl.compile_shader(shader);
        assert!(gl.get_shader_compile_status(shader), "{}", gl.get_shader_info_log(shader));
        let program = gl.create_program().expect("program");
        gl.attach_shader(program, shader);
        gl.link_program(program);
        assert!(gl.get_program_link_status(program), "{}", gl.get_program_info_log(program));
        gl.use_program(Some(program));
        let count = gl.get_uniform_location(program, "count").expect("uniform");
        gl.uniform_1_u32(Some(&count), words as u32);
        gl.bind_buffer_range(
            glow::SHADER_STORAGE_BUFFER,
            0,
            Some(glow::NativeBuffer(std::num::NonZeroU32::new(view.gl_buffer()).expect("a GL name"))),
            view.offset() as i32,
            view.size() as i32,
        );
        gl.dispatch_compute((words as u32).div_ceil(64), 1, 1);
        gl.memory_barrier(glow::ALL_BARRIER_BITS);
        assert_eq!(gl.get_error(), glow::NO_ERROR);
        gl.delete_program(program);
        gl.delete_shader(shader);
    }
}

fn words_of(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// A GL compute shader transforms Vulkan-written data in place; Vulkan checks every word.
#[test]
fn compute_shader_writes_what_vulkan_reads() {
    let _serial = serial();
    let mut v = Validated::new();
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let words = 40_000usize;
    let buffer = v.allocate((words * 4) as u64, DEV0).expect("buffer");
    let input = random_bytes(words * 4);
    buffer.write(0, &input).expect("write");
    let ctx = context(&v);
    let view = ctx.import_buffer(&buffer).expect("import");
    run_compute(&ctx, &view, words, "(w ^ 0x5A5A5A5Au) + i");
    ctx.finish().expect("glFinish");
    let mut out = poisoned(words * 4);
    buffer.read(0, &mut out).expect("Vulkan read");
    let want: Vec<u8> = words_of(&input)
        .enumerate()
        .flat_map(|(i, x)| ((x ^ 0x5A5A_5A5A).wrapping_add(i as u32)).to_le_bytes())
        .collect();
    assert_bytes_eq(&out, &want, "compute shader output read by Vulkan");
}

/// Vulkan fills a buffer on its queue and signals 1; GL waits for 1, transforms it with a compute
/// shader and signals 2; Vulkan waits for 2 and copies the result into a second buffer, then
/// signals 3. Only the final check waits on the host. (On the host fallback GL's wait for 1 is a
/// host wait; the order is the same.)
#[test]
fn vulkan_gl_vulkan_chain_ordered_by_one_timeline() {
    let _serial = serial();
    let mut v = Validated::new();
    let words = 65_536usize;
    let bytes = (words * 4) as u64;
    let _pad = v.allocate(8192, DEV0).expect("pad");
    let shared = v.allocate(bytes, DEV0).expect("shared");
    let result = v.allocate(bytes, DEV0).expect("result");
    result.write(0, &poisoned(words * 4)).expect("poison");
    let timeline = v.timeline_semaphore(0).expect("timeline");
    let ctx = context(&v);
    let view = ctx.import_buffer(&shared).expect("import");
    let sync = ctx.import_timeline(&timeline).expect("timeline in GL");
    let pattern = 0x0102_0304u32;
    let chain = FillThenCopy::record(&v, &shared, &result, pattern);
    let (fill, copy) = chain.submissions();
    v.submit(0, &fill.signal(&timeline, 1)).expect("submit fill");
    sync.wait(1, &[&view], &[]).expect("GL waits for the fill");
    run_compute(&ctx, &view, words, "w * 3u + i");
    sync.signal(2, &[&view], &[]).expect("GL signals");
    v.submit(0, &copy.wait(&timeline, 2).signal(&timeline, 3)).expect("submit copy");
    timeline.wait(3, Duration::from_secs(30)).expect("the chain completes");
    drop(chain);
    let mut out = poisoned(words * 4);
    result.read(0, &mut out).expect("read");
    let want: Vec<u8> =
        (0..words as u32).flat_map(|i| pattern.wrapping_mul(3).wrapping_add(i).to_le_bytes()).collect();
    assert_bytes_eq(&out, &want, "Vulkan fill → GL compute → Vulkan copy");
}

#[test]
fn timeline_orders_vulkan_and_gl_both_ways() {
    let _serial = serial();
    let mut v = Validated::new();
    let buffer = v.allocate(300_001, DEV0).expect("buffer");
    let timeline = v.timeline_semaphore(0).expect("semaphore");
    let ctx = context(&v);
    let view = ctx.import_buffer(&buffer).expect("import");
    let sync = ctx.import_timeline(&timeline).expect("timeline in GL");
    println!("GL timeline on the {} path", if sync.is_gpu_path() { "GPU" } else { "host fallback" });
    if common::require_gpu() {
        assert!(sync.is_gpu_path(), "NVIDIA imports timeline semaphores into GL");
    }
    // GL writes, then signals 1; Vulkan waits for 1 (queue: then signals 2), then reads.
    let data = random_bytes(300_001);
    view.write(0, &data).expect("GL write");
    sync.signal(1, &[&view], &[]).expect("GL signal");
    let done = v.timeline_semaphore(0).expect("semaphore");
    v.submit(0, &Submission::new().wait(&timeline, 1).signal(&done, 1)).expect("submit");
    done.wait(1, Duration::from_secs(10)).expect("the queue saw GL's signal");
    let mut out = poisoned(data.len());
    buffer.read(0, &mut out).expect("Vulkan read");
    assert_bytes_eq(&out, &data, "GL → Vulkan, ordered by the timeline");
    // Vulkan writes, the queue signals 2; GL waits for 2, then reads.
    let back = random_bytes(300_001);
    buffer.write(0, &back).expect("Vulkan write");
    v.submit(0, &Submission::new().signal(&timeline, 2)).expect("submit");
    sync.wait(2, &[&view], &[]).expect("GL wait");
    let mut out = poisoned(back.len());
    view.read(0, &mut out).expect("GL read");
    assert_bytes_eq(&out, &back, "Vulkan → GL, ordered by the timeline");
    assert!(matches!(sync.signal(2, &[], &[]), Err(Error::InvalidArgument(_))), "values must increase");
    // Only GL observed the queue's signal of 2: a fenced wait tells the validation layer that
    // the submission is done before the semaphore is destroyed.
    v.wait_idle(0).expect("queue idle");
}

#[test]
fn non_exportable_memory_is_refused() {
    let _serial = serial();
    let mut v = Validated::new();
    let plain = v
        .allocate_with(4096, DEV0, AllocationOptions::default().exportable(Exportable::No))
        .expect("plain buffer");
    let ctx = context(&v);
    match ctx.import_buffer(&plain) {
        Err(e @ Error::NotExportable { .. }) => {
            assert!(e.to_string().contains("allocated without export"), "{e}")
        }
        other => panic!("expected NotExportable, got {other:?}"),
    };
}

#[test]
fn many_buffers_share_one_memory_object_and_all_are_released() {
    let _serial = serial();
    let mut v = Validated::new();
    let ctx = context(&v);
    for round in 0..3 {
        let buffers: Vec<_> = (0..50).map(|_| v.allocate(10_000, DEV0).expect("allocate")).collect();
        let views: Vec<_> = buffers.iter().map(|b| ctx.import_buffer(b).expect("import")).collect();
        for (b, view) in buffers.iter().zip(&views).step_by(7) {
            check_both_directions(b, view, &format!("round {round}"));
        }
    }
}

/// Every format, optimal (3 levels) and linear (1 level) tiling: Vulkan writes each level and GL
/// reads it (`glGetTextureImage`); GL writes each level (`glTextureSubImage2D`) and Vulkan reads it.
#[test]
fn textures_of_every_format_and_tiling_round_trip() {
    let _serial = serial();
    use lava_flow::{ImageDesc, ImageFormat, ImageTiling};
    let mut v = Validated::new();
    let ctx = context(&v);
    let mut tried = 0;
    for format in ImageFormat::ALL {
        for (tiling, levels) in [(ImageTiling::Optimal, 3), (ImageTiling::Linear, 1)] {
            let desc = ImageDesc::new(format, 45, 29).mip_levels(levels).tiling(tiling);
            let image = match v.allocate_image(0, desc) {
                Ok(i) => i,
                Err(Error::Unsupported { what }) if tiling == ImageTiling::Linear => {
                    println!("skipped linear {format:?}: {what}");
                    continue;
                }
                Err(e) => panic!("{format:?} {tiling:?}: {e}"),
            };
            let texture = match ctx.import_image(&image) {
                Ok(t) => t,
                Err(Error::Unsupported { what }) if tiling == ImageTiling::Linear => {
                    println!("skipped linear {format:?} in GL: {what}");
                    continue;
                }
                Err(e) => panic!("{format:?} {tiling:?}: {e}"),
            };
            tried += 1;
            for level in 0..levels {
                let what = format!("{format:?} {tiling:?} level {level}");
                let len = desc.level_size(level) as usize;
                let data = common::texel_data(format, len);
                image.write_level(level, &data).expect("Vulkan write");
                let mut out = poisoned(len);
                texture.read_level(level, &mut out).expect("GL read");
                assert_bytes_eq(&out, &data, &format!("{what}: Vulkan → GL"));
                let back = common::texel_data(format, len);
                texture.write_level(level, &back).expect("GL write");
                ctx.finish().expect("glFinish");
                let mut out = poisoned(len);
                image.read_level(level, &mut out).expect("Vulkan read");
                assert_bytes_eq(&out, &back, &format!("{what}: GL → Vulkan"));
            }
        }
    }
    assert!(tried >= ImageFormat::ALL.len(), "every format with optimal tiling at least");
}

/// Levels an image does not have — just past its last, and from 32 on, where the level's size
/// cannot be computed with a plain shift — are typed `InvalidArgument`s in Vulkan and GL alike,
/// before anything is computed for them (GL's check computed the size first and panicked with a
/// shift overflow at level 32). The image's real levels are untouched.
#[test]
fn levels_an_image_does_not_have_are_refused_not_panicked_on() {
    let _serial = serial();
    use lava_flow::{ImageDesc, ImageFormat};
    let mut v = Validated::new();
    let ctx = context(&v);
    let desc = ImageDesc::new(ImageFormat::Rgba8Unorm, 37, 21).mip_levels(3);
    let image = v.allocate_image(0, desc).expect("image");
    let texture = ctx.import_image(&image).expect("import");
    let data: Vec<Vec<u8>> = (0..3).map(|l| random_bytes(desc.level_size(l) as usize)).collect();
    for (l, d) in data.iter().enumerate() {
        image.write_level(l as u32, d).expect("write");
    }
    let mut rng = rand::rng();
    let random_level = rand::Rng::random_range(&mut rng, 34..u32::MAX);
    for level in [3, 31, 32, 33, 63, 64, random_level, u32::MAX] {
        let mut out = [0u8; 4];
        let refused = |r: lava_flow::Result<()>, what: &str| match r {
            Err(Error::InvalidArgument(m)) => {
                assert!(m.contains(&format!("mip level {level}")), "{what}: {m}")
            }
            other => panic!("{what} at level {level}: expected InvalidArgument, got {other:?}"),
        };
        refused(texture.read_level(level, &mut out), "GL read");
        refused(texture.write_level(level, &[0; 4]), "GL write");
        refused(image.read_level(level, &mut out), "Vulkan read");
        refused(image.write_level(level, &[0; 4]), "Vulkan write");
    }
    for (l, d) in data.iter().enumerate() {
        let mut out = poisoned(d.len());
        texture.read_level(l as u32, &mut out).expect("GL read");
        assert_bytes_eq(&out, d, &format!("level {l} after the refusals"));
    }
}

/// Contexts on several threads at once, made and dropped while the others work: EGL displays
/// are shared per device, so one thread's teardown must not end another's (it did, once:
/// `eglTerminate` on the shared display crashed the others).
#[test]
fn contexts_on_several_threads_at_once() {
    let _serial = serial();
    let v = Validated::new();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let mut allocator = v.clone();
            scope.spawn(move || {
                for round in 0..6 {
                    let buffer = allocator.allocate(50_000 + t * 1000, DEV0).expect("allocate");
                    let ctx = GlContext::headless(allocator.device(0).expect("device")).expect("context");
                    let view = ctx.import_buffer(&buffer).expect("import");
                    check_both_directions(&buffer, &view, &format!("thread {t} round {round}"));
                }
            });
        }
    });
}

/// Queues `rounds` GL copies of all of `view` into `dst` (a GL buffer of the same size) and
/// returns without waiting for them.
#[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of GL calls, as users write it")]
fn queue_copies(gl: &glow::Context, view: &GlBuffer<'_>, dst: glow::NativeBuffer, rounds: usize) {
    let src = glow::NativeBuffer(std::num::NonZeroU32::new(view.gl_buffer()).expect("a GL name"));
    // SAFETY: buffers of this context, current; the ranges lie inside both.
    unsafe {
        gl.bind_buffer(glow::COPY_READ_BUFFER, Some(src));
        gl.bind_buffer(glow::COPY_WRITE_BUFFER, Some(dst));
        for _ in 0..rounds {
            gl.copy_buffer_sub_data(
                glow::COPY_READ_BUFFER,
                glow::COPY_WRITE_BUFFER,
                view.offset() as i32,
                0,
                view.size() as i32,
            );
        }
        gl.bind_buffer(glow::COPY_READ_BUFFER, None);
        gl.bind_buffer(glow::COPY_WRITE_BUFFER, None);
        assert_eq!(gl.get_error(), glow::NO_ERROR);
    }
}

/// The bytes of GL buffer `buffer`, `len` of them.
#[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of GL calls, as users write it")]
fn gl_read(gl: &glow::Context, buffer: glow::NativeBuffer, len: usize) -> Vec<u8> {
    let mut out = poisoned(len);
    // SAFETY: a buffer of this context, current, of at least `len` bytes.
    unsafe {
        gl.bind_buffer(glow::COPY_READ_BUFFER, Some(buffer));
        gl.get_buffer_sub_data(glow::COPY_READ_BUFFER, 0, &mut out);
        gl.bind_buffer(glow::COPY_READ_BUFFER, None);
        assert_eq!(gl.get_error(), glow::NO_ERROR);
    }
    out
}

/// ADR 0014: imports dropped while GL work that reads them is queued. An import of an exported
/// handle keeps its memory object until a fence placed at the drop signals; a view that
/// borrows a buffer of a shared block waits for the queued work in its drop, so the buffer's
/// range can go to the next allocation. Every byte of the copies is checked after.
#[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of GL calls, as users write it")]
#[test]
fn imports_dropped_under_queued_gl_work_go_once_it_completed() {
    let _serial = serial();
    let mut v = Validated::new();
    let ctx = context(&v);
    // SAFETY: the loader of the context made above, current on this thread.
    let gl = unsafe { glow::Context::from_loader_function(|s| ctx.proc_address(s)) };
    let bytes = 1usize << 20;
    let data = random_bytes(bytes);
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let source = v.allocate(bytes as u64, DEV0).expect("source");
    source.write(0, &data).expect("data");
    // SAFETY: the context is current; a GL-owned destination of `bytes` bytes.
    let dst = unsafe {
        let b = gl.create_named_buffer().expect("a GL buffer");
        gl.named_buffer_data_size(b, bytes as i32, glow::STATIC_COPY);
        b
    };

    // An import of the exported handle: nothing waits; the memory object is deferred (or
    // deleted at once where llvmpipe finished the copies already).
    let view = ctx.import_memory(source.export().expect("export")).expect("import");
    queue_copies(&gl, &view, dst, 16);
    drop(view);
    let left = ctx.reclaim().expect("reclaim");
    assert!(left <= 1, "one memory object dropped, {left} waiting");
    ctx.finish().expect("glFinish");
    assert_eq!(ctx.reclaim().expect("reclaim"), 0, "deleted once the copies completed");
    assert_bytes_eq(&gl_read(&gl, dst, bytes), &data, "GL copies queued before the import was dropped");

    // A borrowed view of a shared block, dropped with its buffer right after the copies were
    // queued; later buffers may take the range, and must keep their own bytes.
    let other = random_bytes(bytes);
    let borrowed = v.allocate(bytes as u64, DEV0).expect("borrowed");
    borrowed.write(0, &other).expect("data");
    let view = ctx.import_buffer(&borrowed).expect("import");
    queue_copies(&gl, &view, dst, 16);
    drop(view);
    drop(borrowed);
    let later: Vec<Buffer> = (0..2)
        .map(|_| {
            let b = v.allocate(bytes as u64, DEV0).expect("a later buffer");
            b.write(0, &poisoned(bytes)).expect("poison");
            b
        })
        .collect();
    ctx.finish().expect("glFinish");
    assert_bytes_eq(&gl_read(&gl, dst, bytes), &other, "GL copies from a view dropped with its buffer");
    for (i, b) in later.iter().enumerate() {
        let mut out = vec![0u8; bytes];
        b.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &poisoned(bytes), &format!("buffer {i}, allocated after the drop"));
    }
    // SAFETY: our own buffer, unused now.
    unsafe { gl.delete_buffer(dst) };
}

/// Every write reaches the other side, not only the first: each buffer and an image written and
/// read again and again from both sides, random bytes each round. NVIDIA's GL answered host reads
/// of imported memory from a copy of its own made at the first read or write (the second Vulkan
/// write was never seen through `glGetNamedBufferSubData`, whatever the synchronisation);
/// `GlBuffer::read` now copies on the GPU first. One buffer is larger than a read's 16 MiB piece.
#[test]
fn every_write_reaches_the_other_side_not_only_the_first() {
    let _serial = serial();
    use lava_flow::{ImageDesc, ImageFormat};
    let mut v = Validated::new();
    let buffers = [
        v.allocate(70_000, DEV0).expect("first"),
        v.allocate(123_457, DEV0).expect("second"),
        v.allocate_with((16 << 20) + 12_345, DEV0, AllocationOptions::default().dedicated(true))
            .expect("dedicated, above one read piece"),
    ];
    let image = v.allocate_image(0, ImageDesc::new(ImageFormat::Rgba8Unorm, 61, 37)).expect("image");
    let ctx = context(&v);
    let views: Vec<_> = buffers.iter().map(|b| ctx.import_buffer(b).expect("import")).collect();
    let texture = ctx.import_image(&image).expect("import image");
    for round in 0..3 {
        for (i, (buffer, view)) in buffers.iter().zip(&views).enumerate() {
            check_both_directions(buffer, view, &format!("round {round}, buffer {i}"));
        }
        let len = image.desc().level_size(0) as usize;
        let data = random_bytes(len);
        image.write_level(0, &data).expect("Vulkan write");
        let mut out = poisoned(len);
        texture.read_level(0, &mut out).expect("GL read");
        assert_bytes_eq(&out, &data, &format!("round {round}, image: Vulkan → GL"));
        let back = random_bytes(len);
        texture.write_level(0, &back).expect("GL write");
        let mut out = poisoned(len);
        image.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &back, &format!("round {round}, image: GL → Vulkan"));
    }
}
