//! The caller's own Vulkan device: [`MemoryAllocator::from_raw`] adopts it, and
//! [`required_device_extensions`] says what to create it with.
//!
//! ADR 0012 records the design: lava-flow never destroys what it adopted, destroys what it made
//! on it, and submits only to a queue the caller hands over (or to none).

use std::any::Any;
use std::ffi::{c_char, CStr};
use std::sync::Arc;

use ash::vk;

use super::allocator::{AllocatorOptions, MemoryAllocator};
use super::device::Device;
use super::external;
use super::instance::{Instance, MIN_API_VERSION};
use super::validation::ValidationLog;
use crate::device::ExternalSupport;
use crate::error::{Error, Result, VkResultExt};
use crate::external::Os;

/// A Vulkan device the caller created, for [`MemoryAllocator::from_raw`].
///
/// Made with [`RawDevice::new`]; [`queue`](RawDevice::queue), [`owner`](RawDevice::owner) and
/// [`validation_log`](RawDevice::validation_log) add the optional parts.
#[non_exhaustive]
pub struct RawDevice {
    /// The loader the instance was made with.
    pub entry: ash::Entry,
    /// The caller's instance (`apiVersion` 1.2 or later).
    pub instance: ash::Instance,
    /// The physical device `device` was made from.
    pub physical_device: vk::PhysicalDevice,
    /// The caller's device.
    pub device: ash::Device,
    /// Every device extension `device` was created with (lava-flow uses the external-memory,
    /// external-semaphore, memory-budget and host-import ones among them, and only those that are
    /// listed here).
    pub enabled_extensions: Vec<&'static CStr>,
    /// `(queue family, queue index)` of a queue lava-flow may submit to, or `None`.
    pub queue: Option<(u32, u32)>,
    /// Dropped after every lava-flow object made on the device is gone.
    pub owner: Option<Box<dyn Any + Send + Sync>>,
    /// The record of the caller's debug messenger, returned by
    /// [`MemoryAllocator::validation_log`].
    pub validation_log: Option<ValidationLog>,
}

impl RawDevice {
    /// The caller's entry, instance, physical device and device, with the device extensions it
    /// was created with; no queue, no owner guard, no validation log.
    pub fn new(
        entry: ash::Entry,
        instance: ash::Instance,
        physical_device: vk::PhysicalDevice,
        device: ash::Device,
        enabled_extensions: Vec<&'static CStr>,
    ) -> Self {
        RawDevice {
            entry,
            instance,
            physical_device,
            device,
            enabled_extensions,
            queue: None,
            owner: None,
            validation_log: None,
        }
    }

    /// Lets lava-flow submit to queue `index` of `family` (which must have graphics, compute or
    /// transfer capability). lava-flow calls `vkQueueSubmit` and `vkQueueWaitIdle` on it under
    /// its own lock, so while the allocator or anything made from it lives, nothing else may use
    /// that queue: give lava-flow a queue of its own.
    pub fn queue(mut self, family: u32, index: u32) -> Self {
        self.queue = Some((family, index));
        self
    }

    /// A guard lava-flow drops once the allocator and every object made from it are gone — the
    /// last thing it does with the device. Put what keeps the caller's device and instance alive
    /// in it (an `Arc` of the caller's renderer, say), or what destroys them.
    pub fn owner(mut self, owner: impl Any + Send + Sync) -> Self {
        self.owner = Some(Box::new(owner));
        self
    }

    /// The record of the caller's debug messenger (made with
    /// [`ValidationLog::messenger_create_info`]), for [`MemoryAllocator::validation_log`].
    pub fn validation_log(mut self, log: ValidationLog) -> Self {
        self.validation_log = Some(log);
        self
    }
}

impl std::fmt::Debug for RawDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDevice")
            .field("physical_device", &self.physical_device)
            .field("device", &self.device.handle())
            .field("enabled_extensions", &self.enabled_extensions)
            .field("queue", &self.queue)
            .field("owner", &self.owner.is_some())
            .finish_non_exhaustive()
    }
}

/// What to create a device with so that lava-flow can adopt it: from
/// [`required_device_extensions`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceRequirements {
    /// The lowest `apiVersion` the instance and the device need: Vulkan 1.2.
    pub api_version: u32,
    /// The device extensions to enable: those lava-flow uses that this physical device has.
    pub extensions: Vec<&'static CStr>,
    /// Extensions lava-flow would use that this physical device lacks, each with what is missing
    /// without it.
    pub missing: Vec<(&'static CStr, &'static str)>,
}

