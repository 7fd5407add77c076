//! wgpu 30 on its Vulkan backend (feature `wgpu`): an allocator on a wgpu device
//! ([`MemoryAllocator::from_wgpu`]), lava-flow buffers as `wgpu::Buffer`s ([`Buffer::to_wgpu`]),
//! timeline semaphores waited for and signalled by a `wgpu::Queue`'s next submission
//! ([`wait_on_queue`], [`signal_on_queue`]), and a device opened with the external-semaphore
//! extension too ([`open_device`]); lava-flow images as `wgpu::Texture`s
//! ([`Image::to_wgpu_texture`]).
//!
//! # Which queue lava-flow uses
//! wgpu submits to its one queue under its own lock, which lava-flow cannot take, so an
//! allocator made from a wgpu device has **no queue**: lava-flow never submits to wgpu's queue,
//! nor waits for it to idle. Calls that must submit (staged `write`/`read` of
//! [`MemoryLocation::GpuVulkan`](crate::MemoryLocation::GpuVulkan) buffers, image allocation,
//! [`MemoryAllocator::submit`]) return [`Error::NoQueue`]; move bytes with wgpu instead
//! (`queue.write_buffer`, copies into a mappable wgpu buffer) or use host-visible locations,
//! which lava-flow maps. The only work lava-flow adds to wgpu's queue is what you ask for with
//! [`wait_on_queue`] and [`signal_on_queue`], and it rides on your next `queue.submit`.
//!
//! The design is recorded in ADR 0012 (`docs/adr/0012-adopting-the-callers-device.md`); the
//! guide is `docs/your_device.md`.

use std::ffi::CStr;
use std::sync::Arc;

use ::wgpu::hal::api::Vulkan;
use ::wgpu::hal::vulkan as hal_vk;
use ash::vk;

use super::adopt::{required_device_extensions, RawDevice};
use super::allocator::{AllocatorOptions, MemoryAllocator};
use super::buffer::Buffer;
use super::conv;
use super::image::{Image, ImageFormat};
use super::memory::Block;
use super::semaphore::TimelineSemaphore;
use crate::error::{Api, Error, Result, VkResultExt};

/// A device [`open_device`] made, with its queue and what it could and could not enable.
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedDevice {
    /// The wgpu device.
    pub device: ::wgpu::Device,
    /// Its queue.
    pub queue: ::wgpu::Queue,
    /// The device extensions lava-flow asked for on top of wgpu's own (those the adapter has).
    pub enabled: Vec<&'static CStr>,
    /// Extensions lava-flow would use that the adapter lacks, each with what is missing without
    /// it (on Mesa's lavapipe: `VK_KHR_external_semaphore_fd`, so semaphores are not exportable).
    pub missing: Vec<(&'static CStr, &'static str)>,
}

