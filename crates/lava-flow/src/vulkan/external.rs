//! The Vulkan side of the platform's external handle: which handle type and extensions a device
//! is made with, the import structures chained into `vkAllocateMemory` and
//! `vkImportSemaphore*`, and the per-platform loaders of the export and import calls
//! (`VK_KHR_external_{memory,semaphore}_fd` on Unix, `..._win32` on Windows).

use std::ffi::CStr;

use ash::vk;

use super::conv;
use crate::error::{Api, Error, Result, VkResultExt};
use crate::external::{NativeHandle, Os, RawHandle, Refused};

/// The memory handle type lava-flow exports and imports on this platform.
pub(crate) fn memory_handle() -> vk::ExternalMemoryHandleTypeFlags {
    conv::memory_handle_flag(Os::HOST.opaque_handle())
}

/// The semaphore handle type lava-flow exports and imports on this platform.
pub(crate) fn semaphore_handle() -> vk::ExternalSemaphoreHandleTypeFlags {
    conv::semaphore_handle_flag(Os::HOST.opaque_handle())
}

/// The device extensions for memory and semaphore handles on `os`.
pub(crate) fn extension_names(os: Os) -> (&'static CStr, &'static CStr) {
    match os {
        Os::Unix => (ash::khr::external_memory_fd::NAME, ash::khr::external_semaphore_fd::NAME),
        Os::Windows => (ash::khr::external_memory_win32::NAME, ash::khr::external_semaphore_win32::NAME),
    }
}

/// The `vkAllocateMemory` import structures for `raw`: one of the two is chained, by the handle's
/// type. Built on every platform, so the choice is tested on Linux.
pub(crate) struct MemoryImport {
    pub fd: vk::ImportMemoryFdInfoKHR<'static>,
    pub win32: vk::ImportMemoryWin32HandleInfoKHR<'static>,
}

impl MemoryImport {
    pub(crate) fn new(raw: RawHandle) -> Self {
        let mut import = MemoryImport {
            fd: vk::ImportMemoryFdInfoKHR::default(),
            win32: vk::ImportMemoryWin32HandleInfoKHR::default(),
        };
        match raw {
            RawHandle::Fd(fd) => {
                import.fd = import.fd.handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD).fd(fd);
            }
            // An NT handle by value (no name): Vulkan references the object, the handle stays ours.
            RawHandle::Win32(h) => {
                import.win32 = import
                    .win32
                    .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_WIN32)
                    .handle(h as vk::HANDLE);
            }
        }
        import
    }

    /// Chains the structure for the handle into `info`.
    pub(crate) fn chain<'a>(&'a mut self, info: vk::MemoryAllocateInfo<'a>) -> vk::MemoryAllocateInfo<'a> {
        if self.win32.handle_type.is_empty() {
            info.push_next(&mut self.fd)
        } else {
            info.push_next(&mut self.win32)
        }
    }
}

/// The export and import calls for memory and semaphore handles of one device.
pub(crate) struct Loaders {
    #[cfg(unix)]
    memory: Option<ash::khr::external_memory_fd::Device>,
    #[cfg(unix)]
    semaphore: Option<ash::khr::external_semaphore_fd::Device>,
    #[cfg(windows)]
    memory: Option<ash::khr::external_memory_win32::Device>,
    #[cfg(windows)]
    semaphore: Option<ash::khr::external_semaphore_win32::Device>,
}

impl Loaders {
    /// The loaders of the extensions the device was created with.
    pub(crate) fn new(instance: &ash::Instance, device: &ash::Device, memory: bool, semaphore: bool) -> Self {
        #[cfg(unix)]
        use ash::khr::{external_memory_fd as mem, external_semaphore_fd as sem};
        #[cfg(windows)]
        use ash::khr::{external_memory_win32 as mem, external_semaphore_win32 as sem};
        Loaders {
            memory: memory.then(|| mem::Device::new(instance, device)),
            semaphore: semaphore.then(|| sem::Device::new(instance, device)),
        }
    }

