//! The Vulkan instance and the probing of physical devices.

use std::ffi::{c_char, CStr};

use ash::vk;

use super::conv;
use super::external;
use super::validation::{self, ValidationLog};
use crate::device::{self, DeviceInfo, ExternalSupport, HeapInfo, Uuid};
use crate::error::{Api, Error, Result, VkResultExt};
use crate::external::Os;
use crate::handle::HandleType;
use crate::location::MemoryLocation;

/// The lowest Vulkan version lava-flow uses (timeline semaphores are core in 1.2).
pub(crate) const MIN_API_VERSION: u32 = vk::API_VERSION_1_2;

/// A loaded Vulkan library and an instance made from it.
pub(crate) struct Instance {
    /// The caller's guard of an adopted instance and device, dropped once every lava-flow object
    /// is gone (fields drop after `Drop::drop`, and every device holds an `Arc<Instance>`) —
    /// and first among the fields: before `entry`, whose drop may unload the Vulkan library the
    /// guard still calls into (`vkDestroyDevice`).
    #[expect(dead_code, reason = "held for its lifetime, never read")]
    owner: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Keeps the Vulkan library loaded while the instance lives.
    #[expect(dead_code, reason = "held for its lifetime, never read")]
    entry: ash::Entry,
    pub instance: ash::Instance,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    /// Kept until after `vkDestroyInstance`: the messenger's user data points into it.
    pub log: Option<ValidationLog>,
    /// `false` for an instance the caller made ([`Instance::adopt`]): never destroyed here.
    owned: bool,
}

/// Keeps the Vulkan loader and its drivers loaded for the rest of the process, once an instance
/// could be made: one more instance, without layers or extensions, never destroyed.
///
/// The loader unloads a driver (`dlclose`) when the process's last instance is destroyed and
/// loads it again for the next one. NVIDIA's driver may then fail to load: its libraries use
/// static TLS, which libraries loaded in the meantime can have used up (measured on the H200:
/// after JAX had loaded, `libnvidia-tls.so: cannot allocate memory in static TLS block`, and
/// every later `vkCreateInstance` failed with `VK_ERROR_INCOMPATIBLE_DRIVER`, "Unable to find a
/// Vulkan driver"). Kept loaded, the driver is never loaded twice. ADR 0016.
///
/// Unix only (where the static TLS of `dlopen`ed libraries is the problem); set
/// `LAVA_FLOW_KEEP_DRIVERS_LOADED=0` to let the loader unload them as before.
#[cfg(unix)]
fn keep_drivers_loaded(entry: &ash::Entry) {
    if std::env::var("LAVA_FLOW_KEEP_DRIVERS_LOADED").is_ok_and(|v| v.trim() == "0") {
        return;
    }
    static ANCHOR: std::sync::OnceLock<Option<(ash::Entry, vk::Instance)>> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(|| {
        let app = vk::ApplicationInfo::default()
            .application_name(c"lava-flow: keeps the drivers loaded")
            .api_version(vk::API_VERSION_1_1);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `info` refers to locals that outlive the call; the instance is never used
        // and never destroyed (the process's end reclaims it).
        match unsafe { entry.create_instance(&info, None) } {
            Ok(instance) => Some((entry.clone(), instance.handle())),
            Err(e) => {
                log::warn!(
                    "vkCreateInstance failed for the instance that keeps the Vulkan drivers loaded ({e}); \
                     a driver may fail to load again once every lava-flow allocator is gone"
                );
                None
            }
        }
    });
}

