//! The platform's external handle, and the rules for handing it to a driver: one place for what
//! differs between Linux (opaque file descriptors) and Windows (NT `HANDLE`s).
//!
//! Everything here but the last section is plain logic, the same on every platform and tested on
//! Linux: which handle type a platform shares memory and semaphores with, which extension and
//! library each API needs for it, who owns a handle after an import, and what a raw handle
//! looks like to each API's import call ([`RawHandle`]). The importers (Vulkan, CUDA, OpenGL,
//! OpenCL) build their descriptors from a [`RawHandle`] on every platform; only turning an owned
//! handle into one, and back, is written per platform (`fd.rs` on Unix, `win32.rs` on Windows).
//!
//! ## Who owns a handle after an import
//! - **File descriptors** (`OPAQUE_FD`): Vulkan, CUDA, OpenGL and OpenCL take the fd when the
//!   import succeeds; a refused fd stays the caller's by the specifications (and some drivers
//!   break that rule: `fd.rs`).
//! - **NT handles** (`OPAQUE_WIN32`): none of them takes ownership. Vulkan
//!   (`VkImportMemoryWin32HandleInfoKHR`: "does not transfer ownership of the handle to the
//!   Vulkan implementation"), CUDA (`cuImportExternalMemory`: "ownership of this handle is not
//!   transferred to CUDA after the import operation, so the application must release the
//!   handle"), OpenGL (`GL_EXT_memory_object_win32`, `GL_EXT_semaphore_win32`) and OpenCL
//!   (`cl_khr_external_memory_win32`) reference the object behind the handle; the caller closes
//!   the handle, after the import whatever its outcome. So on Windows an import only *lends* the
//!   handle (a `BorrowedHandle` in the type) and lava-flow closes it afterwards.
//! - **KMT handles** (`OPAQUE_WIN32_KMT`) are global names, not handles: nothing owns or closes
//!   them. lava-flow neither exports nor imports them.

use crate::error::{Api, Error, Result};
use crate::handle::HandleType;

/// An operating-system family, for the rules that differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Os {
    /// Linux and other Unix systems: opaque file descriptors.
    Unix,
    /// Windows: NT handles.
    Windows,
}

impl Os {
    /// The system lava-flow was built for.
    pub(crate) const HOST: Os = if cfg!(windows) { Os::Windows } else { Os::Unix };

    /// The handle type memory and semaphores are exported as and imported from.
    pub(crate) fn opaque_handle(self) -> HandleType {
        match self {
            Os::Unix => HandleType::OpaqueFd,
            Os::Windows => HandleType::OpaqueWin32,
        }
    }

    /// The file name of `api`'s library, as loaded at run time (and named in
    /// [`Error::LibraryNotFound`]).
    pub(crate) fn library(self, api: Api) -> &'static str {
        match (self, api) {
            // wgpu is linked in; what it loads is the Vulkan loader.
            (Os::Unix, Api::Vulkan | Api::Wgpu) => "libvulkan.so.1",
            (Os::Windows, Api::Vulkan | Api::Wgpu) => "vulkan-1.dll",
            (Os::Unix, Api::Cuda) => "libcuda.so.1",
            (Os::Windows, Api::Cuda) => "nvcuda.dll",
            (Os::Unix, Api::OpenCl) => "libOpenCL.so.1",
            (Os::Windows, Api::OpenCl) => "OpenCL.dll",
            (Os::Unix, Api::Egl) => "libEGL.so.1",
            (Os::Windows, Api::Egl) => "libEGL.dll",
            (Os::Unix, Api::OpenGl) => "libGL.so.1",
            (Os::Windows, Api::OpenGl) => "opengl32.dll",
            (Os::Unix, Api::Os) => "libc",
            (Os::Windows, Api::Os) => "kernel32.dll",
        }
    }
}

/// The device extensions (Vulkan), context extensions (OpenGL) or device extensions (OpenCL)
/// that import and export a handle type, per kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(any(test, feature = "opengl"))]
pub(crate) struct Extensions {
    /// For memory.
    pub memory: &'static str,
    /// For semaphores.
    pub semaphore: &'static str,
}

