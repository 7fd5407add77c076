//! [`Image`]: exportable 2D images with mip levels, in dedicated allocations.

#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(windows)]
use std::os::windows::io::OwnedHandle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ash::vk;
use ash::vk::Handle;

use super::allocator::DeviceContext;
use super::memory::{Block, Dedicated, MemoryDesc};
use super::pending::{HostBytes, HostBytesMut, PendingTransfer};
use super::transfer::{Direction, HostRange, Target};
use crate::error::{Error, Result, VkResultExt};
use crate::handle::{ExportedImage, ExternalHandle, ImageDescriptor, MemoryDescriptor};
use crate::location::MemoryLocation;

/// The texel formats lava-flow images can have; each maps to one Vulkan, CUDA and GL format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageFormat {
    /// One 8-bit unsigned normalised channel (`VK_FORMAT_R8_UNORM`, `GL_R8`).
    R8Unorm,
    /// Two 8-bit unsigned normalised channels (`VK_FORMAT_R8G8_UNORM`, `GL_RG8`).
    Rg8Unorm,
    /// Four 8-bit unsigned normalised channels (`VK_FORMAT_R8G8B8A8_UNORM`, `GL_RGBA8`).
    Rgba8Unorm,
    /// One 16-bit float channel (`VK_FORMAT_R16_SFLOAT`, `GL_R16F`).
    R16Float,
    /// Four 16-bit float channels (`VK_FORMAT_R16G16B16A16_SFLOAT`, `GL_RGBA16F`).
    Rgba16Float,
    /// One 32-bit float channel (`VK_FORMAT_R32_SFLOAT`, `GL_R32F`).
    R32Float,
    /// Four 32-bit float channels (`VK_FORMAT_R32G32B32A32_SFLOAT`, `GL_RGBA32F`).
    Rgba32Float,
    /// One 32-bit unsigned integer channel (`VK_FORMAT_R32_UINT`, `GL_R32UI`).
    R32Uint,
}

impl ImageFormat {
    /// Every format, in declaration order.
    pub const ALL: [ImageFormat; 8] = [
        ImageFormat::R8Unorm,
        ImageFormat::Rg8Unorm,
        ImageFormat::Rgba8Unorm,
        ImageFormat::R16Float,
        ImageFormat::Rgba16Float,
        ImageFormat::R32Float,
        ImageFormat::Rgba32Float,
        ImageFormat::R32Uint,
    ];

    /// The Vulkan format.
    pub fn vk_format(self) -> vk::Format {
        match self {
            ImageFormat::R8Unorm => vk::Format::R8_UNORM,
            ImageFormat::Rg8Unorm => vk::Format::R8G8_UNORM,
            ImageFormat::Rgba8Unorm => vk::Format::R8G8B8A8_UNORM,
            ImageFormat::R16Float => vk::Format::R16_SFLOAT,
            ImageFormat::Rgba16Float => vk::Format::R16G16B16A16_SFLOAT,
            ImageFormat::R32Float => vk::Format::R32_SFLOAT,
            ImageFormat::Rgba32Float => vk::Format::R32G32B32A32_SFLOAT,
            ImageFormat::R32Uint => vk::Format::R32_UINT,
        }
    }

    /// Bytes per texel.
    pub fn texel_size(self) -> u32 {
        match self {
            ImageFormat::R8Unorm => 1,
            ImageFormat::Rg8Unorm | ImageFormat::R16Float => 2,
            ImageFormat::Rgba8Unorm | ImageFormat::R32Float | ImageFormat::R32Uint => 4,
            ImageFormat::Rgba16Float => 8,
            ImageFormat::Rgba32Float => 16,
        }
    }
}

/// How texels are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageTiling {
    /// The driver's own layout (`VK_IMAGE_TILING_OPTIMAL`): fastest; what CUDA arrays need.
    Optimal,
    /// Row-major (`VK_IMAGE_TILING_LINEAR`).
    Linear,
}

/// What image to make: [`MemoryAllocator::allocate_image`](crate::MemoryAllocator::allocate_image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ImageDesc {
    /// The texel format.
    pub format: ImageFormat,
    /// Width of level 0, in texels.
    pub width: u32,
    /// Height of level 0, in texels.
    pub height: u32,
    /// Mip levels (1 = no mips).
    pub mip_levels: u32,
    /// Memory layout.
    pub tiling: ImageTiling,
}

