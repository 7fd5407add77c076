//! lava-flow images as OpenCL images (`clCreateImageWithProperties` over the image's exported
//! memory, `cl_khr_external_memory_opaque_fd`).

use crate::external::{NativeHandle, Payload};
use std::ffi::c_void;
use std::marker::PhantomData;

use super::memory::Queue;
use super::sys::{self, check, cl};
use super::Context;
use crate::error::{Api, Error, Result};
use crate::handle::{ExportedImage, ImageDescriptor};
use crate::{Image, ImageDesc, ImageFormat, ImageTiling};

/// A lava-flow [`Image`] (one level, 2-D) as an OpenCL image of this context; borrows the image
/// and the context. Like buffers, it is used between [`Queue::acquire`] and [`Queue::release`];
/// [`ClImage::read`] and [`ClImage::write`] do that themselves. Kernels take it as `image2d_t`
/// ([`Kernel::arg_image`](super::Kernel::arg_image)).
#[derive(Debug)]
pub struct ClImage<'a> {
    pub(super) ctx: &'a Context,
    pub(super) mem: sys::cl_mem,
    desc: ImageDesc,
    _image: PhantomData<&'a Image>,
}

// SAFETY: OpenCL memory objects are thread-safe handles; the borrowed image is Sync.
unsafe impl Send for ClImage<'_> {}
// SAFETY: as above.
unsafe impl Sync for ClImage<'_> {}