impl Instance {
    /// Loads `libvulkan.so.1` and creates an instance, with the validation layer if asked.
    pub fn new(validation: bool) -> Result<Self> {
        // SAFETY: loading the system's Vulkan loader runs its initialisers; that is what it is
        // for. ash checks that every global entry point exists.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| Error::LibraryNotFound {
            api: Api::Vulkan,
            library: Os::HOST.library(Api::Vulkan),
            reason: e.to_string(),
        })?;
        let log = validation.then(ValidationLog::default);
        if validation {
            // SAFETY: a plain query with no inputs.
            let layers = unsafe { entry.enumerate_instance_layer_properties() }
                .vk("vkEnumerateInstanceLayerProperties")?;
            let present = layers.iter().any(|l| l.layer_name_as_c_str().ok() == Some(validation::LAYER_NAME));
            if !present {
                return Err(Error::ValidationLayerMissing);
            }
        }
        let app = vk::ApplicationInfo::default()
            .application_name(c"lava-flow")
            .engine_name(c"lava-flow")
            .api_version(vk::API_VERSION_1_3);
        let layer_names: Vec<*const c_char> =
            if validation { vec![validation::LAYER_NAME.as_ptr()] } else { Vec::new() };
        let extension_names: Vec<*const c_char> =
            if validation { vec![ash::ext::debug_utils::NAME.as_ptr()] } else { Vec::new() };
        let mut messenger_info = log.as_ref().map(validation::messenger_info);
        let mut info = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_layer_names(&layer_names)
            .enabled_extension_names(&extension_names);
        if let Some(m) = messenger_info.as_mut() {
            // Also catches messages from vkCreateInstance and vkDestroyInstance themselves.
            info = info.push_next(m);
        }
        // SAFETY: every pointer in `info` refers to locals that outlive the call.
        let instance = unsafe { entry.create_instance(&info, None) }.vk("vkCreateInstance")?;
        #[cfg(unix)]
        keep_drivers_loaded(&entry);
        let debug = match messenger_info {
            Some(m) => {
                let loader = ash::ext::debug_utils::Instance::new(&entry, &instance);
                // SAFETY: `m` is valid; the instance was created with VK_EXT_debug_utils.
                match unsafe { loader.create_debug_utils_messenger(&m, None) } {
                    Ok(messenger) => Some((loader, messenger)),
                    Err(e) => {
                        // SAFETY: nothing was created from the instance yet.
                        unsafe { instance.destroy_instance(None) };
                        return Err(Error::vk("vkCreateDebugUtilsMessengerEXT", e));
                    }
                }
            }
            None => None,
        };
        Ok(Instance { entry, instance, debug, log, owned: true, owner: None })
    }

    /// Wraps an instance the caller created; it is never destroyed here. `log` is the record of
    /// the caller's own debug messenger, if any; `owner` is dropped last.
    pub fn adopt(
        entry: ash::Entry,
        instance: ash::Instance,
        log: Option<ValidationLog>,
        owner: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        Instance { entry, instance, debug: None, log, owned: false, owner }
    }

    /// Probes every physical device that supports Vulkan 1.2, sorted into `device_id` order.
    pub fn probe_devices(&self) -> Result<Vec<PhysicalDevice>> {
        // SAFETY: a plain query on a live instance.
        let handles =
            unsafe { self.instance.enumerate_physical_devices() }.vk("vkEnumeratePhysicalDevices")?;
        let mut devices = Vec::with_capacity(handles.len());
        for handle in handles {
            if let Some(d) = self.probe(handle)? {
                devices.push(d);
            }
        }
        devices.sort_by_key(|d| device::order_key(d.info.device_type, d.info.uuid));
        for (i, d) in devices.iter_mut().enumerate() {
            d.info.index = u32::try_from(i).unwrap_or(u32::MAX);
        }
        Ok(devices)
    }

    /// Probes one physical device of this instance; `None` if it lacks Vulkan 1.2 or a compute
    /// queue (logged).
    pub fn probe(&self, handle: vk::PhysicalDevice) -> Result<Option<PhysicalDevice>> {
        let inst = &self.instance;
        let mut id = vk::PhysicalDeviceIDProperties::default();
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut id).push_next(&mut driver);
        // SAFETY: `handle` came from this instance; the chained structs outlive the call.
        unsafe { inst.get_physical_device_properties2(handle, &mut props2) };
        let props = props2.properties;
        if props.api_version < MIN_API_VERSION {
            log::info!(
                "skipping Vulkan device {:?}: Vulkan {}.{} < 1.2",
                props.device_name_as_c_str().unwrap_or(c"?"),
                vk::api_version_major(props.api_version),
                vk::api_version_minor(props.api_version)
            );
            return Ok(None);
        }
        // SAFETY: `handle` came from this instance.
        let memory = unsafe { inst.get_physical_device_memory_properties(handle) };
        // SAFETY: as above.
        let extensions = unsafe { inst.enumerate_device_extension_properties(handle) }
            .vk("vkEnumerateDeviceExtensionProperties")?;
        let has_ext = |name: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str().ok() == Some(name));
        let (memory_extension, semaphore_extension) = external::extension_names(Os::HOST);
        let has_external_memory = has_ext(memory_extension);
        let has_external_semaphore = has_ext(semaphore_extension);
        let has_memory_budget = has_ext(ash::ext::memory_budget::NAME);
        // SAFETY: as above.
        let families = unsafe { inst.get_physical_device_queue_family_properties(handle) };
        let Some(queue_family) = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_count > 0)
        else {
            log::info!("skipping a Vulkan device without a compute queue");
            return Ok(None);
        };

        let heaps = memory.memory_heaps_as_slice();
        let heaps = (0u32..)
            .zip(heaps)
            .map(|(index, h)| HeapInfo {
                index,
                size: h.size,
                device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            })
            .collect();
        let info = DeviceInfo {
            index: 0,
            name: cstr_field(props.device_name_as_c_str()),
            vendor_id: props.vendor_id,
            pci_device_id: props.device_id,
            device_type: conv::device_type(props.device_type),
            api_version: (
                vk::api_version_major(props.api_version),
                vk::api_version_minor(props.api_version),
                vk::api_version_patch(props.api_version),
            ),
            driver_name: cstr_field(driver.driver_name_as_c_str()),
            driver_info: cstr_field(driver.driver_info_as_c_str()),
            uuid: Uuid(id.device_uuid),
            driver_uuid: Uuid(id.driver_uuid),
            luid: (id.device_luid_valid == vk::TRUE).then_some(id.device_luid),
            heaps,
            buffer_handles: self.buffer_support(handle, has_external_memory),
            image_handles: self.image_support(handle, has_external_memory)?,
            timeline_semaphore_handles: self.semaphore_support(handle, has_external_semaphore, true),
            binary_semaphore_handles: self.semaphore_support(handle, has_external_semaphore, false),
        };
        Ok(Some(PhysicalDevice {
            handle,
            info,
            memory,
            queue_family: u32::try_from(queue_family).unwrap_or(0),
            has_external_memory,
            has_external_semaphore,
            has_memory_budget,
            closes_refused_memory_fds: driver.driver_id == vk::DriverId::MESA_LLVMPIPE,
        }))
    }

    fn buffer_support(&self, handle: vk::PhysicalDevice, has_fd: bool) -> ExternalSupport {
        let mut support = ExternalSupport::default();
        for &ty in memory_handle_types(Os::HOST, has_fd) {
            let info = vk::PhysicalDeviceExternalBufferInfo::default()
                .usage(conv::BUFFER_USAGE)
                .handle_type(conv::memory_handle_flag(ty));
            let mut out = vk::ExternalBufferProperties::default();
            // SAFETY: `handle` came from this instance; `info` and `out` outlive the call.
            unsafe { self.instance.get_physical_device_external_buffer_properties(handle, &info, &mut out) };
            add_features(&mut support, ty, out.external_memory_properties.external_memory_features);
        }
        support
    }

    fn image_support(&self, handle: vk::PhysicalDevice, has_fd: bool) -> Result<ExternalSupport> {
        let mut support = ExternalSupport::default();
        for &ty in memory_handle_types(Os::HOST, has_fd) {
            let mut external = vk::PhysicalDeviceExternalImageFormatInfo::default()
                .handle_type(conv::memory_handle_flag(ty));
            let info = vk::PhysicalDeviceImageFormatInfo2::default()
                .format(vk::Format::R8G8B8A8_UNORM)
                .ty(vk::ImageType::TYPE_2D)
                .tiling(vk::ImageTiling::OPTIMAL)
                .usage(
                    vk::ImageUsageFlags::SAMPLED
                        | vk::ImageUsageFlags::STORAGE
                        | vk::ImageUsageFlags::TRANSFER_SRC
                        | vk::ImageUsageFlags::TRANSFER_DST,
                )
                .push_next(&mut external);
            let mut external_out = vk::ExternalImageFormatProperties::default();
            let mut out = vk::ImageFormatProperties2::default().push_next(&mut external_out);
            // SAFETY: as in `buffer_support`.
            let r = unsafe {
                self.instance.get_physical_device_image_format_properties2(handle, &info, &mut out)
            };
            match r {
                Ok(()) => add_features(
                    &mut support,
                    ty,
                    external_out.external_memory_properties.external_memory_features,
                ),
                // The combination is simply not supported: no export, no import.
                Err(vk::Result::ERROR_FORMAT_NOT_SUPPORTED) => {}
                Err(e) => return Err(Error::vk("vkGetPhysicalDeviceImageFormatProperties2", e)),
            }
        }
        Ok(support)
    }

    fn semaphore_support(&self, handle: vk::PhysicalDevice, has_fd: bool, timeline: bool) -> ExternalSupport {
        let mut support = ExternalSupport::default();
        if !has_fd {
            return support;
        }
        for &ty in semaphore_handle_types(Os::HOST, timeline) {
            let kind = if timeline { vk::SemaphoreType::TIMELINE } else { vk::SemaphoreType::BINARY };
            let mut type_info = vk::SemaphoreTypeCreateInfo::default().semaphore_type(kind);
            let info = vk::PhysicalDeviceExternalSemaphoreInfo::default()
                .handle_type(conv::semaphore_handle_flag(ty))
                .push_next(&mut type_info);
            let mut out = vk::ExternalSemaphoreProperties::default();
            // SAFETY: as in `buffer_support`.
            unsafe {
                self.instance.get_physical_device_external_semaphore_properties(handle, &info, &mut out)
            };
            let f = out.external_semaphore_features;
            if f.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE) {
                support.export.push(ty);
            }
            if f.contains(vk::ExternalSemaphoreFeatureFlags::IMPORTABLE) {
                support.import.push(ty);
            }
        }
        support
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.owned {
            // The caller's instance: theirs to destroy, after `owner` (dropped next) lets go.
            return;
        }
        if let Some((loader, messenger)) = self.debug.take() {
            // SAFETY: the messenger belongs to this instance and is destroyed once.
            unsafe { loader.destroy_debug_utils_messenger(messenger, None) };
        }
        // SAFETY: every device made from this instance holds an `Arc<Instance>`, so all are gone.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// A physical device as probed: its public [`DeviceInfo`] and what lava-flow needs to use it.
