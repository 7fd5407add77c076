//! wgpu 30 on lavapipe: an allocator on a wgpu device (`MemoryAllocator::from_wgpu`), its
//! buffers as wgpu buffers (`Buffer::to_wgpu`), a wgpu compute pass writing memory that a second
//! Vulkan device (made by lava-flow) and OpenGL (llvmpipe) read, and the other way, timelines
//! on wgpu's queue, `lava_flow::wgpu::open_device`, drops in every order, and lava-flow images
//! as wgpu textures (`Image::to_wgpu_texture`) read and written by wgpu copies.
//!
//! wgpu's `VkInstance` is made here, with the Khronos validation layer recording into a
//! `ValidationLog` through our own messenger (wgpu-hal's `Instance::from_raw`), so that every
//! message of the layer — on wgpu's calls and lava-flow's alike, leaked objects at
//! `vkDestroyDevice` and `vkDestroyInstance` included — fails the test.
#![cfg(feature = "wgpu")]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, Validated};
use lava_flow::ash::{self, vk};
use lava_flow::{
    AllocationOptions, Buffer, Error, Exportable, MemoryAllocator, MemoryLocation, ValidationLog,
};
use wgpu::hal::api::Vulkan;
use wgpu::hal::vulkan as hal_vk;

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };
/// Not a multiple of the 64-invocation workgroup, nor of a block's alignment.
const SIZE: u64 = 3 * 65536 + 20;

/// Polls a future of wgpu's native backend (ready at once, or after wgpu's own `poll`).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// wgpu on a `VkInstance` made here with the validation layer; `destroyed` is set when wgpu
/// has dropped its last use of the instance (every device gone) and the instance is destroyed.
struct Setup {
    log: ValidationLog,
    adapter: wgpu::Adapter,
    instance: wgpu::Instance,
    destroyed: Arc<AtomicBool>,
}

impl Setup {
    fn new() -> Self {
        let validation = std::env::var_os("LAVA_FLOW_TEST_NO_VALIDATION_LAYER").is_none();
        let log = ValidationLog::default();
        // SAFETY: loads the system's Vulkan loader.
        let entry = unsafe { ash::Entry::load() }.expect("the CPU tier needs Vulkan");
        let api = vk::API_VERSION_1_3;
        let flags = wgpu::InstanceFlags::empty();
        let mut extensions =
            hal_vk::Instance::desired_extensions(&entry, api, flags).expect("desired_extensions");
        if validation && !extensions.contains(&ash::ext::debug_utils::NAME) {
            extensions.push(ash::ext::debug_utils::NAME);
        }
        let names: Vec<_> = extensions.iter().map(|e| e.as_ptr()).collect();
        let layers = if validation { vec![ValidationLog::LAYER_NAME.as_ptr()] } else { vec![] };
        let app = vk::ApplicationInfo::default().api_version(api);
        let mut messenger_info = log.messenger_create_info();
        let mut info = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_layer_names(&layers)
            .enabled_extension_names(&names);
        if validation {
            info = info.push_next(&mut messenger_info);
        }
        // SAFETY: `info` points at live locals.
        let raw = unsafe { entry.create_instance(&info, None) }.expect("vkCreateInstance");
        let messenger = validation.then(|| {
            let loader = ash::ext::debug_utils::Instance::new(&entry, &raw);
            // SAFETY: the instance has VK_EXT_debug_utils; the log outlives the messenger.
            let m = unsafe { loader.create_debug_utils_messenger(&log.messenger_create_info(), None) }
                .expect("vkCreateDebugUtilsMessengerEXT");
            (loader, m)
        });
        let destroyed = Arc::new(AtomicBool::new(false));
        // wgpu-hal drops its `ash::Entry` (and with the last one the loader library) before this
        // callback runs: keep a clone of the entry alive in it.
        let (to_destroy, flag, loader_lib) = (raw.clone(), Arc::clone(&destroyed), entry.clone());
        let on_drop: Box<dyn FnOnce() + Send + Sync> = Box::new(move || {
            if let Some((loader, m)) = messenger {
                // SAFETY: wgpu no longer uses the instance; the messenger is ours.
                unsafe { loader.destroy_debug_utils_messenger(m, None) };
            }
            // SAFETY: as above; every device of it is gone (wgpu holds the instance until then).
            unsafe { to_destroy.destroy_instance(None) };
            flag.store(true, Ordering::SeqCst);
            drop(loader_lib);
        });
        let raw_for_uuid = raw.clone();
        // SAFETY: `raw` was made from `entry` with `api`, `extensions` (a superset of wgpu's
        // desired ones) and no wgpu flags; it lives until `on_drop`.
        let hal = unsafe {
            hal_vk::Instance::from_raw(
                entry,
                raw,
                api,
                0,
                None,
                extensions,
                flags,
                Default::default(),
                false,
                Some(on_drop),
            )
        }
        .expect("wgpu_hal Instance::from_raw");
        // SAFETY: a hal instance of the Vulkan backend.
        let instance = unsafe { wgpu::Instance::from_hal::<Vulkan>(hal) };
        // lava-flow's device 0, by UUID: with several GPUs wgpu's default adapter may be another.
        let want = common::physical_of_device0(&raw_for_uuid);
        let adapter = block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
            .into_iter()
            .find(|a| {
                // SAFETY: a Vulkan adapter of this instance; only its physical device is read.
                unsafe { a.as_hal::<Vulkan>() }.is_some_and(|hal| hal.raw_physical_device() == want)
            })
            .expect("a wgpu Vulkan adapter for lava-flow's device 0 (lavapipe)");
        println!("wgpu adapter: {:?}", adapter.get_info());
        Setup { log, adapter, instance, destroyed }
    }