/// The extensions `api` needs to share memory and semaphores through `handle`, or
/// [`Error::Unsupported`] for a handle type lava-flow does not share through that API.
#[cfg(any(test, feature = "opengl"))]
pub(crate) fn extensions(api: Api, handle: HandleType) -> Result<Extensions> {
    let (memory, semaphore) = match (api, handle) {
        (Api::Vulkan, HandleType::OpaqueFd) => ("VK_KHR_external_memory_fd", "VK_KHR_external_semaphore_fd"),
        (Api::Vulkan, HandleType::OpaqueWin32) => {
            ("VK_KHR_external_memory_win32", "VK_KHR_external_semaphore_win32")
        }
        (Api::OpenGl, HandleType::OpaqueFd) => ("GL_EXT_memory_object_fd", "GL_EXT_semaphore_fd"),
        (Api::OpenGl, HandleType::OpaqueWin32) => ("GL_EXT_memory_object_win32", "GL_EXT_semaphore_win32"),
        (Api::OpenCl, HandleType::OpaqueFd) => {
            ("cl_khr_external_memory_opaque_fd", "cl_khr_external_semaphore_opaque_fd")
        }
        (Api::OpenCl, HandleType::OpaqueWin32) => {
            ("cl_khr_external_memory_win32", "cl_khr_external_semaphore_win32")
        }
        // CUDA's driver API imports every handle type without extensions.
        (Api::Cuda, HandleType::OpaqueFd | HandleType::OpaqueWin32) => ("", ""),
        _ => return Err(unsupported(api, handle)),
    };
    Ok(Extensions { memory, semaphore })
}

/// The extensions of this platform's opaque handle for `api`.
#[cfg(any(test, feature = "opengl"))]
pub(crate) fn host_extensions(api: Api) -> Extensions {
    match extensions(api, Os::HOST.opaque_handle()) {
        Ok(e) => e,
        // Unreachable: every API has an entry for both opaque handle types (tested).
        Err(_) => Extensions { memory: "", semaphore: "" },
    }
}

fn unsupported(api: Api, handle: HandleType) -> Error {
    Error::Unsupported { what: format!("lava-flow does not share {handle:?} handles with {api}") }
}

/// Who owns a handle once an import call has returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// The API owns it if the import succeeded; if it failed, the caller does (file
    /// descriptors; see `fd.rs` for drivers that break the second half).
    TakenOnSuccess,
    /// The API only references the object behind it: the caller keeps the handle and closes it
    /// whatever the outcome (NT handles).
    StaysWithCaller,
}

/// The ownership rule of an import of `handle` by `api` (the table at the top of this module).
pub(crate) fn import_ownership(api: Api, handle: HandleType) -> Result<Ownership> {
    match (api, handle) {
        (Api::Vulkan | Api::Cuda | Api::OpenGl | Api::OpenCl, HandleType::OpaqueFd) => {
            Ok(Ownership::TakenOnSuccess)
        }
        (Api::Vulkan | Api::Cuda | Api::OpenGl | Api::OpenCl, HandleType::OpaqueWin32) => {
            Ok(Ownership::StaysWithCaller)
        }
        _ => Err(unsupported(api, handle)),
    }
}

/// Who owns a handle after a driver refused to import it (what the import says; file
/// descriptors only: NT handles always stay with the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The specifications' rule: the caller still owns it (lava-flow closes it).
    StillOurs,
    /// The driver closed it (or kept it): lava-flow must never touch that number again.
    TakenByDriver,
}

/// The result of an import by a driver that keeps the specifications' rule: a refused handle is
/// still the caller's.
#[cfg(any(feature = "cuda", feature = "opencl"))]
pub(crate) fn spec_rule<T>(result: Result<T>) -> std::result::Result<T, (Error, Refused)> {
    result.map_err(|e| (e, Refused::StillOurs))
}

/// What a handle handed to a driver is supposed to carry, checked before the driver sees it
/// where the platform can (`fd.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Exported memory of (at least) this many bytes.
    Memory {
        /// The size of the allocation the handle claims to be.
        #[cfg_attr(windows, allow(dead_code, reason = "checked against files on Unix only"))]
        allocation_size: u64,
    },
    /// An exported semaphore.
    Semaphore,
}

/// A handle as an import call receives it, on any platform: plain data, owned by nobody here
/// (the import's [`Ownership`] says who owns what it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawHandle {
    /// A file descriptor (`OPAQUE_FD`).
    #[cfg_attr(not(unix), allow(dead_code, reason = "made from owned fds on Unix only"))]
    Fd(i32),
    /// An NT handle (`OPAQUE_WIN32`), as its address-sized value.
    #[cfg_attr(not(windows), allow(dead_code, reason = "made from owned handles on Windows only"))]
    Win32(usize),
}