    /// Whether the device has the semaphore extension.
    pub(crate) fn has_semaphore(&self) -> bool {
        self.semaphore.is_some()
    }

    /// A new handle for `memory` (`vkGetMemoryFdKHR` / `vkGetMemoryWin32HandleKHR`), owned by
    /// the caller; `None` without the extension.
    ///
    /// # Safety
    /// `memory` is live and was allocated exportable as [`memory_handle`].
    pub(crate) unsafe fn export_memory(&self, memory: vk::DeviceMemory) -> Option<Result<NativeHandle>> {
        let loader = self.memory.as_ref()?;
        #[cfg(unix)]
        {
            use std::os::fd::FromRawFd;
            let info = vk::MemoryGetFdInfoKHR::default().memory(memory).handle_type(memory_handle());
            // SAFETY: the caller's contract.
            let fd = unsafe { loader.get_memory_fd(&info) }.vk("vkGetMemoryFdKHR");
            // SAFETY: vkGetMemoryFdKHR returns a new fd that the caller owns.
            Some(fd.map(|fd| unsafe { NativeHandle::from_raw_fd(fd) }))
        }
        #[cfg(windows)]
        {
            let info = vk::MemoryGetWin32HandleInfoKHR::default().memory(memory).handle_type(memory_handle());
            // SAFETY: the caller's contract. Every call makes a new NT handle.
            let handle = unsafe { loader.get_memory_win32_handle(&info) }.vk("vkGetMemoryWin32HandleKHR");
            // SAFETY: the new handle is the caller's.
            Some(handle.and_then(|h| unsafe { crate::win32::owned("vkGetMemoryWin32HandleKHR", h as _) }))
        }
    }

    /// A new handle for `semaphore` (`vkGetSemaphoreFdKHR` / `vkGetSemaphoreWin32HandleKHR`);
    /// `None` without the extension.
    ///
    /// # Safety
    /// `semaphore` is live and was created exportable as [`semaphore_handle`].
    pub(crate) unsafe fn export_semaphore(&self, semaphore: vk::Semaphore) -> Option<Result<NativeHandle>> {
        let loader = self.semaphore.as_ref()?;
        #[cfg(unix)]
        {
            use std::os::fd::FromRawFd;
            let info =
                vk::SemaphoreGetFdInfoKHR::default().semaphore(semaphore).handle_type(semaphore_handle());
            // SAFETY: the caller's contract.
            let fd = unsafe { loader.get_semaphore_fd(&info) }.vk("vkGetSemaphoreFdKHR");
            // SAFETY: vkGetSemaphoreFdKHR returns a new fd owned by the caller.
            Some(fd.map(|fd| unsafe { NativeHandle::from_raw_fd(fd) }))
        }
        #[cfg(windows)]
        {
            let info = vk::SemaphoreGetWin32HandleInfoKHR::default()
                .semaphore(semaphore)
                .handle_type(semaphore_handle());
            // SAFETY: the caller's contract. Every call makes a new NT handle.
            let handle =
                unsafe { loader.get_semaphore_win32_handle(&info) }.vk("vkGetSemaphoreWin32HandleKHR");
            // SAFETY: the new handle is the caller's.
            Some(handle.and_then(|h| unsafe { crate::win32::owned("vkGetSemaphoreWin32HandleKHR", h as _) }))
        }
    }