    fn device(&self) -> (wgpu::Device, wgpu::Queue) {
        block_on(self.adapter.request_device(&wgpu::DeviceDescriptor::default())).expect("request_device")
    }

    /// Drops wgpu, checks that the instance was destroyed (no device left alive) and that the
    /// layer said nothing.
    fn finish(self) {
        let Setup { log, adapter, instance, destroyed } = self;
        drop(adapter);
        drop(instance);
        assert!(destroyed.load(Ordering::SeqCst), "a wgpu device is still alive: something leaked it");
        let messages = log.take();
        assert!(messages.is_empty(), "validation messages:\n{}", messages.join("\n"));
    }
}

/// One test at a time: the drop test counts the process's open fds, which the others' devices
/// change (NVIDIA's driver opens files per device).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `dst[i] = src[i]` over u32 words, one invocation each.
const COPY_SHADER: &str = "
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&dst)) { dst[id.x] = src[id.x]; }
}";

/// Submits a compute pass copying `src` into `dst` (word-sized, `SIZE` bytes).
fn copy_pass(device: &wgpu::Device, queue: &wgpu::Queue, src: &wgpu::Buffer, dst: &wgpu::Buffer) {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("copy"),
        source: wgpu::ShaderSource::Wgsl(COPY_SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("copy"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: src.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: dst.as_entire_binding() },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups((SIZE / 4).div_ceil(64) as u32, 1, 1);
    }
    queue.submit([encoder.finish()]);
}

/// A wgpu-allocated storage buffer holding `data`.
fn wgpu_source(device: &wgpu::Device, queue: &wgpu::Queue, data: &[u8]) -> wgpu::Buffer {
    let b = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu's own"),
        size: data.len() as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    queue.write_buffer(&b, 0, data);
    b
}

/// Everything in `src`, read through a mappable wgpu buffer.
fn wgpu_read(device: &wgpu::Device, queue: &wgpu::Queue, src: &wgpu::Buffer) -> Vec<u8> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: src.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(src, 0, &staging, 0, src.size());
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map_async"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let bytes = staging.slice(..).get_mapped_range().expect("mapped").to_vec();
    staging.unmap();
    bytes
}

/// Runs a pass copying `data` into `dst` and waits for it.
fn wgpu_write(device: &wgpu::Device, queue: &wgpu::Queue, dst: &wgpu::Buffer, data: &[u8]) {
    let src = wgpu_source(device, queue, data);
    copy_pass(device, queue, &src, dst);
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
}

