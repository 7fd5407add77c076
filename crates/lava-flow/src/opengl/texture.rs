//! GL textures on the memory of exportable lava-flow images.

use crate::external::NativeHandle;
use std::marker::PhantomData;
use std::rc::Rc;

use super::context::GlContext;
use super::memory::MemoryObject;
use super::sys::{self, GLenum, GLint, GLuint};
use crate::error::{Error, Result};
use crate::handle::{ExportedImage, ImageDescriptor};
use crate::vulkan::{Image, ImageDesc, ImageFormat, ImageTiling};

/// The GL internal format, pixel format and pixel type of a lava-flow image format.
fn gl_format(format: ImageFormat) -> (GLenum, GLenum, GLenum) {
    match format {
        ImageFormat::R8Unorm => (sys::R8, sys::RED, sys::UNSIGNED_BYTE),
        ImageFormat::Rg8Unorm => (sys::RG8, sys::RG, sys::UNSIGNED_BYTE),
        ImageFormat::Rgba8Unorm => (sys::RGBA8, sys::RGBA, sys::UNSIGNED_BYTE),
        ImageFormat::R16Float => (sys::R16F, sys::RED, sys::HALF_FLOAT),
        ImageFormat::Rgba16Float => (sys::RGBA16F, sys::RGBA, sys::HALF_FLOAT),
        ImageFormat::R32Float => (sys::R32F, sys::RED, sys::FLOAT),
        ImageFormat::Rgba32Float => (sys::RGBA32F, sys::RGBA, sys::FLOAT),
        ImageFormat::R32Uint => (sys::R32UI, sys::RED_INTEGER, sys::UNSIGNED_INT),
    }
}

/// A lava-flow [`Image`] seen by OpenGL as a 2D texture with the same levels, made with
/// `glTextureStorageMem2DEXT` on the image's memory and `GL_TEXTURE_TILING_EXT` set to the
/// image's tiling. It borrows the context and the image.
pub struct GlTexture<'a> {
    memory: Rc<MemoryObject>,
    name: GLuint,
    desc: ImageDesc,
    _borrows: PhantomData<(&'a GlContext, &'a Image)>,
}

impl std::fmt::Debug for GlTexture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlTexture").field("texture", &self.name).field("desc", &self.desc).finish()
    }
}

impl GlContext {
    /// Imports a lava-flow image of this process as a GL texture, without copying: the same
    /// path as [`import_exported_image`](GlContext::import_exported_image) with the image's
    /// export.
    ///
    /// Errors: [`Error::DeviceMismatch`] for an image of another device or driver;
    /// [`Error::NotExportable`]; [`Error::Unsupported`] without `GL_EXT_memory_object_fd`, or when
    /// the driver does not list the image's tiling for its format (`GL_TILING_TYPES_EXT`).
    pub fn import_image<'a>(&'a self, image: &'a Image) -> Result<GlTexture<'a>> {
        self.texture_of(&image.descriptor(), || image.export_native())
    }

    /// Imports an exported image — from this process or another — as a GL texture that holds
    /// its memory through the GL memory object: no Vulkan object is needed here. The
    /// descriptor is checked first ([`ImageDescriptor::check`](crate::ImageDescriptor::check)).
    pub fn import_exported_image(&self, exported: ExportedImage) -> Result<GlTexture<'_>> {
        let (handle, descriptor) = exported.into_parts();
        let fd = handle.into_native();
        self.texture_of(&descriptor, || Ok(fd))
    }

    fn texture_of<'a>(
        &'a self,
        descriptor: &ImageDescriptor,
        fd: impl FnOnce() -> Result<NativeHandle>,
    ) -> Result<GlTexture<'a>> {
        descriptor.check()?;
        // Checks the extension, the device and the descriptor before anything else.
        let memory = self.memory_for(&descriptor.memory, "the image", fd)?;
        let desc = descriptor.image;
        let (internal, _, _) = gl_format(desc.format);
        let tiling = match desc.tiling {
            ImageTiling::Optimal => sys::OPTIMAL_TILING_EXT,
            ImageTiling::Linear => sys::LINEAR_TILING_EXT,
        };
        let supported = self.tiling_types(internal)?;
        if !supported.contains(&(tiling as GLint)) {
            return Err(Error::Unsupported {
                what: format!(
                    "{} does not list {:?} tiling for {:?} textures (GL_TILING_TYPES_EXT)",
                    self.shared.info.renderer, desc.tiling, desc.format
                ),
            });
        }
        let shared = &self.shared;
        let gl = shared.current()?;
        let mut name = 0;
        // SAFETY: the context is current; `name` is a valid out-pointer for one name.
        unsafe { gl.CreateTextures(sys::TEXTURE_2D, 1, &mut name) };
        shared.check("glCreateTextures")?;
        let texture = GlTexture { memory, name, desc, _borrows: PhantomData };
        // SAFETY: a fresh texture of this context.
        unsafe { gl.TextureParameteri(name, sys::TEXTURE_TILING_EXT, tiling as GLint) };
        shared.check("glTextureParameteri(GL_TEXTURE_TILING_EXT)")?;
        // SAFETY: the memory object holds the image's whole dedicated allocation, whose levels,
        // format and extent are the ones given here; offset 0.
        unsafe {
            gl.TextureStorageMem2DEXT(
                name,
                desc.mip_levels as i32,
                internal,
                desc.width as i32,
                desc.height as i32,
                texture.memory.name,
                0,
            )
        };
        shared.check("glTextureStorageMem2DEXT")?;
        Ok(texture)
    }

    /// `GL_TILING_TYPES_EXT` for `internal` 2D textures.
    fn tiling_types(&self, internal: GLenum) -> Result<Vec<GLint>> {
        let shared = &self.shared;
        let gl = shared.current()?;
        let mut count = 0;
        // SAFETY: the context is current and has GL_EXT_memory_object; one GLint is written.
        unsafe {
            gl.GetInternalformativ(sys::TEXTURE_2D, internal, sys::NUM_TILING_TYPES_EXT, 1, &mut count)
        };
        shared.check("glGetInternalformativ(GL_NUM_TILING_TYPES_EXT)")?;
        let mut types = vec![0; count.max(0) as usize];
        if !types.is_empty() {
            // SAFETY: `types` has room for `count` values.
            unsafe {
                gl.GetInternalformativ(
                    sys::TEXTURE_2D,
                    internal,
                    sys::TILING_TYPES_EXT,
                    count,
                    types.as_mut_ptr(),
                )
            };
            shared.check("glGetInternalformativ(GL_TILING_TYPES_EXT)")?;
        }
        Ok(types)
    }
}