    /// Makes `semaphore` take over the payload `raw` names (`vkImportSemaphoreFdKHR` /
    /// `vkImportSemaphoreWin32HandleKHR`); for the ownership of `raw`, see
    /// [`give_to_driver`](crate::external::give_to_driver). Fails without the extension.
    ///
    /// # Safety
    /// `semaphore` is fresh and unused; `raw` is open (an fd the driver may keep, or a handle it
    /// may reference).
    pub(crate) unsafe fn import_semaphore(
        &self,
        semaphore: vk::Semaphore,
        raw: RawHandle,
    ) -> std::result::Result<(), (Error, Refused)> {
        let Some(loader) = self.semaphore.as_ref() else {
            return Err((
                Error::Unsupported { what: "the device has no external-semaphore extension".into() },
                Refused::StillOurs,
            ));
        };
        #[cfg(unix)]
        let result = match raw {
            RawHandle::Fd(fd) => {
                let info = vk::ImportSemaphoreFdInfoKHR::default()
                    .semaphore(semaphore)
                    .handle_type(semaphore_handle())
                    .fd(fd);
                // SAFETY: the caller's contract.
                unsafe { loader.import_semaphore_fd(&info) }.vk("vkImportSemaphoreFdKHR")
            }
            RawHandle::Win32(_) => Err(wrong_platform(raw)),
        };
        #[cfg(windows)]
        let result = match raw {
            RawHandle::Win32(h) => {
                let info = vk::ImportSemaphoreWin32HandleInfoKHR::default()
                    .semaphore(semaphore)
                    .handle_type(semaphore_handle())
                    .handle(h as vk::HANDLE);
                // SAFETY: the caller's contract. Vulkan references the payload; the handle stays
                // the caller's.
                unsafe { loader.import_semaphore_win32_handle(&info) }.vk("vkImportSemaphoreWin32HandleKHR")
            }
            RawHandle::Fd(_) => Err(wrong_platform(raw)),
        };
        result.map_err(|e| (e, Refused::StillOurs))
    }
}

fn wrong_platform(raw: RawHandle) -> Error {
    Error::Unsupported {
        what: format!("{:?} handles are not imported on this platform ({})", raw.handle_type(), Api::Vulkan),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::external::extensions;

    #[test]
    fn device_extensions_are_the_platforms() {
        for os in [Os::Unix, Os::Windows] {
            let (memory, semaphore) = extension_names(os);
            let expected = extensions(Api::Vulkan, os.opaque_handle()).expect("listed");
            assert_eq!(memory.to_str().ok(), Some(expected.memory));
            assert_eq!(semaphore.to_str().ok(), Some(expected.semaphore));
        }
    }

    #[test]
    fn an_nt_handle_is_imported_by_value_through_the_win32_structure() {
        let mut import = MemoryImport::new(RawHandle::Win32(0x1a4));
        assert_eq!(import.win32.handle_type, vk::ExternalMemoryHandleTypeFlags::OPAQUE_WIN32);
        assert_eq!(import.win32.handle, 0x1a4);
        assert!(import.win32.name.is_null(), "by handle, not by name");
        let info = import.chain(vk::MemoryAllocateInfo::default());
        let chained = info.p_next.cast::<vk::BaseInStructure>();
        // SAFETY: `p_next` points at the chained structure, alive in `import`.
        assert_eq!(unsafe { (*chained).s_type }, vk::StructureType::IMPORT_MEMORY_WIN32_HANDLE_INFO_KHR);
    }

    #[test]
    fn an_fd_is_imported_through_the_fd_structure() {
        let mut import = MemoryImport::new(RawHandle::Fd(9));
        assert_eq!(import.fd.handle_type, vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        assert_eq!(import.fd.fd, 9);
        assert!(import.win32.handle_type.is_empty());
        let info = import.chain(vk::MemoryAllocateInfo::default());
        let chained = info.p_next.cast::<vk::BaseInStructure>();
        // SAFETY: as above.
        assert_eq!(unsafe { (*chained).s_type }, vk::StructureType::IMPORT_MEMORY_FD_INFO_KHR);
    }

    #[test]
    fn the_platform_handle_flags_follow_the_host() {
        let (memory, semaphore) = if cfg!(windows) {
            (
                vk::ExternalMemoryHandleTypeFlags::OPAQUE_WIN32,
                vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_WIN32,
            )
        } else {
            (vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD, vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD)
        };
        assert_eq!(memory_handle(), memory);
        assert_eq!(semaphore_handle(), semaphore);
    }
}