#[derive(Clone)]
pub(crate) struct PhysicalDevice {
    pub handle: vk::PhysicalDevice,
    pub info: DeviceInfo,
    pub memory: vk::PhysicalDeviceMemoryProperties,
    pub queue_family: u32,
    /// The platform's external-memory extension (`VK_KHR_external_memory_fd` on Unix,
    /// `VK_KHR_external_memory_win32` on Windows).
    pub has_external_memory: bool,
    /// The platform's external-semaphore extension (`..._semaphore_fd` / `..._semaphore_win32`).
    pub has_external_semaphore: bool,
    /// `VK_EXT_memory_budget`: the driver's view of each heap's use and budget.
    pub has_memory_budget: bool,
    /// Mesa's lavapipe: closes the fd of a refused memory import (see `fd.rs`).
    pub closes_refused_memory_fds: bool,
}

impl PhysicalDevice {
    /// Whether buffers can be exported as the platform's opaque handle (extension present and
    /// driver says so).
    pub fn can_export_buffers(&self) -> bool {
        self.has_external_memory && self.info.buffer_handles.can_export(Os::HOST.opaque_handle())
    }

    /// The memory type for `what` at `location` among `type_bits` (`!0`: any), or
    /// [`Error::LocationUnavailable`] saying what the device lacks.
    pub fn memory_type(&self, type_bits: u32, location: MemoryLocation, what: &str) -> Result<u32> {
        conv::choose_memory_type(&self.memory, type_bits, location, self.info.device_type).ok_or_else(|| {
            Error::LocationUnavailable {
                location: location.to_string(),
                reason: format!(
                    "device {} ({}), {what} (memoryTypeBits {type_bits:#x}): {}",
                    self.info.index,
                    self.info.name,
                    conv::location_requirement(location)
                ),
            }
        })
    }

