//! CUDA's import descriptors for a handle of either platform: an opaque fd on Linux, an NT
//! handle on Windows (`CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32`,
//! `CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_WIN32`). Plain data, built and tested on
//! every platform. CUDA owns an fd once an import succeeds; it never owns an NT handle ("the
//! application must release the handle"): `external::give_to_driver` closes it.

use cudarc::driver::sys;

use crate::external::RawHandle;

/// The `cuImportExternalMemory` descriptor of `size` bytes of memory behind `raw`,
/// `CUDA_EXTERNAL_MEMORY_DEDICATED` exactly when `dedicated`.
pub(crate) fn memory_desc(
    raw: RawHandle,
    size: u64,
    dedicated: bool,
) -> sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
    use sys::CUexternalMemoryHandleType as T;
    let (type_, handle) = match raw {
        RawHandle::Fd(fd) => (
            T::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
            sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC_st__bindgen_ty_1 { fd },
        ),
        RawHandle::Win32(_) => (
            T::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32,
            sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC_st__bindgen_ty_1 {
                // By handle, not by name: exactly one of the two is set.
                win32: sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC_st__bindgen_ty_1__bindgen_ty_1 {
                    handle: raw.as_win32_ptr(),
                    name: std::ptr::null(),
                },
            },
        ),
    };
    sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
        type_,
        handle,
        size,
        flags: if dedicated { sys::CUDA_EXTERNAL_MEMORY_DEDICATED } else { 0 },
        reserved: [0; 16],
    }
}

/// The `cuImportExternalSemaphore` descriptor of the Vulkan timeline semaphore behind `raw`.
pub(crate) fn timeline_desc(raw: RawHandle) -> sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
    use sys::CUexternalSemaphoreHandleType as T;
    let (type_, handle) = match raw {
        RawHandle::Fd(fd) => (
            T::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD,
            sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC_st__bindgen_ty_1 { fd },
        ),
        RawHandle::Win32(_) => (
            T::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_WIN32,
            sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC_st__bindgen_ty_1 {
                win32: sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC_st__bindgen_ty_1__bindgen_ty_1 {
                    handle: raw.as_win32_ptr(),
                    name: std::ptr::null(),
                },
            },
        ),
    };
    sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC { type_, handle, flags: 0, reserved: [0; 16] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_handles_are_opaque_win32_by_handle_not_by_name() {
        let d = memory_desc(RawHandle::Win32(0x2b0), 1 << 20, true);
        assert_eq!(d.type_, sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_WIN32);
        // SAFETY: the union was written through its `win32` member.
        let win32 = unsafe { d.handle.win32 };
        assert_eq!(win32.handle as usize, 0x2b0);
        assert!(win32.name.is_null());
        assert_eq!((d.size, d.flags), (1 << 20, sys::CUDA_EXTERNAL_MEMORY_DEDICATED));

        let s = timeline_desc(RawHandle::Win32(0x2b4));
        assert_eq!(
            s.type_,
            sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_WIN32
        );
        // SAFETY: as above.
        let win32 = unsafe { s.handle.win32 };
        assert_eq!(win32.handle as usize, 0x2b4);
        assert!(win32.name.is_null());
    }

    #[test]
    fn fds_are_opaque_fd_and_the_dedicated_flag_follows_the_descriptor() {
        let d = memory_desc(RawHandle::Fd(11), 4096, false);
        assert_eq!(d.type_, sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD);
        // SAFETY: the union was written through its `fd` member.
        assert_eq!(unsafe { d.handle.fd }, 11);
        assert_eq!(d.flags, 0);
        let s = timeline_desc(RawHandle::Fd(12));
        assert_eq!(
            s.type_,
            sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD
        );
        // SAFETY: as above.
        assert_eq!(unsafe { s.handle.fd }, 12);
    }
}