impl ImageDesc {
    /// A 2D image of one level with optimal tiling.
    pub fn new(format: ImageFormat, width: u32, height: u32) -> Self {
        ImageDesc { format, width, height, mip_levels: 1, tiling: ImageTiling::Optimal }
    }

    /// Sets the number of mip levels.
    pub fn mip_levels(mut self, mip_levels: u32) -> Self {
        self.mip_levels = mip_levels;
        self
    }

    /// Sets the tiling.
    pub fn tiling(mut self, tiling: ImageTiling) -> Self {
        self.tiling = tiling;
        self
    }

    /// The extent of mip `level`: each level halves the last, down to 1 (Vulkan's
    /// `max(1, width >> level)`), so every level past the smallest is 1×1. Defined for every
    /// `u32`: whether the image *has* the level is [`mip_levels`](ImageDesc::mip_levels)'
    /// business, which lava-flow checks before it reads or writes a level.
    pub fn level_extent(&self, level: u32) -> (u32, u32) {
        let halve = |x: u32| x.checked_shr(level).unwrap_or(0).max(1);
        (halve(self.width), halve(self.height))
    }

    /// The bytes of mip `level`, tightly packed (rows of `width × texel_size` bytes); defined for
    /// every `u32` as [`level_extent`](ImageDesc::level_extent) is, and `u64::MAX` for extents
    /// whose size does not fit in a `u64`.
    pub fn level_size(&self, level: u32) -> u64 {
        let (w, h) = self.level_extent(level);
        u64::from(w).saturating_mul(u64::from(h)).saturating_mul(u64::from(self.format.texel_size()))
    }

    /// Mip `level`'s extent after checking that the image has the level: the one check every
    /// reader and writer of a level (Vulkan, OpenGL, CUDA) makes before anything else.
    pub(crate) fn existing_level(&self, level: u32) -> Result<(u32, u32)> {
        if level >= self.mip_levels {
            return Err(Error::InvalidArgument(format!(
                "mip level {level} of an image with {} level(s)",
                self.mip_levels
            )));
        }
        Ok(self.level_extent(level))
    }

    /// [`existing_level`](ImageDesc::existing_level), then that `len` bytes are exactly the
    /// level, tightly packed.
    pub(crate) fn check_level_data(&self, level: u32, len: usize) -> Result<(u32, u32)> {
        let extent = self.existing_level(level)?;
        let want = self.level_size(level);
        if len as u64 != want {
            return Err(Error::InvalidArgument(format!(
                "mip level {level} holds {want} bytes (tightly packed), {len} were given"
            )));
        }
        Ok(extent)
    }

    /// The most mip levels an image of this size can have.
    pub fn max_mip_levels(&self) -> u32 {
        32 - self.width.max(self.height).max(1).leading_zeros()
    }
}

/// The usage every lava-flow image is created with.
const IMAGE_USAGE: vk::ImageUsageFlags = vk::ImageUsageFlags::from_raw(
    vk::ImageUsageFlags::SAMPLED.as_raw()
        | vk::ImageUsageFlags::STORAGE.as_raw()
        | vk::ImageUsageFlags::TRANSFER_SRC.as_raw()
        | vk::ImageUsageFlags::TRANSFER_DST.as_raw(),
);

/// An exportable 2D Vulkan image in a dedicated allocation, kept in `VK_IMAGE_LAYOUT_GENERAL`
/// between lava-flow's operations.
pub struct Image {
    ctx: Arc<DeviceContext>,
    image: vk::Image,
    block: Arc<Block>,
    desc: ImageDesc,
    usage: vk::ImageUsageFlags,
    /// The transfer-timeline value of the last asynchronous transfer (0: none).
    last_async: AtomicU64,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("desc", &self.desc)
            .field("allocation_size", &self.block.size)
            .field("memory_type_index", &self.block.memory_type_index)
            .finish()
    }
}