fn storage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

fn exportable(allocator: &mut MemoryAllocator, dedicated: bool) -> Buffer {
    let options = AllocationOptions::default().exportable(Exportable::Required).dedicated(dedicated);
    allocator.allocate_with(SIZE, DEV0, options).expect("an exportable buffer on wgpu's device")
}

/// wgpu writes a lava-flow buffer of its device (sub-allocated: bound directly; dedicated:
/// imported), a second Vulkan device and OpenGL read it; they write, wgpu reads.
#[test]
fn wgpu_pass_and_second_device_and_gl_share_memory_both_ways() {
    let _serial = serial();
    let setup = Setup::new();
    {
        let (device, queue) = setup.device();
        let mut allocator = MemoryAllocator::from_wgpu(&device).expect("from_wgpu");
        let mut second = Validated::new();
        for dedicated in [false, true] {
            let what = if dedicated { "dedicated" } else { "sub-allocated" };
            let buffer = exportable(&mut allocator, dedicated);
            let view = buffer.to_wgpu(&device, storage()).expect("to_wgpu");
            let imported = second.import_memory(0, buffer.export().expect("export")).expect("import");

            let data = random_bytes(SIZE as usize);
            wgpu_write(&device, &queue, &view, &data);
            let mut out = poisoned(SIZE as usize);
            imported.read(0, &mut out).expect("second device read");
            assert_bytes_eq(&out, &data, &format!("{what}: wgpu → second Vulkan device"));

            let data = random_bytes(SIZE as usize);
            imported.write(0, &data).expect("second device write");
            assert_bytes_eq(
                &wgpu_read(&device, &queue, &view),
                &data,
                &format!("{what}: second device → wgpu"),
            );

            #[cfg(feature = "opengl")]
            {
                let ctx = lava_flow::opengl::GlContext::headless(allocator.device(0).expect("device 0"))
                    .expect("a headless GL context on wgpu's device");
                let gl = ctx.import_buffer(&buffer).expect("GL import");
                let data = random_bytes(SIZE as usize);
                wgpu_write(&device, &queue, &view, &data);
                let mut out = poisoned(SIZE as usize);
                gl.read(0, &mut out).expect("GL read");
                assert_bytes_eq(&out, &data, &format!("{what}: wgpu → OpenGL"));
                let data = random_bytes(SIZE as usize);
                gl.write(0, &data).expect("GL write");
                assert_bytes_eq(&wgpu_read(&device, &queue, &view), &data, &format!("{what}: OpenGL → wgpu"));
            }
        }
    }
    setup.finish();
}

/// A buffer of lava-flow's own device, imported into a wgpu device (another `VkDevice`): a
/// wgpu pass writes what lava-flow reads, lava-flow writes what wgpu reads.
#[test]
fn buffer_of_lava_flows_device_imported_into_wgpu() {
    let _serial = serial();
    let setup = Setup::new();
    {
        let (device, queue) = setup.device();
        let mut own = Validated::new();
        let buffer = own
            .allocate_with(SIZE, DEV0, AllocationOptions::default().exportable(Exportable::Required))
            .expect("allocate");
        let view = buffer.to_wgpu(&device, storage()).expect("to_wgpu from another VkDevice");
        let data = random_bytes(SIZE as usize);
        wgpu_write(&device, &queue, &view, &data);
        let mut out = poisoned(SIZE as usize);
        buffer.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &data, "wgpu → lava-flow's device");
        let data = random_bytes(SIZE as usize);
        buffer.write(0, &data).expect("write");
        assert_bytes_eq(&wgpu_read(&device, &queue, &view), &data, "lava-flow's device → wgpu");
    }
    setup.finish();
}

