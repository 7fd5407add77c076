//! The caller's own device: made with raw `ash` here (validation layer on, through the caller's
//! own debug messenger), adopted with `MemoryAllocator::from_raw`, and sharing memory and
//! semaphores with a device lava-flow made, both ways. The caller's device is destroyed by the
//! owner guard lava-flow drops last: objects lava-flow leaked on it would be reported by the
//! layer at `vkDestroyDevice` and fail the test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_bytes_eq, poisoned, random_bytes, Side, Validated};
use lava_flow::ash::{self, vk};
use lava_flow::{
    AllocatorOptions, Error, ImageDesc, ImageFormat, MemoryAllocator, MemoryLocation, RawDevice, Submission,
    ValidationLog,
};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

/// What the caller owns: the instance, its messenger and the device, destroyed in `Drop`.
struct CallerDevice {
    entry: ash::Entry,
    instance: ash::Instance,
    messenger: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    physical: vk::PhysicalDevice,
    device: ash::Device,
    family: u32,
    extensions: Vec<&'static std::ffi::CStr>,
    /// Set when the device is destroyed.
    destroyed: Arc<AtomicBool>,
}

impl CallerDevice {
    /// An instance with the validation layer (where the test run has it) recording into `log`,
    /// and a device of lava-flow's device 0 (by UUID) made with what lava-flow asks for.
    fn new(log: &ValidationLog) -> Self {
        let validation = std::env::var_os("LAVA_FLOW_TEST_NO_VALIDATION_LAYER").is_none();
        // SAFETY: loads the system's Vulkan loader.
        let entry = unsafe { ash::Entry::load() }.expect("the CPU tier needs Vulkan");
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
        let layers = if validation { vec![ValidationLog::LAYER_NAME.as_ptr()] } else { vec![] };
        let extensions = if validation { vec![ash::ext::debug_utils::NAME.as_ptr()] } else { vec![] };
        let mut messenger_info = log.messenger_create_info();
        let mut info = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_layer_names(&layers)
            .enabled_extension_names(&extensions);
        if validation {
            info = info.push_next(&mut messenger_info);
        }
        // SAFETY: `info` points at live locals.
        let instance = unsafe { entry.create_instance(&info, None) }.expect("vkCreateInstance");
        let messenger = validation.then(|| {
            let loader = ash::ext::debug_utils::Instance::new(&entry, &instance);
            // SAFETY: the instance has VK_EXT_debug_utils; the log outlives the messenger.
            let m = unsafe { loader.create_debug_utils_messenger(&log.messenger_create_info(), None) }
                .expect("vkCreateDebugUtilsMessengerEXT");
            (loader, m)
        });
        let physical = common::physical_of_device0(&instance);
        // SAFETY: a physical device of this live instance.
        let req =
            unsafe { lava_flow::required_device_extensions(&instance, physical) }.expect("requirements");
        assert!(
            req.missing.iter().all(|(n, _)| !n.to_bytes().starts_with(b"VK_KHR_external_memory_")),
            "lavapipe has the external-memory extension: {req:?}"
        );
        // SAFETY: as above.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let family = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .expect("a compute family") as u32;
        let priorities = [1.0f32];
        let queues =
            [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
        let names = req.extension_names();
        let mut features12 = req.features12();
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&names)
            .push_next(&mut features12);
        // SAFETY: `info` points at live locals; the physical device belongs to the instance.
        let device = unsafe { instance.create_device(physical, &info, None) }.expect("vkCreateDevice");
        CallerDevice {
            entry,
            instance,
            messenger,
            physical,
            device,
            family,
            extensions: req.extensions,
            destroyed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn raw(&self) -> RawDevice {
        RawDevice::new(
            self.entry.clone(),
            self.instance.clone(),
            self.physical,
            self.device.clone(),
            self.extensions.clone(),
        )
    }
}

impl Drop for CallerDevice {
    fn drop(&mut self) {
        // SAFETY: lava-flow dropped the guard (this) only after destroying everything it made;
        // the test made nothing else on the device.
        unsafe { self.device.destroy_device(None) };
        self.destroyed.store(true, Ordering::SeqCst);
        if let Some((loader, m)) = self.messenger.take() {
            // SAFETY: the messenger of this instance, destroyed once.
            unsafe { loader.destroy_debug_utils_messenger(m, None) };
        }
        // SAFETY: every child of the instance is destroyed.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// One test at a time: GL contexts and device teardown in parallel threads deadlocked inside
/// NVIDIA's driver (see cpu_opengl.rs).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn options() -> AllocatorOptions {
    let mut o = AllocatorOptions::default();
    o.block_size = common::TEST_BLOCK_SIZE;
    o.dedicated_threshold = common::TEST_BLOCK_SIZE / 2;
    o
}

/// Adopts a fresh caller device (with a queue, or without), the guard owning it.
fn adopt(with_queue: bool) -> (MemoryAllocator, ValidationLog, Arc<AtomicBool>) {
    let log = ValidationLog::default();
    let caller = CallerDevice::new(&log);
    let destroyed = Arc::clone(&caller.destroyed);
    let mut raw = caller.raw().validation_log(log.clone());
    if with_queue {
        raw = raw.queue(caller.family, 0);
    }
    let raw = raw.owner(caller);
    // SAFETY: the device was made with what `required_device_extensions` named, exactly the
    // listed extensions and timeline semaphores; the queue is used by nobody else; the guard
    // keeps the device alive and destroys it when lava-flow drops it.
    let allocator = unsafe { MemoryAllocator::from_raw(raw, options()) }.expect("from_raw");
    (allocator, log, destroyed)
}

fn assert_clean(log: &ValidationLog) {
    let messages = log.take();
    assert!(messages.is_empty(), "validation messages:\n{}", messages.join("\n"));
}

fn check_both(a: &lava_flow::Buffer, b: &lava_flow::Buffer, what: &str) {
    common::check_both_ways(
        a.size() as usize,
        what,
        Side::buffer("adopted", a),
        Side::buffer("lava-flow's", b),
    );
}

#[test]
fn an_adopted_device_shares_buffers_images_and_semaphores_both_ways() {
    let _serial = serial();
    let (mut adopted, log, destroyed) = adopt(true);
    let mut own = Validated::new();
    assert_eq!(adopted.devices().len(), 1);
    assert_eq!(
        adopted.device(0).expect("device 0").uuid,
        own.device(0).expect("device 0").uuid,
        "the same lavapipe"
    );

    // Adopted → lava-flow's device: sub-allocated (at a non-zero offset) and dedicated.
    let _first = adopted.allocate(70_000, DEV0).expect("first");
    let shared = adopted.allocate(123_457, DEV0).expect("shared");
    assert!(shared.is_exportable() && shared.offset() != 0);
    let imported = own.import_memory(0, shared.export().expect("export")).expect("import");
    check_both(&shared, &imported, "sub-allocated, adopted → own");
    let large = adopted.allocate(common::TEST_BLOCK_SIZE + 4_321, DEV0).expect("large");
    assert!(large.is_dedicated());
    let imported_large = own.import_memory(0, large.export().expect("export")).expect("import");
    check_both(&large, &imported_large, "dedicated, adopted → own");

    // lava-flow's device → adopted.
    let theirs = own.allocate(98_765, DEV0).expect("own buffer");
    let into_adopted = adopted.import_memory(0, theirs.export().expect("export")).expect("import");
    check_both(&into_adopted, &theirs, "own → adopted");

    // Images: every level written on the adopted device reads back.
    let desc = ImageDesc::new(ImageFormat::Rgba8Unorm, 61, 29).mip_levels(3);
    let image = adopted.allocate_image(0, desc).expect("image on the adopted device");
    image.export().expect("the image exports");
    for level in 0..3 {
        let data = random_bytes(desc.level_size(level) as usize);
        image.write_level(level, &data).expect("write level");
        let mut out = poisoned(data.len());
        image.read_level(level, &mut out).expect("read level");
        assert_bytes_eq(&out, &data, &format!("adopted image level {level}"));
    }

    // A timeline of the adopted device, signalled by its queue; where the driver exports
    // timelines (lavapipe does not), seen by lava-flow's device and signalled back from it.
    let timeline = adopted.timeline_semaphore(0).expect("timeline");
    adopted.submit(0, &Submission::new().signal(&timeline, 3)).expect("submit on the adopted queue");
    timeline.wait(3, Duration::from_secs(10)).expect("the queue's signal");
    let handles = &adopted.device(0).expect("device 0").timeline_semaphore_handles;
    let other = match timeline.export() {
        Ok(exported) => {
            let other = own.import_timeline_semaphore(0, exported).expect("import");
            other.wait(3, Duration::from_secs(10)).expect("own device sees the adopted signal");
            other.signal(7).expect("host signal through the import");
            timeline.wait(7, Duration::from_secs(10)).expect("adopted device sees it");
            // The layer's known orphaned-pending-signal message, and only it, is tolerated.
            for log in [own.validation_log()].into_iter().flatten() {
                common::tolerate_orphaned_pending_signal(&log);
            }
            Some(other)
        }
        Err(Error::Unsupported { what }) if handles.export.is_empty() => {
            println!("timeline export skipped: {what}");
            None
        }
        Err(e) => panic!("export: {e}"),
    };
    adopted.wait_idle(0).expect("wait_idle on the adopted queue");

    // A clone shares pools: a buffer of the clone lands in the same block.
    let mut clone = adopted.clone();
    let neighbour = clone.allocate(1_000, DEV0).expect("clone allocates");
    assert_eq!(neighbour.vk_memory(), shared.vk_memory(), "clones share blocks");

    drop((adopted, clone, imported, imported_large, into_adopted, other));
    assert!(!destroyed.load(Ordering::SeqCst), "buffers still live: the guard is kept");
    drop((_first, shared, large, neighbour, image, timeline));
    assert!(destroyed.load(Ordering::SeqCst), "the last object dropped the guard");
    assert_clean(&log);
    drop(theirs);
}

#[test]
fn without_a_queue_submitting_calls_say_what_to_do() {
    let _serial = serial();
    let (mut adopted, log, destroyed) = adopt(false);
    let mut own = Validated::new();
    // Host-visible memory maps: no queue needed, and it still exports.
    let host = adopted.allocate(50_000, MemoryLocation::HostVisible { device_id: 0 }).expect("mapped");
    let imported = own.import_memory(0, host.export().expect("export")).expect("import");
    check_both(&host, &imported, "mapped, no queue");
    let no_queue = |r: lava_flow::Result<()>, what: &str| match r {
        Err(e @ Error::NoQueue { .. }) => assert!(e.to_string().contains("RawDevice::queue"), "{what}: {e}"),
        other => panic!("{what}: expected NoQueue, got {other:?}"),
    };
    let device_local = adopted.allocate(10_000, DEV0).expect("device-local allocates");
    no_queue(device_local.write(0, &[1; 16]), "staged write");
    no_queue(device_local.read(0, &mut [0; 16]), "staged read");
    no_queue(adopted.wait_idle(0), "wait_idle");
    let timeline = adopted.timeline_semaphore(0).expect("semaphores need no queue");
    no_queue(adopted.submit(0, &Submission::new().signal(&timeline, 1)), "submit");
    timeline.signal(1).expect("host signals need no queue");
    no_queue(adopted.allocate_image(0, ImageDesc::new(ImageFormat::R8Unorm, 8, 8)).map(drop), "image");
    drop((adopted, host, imported, device_local, timeline));
    assert!(destroyed.load(Ordering::SeqCst));
    assert_clean(&log);
}

#[test]
fn a_bad_queue_is_a_typed_error_and_the_guard_is_dropped() {
    let _serial = serial();
    let log = ValidationLog::default();
    let caller = CallerDevice::new(&log);
    let destroyed = Arc::clone(&caller.destroyed);
    let raw = caller.raw().queue(caller.family, 99).validation_log(log.clone()).owner(caller);
    // SAFETY: as in `adopt`; the queue index is refused before it is used.
    match unsafe { MemoryAllocator::from_raw(raw, options()) } {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("queue 99"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(destroyed.load(Ordering::SeqCst), "nothing was made; the guard was dropped");
    assert_clean(&log);
}

/// OpenGL (llvmpipe) imports a buffer and an image of the adopted device: bytes written on
/// either side are read on the other.
#[cfg(feature = "opengl")]
#[test]
fn opengl_imports_what_an_adopted_device_allocated() {
    use lava_flow::opengl::GlContext;
    let _serial = serial();
    let (mut adopted, log, destroyed) = adopt(true);
    let buffer = adopted.allocate(77_777, DEV0).expect("buffer");
    let desc = ImageDesc::new(ImageFormat::Rgba8Unorm, 45, 27);
    let image = adopted.allocate_image(0, desc).expect("image");
    {
        let ctx = GlContext::headless(adopted.device(0).expect("device 0")).expect("a headless GL context");
        let gl = ctx.import_buffer(&buffer).expect("GL imports the adopted buffer");
        common::check_both_ways(
            buffer.size() as usize,
            "adopted buffer and GL",
            Side::buffer("adopted", &buffer),
            Side {
                name: "GL",
                write: Box::new(|d| gl.write(0, d).expect("GL write")),
                read: Box::new(|o| gl.read(0, o).expect("GL read")),
            },
        );
        let texture = ctx.import_image(&image).expect("GL imports the adopted image");
        let data = random_bytes(desc.level_size(0) as usize);
        image.write_level(0, &data).expect("Vulkan write");
        let mut out = poisoned(data.len());
        texture.read_level(0, &mut out).expect("GL read");
        assert_bytes_eq(&out, &data, "adopted image → GL");
        let data = random_bytes(desc.level_size(0) as usize);
        texture.write_level(0, &data).expect("GL write");
        let mut out = poisoned(data.len());
        image.read_level(0, &mut out).expect("Vulkan read");
        assert_bytes_eq(&out, &data, "GL → adopted image");
    }
    drop((buffer, image, adopted));
    assert!(destroyed.load(Ordering::SeqCst));
    assert_clean(&log);
}

/// The allocator is shared by clone between threads: `Clone + Send + Sync` (checked at compile
/// time here; clones sharing blocks is checked above, on an adopted device, and in
/// cpu_threads.rs on lava-flow's own).
#[test]
fn the_allocator_is_clone_send_and_sync() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<MemoryAllocator>();
}