impl DeviceContext {
    pub(crate) fn allocate_image(self: &Arc<Self>, desc: ImageDesc) -> Result<Image> {
        let physical = &self.device.physical;
        let info = &physical.info;
        if desc.width == 0 || desc.height == 0 {
            return Err(Error::ZeroSize);
        }
        if desc.mip_levels == 0 || desc.mip_levels > desc.max_mip_levels() {
            return Err(Error::InvalidArgument(format!(
                "{} mip levels for a {}×{} image: 1 to {} are possible",
                desc.mip_levels,
                desc.width,
                desc.height,
                desc.max_mip_levels()
            )));
        }
        let tiling = match desc.tiling {
            ImageTiling::Optimal => vk::ImageTiling::OPTIMAL,
            ImageTiling::Linear => vk::ImageTiling::LINEAR,
        };
        let exportable = physical.has_external_memory;
        let unsupported = |why: String| Error::Unsupported {
            what: format!(
                "device {} ({}): {:?} {:?} {}×{} with {} level(s): {why}",
                info.index, info.name, desc.format, desc.tiling, desc.width, desc.height, desc.mip_levels
            ),
        };
        // The first usage set the driver allows for this format and tiling, exported as an
        // opaque handle: with STORAGE (Vulkan compute can write the image) where possible.
        let mut found = None;
        for usage in [IMAGE_USAGE, IMAGE_USAGE & !vk::ImageUsageFlags::STORAGE] {
            if let Some(props) = self.format_properties(desc, tiling, usage, exportable)? {
                found = Some((usage, props));
                break;
            }
        }
        let Some((usage, (limits, external_features))) = found else {
            return Err(unsupported("the driver does not support this format and tiling for export".into()));
        };
        if desc.width > limits.max_extent.width
            || desc.height > limits.max_extent.height
            || desc.mip_levels > limits.max_mip_levels
        {
            return Err(unsupported(format!(
                "the driver allows at most {}×{} and {} level(s)",
                limits.max_extent.width, limits.max_extent.height, limits.max_mip_levels
            )));
        }
        let exportable = exportable && external_features.contains(vk::ExternalMemoryFeatureFlags::EXPORTABLE);
        let d = &self.device.device;
        let image = Image::create_raw(d, desc, usage, exportable)?;
        match self.bind_image(image, exportable) {
            Ok(block) => {
                let img =
                    Image { ctx: Arc::clone(self), image, block, desc, usage, last_async: AtomicU64::new(0) };
                self.buffers.fetch_add(1, Ordering::Relaxed);
                self.dedicated_allocations.fetch_add(1, Ordering::Relaxed);
                self.dedicated_bytes.fetch_add(img.block.size, Ordering::Relaxed);
                // From UNDEFINED to GENERAL once; every later copy keeps GENERAL.
                self.device.with_transfer(|t| t.initialize_image(&self.device, image, desc.mip_levels))?;
                Ok(img)
            }
            Err(e) => {
                // SAFETY: the image is unused.
                unsafe { d.destroy_image(image, None) };
                Err(e)
            }
        }
    }

    /// The driver's limits and external-memory features for a 2D image of `desc`'s format with
    /// `tiling` and `usage`; `None` where it does not support the combination.
    fn format_properties(
        &self,
        desc: ImageDesc,
        tiling: vk::ImageTiling,
        usage: vk::ImageUsageFlags,
        exportable: bool,
    ) -> Result<Option<(vk::ImageFormatProperties, vk::ExternalMemoryFeatureFlags)>> {
        let mut external_info = vk::PhysicalDeviceExternalImageFormatInfo::default()
            .handle_type(super::external::memory_handle());
        let mut format_info = vk::PhysicalDeviceImageFormatInfo2::default()
            .format(desc.format.vk_format())
            .ty(vk::ImageType::TYPE_2D)
            .tiling(tiling)
            .usage(usage);
        if exportable {
            format_info = format_info.push_next(&mut external_info);
        }
        let mut external_out = vk::ExternalImageFormatProperties::default();
        let mut out = vk::ImageFormatProperties2::default().push_next(&mut external_out);
        // SAFETY: a query on this instance's physical device; the structs outlive the call.
        let r = unsafe {
            self.device.instance_fns().get_physical_device_image_format_properties2(
                self.device.physical.handle,
                &format_info,
                &mut out,
            )
        };
        match r {
            Ok(()) => Ok(Some((
                out.image_format_properties,
                external_out.external_memory_properties.external_memory_features,
            ))),
            Err(vk::Result::ERROR_FORMAT_NOT_SUPPORTED) => Ok(None),
            Err(e) => Err(Error::vk("vkGetPhysicalDeviceImageFormatProperties2", e)),
        }
    }