/// Mip `level` of `texture` read by wgpu (`copy_texture_to_buffer` into a mappable buffer,
/// rows padded to wgpu's 256-byte alignment), tightly packed.
fn wgpu_read_level(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    level: u32,
) -> Vec<u8> {
    let size = texture.size().mip_level_size(level, wgpu::TextureDimension::D2);
    let row = size.width * texture.format().block_copy_size(None).expect("a colour format");
    let padded = row.next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("texture readback"),
        size: u64::from(padded * size.height),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: level,
            origin: Default::default(),
            aspect: Default::default(),
        },
        wgpu::TexelCopyBufferInfo {
            buffer: &staging,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(padded),
                rows_per_image: None,
            },
        },
        size,
    );
    queue.submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map_async"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let bytes = staging.slice(..).get_mapped_range().expect("mapped").to_vec();
    staging.unmap();
    bytes.chunks(padded as usize).flat_map(|r| &r[..row as usize]).copied().collect()
}

/// wgpu writes mip `level` of `texture` (`queue.write_texture`, tightly packed `data`), then
/// hands the texture back in `GENERAL` (`transition_resources` to `STORAGE_READ_WRITE`, as
/// `to_wgpu_texture`'s docs ask) and waits.
fn wgpu_write_level(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    level: u32,
    data: &[u8],
) {
    let size = texture.size().mip_level_size(level, wgpu::TextureDimension::D2);
    let row = size.width * texture.format().block_copy_size(None).expect("a colour format");
    queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: level,
            origin: Default::default(),
            aspect: Default::default(),
        },
        data,
        wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(row), rows_per_image: None },
        size,
    );
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.transition_resources(
        std::iter::empty(),
        std::iter::once(wgpu::TextureTransition {
            texture,
            selector: None,
            state: wgpu::TextureUses::STORAGE_READ_WRITE,
        }),
    );
    queue.submit([encoder.finish()]);
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
}

/// Takes `log`'s messages and fails on any but the one `to_wgpu_texture` documents: wgpu's first
/// barrier on a texture starts from `GENERAL` (the layout lava-flow keeps the image's memory
/// in), which the layer cannot know for a `VkImage` just bound to imported memory, so it
/// reports the image's create-time `UNDEFINED`. Passing wgpu `UNINITIALIZED` instead would
/// silence it and allow the driver to discard the texels.
fn tolerate_imported_layout(log: &lava_flow::ValidationLog) {
    let rest: Vec<String> = log
        .take()
        .into_iter()
        .filter(|m| {
            !(m.contains("UNASSIGNED-CoreValidation-DrawState-InvalidImageLayout")
                && m.contains("[lava-flow image]")
                && m.contains(
                    "to be in layout VK_IMAGE_LAYOUT_GENERAL--instead, current layout is VK_IMAGE_LAYOUT_UNDEFINED",
                ))
        })
        .collect();
    assert!(rest.is_empty(), "validation messages:\n{}", rest.join("\n"));
}

/// Images of every format, made and written by lava-flow's own device, as wgpu textures:
/// wgpu copies out every level lava-flow wrote, and lava-flow reads every level wgpu wrote.
#[test]
fn images_as_wgpu_textures_both_ways() {
    use lava_flow::{ImageDesc, ImageFormat};
    let _serial = serial();
    let setup = Setup::new();
    {
        let (device, queue) = setup.device();
        let mut own = Validated::new();
        let usage = wgpu::TextureUsages::COPY_SRC
            | wgpu::TextureUsages::COPY_DST
            | wgpu::TextureUsages::TEXTURE_BINDING;
        for format in ImageFormat::ALL {
            let desc = ImageDesc::new(format, 67, 33).mip_levels(3);
            let image = own.allocate_image(0, desc).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            let texture = image.to_wgpu_texture(&device, usage).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((texture.width(), texture.height(), texture.mip_level_count()), (67, 33, 3));
            for level in 0..3 {
                let len = desc.level_size(level) as usize;
                let data = common::texel_data(format, len);
                image.write_level(level, &data).expect("write_level");
                let got = wgpu_read_level(&device, &queue, &texture, level);
                assert_bytes_eq(&got, &data, &format!("{format:?} level {level}: lava-flow → wgpu"));

                let data = common::texel_data(format, len);
                wgpu_write_level(&device, &queue, &texture, level, &data);
                let mut out = poisoned(len);
                image.read_level(level, &mut out).expect("read_level");
                assert_bytes_eq(&out, &data, &format!("{format:?} level {level}: wgpu → lava-flow"));
            }
            // The texture keeps the memory: it outlives the image here.
            drop(image);
            drop(texture);
        }
        let image = own.allocate_image(0, ImageDesc::new(ImageFormat::R8Unorm, 4, 4)).expect("image");
        assert!(matches!(
            image.to_wgpu_texture(&device, wgpu::TextureUsages::RENDER_ATTACHMENT),
            Err(Error::Unsupported { .. })
        ));
    }
    tolerate_imported_layout(&setup.log);
    setup.finish();
}