/// `wgpu::Adapter::request_device` with the device extensions lava-flow needs added: the
/// platform's external-memory and external-semaphore extensions (fd on Unix, win32 on Windows),
/// `VK_EXT_memory_budget` and `VK_EXT_external_memory_host` — each only where the adapter has it
/// (wgpu-hal panics when asked for an extension the adapter lacks, so this checks first). wgpu
/// itself enables only the external-memory one; the external-semaphore extension is what lets
/// [`TimelineSemaphore::export`] hand a timeline of a wgpu device to CUDA, OpenGL or OpenCL.
///
/// What could not be enabled is in [`OpenedDevice::missing`] and logged (`log::info!`); the
/// device is made without it. Errors: [`Error::Unsupported`] for a non-Vulkan adapter or one
/// without Vulkan 1.2 and timeline semaphores; [`Error::InvalidArgument`] for features or
/// limits the adapter does not have; [`Error::Ffi`] (API [`Api::Wgpu`]) when wgpu-hal or wgpu
/// fail to make the device.
pub fn open_device(adapter: &::wgpu::Adapter, desc: &::wgpu::DeviceDescriptor<'_>) -> Result<OpenedDevice> {
    let missing_features = desc.required_features - adapter.features();
    if !missing_features.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the adapter lacks the features {missing_features:?} the device descriptor requires"
        )));
    }
    let mut over = Vec::new();
    desc.required_limits.check_limits_with_fail_fn(&adapter.limits(), false, |name, want, have| {
        over.push(format!("{name} {want} (the adapter has {have})"))
    });
    if !over.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the device descriptor's limits exceed the adapter's: {}",
            over.join(", ")
        )));
    }
    let (open, enabled, missing) = {
        // SAFETY: the hal adapter is only used inside this block, while `adapter` lives.
        let Some(hal) = (unsafe { adapter.as_hal::<Vulkan>() }) else {
            return Err(not_vulkan("the adapter"));
        };
        let instance = hal.shared_instance().raw_instance();
        // SAFETY: the physical device of wgpu's live instance.
        let req = unsafe { required_device_extensions(instance, hal.raw_physical_device()) }?;
        // `required_device_extensions` lists only what the physical device has; check through
        // wgpu-hal too, whose list is what its `open` asserts against.
        let (enabled, mut missing): (Vec<_>, Vec<_>) = req
            .extensions
            .iter()
            .map(|&e| (e, "wgpu-hal does not see it on this adapter"))
            .partition(|(e, _)| hal.physical_device_capabilities().supports_extension(e));
        let enabled: Vec<&'static CStr> = enabled.into_iter().map(|(e, _)| e).collect();
        missing.extend(req.missing.iter().copied());
        for (name, what) in &missing {
            log::info!("lava_flow::wgpu::open_device: {} is not available: {what}", name.to_string_lossy());
        }
        let extra = enabled.clone();
        let callback: Box<hal_vk::CreateDeviceCallback<'_>> = Box::new(move |args| {
            for e in &extra {
                if !args.extensions.contains(e) {
                    args.extensions.push(e);
                }
            }
        });
        // SAFETY: wgpu-hal's contract for `open_with_callback`: the features and limits are the
        // adapter's (checked above), and the callback only adds extensions the adapter has
        // (checked through wgpu-hal's own list); it turns nothing off.
        let open = unsafe {
            hal.open_with_callback(
                desc.required_features,
                &desc.required_limits,
                &desc.memory_hints,
                Some(callback),
            )
        }
        .map_err(|e| wgpu_error("wgpu_hal::vulkan::Adapter::open_with_callback", &e))?;
        (open, enabled, missing)
    };
    // SAFETY: `open` was made by this adapter's hal adapter with the descriptor's features and
    // limits (wgpu's contract for `create_device_from_hal`).
    let (device, queue) = unsafe { adapter.create_device_from_hal::<Vulkan>(open, desc) }
        .map_err(|e| wgpu_error("wgpu::Adapter::create_device_from_hal", &e))?;
    Ok(OpenedDevice { device, queue, enabled, missing })
}

/// Makes the next `queue.submit` wait (on the GPU, before any of its commands run) until
/// `semaphore` reaches `value`: a CUDA kernel, an OpenGL or OpenCL queue, another lava-flow
/// submission or the host ([`TimelineSemaphore::signal`]) orders wgpu's work after its own
/// without a host wait. The semaphore must belong to the queue's device: make it with
/// [`MemoryAllocator::timeline_semaphore`] on an allocator from [`MemoryAllocator::from_wgpu`],
/// or import a timeline exported elsewhere into such an allocator.
///
/// It goes through wgpu-hal's `Queue::add_wait_semaphore`; wgpu submits even when the submit
/// has no command buffers, so `queue.submit([])` carries it alone.
///
/// Errors: [`Error::Unsupported`] for a non-Vulkan queue; [`Error::InvalidArgument`] for a
/// semaphore of another device.
///
/// # Safety
/// The semaphore stays alive (is not dropped) until the submission that carries the wait has
/// completed on the GPU — after the next `queue.submit` and a `device.poll` that saw it finish.
/// lava-flow does not see wgpu's submissions, so it cannot defer the semaphore's destruction
/// as it does for its own.
pub unsafe fn wait_on_queue(queue: &::wgpu::Queue, semaphore: &TimelineSemaphore, value: u64) -> Result<()> {
    // SAFETY: the hal queue is used only inside this call.
    let Some(hal) = (unsafe { queue.as_hal::<Vulkan>() }) else {
        return Err(not_vulkan("the queue"));
    };
    same_device(hal.raw_device(), semaphore)?;
    hal.add_wait_semaphore(semaphore.vk_semaphore(), Some(value), vk::PipelineStageFlags::ALL_COMMANDS);
    Ok(())
}

