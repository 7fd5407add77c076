//! Loading libcuda and turning `CUresult`s into [`Error`]s.
//!
//! cudarc's `dynamic-loading` resolves each function on first use and panics when the library
//! or a symbol is missing, so [`driver`] first checks that libcuda loads and that every function
//! lava-flow calls exists (a driver too old lacks some), and only then calls `cuInit`.

use std::ffi::CStr;
use std::sync::OnceLock;

use cudarc::driver::sys;

use crate::error::{Api, Error, Result};

/// The functions lava-flow calls; each must exist in the loaded driver.
const REQUIRED: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetUuid_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventQuery",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemsetD8_v2",
    "cuMemsetD8Async",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoD_v2",
    "cuMemGetInfo_v2",
    "cuImportExternalMemory",
    "cuExternalMemoryGetMappedBuffer",
    "cuDestroyExternalMemory",
    "cuImportExternalSemaphore",
    "cuSignalExternalSemaphoresAsync",
    "cuWaitExternalSemaphoresAsync",
    "cuDestroyExternalSemaphore",
    "cuExternalMemoryGetMappedMipmappedArray",
    "cuMipmappedArrayGetLevel",
    "cuMipmappedArrayDestroy",
    "cuMemcpy2D_v2",
    "cuSurfObjectCreate",
    "cuSurfObjectDestroy",
    "cuTexObjectCreate",
    "cuTexObjectDestroy",
    "cuMemGetAllocationGranularity",
    "cuMemCreate",
    "cuMemAddressReserve",
    "cuMemMap",
    "cuMemSetAccess",
    "cuMemExportToShareableHandle",
    "cuMemUnmap",
    "cuMemAddressFree",
    "cuMemRelease",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
    "cuDeviceCanAccessPeer",
    "cuDeviceGetAttribute",
    "cuCtxEnablePeerAccess",
    "cuMemcpyPeerAsync",
    "cuMemcpyPeer",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyHtoDAsync_v2",
];

/// The oldest driver API version lava-flow supports (CUDA 12.0: `cuDeviceGetUuid_v2`).
pub(crate) const MIN_DRIVER_VERSION: i32 = 12000;

/// Makes sure libcuda is loaded, complete, recent enough and initialised; the outcome of the
/// first call is remembered.
pub(crate) fn driver() -> Result<()> {
    static STATE: OnceLock<std::result::Result<(), Error>> = OnceLock::new();
    match STATE.get_or_init(init) {
        Ok(()) => Ok(()),
        Err(e) => Err(clone_error(e)),
    }
}

fn init() -> Result<()> {
    // SAFETY: loading libcuda runs its initialisers; that is what it is for.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::LibraryNotFound {
            api: Api::Cuda,
            library: "libcuda.so.1",
            reason: "no NVIDIA driver library (libcuda) was found by the dynamic loader".into(),
        });
    }
    // SAFETY: the library is present (checked above), so `culib` finds it instead of panicking.
    let lib = unsafe { sys::culib() };
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|name| {
            let symbol = format!("{name}\0");
            // SAFETY: a symbol lookup; the pointer is not called.
            unsafe { lib.get::<*const ()>(symbol.as_bytes()) }.is_err()
        })
        .collect();
    if !missing.is_empty() {
        return Err(Error::Unsupported {
            what: format!("the CUDA driver is too old: it lacks {}", missing.join(", ")),
        });
    }
    // SAFETY: every function used below exists (checked above).
    check("cuInit", unsafe { sys::cuInit(0) })?;
    let mut version = 0;
    // SAFETY: `version` is a valid out-pointer.
    check("cuDriverGetVersion", unsafe { sys::cuDriverGetVersion(&mut version) })?;
    if version < MIN_DRIVER_VERSION {
        return Err(Error::Unsupported {
            what: format!(
                "the CUDA driver supports CUDA {}.{}; lava-flow needs {}.{} or newer",
                version / 1000,
                version % 1000 / 10,
                MIN_DRIVER_VERSION / 1000,
                MIN_DRIVER_VERSION % 1000 / 10
            ),
        });
    }
    Ok(())
}

/// Whether the loaded driver has `name`, for functions newer than [`MIN_DRIVER_VERSION`] that
/// only some features need. Only call it once [`driver`] succeeded.
pub(crate) fn has_function(name: &str) -> bool {
    let symbol = format!("{name}\0");
    // SAFETY: libcuda is loaded ([`driver`] succeeded), so `culib` finds it.
    let lib = unsafe { sys::culib() };
    // SAFETY: a symbol lookup; the pointer is not called.
    unsafe { lib.get::<*const ()>(symbol.as_bytes()) }.is_ok()
}

/// Turns a `CUresult` into `Ok` or [`Error::Ffi`] naming `call`, the result's name and its
/// description (`cuGetErrorName`, `cuGetErrorString`). Public for users' own driver calls
/// ([`sys`](super::sys)) beside lava-flow's; call it only once a [`Context`](super::Context)
/// exists (it asks the loaded driver for the names).
pub fn check(call: &'static str, result: sys::CUresult) -> Result<()> {
    if result == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut name = std::ptr::null();
    let mut description = std::ptr::null();
    // SAFETY: both calls write a pointer to a static string, or fail and leave null.
    unsafe {
        sys::cuGetErrorName(result, &mut name);
    }
    // SAFETY: as above.
    unsafe {
        sys::cuGetErrorString(result, &mut description);
    }
    let text = |p: *const std::ffi::c_char, fallback: String| {
        if p.is_null() {
            fallback
        } else {
            // SAFETY: a non-null result is a NUL-terminated static string of the driver.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    Err(Error::Ffi {
        api: Api::Cuda,
        call,
        name: text(name, format!("{result:?}")),
        description: text(description, "no description from the driver".into()),
    })
}

/// `Error` is not `Clone` (it may carry an `io::Error` one day); the load errors are plain.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::LibraryNotFound { api, library, reason } => {
            Error::LibraryNotFound { api: *api, library, reason: reason.clone() }
        }
        Error::Unsupported { what } => Error::Unsupported { what: what.clone() },
        Error::Ffi { api, call, name, description } => {
            Error::Ffi { api: *api, call, name: name.clone(), description: description.clone() }
        }
        other => Error::Unsupported { what: other.to_string() },
    }
}