    fn bind_image(&self, image: vk::Image, exportable: bool) -> Result<Arc<Block>> {
        let d = &self.device.device;
        let physical = &self.device.physical;
        // SAFETY: the image is live.
        let req = unsafe { d.get_image_memory_requirements(image) };
        let location = MemoryLocation::GpuVulkan { device_id: physical.info.index };
        let memory_type_index = physical.memory_type(req.memory_type_bits, location, "this image")?;
        self.check_heap(req.size, memory_type_index)?;
        let desc = MemoryDesc {
            size: req.size,
            memory_type_index,
            exportable,
            dedicated_to: Some(Dedicated::Image(image)),
            map: false,
        };
        let block = Arc::new(Block::new(&self.device, desc)?);
        // SAFETY: fresh image, memory made for it, offset 0.
        unsafe { d.bind_image_memory(image, block.raw.memory, 0) }.vk("vkBindImageMemory")?;
        Ok(block)
    }
}

impl Image {
    /// A new 2D `VkImage` of `desc` with `usage` on `device`, created for export and import of
    /// the platform's opaque handle where `external`; unbound. The one place lava-flow builds an
    /// image's create info, so that an import (a new `VkImage` on another `VkDevice`, as
    /// `Image::to_wgpu_texture` makes) has exactly the exporter's.
    pub(crate) fn create_raw(
        device: &ash::Device,
        desc: ImageDesc,
        usage: vk::ImageUsageFlags,
        external: bool,
    ) -> Result<vk::Image> {
        let tiling = match desc.tiling {
            ImageTiling::Optimal => vk::ImageTiling::OPTIMAL,
            ImageTiling::Linear => vk::ImageTiling::LINEAR,
        };
        let mut external_info =
            vk::ExternalMemoryImageCreateInfo::default().handle_types(super::external::memory_handle());
        let mut create = vk::ImageCreateInfo::default()
            .image_type(vk::ImageType::TYPE_2D)
            .format(desc.format.vk_format())
            .extent(vk::Extent3D { width: desc.width, height: desc.height, depth: 1 })
            .mip_levels(desc.mip_levels)
            .array_layers(1)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(tiling)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            // Exportable images must start UNDEFINED.
            .initial_layout(vk::ImageLayout::UNDEFINED);
        if external {
            create = create.push_next(&mut external_info);
        }
        // SAFETY: `create` points at live locals and describes a combination the driver allows
        // (the exporter's, checked by `allocate_image`).
        unsafe { device.create_image(&create, None) }.vk("vkCreateImage")
    }

    /// This image's memory imported into `ctx`'s device (the same GPU and driver: checked by
    /// UUID) as a dedicated import bound to a new `VkImage` of the same create info: what
    /// another `VkDevice` needs to use the image (Vulkan binds a dedicated allocation to its one
    /// image only, so even the allocator's own device needs a new import). The block keeps the
    /// memory; the caller destroys the image before dropping it. The new image's layout is
    /// `UNDEFINED` to Vulkan's bookkeeping; its texels are this image's, laid out by the same
    /// driver for the same create info, which lava-flow keeps in `GENERAL`.
    #[cfg(feature = "wgpu")]
    pub(crate) fn import_into(&self, ctx: &Arc<DeviceContext>) -> Result<(vk::Image, Arc<Block>)> {
        let device = &ctx.device;
        let desc = self.descriptor().memory;
        device.physical.info.check_same_device("the image", desc.device_uuid, desc.driver_uuid)?;
        if !device.physical.has_external_memory {
            let info = &device.physical.info;
            return Err(Error::Unsupported {
                what: format!(
                    "device {} ({}) cannot import memory: no external-memory extension",
                    info.index, info.name
                ),
            });
        }
        let handle = self.export_native()?;
        let image = Image::create_raw(&device.device, self.desc, self.usage, true)?;
        let bind = || {
            // SAFETY: the image is live.
            let req = unsafe { device.device.get_image_memory_requirements(image) };
            if req.size != desc.allocation_size || req.memory_type_bits & (1 << desc.memory_type_index) == 0 {
                // VUID-VkMemoryDedicatedAllocateInfo-image-01433: the import is for an image whose
                // requirements are exactly the allocation's.
                return Err(Error::InvalidArgument(format!(
                    "the importing device's image needs {} bytes of memory types {:#x}: not the \
                     exporter's {} bytes of type {}",
                    req.size, req.memory_type_bits, desc.allocation_size, desc.memory_type_index
                )));
            }
            let mem = MemoryDesc {
                size: desc.allocation_size,
                memory_type_index: desc.memory_type_index,
                exportable: false,
                dedicated_to: Some(Dedicated::Image(image)),
                map: false,
            };
            let block = Arc::new(Block::import(device, mem, handle, desc.memory_id)?);
            // SAFETY: the memory was imported for this image, whole, at offset 0.
            unsafe { device.device.bind_image_memory(image, block.raw.memory, 0) }.vk("vkBindImageMemory")?;
            Ok(block)
        };
        match bind() {
            Ok(block) => Ok((image, block)),
            Err(e) => {
                // SAFETY: the image is unused (the block, if any, was dropped with `bind`'s result).
                unsafe { device.device.destroy_image(image, None) };
                Err(e)
            }
        }
    }

