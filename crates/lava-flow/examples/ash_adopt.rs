//! Your own `ash` device, adopted by lava-flow: the device is made here the way a renderer
//! makes it (with what `required_device_extensions` names), lava-flow allocates exportable memory
//! on it, and a second device — lava-flow's own — imports it and sees the bytes.
//!
//! Run: `cargo run --example ash_adopt`.

use lava_flow::ash::{self, vk};
use lava_flow::{AllocatorOptions, MemoryAllocator, MemoryLocation, RawDevice, Result};

/// The renderer's objects; destroying them is the renderer's business (here: when lava-flow
/// drops this guard, after its last object is gone).
struct Renderer {
    instance: ash::Instance,
    device: ash::Device,
}

impl Drop for Renderer {
    fn drop(&mut self) {
        // SAFETY: lava-flow has destroyed everything it made on the device; nothing else was made.
        unsafe { self.device.destroy_device(None) };
        // SAFETY: the device, the instance's only child, is gone.
        unsafe { self.instance.destroy_instance(None) };
        println!("renderer: device and instance destroyed");
    }
}

fn main() -> Result<()> {
    // SAFETY: loads the system's Vulkan loader.
    let entry = unsafe { ash::Entry::load() }.expect("a Vulkan loader");
    let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
    // SAFETY: `app` outlives the call.
    let instance =
        unsafe { entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None) }
            .expect("vkCreateInstance");
    // SAFETY: a live instance.
    let physical = unsafe { instance.enumerate_physical_devices() }.expect("devices")[0];
    // SAFETY: a physical device of this live instance.
    let req = unsafe { lava_flow::required_device_extensions(&instance, physical) }?;
    println!("enable: {:?}", req.extensions);
    for (name, consequence) in &req.missing {
        println!("missing {name:?}: {consequence}");
    }
    // SAFETY: as above.
    let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
    let family = families
        .iter()
        .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .expect("a compute queue family") as u32;
    // Two queues where the family has them: one for the renderer, one for lava-flow.
    let count = families[family as usize].queue_count.min(2);
    let priorities = [1.0f32; 2];
    let queues = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(family)
        .queue_priorities(&priorities[..count as usize])];
    let names = req.extension_names();
    let mut features12 = req.features12();
    let info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queues)
        .enabled_extension_names(&names)
        .push_next(&mut features12);
    // SAFETY: `info` points at live locals.
    let device = unsafe { instance.create_device(physical, &info, None) }.expect("vkCreateDevice");

    let raw = RawDevice::new(entry, instance.clone(), physical, device.clone(), req.extensions.clone())
        // lava-flow's own queue: the last one (the renderer keeps queue 0 when there are two).
        .queue(family, count - 1)
        .owner(Renderer { instance, device });
    // SAFETY: made with what `required_device_extensions` named, exactly those extensions and
    // timeline semaphores; the queue is lava-flow's alone (the renderer here uses none); the
    // guard keeps the device alive until lava-flow drops it.
    let mut allocator = unsafe { MemoryAllocator::from_raw(raw, AllocatorOptions::default()) }?;
    let buffer = allocator.allocate(1 << 20, MemoryLocation::GpuVulkan { device_id: 0 })?;
    let data: Vec<u8> = (0..buffer.size()).map(|i| (i * 7 % 251) as u8).collect();
    buffer.write(0, &data)?;

    // Another device — lava-flow's own, as another library or process would have — imports it.
    let mut other = MemoryAllocator::new()?;
    let imported = other.import_memory(0, buffer.export()?)?;
    let mut out = vec![0u8; data.len()];
    imported.read(0, &mut out)?;
    assert_eq!(out, data, "the importer sees the adopted device's bytes");
    println!("{} bytes of the adopted device read back through a second device", out.len());
    drop((imported, other, allocator));
    println!("allocator dropped; the buffer still holds the device");
    drop(buffer); // the last lava-flow object: the guard is dropped now
    Ok(())
}