impl RawHandle {
    /// The handle's type.
    pub(crate) fn handle_type(self) -> HandleType {
        match self {
            RawHandle::Fd(_) => HandleType::OpaqueFd,
            RawHandle::Win32(_) => HandleType::OpaqueWin32,
        }
    }

    /// The value as the pointer-sized integer that OpenCL property lists hold
    /// (`cl_mem_properties`, `cl_semaphore_properties_khr`): the fd, or the handle's address.
    #[cfg(any(test, feature = "opencl"))]
    pub(crate) fn as_property(self) -> u64 {
        match self {
            RawHandle::Fd(fd) => fd as u64,
            RawHandle::Win32(h) => h as u64,
        }
    }

    /// The NT handle as the `HANDLE` (`void *`) that Vulkan, CUDA and OpenGL take; null for an fd.
    #[cfg(any(test, feature = "cuda", feature = "opengl"))]
    pub(crate) fn as_win32_ptr(self) -> *mut std::ffi::c_void {
        match self {
            RawHandle::Fd(_) => std::ptr::null_mut(),
            RawHandle::Win32(h) => h as *mut std::ffi::c_void,
        }
    }

    /// Refuses values that cannot name an exported object, before any driver sees them: a
    /// negative fd, a null handle, or `INVALID_HANDLE_VALUE` (-1, which is also the pseudo
    /// handle of the current process: a driver given it would "import" the process).
    #[cfg_attr(not(windows), allow(dead_code, reason = "an OwnedFd is never negative: used on Windows"))]
    pub(crate) fn check(self) -> Result<()> {
        let bad = match self {
            RawHandle::Fd(fd) => (fd < 0).then(|| format!("the fd {fd}")),
            RawHandle::Win32(0) => Some("a null HANDLE".to_owned()),
            RawHandle::Win32(usize::MAX) => {
                Some("INVALID_HANDLE_VALUE (the pseudo handle of the current process)".to_owned())
            }
            RawHandle::Win32(_) => None,
        };
        match bad {
            Some(what) => {
                Err(Error::InvalidArgument(format!("{what} cannot be an exported object's handle")))
            }
            None => Ok(()),
        }
    }
}

// ---- The platform's owned handle: the one part written per platform. ----

/// The owned handle of this platform: an `OwnedFd` on Unix, an `OwnedHandle` on Windows.
#[cfg(unix)]
pub(crate) type NativeHandle = std::os::fd::OwnedFd;
/// The owned handle of this platform: an `OwnedFd` on Unix, an `OwnedHandle` on Windows.
#[cfg(windows)]
pub(crate) type NativeHandle = std::os::windows::io::OwnedHandle;

#[cfg(not(any(unix, windows)))]
compile_error!("lava-flow builds for Unix (opaque fds) and Windows (NT handles) only");

/// Hands `handle` to a driver's import: `import` gets its [`RawHandle`] and says, if it fails,
/// who owns a refused fd. On Unix the driver gets a fd of its own that it owns on success
/// (`fd::give_to_driver`, which checks the file first); on Windows it is lent the handle, which
/// lava-flow closes when the import returns (`win32::lend_to_driver`). Either way `handle`
/// itself is closed when this returns.
pub(crate) fn give_to_driver<T>(
    api: Api,
    handle: NativeHandle,
    payload: Payload,
    import: impl FnOnce(RawHandle) -> std::result::Result<T, (Error, Refused)>,
) -> Result<T> {
    #[cfg(unix)]
    {
        debug_assert_eq!(import_ownership(api, HandleType::OpaqueFd).ok(), Some(Ownership::TakenOnSuccess));
        crate::fd::give_to_driver(handle, payload, |fd| import(RawHandle::Fd(fd)))
    }
    #[cfg(windows)]
    {
        let _ = payload;
        crate::win32::lend_to_driver(api, handle, import)
    }
}