/// Makes the next `queue.submit` signal `semaphore` to `value` once all of its commands have
/// completed: a CUDA stream, OpenGL, OpenCL, a lava-flow submission or the host
/// ([`TimelineSemaphore::wait`]) then waits for wgpu's work without `device.poll`.
///
/// `value` must be above the semaphore's current value and above every signal still pending
/// on it (Vulkan's rule); this checks the current value ([`Error::InvalidArgument`] if it is
/// not above it). Errors otherwise as for [`wait_on_queue`].
///
/// # Safety
/// As for [`wait_on_queue`]: the semaphore lives until the submission that carries the signal
/// has completed; and no other signal of the semaphore pending at that submit is at or above
/// `value`.
pub unsafe fn signal_on_queue(
    queue: &::wgpu::Queue,
    semaphore: &TimelineSemaphore,
    value: u64,
) -> Result<()> {
    // SAFETY: the hal queue is used only inside this call.
    let Some(hal) = (unsafe { queue.as_hal::<Vulkan>() }) else {
        return Err(not_vulkan("the queue"));
    };
    same_device(hal.raw_device(), semaphore)?;
    let current = semaphore.value()?;
    if value <= current {
        return Err(Error::InvalidArgument(format!(
            "a timeline signal must increase: {value} is not above the current value {current}"
        )));
    }
    hal.add_signal_semaphore(semaphore.vk_semaphore(), Some(value));
    Ok(())
}

fn same_device(device: &ash::Device, semaphore: &TimelineSemaphore) -> Result<()> {
    if semaphore.device().device.handle() != device.handle() {
        return Err(Error::InvalidArgument(
            "the timeline semaphore belongs to another VkDevice than the wgpu queue: make it on an \
             allocator from MemoryAllocator::from_wgpu of that queue's device, or import its export there"
                .into(),
        ));
    }
    Ok(())
}

fn not_vulkan(what: &str) -> Error {
    Error::Unsupported { what: format!("{what} is not on wgpu's Vulkan backend; lava-flow needs Vulkan") }
}

/// [`Error::Ffi`] for a failure inside wgpu or wgpu-hal: the call, the error's variant and its
/// text.
fn wgpu_error(call: &'static str, e: &(impl std::fmt::Debug + std::fmt::Display)) -> Error {
    let name = format!("{e:?}");
    let name = name.split(['(', ' ', '{']).next().unwrap_or_default().to_owned();
    Error::Ffi { api: Api::Wgpu, call, name, description: e.to_string() }
}

impl MemoryAllocator {
    /// An allocator on a wgpu device's `VkDevice` (wgpu's Vulkan backend), with default
    /// options: what it allocates, imports and exports is memory of the device wgpu renders
    /// and computes with. A device from wgpu's own `request_device` has the external-memory
    /// extension (wgpu enables it where the driver has it), so buffers export to CUDA, OpenGL,
    /// OpenCL and other processes; semaphores export only on a device from [`open_device`]
    /// (which adds the external-semaphore extension).
    ///
    /// The allocator has no queue: see [the module docs](crate::wgpu#which-queue-lava-flow-uses).
    /// It keeps a clone of `device` (its owner guard, see [`RawDevice::owner`]), dropped
    /// after the allocator and everything made from it are gone, so the device may be dropped
    /// by the caller in any order.
    ///
    /// Errors: [`Error::Unsupported`] for a device not on the Vulkan backend, or without
    /// Vulkan 1.2 or timeline semaphores.
    pub fn from_wgpu(device: &::wgpu::Device) -> Result<MemoryAllocator> {
        Self::from_wgpu_with_options(device, AllocatorOptions::default())
    }