/// Usages wgpu cannot have on external memory are refused, and nothing is made.
#[test]
fn mappable_usages_are_refused() {
    let _serial = serial();
    let setup = Setup::new();
    {
        let (device, _queue) = setup.device();
        let mut allocator = MemoryAllocator::from_wgpu(&device).expect("from_wgpu");
        let buffer = exportable(&mut allocator, false);
        for usage in
            [wgpu::BufferUsages::MAP_READ, wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC]
        {
            match buffer.to_wgpu(&device, usage) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("map"), "{m}"),
                other => panic!("{usage:?}: {other:?}"),
            }
        }
        // No queue of its own: staged transfers say so.
        match buffer.write(0, &[1, 2, 3, 4]) {
            Err(Error::NoQueue { .. }) => {}
            other => panic!("a staged write on wgpu's device without a queue: {other:?}"),
        }
    }
    setup.finish();
}

/// The next wgpu submit waits for a timeline value the host signals, and signals one the host
/// waits for: the pass runs only after the wait, and its result is there at the signal.
#[test]
fn timelines_order_wgpu_submissions() {
    let _serial = serial();
    let setup = Setup::new();
    {
        let (device, queue) = setup.device();
        let mut allocator = MemoryAllocator::from_wgpu(&device).expect("from_wgpu");
        let buffer = exportable(&mut allocator, false);
        let view = buffer.to_wgpu(&device, storage()).expect("to_wgpu");
        let timeline = allocator.timeline_semaphore(0).expect("timeline");
        let mut second = Validated::new();
        let imported = second.import_memory(0, buffer.export().expect("export")).expect("import");
        let zeros = vec![0u8; SIZE as usize];
        imported.write(0, &zeros).expect("clear");

        let data = random_bytes(SIZE as usize);
        let src = wgpu_source(&device, &queue, &data);
        device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
        // SAFETY: the semaphore outlives the submission (waited for below, before its drop).
        unsafe { lava_flow::wgpu::wait_on_queue(&queue, &timeline, 1) }.expect("wait_on_queue");
        // SAFETY: as above.
        unsafe { lava_flow::wgpu::signal_on_queue(&queue, &timeline, 2) }.expect("signal_on_queue");
        copy_pass(&device, &queue, &src, &view);
        // The pass has not run: it waits for 1, which nothing has signalled.
        let mut out = poisoned(SIZE as usize);
        imported.read(0, &mut out).expect("read before the signal");
        assert_bytes_eq(&out, &zeros, "before the host signals 1");
        assert_eq!(timeline.value().expect("value"), 0);
        timeline.signal(1).expect("host signal");
        timeline.wait(2, Duration::from_secs(60)).expect("the pass signals 2");
        imported.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &data, "after the pass signalled 2");

        // SAFETY: refused before anything is queued.
        match unsafe { lava_flow::wgpu::signal_on_queue(&queue, &timeline, 2) } {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("increase"), "{m}"),
            other => panic!("a signal at the current value: {other:?}"),
        }
        let foreign = second.timeline_semaphore(0).expect("timeline of another device");
        // SAFETY: refused before anything is queued.
        match unsafe { lava_flow::wgpu::wait_on_queue(&queue, &foreign, 1) } {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("another VkDevice"), "{m}"),
            other => panic!("a semaphore of another device: {other:?}"),
        }
        device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    }
    setup.finish();
}