/// A new owned handle for the same object as `handle` (`dup` / `DuplicateHandle`).
pub(crate) fn duplicate(handle: &NativeHandle) -> Result<NativeHandle> {
    handle
        .try_clone()
        .map_err(|e| Error::os(if cfg!(windows) { "DuplicateHandle" } else { "fcntl(F_DUPFD_CLOEXEC)" }, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APIS: [Api; 4] = [Api::Vulkan, Api::Cuda, Api::OpenGl, Api::OpenCl];

    #[test]
    fn each_platform_shares_its_own_opaque_handle() {
        assert_eq!(Os::Unix.opaque_handle(), HandleType::OpaqueFd);
        assert_eq!(Os::Windows.opaque_handle(), HandleType::OpaqueWin32);
        assert_eq!(Os::HOST, if cfg!(windows) { Os::Windows } else { Os::Unix });
    }

    #[test]
    fn fds_are_taken_on_success_and_nt_handles_stay_with_the_caller_in_every_api() {
        for api in APIS {
            assert_eq!(
                import_ownership(api, HandleType::OpaqueFd).ok(),
                Some(Ownership::TakenOnSuccess),
                "{api}"
            );
            assert_eq!(
                import_ownership(api, HandleType::OpaqueWin32).ok(),
                Some(Ownership::StaysWithCaller),
                "{api}"
            );
            for other in [HandleType::OpaqueWin32Kmt, HandleType::DmaBuf, HandleType::SyncFd] {
                let e = import_ownership(api, other).expect_err("not shared");
                assert!(matches!(e, Error::Unsupported { .. }), "{e}");
            }
        }
    }

    #[test]
    fn every_api_names_the_extensions_of_both_opaque_handles() {
        let cases = [
            (
                Api::Vulkan,
                HandleType::OpaqueWin32,
                "VK_KHR_external_memory_win32",
                "VK_KHR_external_semaphore_win32",
            ),
            (Api::Vulkan, HandleType::OpaqueFd, "VK_KHR_external_memory_fd", "VK_KHR_external_semaphore_fd"),
            (Api::OpenGl, HandleType::OpaqueWin32, "GL_EXT_memory_object_win32", "GL_EXT_semaphore_win32"),
            (Api::OpenGl, HandleType::OpaqueFd, "GL_EXT_memory_object_fd", "GL_EXT_semaphore_fd"),
            (
                Api::OpenCl,
                HandleType::OpaqueWin32,
                "cl_khr_external_memory_win32",
                "cl_khr_external_semaphore_win32",
            ),
            (
                Api::OpenCl,
                HandleType::OpaqueFd,
                "cl_khr_external_memory_opaque_fd",
                "cl_khr_external_semaphore_opaque_fd",
            ),
            (Api::Cuda, HandleType::OpaqueWin32, "", ""),
        ];
        for (api, handle, memory, semaphore) in cases {
            assert_eq!(
                extensions(api, handle).ok(),
                Some(Extensions { memory, semaphore }),
                "{api} {handle:?}"
            );
        }
        assert!(extensions(Api::OpenGl, HandleType::OpaqueWin32Kmt).is_err());
        assert_eq!(host_extensions(Api::Vulkan).memory, if cfg!(windows) { cases[0].2 } else { cases[1].2 });
    }

    #[test]
    fn libraries_are_named_per_platform() {
        assert_eq!(Os::Windows.library(Api::Vulkan), "vulkan-1.dll");
        assert_eq!(Os::Windows.library(Api::Cuda), "nvcuda.dll");
        assert_eq!(Os::Windows.library(Api::OpenCl), "OpenCL.dll");
        assert_eq!(Os::Unix.library(Api::Vulkan), "libvulkan.so.1");
        assert_eq!(Os::Unix.library(Api::OpenCl), "libOpenCL.so.1");
    }

    #[test]
    fn raw_handles_that_cannot_name_an_object_are_refused_before_a_driver() {
        for (raw, what) in [
            (RawHandle::Fd(-1), "the fd -1"),
            (RawHandle::Win32(0), "a null HANDLE"),
            (RawHandle::Win32(usize::MAX), "INVALID_HANDLE_VALUE"),
        ] {
            match raw.check() {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{raw:?}: {other:?}"),
            }
        }
        RawHandle::Fd(0).check().expect("fd 0 is a valid number");
        RawHandle::Win32(0x1a4).check().expect("a handle value");
    }

    #[test]
    fn raw_handles_become_each_apis_values() {
        assert_eq!(RawHandle::Fd(7).as_property(), 7);
        assert_eq!(RawHandle::Win32(0x1a4).as_property(), 0x1a4);
        assert_eq!(RawHandle::Win32(0x1a4).as_win32_ptr() as usize, 0x1a4);
        assert!(RawHandle::Fd(7).as_win32_ptr().is_null());
        assert_eq!(RawHandle::Fd(7).handle_type(), HandleType::OpaqueFd);
        assert_eq!(RawHandle::Win32(4).handle_type(), HandleType::OpaqueWin32);
    }
}