    /// [`from_wgpu`](MemoryAllocator::from_wgpu) with `options` (its `validation` is ignored:
    /// the validation layer is the wgpu instance's, `wgpu::InstanceFlags::VALIDATION`).
    pub fn from_wgpu_with_options(
        device: &::wgpu::Device,
        options: AllocatorOptions,
    ) -> Result<MemoryAllocator> {
        let raw = {
            // SAFETY: the hal device is used only inside this block, while `device` lives; the
            // handles cloned out of it are kept valid by the owner guard below.
            let Some(hal) = (unsafe { device.as_hal::<Vulkan>() }) else {
                return Err(not_vulkan("the device"));
            };
            let instance = hal.shared_instance();
            // wgpu enables `timelineSemaphore` wherever the physical device has it (and needs
            // it); this refuses devices without it or without Vulkan 1.2.
            // SAFETY: wgpu's live instance and its physical device.
            unsafe { required_device_extensions(instance.raw_instance(), hal.raw_physical_device()) }?;
            if instance.instance_api_version() < vk::API_VERSION_1_2 {
                return Err(Error::Unsupported {
                    what: "wgpu's VkInstance was created for Vulkan 1.1: lava-flow needs 1.2".into(),
                });
            }
            RawDevice::new(
                instance.entry().clone(),
                instance.raw_instance().clone(),
                hal.raw_physical_device(),
                hal.raw_device().clone(),
                hal.enabled_device_extensions().to_vec(),
            )
            .owner(device.clone())
        };
        // SAFETY: `from_raw`'s contract, from wgpu-hal: the instance (apiVersion checked above)
        // was made from this entry; the device from this physical device with
        // `timelineSemaphore` on and exactly `enabled_device_extensions()`. No queue is given
        // (wgpu's is its own). The owner guard keeps the wgpu device — and with it the VkDevice
        // and VkInstance — alive until lava-flow's last object is gone; nothing lava-flow
        // makes is handed to wgpu to destroy.
        unsafe { MemoryAllocator::from_raw(raw, options) }
    }
}

/// Which Vulkan buffer usages a `wgpu::BufferUsages` needs, or why lava-flow's buffers cannot
/// have them.
fn vk_usage(usage: ::wgpu::BufferUsages) -> Result<vk::BufferUsageFlags> {
    use ::wgpu::BufferUsages as U;
    if usage.intersects(U::MAP_READ | U::MAP_WRITE) {
        return Err(Error::InvalidArgument(format!(
            "{usage:?}: wgpu cannot map a buffer it did not allocate; read and write it with \
             lava-flow (host-visible locations map), or copy through a mappable wgpu buffer"
        )));
    }
    let pairs = [
        (U::COPY_SRC, vk::BufferUsageFlags::TRANSFER_SRC),
        (U::COPY_DST | U::QUERY_RESOLVE, vk::BufferUsageFlags::TRANSFER_DST),
        (U::INDEX, vk::BufferUsageFlags::INDEX_BUFFER),
        (U::VERTEX, vk::BufferUsageFlags::VERTEX_BUFFER),
        (U::UNIFORM, vk::BufferUsageFlags::UNIFORM_BUFFER),
        (U::STORAGE, vk::BufferUsageFlags::STORAGE_BUFFER),
        (U::INDIRECT, vk::BufferUsageFlags::INDIRECT_BUFFER | vk::BufferUsageFlags::STORAGE_BUFFER),
    ];
    let known = pairs.iter().fold(U::empty(), |all, (u, _)| all | *u);
    if !known.contains(usage) {
        return Err(Error::Unsupported {
            what: format!(
                "{:?}: lava-flow's buffers have copy, index, vertex, uniform, storage and indirect usage only",
                usage - known
            ),
        });
    }
    Ok(pairs
        .iter()
        .filter(|(u, _)| usage.intersects(*u))
        .fold(vk::BufferUsageFlags::empty(), |all, (_, v)| all | *v))
}

