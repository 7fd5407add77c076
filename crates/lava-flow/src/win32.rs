//! Windows: lending NT handles to drivers, and taking ownership of the ones exports return.
//!
//! The rules are in `external.rs` (tested on every platform); this is the thin part that only
//! builds on Windows. **Never run on a Windows GPU**: nothing here has a Windows machine.
#![cfg(windows)]

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle as WinRawHandle};

use crate::error::{Api, Error, Result};
use crate::external::{import_ownership, Ownership, RawHandle, Refused};
use crate::handle::HandleType;

/// Calls `import` with `handle`, which the API only references (none of Vulkan, CUDA, OpenGL
/// and OpenCL takes ownership of an NT handle), then closes `handle` whatever the outcome.
///
/// A handle value that cannot name an object (null, `INVALID_HANDLE_VALUE`) is refused before
/// the driver sees it.
pub(crate) fn lend_to_driver<T>(
    api: Api,
    handle: OwnedHandle,
    import: impl FnOnce(RawHandle) -> std::result::Result<T, (Error, Refused)>,
) -> Result<T> {
    debug_assert_eq!(import_ownership(api, HandleType::OpaqueWin32).ok(), Some(Ownership::StaysWithCaller));
    let raw = raw(&handle);
    raw.check()?;
    let result = import(raw).map_err(|(e, _)| e);
    // The API referenced the object; the handle is still ours, closed here (`Ownership`).
    drop(handle);
    result
}

/// The value of `handle`, as import calls receive it.
pub(crate) fn raw(handle: &OwnedHandle) -> RawHandle {
    RawHandle::Win32(handle.as_raw_handle() as usize)
}

/// Takes ownership of a handle an export call returned (`vkGetMemoryWin32HandleKHR`,
/// `vkGetSemaphoreWin32HandleKHR`), refusing null and `INVALID_HANDLE_VALUE`.
///
/// # Safety
/// `handle` is a new NT handle that nobody else owns or closes.
pub(crate) unsafe fn owned(call: &'static str, handle: WinRawHandle) -> Result<OwnedHandle> {
    if let Err(e) = RawHandle::Win32(handle as usize).check() {
        return Err(Error::Ffi {
            api: Api::Vulkan,
            call,
            name: "VK_SUCCESS".into(),
            description: format!("the driver returned no usable handle: {e}"),
        });
    }
    // SAFETY: the caller's contract: a new handle, owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}