impl DeviceRequirements {
    /// [`DeviceRequirements::extensions`] as the pointers `VkDeviceCreateInfo` takes.
    pub fn extension_names(&self) -> Vec<*const c_char> {
        self.extensions.iter().map(|e| e.as_ptr()).collect()
    }

    /// The one feature to enable: `timelineSemaphore` of `VkPhysicalDeviceVulkan12Features`
    /// (or of `VkPhysicalDeviceTimelineSemaphoreFeatures`; merge it into yours if you chain that
    /// structure already).
    pub fn features12(&self) -> vk::PhysicalDeviceVulkan12Features<'static> {
        vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true)
    }
}

/// Which device extensions and features a device of `physical_device` must be created with for
/// [`MemoryAllocator::from_raw`], per platform: the external-memory extension
/// (`VK_KHR_external_memory_fd`, `VK_KHR_external_memory_win32` on Windows) and the
/// external-semaphore one where the driver has them, `VK_EXT_memory_budget` and
/// `VK_EXT_external_memory_host` where present, and the `timelineSemaphore` feature.
///
/// Errors: [`Error::Unsupported`] if the device lacks Vulkan 1.2 or timeline semaphores.
/// Without the external-memory extension the device can still be adopted; its buffers are then
/// not exportable ([`DeviceRequirements::missing`] says so).
///
/// # Safety
/// `instance` is a live instance and `physical_device` one of its physical devices.
pub unsafe fn required_device_extensions(
    instance: &ash::Instance,
    physical_device: vk::PhysicalDevice,
) -> Result<DeviceRequirements> {
    // SAFETY: the caller's contract: a physical device of this live instance.
    let props = unsafe { instance.get_physical_device_properties(physical_device) };
    let name = props.device_name_as_c_str().unwrap_or(c"?").to_string_lossy().into_owned();
    if props.api_version < MIN_API_VERSION {
        return Err(Error::Unsupported {
            what: format!(
                "{name} has Vulkan {}.{}: lava-flow needs 1.2 (timeline semaphores)",
                vk::api_version_major(props.api_version),
                vk::api_version_minor(props.api_version)
            ),
        });
    }
    let mut features12 = vk::PhysicalDeviceVulkan12Features::default();
    let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut features12);
    // SAFETY: as above; the chained structure outlives the call (the device has 1.2).
    unsafe { instance.get_physical_device_features2(physical_device, &mut features) };
    if features12.timeline_semaphore != vk::TRUE {
        return Err(Error::Unsupported { what: format!("{name} has no timeline semaphores") });
    }
    // SAFETY: as above.
    let available = unsafe { instance.enumerate_device_extension_properties(physical_device) }
        .vk("vkEnumerateDeviceExtensionProperties")?;
    let has = |n: &CStr| available.iter().any(|e| e.extension_name_as_c_str().ok() == Some(n));
    let (memory, semaphore) = external::extension_names(Os::HOST);
    let wanted: [(&'static CStr, &'static str); 4] = [
        (memory, "buffers and images cannot be exported or imported"),
        (semaphore, "semaphores cannot be exported to CUDA, OpenGL, OpenCL or other processes"),
        (ash::ext::memory_budget::NAME, "heap_usage reports no driver usage or budget"),
        (ash::ext::external_memory_host::NAME, "host transfers always stage (host_memory_import is off)"),
    ];
    let (extensions, missing): (Vec<_>, Vec<_>) = wanted.into_iter().partition(|(n, _)| has(n));
    Ok(DeviceRequirements {
        api_version: MIN_API_VERSION,
        extensions: extensions.into_iter().map(|(n, _)| n).collect(),
        missing,
    })
}