/// The OpenCL format of a lava-flow format (channel order, channel data type).
fn cl_format(format: ImageFormat) -> Option<sys::cl_image_format> {
    let (order, data) = match format {
        ImageFormat::R8Unorm => (sys::CL_R, sys::CL_UNORM_INT8),
        ImageFormat::Rg8Unorm => (sys::CL_RG, sys::CL_UNORM_INT8),
        ImageFormat::Rgba8Unorm => (sys::CL_RGBA, sys::CL_UNORM_INT8),
        ImageFormat::R16Float => (sys::CL_R, sys::CL_HALF_FLOAT),
        ImageFormat::Rgba16Float => (sys::CL_RGBA, sys::CL_HALF_FLOAT),
        ImageFormat::R32Float => (sys::CL_R, sys::CL_FLOAT),
        ImageFormat::Rgba32Float => (sys::CL_RGBA, sys::CL_FLOAT),
        ImageFormat::R32Uint => (sys::CL_R, sys::CL_UNSIGNED_INT32),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(sys::cl_image_format { image_channel_order: order, image_channel_data_type: data })
}

impl Context {
    /// Makes `image` an OpenCL 2-D image of this context: its dedicated `VkDeviceMemory` imported
    /// whole (`clCreateImageWithProperties`, `CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR`) with the
    /// image's format, width and height.
    ///
    /// What OpenCL can take, checked first, each an [`Error::Unsupported`] that says what is
    /// missing: a device with image support and the format (`clGetSupportedImageFormats`); one
    /// mip level (OpenCL images from external memory have no levels here); the tiling the device
    /// assumes for opaque-fd images — optimal, unless the device lists the handle type under
    /// `CL_DEVICE_EXTERNAL_MEMORY_IMPORT_ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR`, then linear.
    /// Also [`Error::DeviceMismatch`], [`Error::NotExportable`], OpenCL errors.
    pub fn import_image<'a>(&'a self, image: &'a Image) -> Result<ClImage<'a>> {
        self.image_of(&image.descriptor(), || image.export_native())
    }

    /// Imports an exported image — from this process or another — as an OpenCL image of this
    /// context that holds its memory through the import: no Vulkan object is needed here. The
    /// descriptor is checked first ([`ImageDescriptor::check`]); then as
    /// [`import_image`](Context::import_image).
    pub fn import_exported_image(&self, exported: ExportedImage) -> Result<ClImage<'_>> {
        let (handle, descriptor) = exported.into_parts();
        let fd = handle.into_native();
        self.image_of(&descriptor, || Ok(fd))
    }

    fn image_of<'a>(
        &'a self,
        descriptor: &ImageDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
    ) -> Result<ClImage<'a>> {
        let cl = cl()?;
        descriptor.check()?;
        self.check_device("the image", descriptor.memory.device_uuid)?;
        let desc = descriptor.image;
        let unsupported = |why: String| Error::Unsupported {
            what: format!(
                "OpenCL device {} cannot import this {:?} image: {why}",
                self.device.name, desc.format
            ),
        };
        if !self.device_bool(sys::CL_DEVICE_IMAGE_SUPPORT, "clGetDeviceInfo(CL_DEVICE_IMAGE_SUPPORT)")? {
            return Err(unsupported("the device has no image support".into()));
        }
        if desc.mip_levels != 1 {
            return Err(unsupported(format!(
                "it has {} mip levels; OpenCL imports images of one level",
                desc.mip_levels
            )));
        }
        let linear = self.imports_linear_images()?;
        let wanted = if linear { ImageTiling::Linear } else { ImageTiling::Optimal };
        if desc.tiling != wanted {
            return Err(unsupported(format!(
                "its tiling is {:?}; the device imports opaque-fd images as {wanted:?} ones",
                desc.tiling
            )));
        }
        let format = cl_format(desc.format).ok_or_else(|| unsupported("no OpenCL format matches".into()))?;
        if !self.supported_image_formats()?.contains(&format) {
            return Err(unsupported(
                "the device does not support the format for read-write 2-D images".into(),
            ));
        }
        let cl_desc = sys::cl_image_desc {
            image_type: sys::CL_MEM_OBJECT_IMAGE2D,
            image_width: desc.width as usize,
            image_height: desc.height as usize,
            image_depth: 1,
            image_array_size: 1,
            image_row_pitch: 0,
            image_slice_pitch: 0,
            num_mip_levels: 0,
            num_samples: 0,
            mem_object: std::ptr::null_mut(),
        };
        let mem = crate::external::give_to_driver(
            Api::OpenCl,
            fd()?,
            Payload::Memory { allocation_size: descriptor.memory.allocation_size },
            |raw| {
                let properties = self.import_properties(raw);
                let mut status = 0;
                // SAFETY: a zero-terminated property list with an opaque fd of this device's image
                // memory (checked above); format and descriptor are live locals describing that
                // image; no host pointer.
                let mem = unsafe {
                    (cl.clCreateImageWithProperties)(
                        self.context,
                        properties.as_ptr(),
                        sys::CL_MEM_READ_WRITE,
                        &format,
                        &cl_desc,
                        std::ptr::null_mut(),
                        &mut status,
                    )
                };
                crate::external::spec_rule(check("clCreateImageWithProperties", status).map(|()| mem))
            },
        )?;
        Ok(ClImage { ctx: self, mem, desc, _image: PhantomData })
    }

    /// A `cl_bool` device query.
    fn device_bool(&self, what: sys::cl_uint, call: &'static str) -> Result<bool> {
        let cl = cl()?;
        let mut value: sys::cl_uint = 0;
        // SAFETY: a cl_bool (cl_uint) query into a cl_uint.
        check(call, unsafe {
            (cl.clGetDeviceInfo)(
                self.device.device_id,
                what,
                4,
                (&raw mut value).cast(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(value != 0)
    }

    /// Whether the device imports opaque-fd images as linear ones.
    fn imports_linear_images(&self) -> Result<bool> {
        let cl = cl()?;
        let query = sys::CL_DEVICE_EXTERNAL_MEMORY_IMPORT_ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR;
        let mut size = 0usize;
        // SAFETY: a size query.
        let status =
            unsafe { (cl.clGetDeviceInfo)(self.device.device_id, query, 0, std::ptr::null_mut(), &mut size) };
        if status != sys::CL_SUCCESS || size < std::mem::size_of::<sys::cl_uint>() {
            // An empty list (NVIDIA's), or a device that predates the query: no linear images.
            return Ok(false);
        }
        let mut types = vec![0 as sys::cl_uint; size / 4];
        let call = "clGetDeviceInfo(CL_DEVICE_EXTERNAL_MEMORY_IMPORT_ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR)";
        // SAFETY: `types` has room for `size` bytes.
        let status = unsafe {
            (cl.clGetDeviceInfo)(
                self.device.device_id,
                query,
                size,
                types.as_mut_ptr().cast(),
                std::ptr::null_mut(),
            )
        };
        check(call, status)?;
        Ok(types.contains(&(sys::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR as sys::cl_uint)))
    }

    /// The formats of read-write 2-D images.
    fn supported_image_formats(&self) -> Result<Vec<sys::cl_image_format>> {
        let cl = cl()?;
        let mut count: sys::cl_uint = 0;
        let (flags, kind) = (sys::CL_MEM_READ_WRITE, sys::CL_MEM_OBJECT_IMAGE2D);
        // SAFETY: a count query.
        check("clGetSupportedImageFormats", unsafe {
            (cl.clGetSupportedImageFormats)(self.context, flags, kind, 0, std::ptr::null_mut(), &mut count)
        })?;
        let empty = sys::cl_image_format { image_channel_order: 0, image_channel_data_type: 0 };
        let mut formats = vec![empty; count as usize];
        // SAFETY: `formats` has room for `count` entries.
        check("clGetSupportedImageFormats", unsafe {
            (cl.clGetSupportedImageFormats)(
                self.context,
                flags,
                kind,
                count,
                formats.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(formats)
    }
}

impl ClImage<'_> {
    /// The memory object, for kernels' `image2d_t` arguments.
    pub fn mem(&self) -> *mut c_void {
        self.mem
    }

    /// The image's description.
    pub fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    /// Copies `data` (the whole image, rows tightly packed) in (`clEnqueueWriteImage`) and waits.
    pub fn write(&self, queue: &Queue<'_>, data: &[u8]) -> Result<()> {
        self.check_len(data.len())?;
        self.with_acquired(queue, |cl, q, origin, region| {
            // SAFETY: the whole image; `data` holds exactly its bytes (checked); blocking, so it
            // outlives the copy.
            check("clEnqueueWriteImage", unsafe {
                (cl.clEnqueueWriteImage)(
                    q,
                    self.mem,
                    sys::CL_TRUE,
                    origin,
                    region,
                    0,
                    0,
                    data.as_ptr().cast(),
                    0,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                )
            })
        })
    }

    /// Copies the whole image out (rows tightly packed, `clEnqueueReadImage`) and waits.
    pub fn read(&self, queue: &Queue<'_>, out: &mut [u8]) -> Result<()> {
        self.check_len(out.len())?;
        self.with_acquired(queue, |cl, q, origin, region| {
            // SAFETY: as in `write`; `out` has room for the image's bytes.
            check("clEnqueueReadImage", unsafe {
                (cl.clEnqueueReadImage)(
                    q,
                    self.mem,
                    sys::CL_TRUE,
                    origin,
                    region,
                    0,
                    0,
                    out.as_mut_ptr().cast(),
                    0,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                )
            })
        })
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let want = self.desc.level_size(0);
        if len as u64 != want {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes for a {}×{} {:?} image of {want} bytes",
                self.desc.width, self.desc.height, self.desc.format
            )));
        }
        Ok(())
    }

    fn with_acquired(
        &self,
        queue: &Queue<'_>,
        f: impl FnOnce(&sys::Cl, sys::cl_command_queue, *const usize, *const usize) -> Result<()>,
    ) -> Result<()> {
        let cl = cl()?;
        let origin = [0usize; 3];
        let region = [self.desc.width as usize, self.desc.height as usize, 1];
        queue.acquire(&[self])?;
        let result = f(cl, queue.queue, origin.as_ptr(), region.as_ptr());
        let released = queue.release(&[self]);
        let finished = queue.finish();
        result.and(released).and(finished)
    }
}

impl Drop for ClImage<'_> {
    fn drop(&mut self) {
        let Ok(cl) = cl() else { return };
        // SAFETY: made in `import_image`, released once.
        if let Err(e) = check("clReleaseMemObject", unsafe { (cl.clReleaseMemObject)(self.mem) }) {
            log::error!("OpenCL image: {e}");
        }
    }
}
