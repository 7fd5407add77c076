//! Vulkan images in CUDA: mipmapped arrays, one `CUarray` per level, surface and texture objects.

use std::marker::PhantomData;

use cudarc::driver::sys;

use super::context::{Context, Stream};
use super::memory::{destroy_external, import_external};
use super::raw::check;
use super::release::{lock, CudaFence, CudaUses, Release};
use crate::error::{Error, Result};
use crate::external::NativeHandle;

use crate::handle::{ExportedImage, ImageDescriptor};
use crate::vulkan::{Image, ImageDesc, ImageFormat, ImageTiling};

/// The CUDA array format and channel count of a lava-flow image format.
fn array_format(format: ImageFormat) -> (sys::CUarray_format, u32) {
    use sys::CUarray_format as F;
    match format {
        ImageFormat::R8Unorm => (F::CU_AD_FORMAT_UNSIGNED_INT8, 1),
        ImageFormat::Rg8Unorm => (F::CU_AD_FORMAT_UNSIGNED_INT8, 2),
        ImageFormat::Rgba8Unorm => (F::CU_AD_FORMAT_UNSIGNED_INT8, 4),
        ImageFormat::R16Float => (F::CU_AD_FORMAT_HALF, 1),
        ImageFormat::Rgba16Float => (F::CU_AD_FORMAT_HALF, 4),
        ImageFormat::R32Float => (F::CU_AD_FORMAT_FLOAT, 1),
        ImageFormat::Rgba32Float => (F::CU_AD_FORMAT_FLOAT, 4),
        ImageFormat::R32Uint => (F::CU_AD_FORMAT_UNSIGNED_INT32, 1),
    }
}

/// A lava-flow [`Image`] in CUDA: its dedicated memory imported
/// (`CUDA_EXTERNAL_MEMORY_DEDICATED`) and mapped as a mipmapped array with the image's levels,
/// format and extent (`cuExternalMemoryGetMappedMipmappedArray`, surface load/store allowed).
/// Borrows the image ([`Context::import_image`]) or owns its import
/// ([`Context::import_exported_image`], `'static`); levels, surfaces and textures borrow this.
///
/// Dropped while work it was told of with [`release_after`](CudaImage::release_after) is still
/// queued, it keeps its array and import until that work completes (ADR 0014): the context
/// releases them on a later call, [`Context::reclaim`], or at its end. The image's memory is a
/// dedicated allocation that the import holds by itself, so this holds for a borrowed image too.
/// Surface and texture objects borrow the image and are destroyed at their own drop: drop them
/// only once the kernels that use them are done.
pub struct CudaImage<'a> {
    ctx: Context,
    external: sys::CUexternalMemory,
    mipmapped: sys::CUmipmappedArray,
    desc: ImageDesc,
    /// Work queued on the image (ADR 0014).
    uses: CudaUses,
    _image: PhantomData<&'a Image>,
}

impl std::fmt::Debug for CudaImage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaImage").field("desc", &self.desc).finish_non_exhaustive()
    }
}

impl Context {
    /// Imports a lava-flow image of this process as a CUDA mipmapped array: the same path as
    /// [`import_exported_image`](Context::import_exported_image) with the image's export.
    ///
    /// Errors: [`Error::DeviceMismatch`]; [`Error::NotExportable`]; [`Error::Unsupported`] for
    /// linear tiling (CUDA arrays need the driver's optimal layout); CUDA errors.
    pub fn import_image<'a>(&self, image: &'a Image) -> Result<CudaImage<'a>> {
        self.image_from(&image.descriptor(), || image.export_native())
    }

    /// Imports an exported image — from this process or another — as a CUDA mipmapped array
    /// that owns its import: no Vulkan object is needed here. The descriptor is checked first
    /// ([`ImageDescriptor::check`], the device, optimal tiling); the fd is CUDA's once the
    /// import succeeds and closed otherwise.
    pub fn import_exported_image(&self, exported: ExportedImage) -> Result<CudaImage<'static>> {
        let (handle, descriptor) = exported.into_parts();
        let fd = handle.into_native();
        self.image_from(&descriptor, || Ok(fd))
    }

    fn image_from<'a>(
        &self,
        descriptor: &ImageDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
    ) -> Result<CudaImage<'a>> {
        descriptor.check()?;
        self.check_device("the image", descriptor.memory.device_uuid)?;
        self.reclaim();
        let desc = descriptor.image;
        if desc.tiling != ImageTiling::Optimal {
            return Err(Error::Unsupported {
                what: "CUDA arrays need images with optimal tiling (ImageTiling::Optimal)".into(),
            });
        }
        // lava-flow images are always dedicated allocations (checked), imported as such.
        let external = import_external(self, fd()?, descriptor.memory.allocation_size, true)?;
        let (format, channels) = array_format(desc.format);
        let array = sys::CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC {
            offset: 0,
            arrayDesc: sys::CUDA_ARRAY3D_DESCRIPTOR {
                Width: desc.width as usize,
                Height: desc.height as usize,
                Depth: 0,
                Format: format,
                NumChannels: channels,
                Flags: sys::CUDA_ARRAY3D_SURFACE_LDST,
            },
            numLevels: desc.mip_levels,
            reserved: [0; 16],
        };
        let mut mipmapped = std::ptr::null_mut();
        // SAFETY: `external` holds the image's whole allocation; the array description is the
        // image's own.
        let mapped =
            unsafe { sys::cuExternalMemoryGetMappedMipmappedArray(&mut mipmapped, external, &array) };
        if let Err(e) = check("cuExternalMemoryGetMappedMipmappedArray", mapped) {
            // SAFETY: imported above and not mapped.
            unsafe { destroy_external(self, external) };
            return Err(e);
        }
        Ok(CudaImage {
            ctx: self.clone(),
            external,
            mipmapped,
            desc,
            uses: CudaUses::default(),
            _image: PhantomData,
        })
    }
}