/// What a wgpu buffer made by [`Buffer::to_wgpu`] keeps alive; dropped by wgpu-hal when wgpu
/// destroys the buffer (after its last use on the GPU).
enum Keep {
    /// A `VkBuffer` of its own on the lava-flow buffer's memory (same device): destroyed here,
    /// before the block goes.
    Bound { buffer: vk::Buffer, block: Arc<Block> },
    /// The lava-flow buffer's memory imported into the wgpu device.
    Imported(Buffer),
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Bound { buffer, block } = self {
            // SAFETY: the buffer was made on the block's device for this wrapper alone; wgpu
            // destroys its hal buffer only once the GPU is done with it.
            unsafe { block.device.device.destroy_buffer(*buffer, None) };
        }
    }
}

impl Buffer {
    /// This buffer's bytes as a `wgpu::Buffer` of `device` ([`size`](Buffer::size) bytes,
    /// `usage`), no copy: wgpu passes read and write the same memory CUDA, OpenGL, OpenCL or
    /// another device imports.
    ///
    /// On the allocator's own device (an allocator from [`MemoryAllocator::from_wgpu`] of
    /// `device`), a new `VkBuffer` is bound to the buffer's memory — exportable or not. On
    /// another wgpu device of the same GPU, the buffer's [`export`](Buffer::export) is imported
    /// into wgpu's `VkDevice` (the buffer must be exportable, the device have the external-memory
    /// extension, which wgpu enables where the driver has it).
    ///
    /// The wgpu buffer keeps the memory alive: drop it, this buffer, the allocator and the wgpu
    /// device in any order. As with every export, the *bytes* are this buffer's only while it
    /// lives: once it is dropped, a sub-allocated range goes back to the allocator and a later
    /// allocation may reuse it, so stop using the wgpu buffer by then. wgpu treats the contents
    /// as initialised (it does not clear them).
    ///
    /// Errors: [`Error::InvalidArgument`] for `MAP_READ`/`MAP_WRITE` (wgpu cannot map external
    /// buffers); [`Error::Unsupported`] for usages lava-flow's buffers lack (acceleration
    /// structure inputs) or a non-Vulkan device; for another device, the errors of
    /// [`export`](Buffer::export) and [`MemoryAllocator::import_memory`]
    /// ([`Error::DeviceMismatch`] for another GPU).
    pub fn to_wgpu(&self, device: &::wgpu::Device, usage: ::wgpu::BufferUsages) -> Result<::wgpu::Buffer> {
        vk_usage(usage)?;
        let same_device = {
            // SAFETY: only the handle is read, while `device` lives.
            let Some(hal) = (unsafe { device.as_hal::<Vulkan>() }) else {
                return Err(not_vulkan("the device"));
            };
            hal.raw_device().handle() == self.device().device.handle()
        };
        let keep = if same_device && !self.is_dedicated() {
            let (block, offset) = self.memory();
            let vk_device = &block.device;
            let buffer = Buffer::create_raw(vk_device, self.size(), block.exportable)?;
            // SAFETY: a new buffer with lava-flow's usage on the device of `block`, bound to the
            // range of this buffer (same size, and the offset meets the alignment lava-flow's
            // identical buffers have); destroyed on failure.
            if let Err(e) = unsafe { vk_device.device.bind_buffer_memory(buffer, block.raw.memory, offset) }
                .vk("vkBindBufferMemory")
            {
                // SAFETY: the buffer is unused.
                unsafe { vk_device.device.destroy_buffer(buffer, None) };
                return Err(e);
            }
            Keep::Bound { buffer, block }
        } else {
            // A dedicated allocation binds only its own buffer (VUID-vkBindBufferMemory-memory-01508):
            // import it, which recreates that buffer; other devices import too.
            let mut importer = MemoryAllocator::from_wgpu(device)?;
            Keep::Imported(importer.import_memory(0, self.export()?)?)
        };
        let vk_buffer = match &keep {
            Keep::Bound { buffer, .. } => *buffer,
            Keep::Imported(b) => b.vk_buffer(),
        };
        debug_assert!(conv::BUFFER_USAGE.contains(vk_usage(usage)?));
        // SAFETY: `vk_buffer` is a buffer of `device`'s VkDevice that the callback's `keep`
        // owns, with its memory; wgpu-hal never destroys it and calls the callback (dropping
        // `keep`) when wgpu destroys the buffer. wgpu does not map it (no MAP_* usage).
        let hal_buffer =
            unsafe { hal_vk::Buffer::from_raw_externally_owned(vk_buffer, Box::new(move || drop(keep))) };
        let desc = ::wgpu::BufferDescriptor {
            label: Some("lava-flow buffer"),
            size: self.size(),
            usage,
            mapped_at_creation: false,
        };
        // SAFETY: the hal buffer is of this device's backend and VkDevice, `size` bytes, with
        // every Vulkan usage `usage` needs (checked by `vk_usage` against lava-flow's set).
        Ok(unsafe { device.create_buffer_from_hal::<Vulkan>(hal_buffer, &desc) })
    }
}