    /// Whether exported buffers must be dedicated allocations.
    pub fn export_needs_dedicated(&self) -> bool {
        self.info.buffer_handles.dedicated_only.contains(&Os::HOST.opaque_handle())
    }
}

/// The memory handle types probed on `os` when the device has the platform's extension: the
/// opaque handle lava-flow shares, and the other one the platform has (reported only).
fn memory_handle_types(os: Os, has_extension: bool) -> &'static [HandleType] {
    match (os, has_extension) {
        (_, false) => &[],
        (Os::Unix, true) => &[HandleType::OpaqueFd, HandleType::DmaBuf],
        (Os::Windows, true) => &[HandleType::OpaqueWin32, HandleType::OpaqueWin32Kmt],
    }
}

/// The semaphore handle types probed on `os`: the opaque handle, and for binary semaphores the
/// platform's other kind (sync fds on Unix, KMT handles on Windows; reported only).
fn semaphore_handle_types(os: Os, timeline: bool) -> &'static [HandleType] {
    match (os, timeline) {
        (Os::Unix, true) => &[HandleType::OpaqueFd],
        (Os::Unix, false) => &[HandleType::OpaqueFd, HandleType::SyncFd],
        (Os::Windows, true) => &[HandleType::OpaqueWin32],
        (Os::Windows, false) => &[HandleType::OpaqueWin32, HandleType::OpaqueWin32Kmt],
    }
}