impl CudaImage<'_> {
    /// Records that the work queued on `stream` so far uses the image (its levels, surfaces or
    /// textures): dropped before that work completes, the image is released only once it has
    /// (ADR 0014). Call it after queueing the kernels.
    ///
    /// Errors: [`Error::DeviceMismatch`] for a stream of another GPU; CUDA errors.
    pub fn release_after(&self, stream: &Stream) -> Result<()> {
        let fence = CudaFence::record(&self.ctx, stream)?;
        lock(&self.uses).add(fence);
        Ok(())
    }

    /// The image's description.
    pub fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    /// The raw mipmapped array.
    pub fn raw(&self) -> sys::CUmipmappedArray {
        self.mipmapped
    }

    /// Mip `level` as a `CUarray` (owned by the mipmapped array).
    pub fn level(&self, level: u32) -> Result<CudaArray<'_>> {
        let (width, height) = self.desc.existing_level(level)?;
        self.ctx.bind()?;
        let mut array = std::ptr::null_mut();
        // SAFETY: the mipmapped array is live; `level` is one of its levels.
        check("cuMipmappedArrayGetLevel", unsafe {
            sys::cuMipmappedArrayGetLevel(&mut array, self.mipmapped, level)
        })?;
        Ok(CudaArray { image: self, array, width, height, texel: self.desc.format.texel_size() })
    }

    /// A texture object over all levels: clamped addressing, point filtering, mip levels
    /// clamped to the image's. Reads return normalised floats for the unorm formats.
    pub fn texture(&self) -> Result<TextureObject<'_>> {
        // SAFETY: all-zero is a valid resource description; its fields are set below.
        let mut resource: sys::CUDA_RESOURCE_DESC = unsafe { std::mem::zeroed() };
        resource.resType = sys::CUresourcetype::CU_RESOURCE_TYPE_MIPMAPPED_ARRAY;
        resource.res.mipmap.hMipmappedArray = self.mipmapped;
        // SAFETY: all-zero is a valid texture description; its fields are set below.
        let mut texture: sys::CUDA_TEXTURE_DESC = unsafe { std::mem::zeroed() };
        texture.addressMode = [sys::CUaddress_mode::CU_TR_ADDRESS_MODE_CLAMP; 3];
        texture.filterMode = sys::CUfilter_mode::CU_TR_FILTER_MODE_POINT;
        texture.mipmapFilterMode = sys::CUfilter_mode::CU_TR_FILTER_MODE_POINT;
        texture.maxMipmapLevelClamp = (self.desc.mip_levels - 1) as f32;
        if self.desc.format == ImageFormat::R32Uint {
            texture.flags = sys::CU_TRSF_READ_AS_INTEGER;
        }
        self.ctx.bind()?;
        let mut object = 0;
        // SAFETY: both descriptions are complete; the array is live.
        check("cuTexObjectCreate", unsafe {
            sys::cuTexObjectCreate(&mut object, &resource, &texture, std::ptr::null())
        })?;
        Ok(TextureObject { ctx: &self.ctx, object })
    }
}

impl Drop for CudaImage<'_> {
    fn drop(&mut self) {
        // Reverse order: the array, then the import, once the recorded work is done (now or
        // later). Levels, surfaces and textures borrow `self`, so they are gone already.
        let pending = self.uses.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take_pending();
        self.ctx.release_after_fences(
            pending,
            Release::Array { mipmapped: self.mipmapped, external: self.external },
        );
    }
}

/// One mip level of a [`CudaImage`].
#[derive(Debug)]
pub struct CudaArray<'i> {
    image: &'i CudaImage<'i>,
    array: sys::CUarray,
    width: u32,
    height: u32,
    texel: u32,
}