impl GlTexture<'_> {
    /// The GL texture name.
    pub fn gl_texture(&self) -> GLuint {
        self.name
    }

    /// The image's description.
    pub fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    /// Reads mip `level`, tightly packed (as [`Image::read_level`]): copied on the GPU
    /// (`glCopyImageSubData`) into a texture of the context's own and read from there
    /// (`glGetTextureImage`). NVIDIA's GL answered host reads of an imported texture from a copy
    /// of its own, as it did for buffers ([`GlBuffer::read`](super::GlBuffer::read) says more).
    pub fn read_level(&self, level: u32, out: &mut [u8]) -> Result<()> {
        let (w, h) = self.desc.check_level_data(level, out.len())?;
        let (internal, format, ty) = gl_format(self.desc.format);
        let shared = &self.memory.shared;
        let gl = shared.current()?;
        let mut copy = 0;
        // SAFETY: the context is current; one name is written.
        unsafe { gl.CreateTextures(sys::TEXTURE_2D, 1, &mut copy) };
        if let Err(e) = shared.check("glCreateTextures") {
            if copy != 0 {
                // SAFETY: made above (the error may be an earlier call's), used by nothing.
                unsafe { gl.DeleteTextures(1, &copy) };
            }
            return Err(e);
        }
        let mut read = || -> Result<()> {
            // SAFETY: a fresh texture of this context: one level of the level's size and format.
            unsafe { gl.TextureStorage2D(copy, 1, internal, w as i32, h as i32) };
            shared.check("glTextureStorage2D")?;
            // SAFETY: both textures are this context's, of the same internal format; the region
            // is the whole level, which both have.
            unsafe {
                gl.CopyImageSubData(
                    self.name,
                    sys::TEXTURE_2D,
                    level as i32,
                    0,
                    0,
                    0,
                    copy,
                    sys::TEXTURE_2D,
                    0,
                    0,
                    0,
                    0,
                    w as i32,
                    h as i32,
                    1,
                );
            }
            shared.check("glCopyImageSubData")?;
            // SAFETY: the context is current.
            unsafe { gl.PixelStorei(sys::PACK_ALIGNMENT, 1) };
            // SAFETY: the context is current; rows are packed with alignment 1 and `out` holds
            // exactly the level (checked).
            unsafe { gl.GetTextureImage(copy, 0, format, ty, out.len() as i32, out.as_mut_ptr().cast()) };
            shared.check("glGetTextureImage")
        };
        let result = read();
        // SAFETY: made above; the read returned, so nothing queued uses it any more.
        unsafe { gl.DeleteTextures(1, &copy) };
        result
    }

    /// Uploads mip `level` with `glTextureSubImage2D`, tightly packed, and returns once the
    /// texels are in the image (`glFinish`), as [`GlBuffer::write`](super::GlBuffer::write).
    pub fn write_level(&self, level: u32, data: &[u8]) -> Result<()> {
        let (w, h) = self.desc.check_level_data(level, data.len())?;
        let (_, format, ty) = gl_format(self.desc.format);
        let shared = &self.memory.shared;
        let gl = shared.current()?;
        // SAFETY: the context is current.
        unsafe { gl.PixelStorei(sys::UNPACK_ALIGNMENT, 1) };
        // SAFETY: as in `read_level`; `data` holds exactly the level.
        unsafe {
            gl.TextureSubImage2D(
                self.name,
                level as i32,
                0,
                0,
                w as i32,
                h as i32,
                format,
                ty,
                data.as_ptr().cast(),
            );
        }
        shared.check("glTextureSubImage2D")?;
        // SAFETY: the context is current.
        unsafe { gl.Finish() };
        shared.check("glFinish")
    }
}

impl Drop for GlTexture<'_> {
    fn drop(&mut self) {
        match self.memory.shared.current() {
            // SAFETY: our texture, made by this context.
            Ok(gl) => unsafe { gl.DeleteTextures(1, &self.name) },
            Err(e) => log::error!("GL texture {} leaked: {e}", self.name),
        }
    }
}