fn add_features(support: &mut ExternalSupport, ty: HandleType, f: vk::ExternalMemoryFeatureFlags) {
    if f.contains(vk::ExternalMemoryFeatureFlags::EXPORTABLE) {
        support.export.push(ty);
    }
    if f.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE) {
        support.import.push(ty);
    }
    if f.contains(vk::ExternalMemoryFeatureFlags::DEDICATED_ONLY) {
        support.dedicated_only.push(ty);
    }
}

fn cstr_field(s: std::result::Result<&CStr, std::ffi::FromBytesUntilNulError>) -> String {
    s.map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first handle type probed is the one lava-flow shares on that platform; the others
    /// are only reported, and nothing is probed without the extension.
    #[test]
    fn each_platform_probes_its_own_handle_types_first() {
        for os in [Os::Unix, Os::Windows] {
            assert_eq!(memory_handle_types(os, true)[0], os.opaque_handle());
            assert_eq!(semaphore_handle_types(os, true), &[os.opaque_handle()]);
            assert_eq!(semaphore_handle_types(os, false)[0], os.opaque_handle());
            assert!(memory_handle_types(os, false).is_empty());
        }
        assert!(!memory_handle_types(Os::Windows, true).contains(&HandleType::OpaqueFd));
        assert!(!semaphore_handle_types(Os::Windows, false).contains(&HandleType::SyncFd));
    }
}