    /// What the image is.
    pub fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    /// The usage the image was created with: `SAMPLED | STORAGE | TRANSFER_SRC | TRANSFER_DST`,
    /// or without `STORAGE` where the driver cannot export the format with it.
    pub fn vk_usage(&self) -> vk::ImageUsageFlags {
        self.usage
    }

    /// The raw `VkImage`. Valid while `self` lives; in `VK_IMAGE_LAYOUT_GENERAL` between
    /// lava-flow's operations.
    pub fn vk_image(&self) -> vk::Image {
        self.image
    }

    /// The raw `VkDeviceMemory` (dedicated to this image).
    pub fn vk_memory(&self) -> vk::DeviceMemory {
        self.block.raw.memory
    }

    /// The size of the image's `VkDeviceMemory`: what importers must be given.
    pub fn allocation_size(&self) -> u64 {
        self.block.size
    }

    /// Its memory type index.
    pub fn memory_type_index(&self) -> u32 {
        self.block.memory_type_index
    }

    /// Whether the memory can be exported.
    pub fn is_exportable(&self) -> bool {
        self.block.exportable
    }

    /// The UUID of the device the image lives on.
    pub fn device_uuid(&self) -> [u8; 16] {
        self.ctx.device.physical.info.uuid.0
    }

    /// The UUID of that device's driver.
    pub fn driver_uuid(&self) -> [u8; 16] {
        self.ctx.device.physical.info.driver_uuid.0
    }

    /// What an importer needs besides the handle: the memory's descriptor and the image's.
    pub fn descriptor(&self) -> ImageDescriptor {
        let info = &self.ctx.device.physical.info;
        ImageDescriptor {
            memory: MemoryDescriptor {
                size: self.block.size,
                offset: 0,
                allocation_size: self.block.size,
                memory_type_index: self.block.memory_type_index,
                dedicated: true,
                device_uuid: info.uuid,
                driver_uuid: info.driver_uuid,
                memory_id: self.block.id,
            },
            image: self.desc,
        }
    }

    /// A new handle to the image's memory and its [`ImageDescriptor`], for an importer in this
    /// process or another.
    pub fn export(&self) -> Result<ExportedImage> {
        Ok(ExportedImage::from_parts(ExternalHandle::from_native(self.export_native()?), self.descriptor()))
    }

    /// A new opaque fd for the image's memory (always a dedicated allocation): see
    /// [`Buffer::export_fd`](crate::Buffer::export_fd).
    #[cfg(unix)]
    pub fn export_fd(&self) -> Result<OwnedFd> {
        self.export_native()
    }

    /// A new NT handle for the image's memory (always a dedicated allocation;
    /// `vkGetMemoryWin32HandleKHR`): see `Buffer::export_handle`.
    #[cfg(windows)]
    pub fn export_handle(&self) -> Result<OwnedHandle> {
        self.export_native()
    }

    /// The platform's handle for the image's memory.
    pub(crate) fn export_native(&self) -> Result<crate::external::NativeHandle> {
        if !self.block.exportable {
            let info = &self.ctx.device.physical.info;
            return Err(Error::NotExportable {
                reason: format!(
                    "device {} ({}) cannot export {:?} {:?} images as {:?}",
                    info.index,
                    info.name,
                    self.desc.format,
                    self.desc.tiling,
                    crate::external::Os::HOST.opaque_handle()
                ),
            });
        }
        self.block.export()
    }