impl MemoryAllocator {
    /// An allocator on the caller's own device: allocation, export, import, semaphores, images
    /// and the CUDA, OpenGL and OpenCL imports work on it as on a device lava-flow made. It is
    /// `device_id` 0, the only device of the allocator. [`AllocatorOptions::validation`] is
    /// ignored: the validation layer is the instance's (see
    /// [`RawDevice::validation_log`]).
    ///
    /// lava-flow never destroys the device or the instance. When the allocator and everything
    /// made from it are dropped, it waits for its own submissions and destroys what it created on
    /// the device (blocks, buffers, images, semaphores, its progress timeline, the staging ring),
    /// then drops [`RawDevice::owner`]. Without a queue ([`RawDevice::queue`]), calls that must
    /// submit — [`MemoryAllocator::submit`], [`MemoryAllocator::wait_idle`], staged
    /// [`Buffer::write`](crate::Buffer::write)/[`read`](crate::Buffer::read) and their
    /// asynchronous forms, image allocation (its first layout change) and image level copies —
    /// fail with [`Error::NoQueue`]; record such work in your own command buffers
    /// ([`MemoryAllocator::ash_device`]) and submit it on your queue. Host-visible buffers'
    /// `write`/`read` map the memory and need no queue.
    ///
    /// Errors: [`Error::Unsupported`] for a device without Vulkan 1.2 or a compute queue;
    /// [`Error::InvalidArgument`] for a queue family that does not exist or has no graphics,
    /// compute or transfer capability, or a queue index past its count. On error the owner
    /// guard is dropped and nothing was made on the device.
    ///
    /// # Safety
    /// - `raw.instance` was created from `raw.entry` with `apiVersion` 1.2 or later;
    ///   `raw.physical_device` is one of its physical devices and `raw.device` was created from
    ///   it, with the `timelineSemaphore` feature enabled and exactly the extensions listed in
    ///   `raw.enabled_extensions` among those [`required_device_extensions`] names (enable them
    ///   all to have every feature).
    /// - `raw.queue`, if given, was created with the device, and nothing but lava-flow submits
    ///   to it or waits on it (`vkQueueWaitIdle`, `vkDeviceWaitIdle`) while the allocator or
    ///   anything made from it lives.
    /// - The device and the instance stay alive (not destroyed) until the owner guard is dropped
    ///   — or, without one, until the allocator and every object made from it are dropped.
    /// - Objects lava-flow made are lava-flow's: do not destroy or free them yourself.
    pub unsafe fn from_raw(raw: RawDevice, options: AllocatorOptions) -> Result<Self> {
        Self::check_options(&options)?;
        let RawDevice {
            entry,
            instance,
            physical_device,
            device,
            enabled_extensions,
            queue,
            owner,
            validation_log,
        } = raw;
        let instance = Arc::new(Instance::adopt(entry, instance, validation_log, owner));
        let Some(mut physical) = instance.probe(physical_device)? else {
            return Err(Error::Unsupported {
                what: "an adopted device needs Vulkan 1.2 and a queue family with compute".into(),
            });
        };
        let enabled = |n: &CStr| enabled_extensions.contains(&n);
        let (memory, semaphore) = external::extension_names(Os::HOST);
        if !enabled(memory) {
            physical.has_external_memory = false;
            physical.info.buffer_handles = ExternalSupport::default();
            physical.info.image_handles = ExternalSupport::default();
        }
        if !enabled(semaphore) {
            physical.has_external_semaphore = false;
            physical.info.timeline_semaphore_handles = ExternalSupport::default();
            physical.info.binary_semaphore_handles = ExternalSupport::default();
        }
        physical.has_memory_budget &= enabled(ash::ext::memory_budget::NAME);
        let queue = match queue {
            None => vk::Queue::null(),
            Some((family, index)) => {
                // SAFETY: a physical device of this instance (the caller's contract).
                let families =
                    unsafe { instance.instance.get_physical_device_queue_family_properties(physical_device) };
                let usable = vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER;
                let props = families.get(family as usize).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "queue family {family} does not exist ({} families)",
                        families.len()
                    ))
                })?;
                if !props.queue_flags.intersects(usable) || index >= props.queue_count {
                    return Err(Error::InvalidArgument(format!(
                        "queue {index} of family {family} cannot be lava-flow's: the family has {:?} \
                         and {} queue(s); it needs graphics, compute or transfer",
                        props.queue_flags, props.queue_count
                    )));
                }
                physical.queue_family = family;
                // SAFETY: the caller's contract: the device was created with this queue.
                unsafe { device.get_device_queue(family, index) }
            }
        };
        let host_import = enabled(ash::ext::external_memory_host::NAME);
        let settings = (options.heap_budget, options.transfer_timeout, options.host_memory_import);
        // SAFETY: the caller's contract, restated by `Device::from_caller`'s: `physical` now says only
        // what the caller enabled.
        let device = unsafe {
            Device::from_caller(Arc::clone(&instance), physical, device, queue, host_import, settings)
        }?;
        Ok(MemoryAllocator::adopted(instance, device, options))
    }
}
