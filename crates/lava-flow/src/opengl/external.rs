//! GL's import calls for a handle of either platform: `glImportMemoryFdEXT` /
//! `glImportSemaphoreFdEXT` (`GL_EXT_memory_object_fd`, `GL_EXT_semaphore_fd`) on Linux,
//! `glImportMemoryWin32HandleEXT` / `glImportSemaphoreWin32HandleEXT`
//! (`GL_EXT_memory_object_win32`, `GL_EXT_semaphore_win32`) on Windows. GL owns an fd once the
//! import succeeds; it never owns an NT handle (the extension: the application closes it), so
//! `external::give_to_driver` closes it after the call.
//!
//! On Windows GL contexts come from WGL, not EGL: lava-flow's headless contexts need an EGL
//! library (`libEGL.dll`, which desktop drivers do not ship), so there the way in is
//! `GlContext::from_current` with a WGL context you made current and `wglGetProcAddress` as the
//! loader. The win32 import functions are then loaded like every other GL function.

use super::sys::{self, GLenum, GLuint, Gl};
use crate::external::RawHandle;

/// The GL handle-type enum for `raw` (`GL_HANDLE_TYPE_OPAQUE_FD_EXT` or
/// `GL_HANDLE_TYPE_OPAQUE_WIN32_EXT`).
pub(crate) fn handle_type(raw: RawHandle) -> GLenum {
    match raw {
        RawHandle::Fd(_) => sys::HANDLE_TYPE_OPAQUE_FD_EXT,
        RawHandle::Win32(_) => sys::HANDLE_TYPE_OPAQUE_WIN32_EXT,
    }
}

/// The names of the memory and semaphore import calls for `raw`, for errors.
pub(crate) fn import_calls(raw: RawHandle) -> (&'static str, &'static str) {
    match raw {
        RawHandle::Fd(_) => ("glImportMemoryFdEXT", "glImportSemaphoreFdEXT"),
        RawHandle::Win32(_) => ("glImportMemoryWin32HandleEXT", "glImportSemaphoreWin32HandleEXT"),
    }
}

/// Imports `size` bytes of memory behind `raw` into the memory object `memory`; returns the call
/// made (check `glGetError` next, naming it).
///
/// # Safety
/// The context `gl` was loaded from is current and lists the extension for `raw`'s type;
/// `memory` is a fresh memory object of it; `raw` is open.
pub(crate) unsafe fn import_memory(gl: &Gl, memory: GLuint, size: u64, raw: RawHandle) -> &'static str {
    match raw {
        // SAFETY: the caller's contract; GL owns the fd on success.
        RawHandle::Fd(fd) => unsafe { gl.ImportMemoryFdEXT(memory, size, handle_type(raw), fd) },
        // SAFETY: the caller's contract; GL references the handle, which stays the caller's.
        RawHandle::Win32(_) => unsafe {
            gl.ImportMemoryWin32HandleEXT(memory, size, handle_type(raw), raw.as_win32_ptr())
        },
    }
    import_calls(raw).0
}

/// Makes the semaphore `semaphore` take over the payload behind `raw`; returns the call made.
///
/// # Safety
/// As for [`import_memory`], with a fresh semaphore of the context.
pub(crate) unsafe fn import_semaphore(gl: &Gl, semaphore: GLuint, raw: RawHandle) -> &'static str {
    match raw {
        // SAFETY: the caller's contract; GL owns the fd on success.
        RawHandle::Fd(fd) => unsafe { gl.ImportSemaphoreFdEXT(semaphore, handle_type(raw), fd) },
        // SAFETY: the caller's contract; GL references the handle, which stays the caller's.
        RawHandle::Win32(_) => unsafe {
            gl.ImportSemaphoreWin32HandleEXT(semaphore, handle_type(raw), raw.as_win32_ptr())
        },
    }
    import_calls(raw).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_handle_has_its_gl_enum_and_calls() {
        // The registry's values: GL_HANDLE_TYPE_OPAQUE_FD_EXT 0x9586, ..._OPAQUE_WIN32_EXT 0x9587.
        assert_eq!(handle_type(RawHandle::Fd(3)), 0x9586);
        assert_eq!(handle_type(RawHandle::Win32(0x1a4)), 0x9587);
        assert_eq!(
            import_calls(RawHandle::Win32(4)),
            ("glImportMemoryWin32HandleEXT", "glImportSemaphoreWin32HandleEXT")
        );
        assert_eq!(import_calls(RawHandle::Fd(4)), ("glImportMemoryFdEXT", "glImportSemaphoreFdEXT"));
    }

    /// The generated table has the win32 entry points on every platform (loaded, on Windows,
    /// from the caller's WGL context).
    #[test]
    fn the_function_table_has_the_win32_imports() {
        let gl = Gl::load_with(|_| std::ptr::null());
        assert!(!gl.ImportMemoryWin32HandleEXT.is_loaded() && !gl.ImportSemaphoreWin32HandleEXT.is_loaded());
        let gl = Gl::load_with(|name| {
            if name.contains("Win32Handle") {
                // Any non-null address: the table is only asked whether it is loaded.
                std::ptr::dangling::<u8>().cast()
            } else {
                std::ptr::null()
            }
        });
        assert!(gl.ImportMemoryWin32HandleEXT.is_loaded() && gl.ImportSemaphoreWin32HandleEXT.is_loaded());
    }
}