    /// Uploads mip `level` from `data`: tightly packed rows, exactly
    /// [`ImageDesc::level_size`] bytes. Synchronous: straight from `data` where the device
    /// imports host memory, else through the staging ring (see [`Buffer::write`](crate::Buffer::write)).
    pub fn write_level(&self, level: u32, data: &[u8]) -> Result<()> {
        let target = self.target(level, data.len())?;
        self.ctx.device.with_transfer(|t| t.write(&self.ctx.device, target, data))
    }

    /// Downloads mip `level` into `out` (see [`Image::write_level`]).
    pub fn read_level(&self, level: u32, out: &mut [u8]) -> Result<()> {
        let target = self.target(level, out.len())?;
        self.ctx.device.with_transfer(|t| t.read(&self.ctx.device, target, out))
    }

    /// Starts uploading mip `level` from `data` and returns at once (see
    /// [`Buffer::write_async`](crate::Buffer::write_async)).
    pub fn write_level_async<S: HostBytes>(&self, level: u32, data: S) -> Result<PendingTransfer<S>> {
        let range = HostRange::source(data.host_bytes());
        let target = self.target(level, range.len)?;
        self.start(Direction::ToDevice, target, data, range)
    }

    /// Starts downloading mip `level` into `out`; [`PendingTransfer::wait`] returns it filled.
    pub fn read_level_async<D: HostBytesMut>(&self, level: u32, mut out: D) -> Result<PendingTransfer<D>> {
        let range = HostRange::destination(out.host_bytes_mut());
        let target = self.target(level, range.len)?;
        self.start(Direction::ToHost, target, out, range)
    }

    fn start<S: HostBytes>(
        &self,
        dir: Direction,
        target: Target,
        host: S,
        range: HostRange,
    ) -> Result<PendingTransfer<S>> {
        PendingTransfer::start(&self.ctx.device, &self.last_async, dir, target, host, range)
    }

    /// The copy target for mip `level`, after checking that `len` bytes are exactly the level.
    fn target(&self, level: u32, len: usize) -> Result<Target> {
        let (width, _) = self.desc.check_level_data(level, len)?;
        Ok(Target::Image { image: self.image, level, width, texel: self.desc.format.texel_size() })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let last_async = *self.last_async.get_mut();
        if !self.ctx.device.release_from_transfer(self.image.as_raw(), last_async) {
            // As in `Buffer`'s drop: a timed-out copy still uses the image; it and its memory
            // (and with it the device) are leaked, not destroyed under the GPU.
            std::mem::forget(Arc::clone(&self.block));
            return;
        }
        // SAFETY: the image belongs to this device; lava-flow's own copies have completed (a
        // timed-out one was waited for above).
        unsafe { self.ctx.device.device.destroy_image(self.image, None) };
        self.ctx.buffers.fetch_sub(1, Ordering::Relaxed);
        self.ctx.dedicated_allocations.fetch_sub(1, Ordering::Relaxed);
        self.ctx.dedicated_bytes.fetch_sub(self.block.size, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{ImageDesc, ImageFormat};
    use proptest::prelude::*;

    fn levels() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..40, Just(31), Just(32), Just(33), Just(63), Just(64), Just(u32::MAX), any::<u32>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Vulkan's rule, `max(1, width >> level)`, for every `u32` level and extent: no panic
        /// (the shifts overflowed from level 32 on), levels past the smallest are 1×1, sizes past
        /// `u64::MAX` saturate, and a level the image does not have is a typed error.
        #[test]
        fn level_helpers_are_total(width in 1u32.., height in 1u32.., level in levels(), f in 0..ImageFormat::ALL.len()) {
            let desc = ImageDesc::new(ImageFormat::ALL[f], width, height);
            let vulkan = |x: u32| if level >= 32 { 1 } else { (x >> level).max(1) };
            prop_assert_eq!(desc.level_extent(level), (vulkan(width), vulkan(height)));
            let texel = u128::from(ImageFormat::ALL[f].texel_size());
            let size = u128::from(vulkan(width)) * u128::from(vulkan(height)) * texel;
            prop_assert_eq!(desc.level_size(level), u64::try_from(size).unwrap_or(u64::MAX));
            if level >= desc.mip_levels {
                let refused = desc.check_level_data(level, 4);
                prop_assert!(matches!(refused, Err(crate::Error::InvalidArgument(_))), "{:?}", refused);
            }
        }
    }
}