/// `open_device` adds the external-semaphore extension where the adapter has it and says when
/// it does not (lavapipe has none); the device works either way.
#[test]
fn open_device_says_what_it_could_not_enable() {
    let _serial = serial();
    let setup = Setup::new();
    {
        let opened = lava_flow::wgpu::open_device(&setup.adapter, &wgpu::DeviceDescriptor::default())
            .expect("open_device");
        println!("enabled: {:?}; missing: {:?}", opened.enabled, opened.missing);
        let mut allocator = MemoryAllocator::from_wgpu(&opened.device).expect("from_wgpu");
        let semaphore_ext = if cfg!(windows) {
            ash::khr::external_semaphore_win32::NAME
        } else {
            ash::khr::external_semaphore_fd::NAME
        };
        let timeline = allocator.timeline_semaphore(0).expect("timeline");
        if opened.enabled.contains(&semaphore_ext) {
            assert!(timeline.is_exportable(), "enabled, so exportable");
        } else {
            assert!(opened.missing.iter().any(|(e, _)| *e == semaphore_ext), "{:?}", opened.missing);
            assert!(!timeline.is_exportable());
            assert!(matches!(timeline.export(), Err(Error::Unsupported { .. })));
        }
        let memory_ext = if cfg!(windows) {
            ash::khr::external_memory_win32::NAME
        } else {
            ash::khr::external_memory_fd::NAME
        };
        assert!(!opened.missing.iter().any(|(e, _)| *e == memory_ext), "lavapipe has external memory");
        // The device works: a pass writes a lava-flow buffer, read back through wgpu.
        let buffer = exportable(&mut allocator, false);
        let view = buffer.to_wgpu(&opened.device, storage()).expect("to_wgpu");
        let data = random_bytes(SIZE as usize);
        wgpu_write(&opened.device, &opened.queue, &view, &data);
        assert_bytes_eq(&wgpu_read(&opened.device, &opened.queue, &view), &data, "open_device's device");

        let too_much = wgpu::DeviceDescriptor {
            required_limits: wgpu::Limits { max_bind_groups: u32::MAX, ..Default::default() },
            ..Default::default()
        };
        match lava_flow::wgpu::open_device(&setup.adapter, &too_much) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("max_bind_groups"), "{m}"),
            other => panic!("limits past the adapter's: {other:?}"),
        }
    }
    setup.finish();
}

/// The wgpu device (with its queue), the wgpu buffers, the lava-flow buffers and the allocator,
/// dropped in all 24 orders after a pass that used the buffers was submitted (and not waited
/// for): nothing leaks — the layer reports no object left at `vkDestroyDevice`, every device
/// is gone when the instance is (`Setup::finish`), and no fd stays open.
#[test]
fn drops_in_every_order_leak_nothing() {
    let _serial = serial();
    let setup = Setup::new();
    // A first device opens what a driver keeps for the process (NVIDIA's /dev/nvidia* files):
    // the baseline is taken after it.
    drop(setup.device());
    let fds = common::open_fds();
    let orders = permutations(4);
    for order in &orders {
        let (device, queue) = setup.device();
        let mut allocator = MemoryAllocator::from_wgpu(&device).expect("from_wgpu");
        let sub = exportable(&mut allocator, false);
        let dedicated = exportable(&mut allocator, true);
        let views = [
            sub.to_wgpu(&device, storage()).expect("to_wgpu"),
            dedicated.to_wgpu(&device, storage()).expect("to_wgpu"),
        ];
        let src = wgpu_source(&device, &queue, &random_bytes(SIZE as usize));
        copy_pass(&device, &queue, &src, &views[0]);
        copy_pass(&device, &queue, &views[0], &views[1]);
        drop(src);
        let mut items: [Option<Box<dyn std::any::Any>>; 4] = [
            Some(Box::new((device, queue))),
            Some(Box::new(views)),
            Some(Box::new((sub, dedicated))),
            Some(Box::new(allocator)),
        ];
        for &i in order {
            drop(items[i].take());
        }
    }
    assert_eq!(common::open_fds(), fds, "fds left open");
    println!("{} drop orders", orders.len());
    setup.finish();
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}