impl CudaArray<'_> {
    /// The raw `CUarray`.
    pub fn raw(&self) -> sys::CUarray {
        self.array
    }

    /// The level's extent in texels.
    pub fn extent(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Copies a tightly packed level from host memory into the array (`cuMemcpy2D`) and waits
    /// until it has landed.
    pub fn copy_from_host(&self, data: &[u8]) -> Result<()> {
        self.check_len(data.len())?;
        self.copy(Copy2d::FromHost(data.as_ptr()))
    }

    /// Copies the level into tightly packed host memory (`cuMemcpy2D`).
    pub fn copy_to_host(&self, out: &mut [u8]) -> Result<()> {
        self.check_len(out.len())?;
        self.copy(Copy2d::ToHost(out.as_mut_ptr()))
    }

    /// A surface object for `surf2Dread`/`surf2Dwrite` on this level.
    pub fn surface(&self) -> Result<SurfaceObject<'_>> {
        // SAFETY: all-zero is a valid resource description; its fields are set below.
        let mut resource: sys::CUDA_RESOURCE_DESC = unsafe { std::mem::zeroed() };
        resource.resType = sys::CUresourcetype::CU_RESOURCE_TYPE_ARRAY;
        resource.res.array.hArray = self.array;
        self.image.ctx.bind()?;
        let mut object = 0;
        // SAFETY: the description is complete; the array is live and allows surface load/store.
        check("cuSurfObjectCreate", unsafe { sys::cuSurfObjectCreate(&mut object, &resource) })?;
        Ok(SurfaceObject { ctx: &self.image.ctx, object })
    }

    fn row_bytes(&self) -> usize {
        (self.width * self.texel) as usize
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let want = self.row_bytes() * self.height as usize;
        if len == want {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "the level holds {want} bytes (tightly packed); {len} were given"
            )))
        }
    }

    /// One `cuMemcpy2D` of the whole level between the array and tightly packed host memory.
    /// The description is written out in full: it holds enums without a zero value, so an
    /// all-zero start would not be a valid value.
    fn copy(&self, direction: Copy2d) -> Result<()> {
        let pitch = self.row_bytes();
        let (host, array) = (sys::CUmemorytype::CU_MEMORYTYPE_HOST, sys::CUmemorytype::CU_MEMORYTYPE_ARRAY);
        let (src_type, src_host, src_array, dst_type, dst_host, dst_array) = match direction {
            Copy2d::FromHost(p) => {
                (host, p.cast(), std::ptr::null_mut(), array, std::ptr::null_mut(), self.array)
            }
            Copy2d::ToHost(p) => (array, std::ptr::null(), self.array, host, p.cast(), std::ptr::null_mut()),
        };
        let copy = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: src_type,
            srcHost: src_host,
            srcDevice: 0,
            srcArray: src_array,
            srcPitch: pitch,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: dst_type,
            dstHost: dst_host,
            dstDevice: 0,
            dstArray: dst_array,
            dstPitch: pitch,
            WidthInBytes: pitch,
            Height: self.height as usize,
        };
        self.image.ctx.bind()?;
        // SAFETY: the description names a live array of this extent and host memory of exactly
        // the level's size (checked by the callers).
        check("cuMemcpy2D_v2", unsafe { sys::cuMemcpy2D_v2(&copy) })?;
        // A copy from pageable memory may return before it has landed in the array.
        self.image.ctx.finish_default_stream()
    }
}

/// Which way a level copy goes, with the host memory of exactly the level's size.
enum Copy2d {
    FromHost(*const u8),
    ToHost(*mut u8),
}

/// A CUDA surface object on one level, destroyed on drop.
#[derive(Debug)]
pub struct SurfaceObject<'a> {
    ctx: &'a Context,
    object: sys::CUsurfObject,
}

impl SurfaceObject<'_> {
    /// The raw handle, to pass to kernels.
    pub fn raw(&self) -> sys::CUsurfObject {
        self.object
    }
}

impl Drop for SurfaceObject<'_> {
    fn drop(&mut self) {
        // Not under a pending wait (ADR 0017): whether this call waits for the context's streams
        // is not documented.
        self.ctx.release_later(Release::Surface(self.object));
    }
}

/// A CUDA texture object over a [`CudaImage`], destroyed on drop.
#[derive(Debug)]
pub struct TextureObject<'a> {
    ctx: &'a Context,
    object: sys::CUtexObject,
}

impl TextureObject<'_> {
    /// The raw handle, to pass to kernels.
    pub fn raw(&self) -> sys::CUtexObject {
        self.object
    }
}

impl Drop for TextureObject<'_> {
    fn drop(&mut self) {
        // As for a surface object.
        self.ctx.release_later(Release::Texture(self.object));
    }
}