/// The wgpu format of a lava-flow image format (wgpu has every one of them).
fn texture_format(format: ImageFormat) -> ::wgpu::TextureFormat {
    use ::wgpu::TextureFormat as T;
    match format {
        ImageFormat::R8Unorm => T::R8Unorm,
        ImageFormat::Rg8Unorm => T::Rg8Unorm,
        ImageFormat::Rgba8Unorm => T::Rgba8Unorm,
        ImageFormat::R16Float => T::R16Float,
        ImageFormat::Rgba16Float => T::Rgba16Float,
        ImageFormat::R32Float => T::R32Float,
        ImageFormat::Rgba32Float => T::Rgba32Float,
        ImageFormat::R32Uint => T::R32Uint,
    }
}

/// Which Vulkan image usages a `wgpu::TextureUsages` needs, or why an image with `have` cannot
/// have them.
fn vk_texture_usage(usage: ::wgpu::TextureUsages, have: vk::ImageUsageFlags) -> Result<vk::ImageUsageFlags> {
    use ::wgpu::TextureUsages as U;
    let pairs = [
        (U::COPY_SRC, vk::ImageUsageFlags::TRANSFER_SRC),
        (U::COPY_DST, vk::ImageUsageFlags::TRANSFER_DST),
        (U::TEXTURE_BINDING, vk::ImageUsageFlags::SAMPLED),
        (U::STORAGE_BINDING, vk::ImageUsageFlags::STORAGE),
    ];
    let possible = pairs.iter().filter(|(_, v)| have.contains(*v)).fold(U::empty(), |all, (u, _)| all | *u);
    if !possible.contains(usage) {
        return Err(Error::Unsupported {
            what: format!(
                "{:?}: this lava-flow image has {have:?} only (render attachments are not among \
                 lava-flow's image usages; storage is where the driver exports the format with it)",
                usage - possible
            ),
        });
    }
    Ok(pairs
        .iter()
        .filter(|(u, _)| usage.intersects(*u))
        .fold(vk::ImageUsageFlags::empty(), |all, (_, v)| all | *v))
}

/// What a wgpu texture made by [`Image::to_wgpu_texture`] keeps alive: its `VkImage` on wgpu's
/// device and the imported memory, dropped by wgpu-hal when wgpu destroys the texture.
struct KeepImage {
    image: vk::Image,
    block: Arc<Block>,
}

impl Drop for KeepImage {
    fn drop(&mut self) {
        // SAFETY: the image was made on the block's device for this texture alone; wgpu
        // destroys its hal texture only once the GPU is done with it. The memory goes after.
        unsafe { self.block.device.device.destroy_image(self.image, None) };
    }
}

impl Image {
    /// This image as a `wgpu::Texture` of `device` (2D, the image's extent, mip levels and
    /// format, `usage`), no copy: wgpu passes and copies read and write the texels lava-flow,
    /// CUDA, OpenGL or OpenCL see.
    ///
    /// lava-flow images are dedicated allocations, which Vulkan binds to their one image only:
    /// the image's memory is [exported](Image::export) and imported into wgpu's `VkDevice`,
    /// bound to a new `VkImage` of the same create info (so the image must be exportable, and
    /// `device` on the same GPU and driver, with the external-memory extension that wgpu enables
    /// where the driver has it). The wgpu texture keeps that memory alive: drop it, this image,
    /// the allocator and the wgpu device in any order; the texels are this image's only while
    /// the image lives.
    ///
    /// # Layout and ordering
    /// lava-flow keeps its images in `VK_IMAGE_LAYOUT_GENERAL`, and the imported `VkImage` has
    /// the same texels in the same layout. wgpu-hal assumes a texture from raw is uninitialised
    /// (its first barrier would start from `UNDEFINED`, which lets the driver discard the
    /// texels), so wgpu is told instead that the texture is in `TextureUses::STORAGE_READ_WRITE`,
    /// the state that is `GENERAL` to wgpu-hal for colour formats: its first barrier moves the
    /// texture out of `GENERAL`, keeping the texels. (The validation layer cannot know the
    /// layout of memory imported into a new `VkImage` and reports that first barrier as
    /// `UNASSIGNED-CoreValidation-DrawState-InvalidImageLayout`, "current layout is
    /// `VK_IMAGE_LAYOUT_UNDEFINED`".)
    ///
    /// wgpu then leaves the texture in the layout of its last use. Before lava-flow (or CUDA,
    /// OpenGL, OpenCL) uses the image again, hand it back in `GENERAL`: end wgpu's work on it
    /// with `encoder.transition_resources` to `wgpu::TextureUses::STORAGE_READ_WRITE`. And
    /// order the two sides as with buffers: wait for wgpu's submission (`device.poll`) or a
    /// timeline ([`signal_on_queue`]) before lava-flow reads, and finish lava-flow's writes
    /// (its `write_level` returns when they are done) before submitting wgpu's work.
    ///
    /// Errors: [`Error::Unsupported`] for a non-Vulkan device, or usages the image lacks
    /// (`RENDER_ATTACHMENT` and the like: lava-flow's images are sampled, storage and copy
    /// images; `STORAGE_BINDING` where the driver could not export the format with storage);
    /// [`Error::NotExportable`] for an image the driver could not export;
    /// [`Error::DeviceMismatch`] for a device of another GPU or driver; the driver's errors of
    /// the import ([`Error::Ffi`]).
    pub fn to_wgpu_texture(
        &self,
        device: &::wgpu::Device,
        usage: ::wgpu::TextureUsages,
    ) -> Result<::wgpu::Texture> {
        vk_texture_usage(usage, self.vk_usage())?;
        let format = texture_format(self.desc().format);
        let importer = MemoryAllocator::from_wgpu(device)?;
        let (image, block) = self.import_into(&importer.context(0)?)?;
        let keep = KeepImage { image, block };
        let desc = self.desc();
        let size = ::wgpu::Extent3d { width: desc.width, height: desc.height, depth_or_array_layers: 1 };
        let hal_texture = {
            // SAFETY: the hal device is used only inside this block, while `device` lives.
            let Some(hal) = (unsafe { device.as_hal::<Vulkan>() }) else {
                return Err(not_vulkan("the device"));
            };
            let hal_desc = ::wgpu::hal::TextureDescriptor {
                label: Some("lava-flow image"),
                size,
                mip_level_count: desc.mip_levels,
                sample_count: 1,
                dimension: ::wgpu::TextureDimension::D2,
                format,
                usage: ::wgpu::TextureUses::empty(),
                memory_flags: ::wgpu::hal::MemoryFlags::empty(),
                view_formats: Vec::new(),
            };
            let image = keep.image;
            // SAFETY: `keep.image` is an image of this VkDevice made as `hal_desc` says (2D, the
            // extent, levels, format, one sample; no MUTABLE_FORMAT and no view formats), with
            // every Vulkan usage `usage` needs (checked above). `keep` owns it and its memory
            // (external to wgpu-hal) until wgpu-hal calls the callback when wgpu destroys the
            // texture.
            unsafe {
                hal.texture_from_raw(
                    image,
                    &hal_desc,
                    Some(Box::new(move || drop(keep))),
                    hal_vk::TextureMemory::External,
                )
            }
        };
        let desc = ::wgpu::TextureDescriptor {
            label: Some("lava-flow image"),
            size,
            mip_level_count: desc.mip_levels,
            sample_count: 1,
            dimension: ::wgpu::TextureDimension::D2,
            format,
            usage,
            view_formats: &[],
        };
        // SAFETY: the hal texture is of this device's backend and VkDevice, made as `desc` says;
        // its texels are initialised (the image's), and it is in `GENERAL`, which is what
        // wgpu-hal's `STORAGE_READ_WRITE` state means for a colour format.
        Ok(unsafe {
            device.create_texture_from_hal::<Vulkan>(
                hal_texture,
                &desc,
                ::wgpu::TextureUses::STORAGE_READ_WRITE,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usages_map_to_lava_flows_set_or_are_refused() {
        use ::wgpu::BufferUsages as U;
        let all = U::COPY_SRC | U::COPY_DST | U::INDEX | U::VERTEX | U::UNIFORM | U::STORAGE | U::INDIRECT;
        assert!(conv::BUFFER_USAGE.contains(vk_usage(all).expect("every usage lava-flow has")));
        assert_eq!(vk_usage(U::STORAGE).expect("storage"), vk::BufferUsageFlags::STORAGE_BUFFER);
        assert!(matches!(vk_usage(U::STORAGE | U::MAP_READ), Err(Error::InvalidArgument(_))));
        assert!(matches!(vk_usage(U::MAP_WRITE), Err(Error::InvalidArgument(_))));
        assert!(matches!(vk_usage(U::BLAS_INPUT), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn texture_usages_map_to_the_images_or_are_refused() {
        use ::wgpu::TextureUsages as U;
        let full = vk::ImageUsageFlags::SAMPLED
            | vk::ImageUsageFlags::STORAGE
            | vk::ImageUsageFlags::TRANSFER_SRC
            | vk::ImageUsageFlags::TRANSFER_DST;
        let all = U::COPY_SRC | U::COPY_DST | U::TEXTURE_BINDING | U::STORAGE_BINDING;
        assert_eq!(vk_texture_usage(all, full).expect("every usage lava-flow has"), full);
        let no_storage = full & !vk::ImageUsageFlags::STORAGE;
        assert!(matches!(vk_texture_usage(U::STORAGE_BINDING, no_storage), Err(Error::Unsupported { .. })));
        assert!(matches!(vk_texture_usage(U::RENDER_ATTACHMENT, full), Err(Error::Unsupported { .. })));
        assert_eq!(
            vk_texture_usage(U::COPY_SRC, no_storage).expect("copy"),
            vk::ImageUsageFlags::TRANSFER_SRC
        );
    }
}
