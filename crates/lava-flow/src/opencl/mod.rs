//! OpenCL (feature `opencl`): the OpenCL device that is a lava-flow device, found by UUID across
//! every platform; lava-flow buffers as OpenCL memory objects ([`Context::import_buffer`]);
//! queues, programs built from source and kernels to use them. Semaphores
//! (`cl_khr_external_semaphore_opaque_fd`) are not built yet. The guide is docs/opencl_interop.md.
//!
//! ```
//! # fn main() -> lava_flow::Result<()> {
//! let allocator = lava_flow::MemoryAllocator::new()?;
//! match lava_flow::opencl::Context::for_device(&allocator, 0) {
//!     Ok(ctx) => println!("OpenCL: {} on {}", ctx.device().name, ctx.device().platform),
//!     Err(e) => println!("no OpenCL for device 0: {e}"),
//! }
//! # Ok(()) }
//! ```

mod image;
mod memory;
mod program;
mod semaphore;
mod sys;

pub use image::ClImage;
pub use memory::{ClBuffer, ExternalObject, Queue};
pub use program::{Kernel, Program};
pub use semaphore::ClSemaphore;

use std::ffi::c_void;

use crate::device::Uuid;
use crate::error::{Error, Result};
use crate::MemoryAllocator;
use sys::{check, cl, Cl};

/// The extension that lets OpenCL import Vulkan memory from an opaque fd.
pub const EXTERNAL_MEMORY_OPAQUE_FD: &str = "cl_khr_external_memory_opaque_fd";
/// The extension that lets OpenCL import Vulkan semaphores from an opaque fd.
pub const EXTERNAL_SEMAPHORE_OPAQUE_FD: &str = "cl_khr_external_semaphore_opaque_fd";
/// The extension that lets OpenCL import Vulkan memory from an NT handle (Windows).
pub const EXTERNAL_MEMORY_WIN32: &str = "cl_khr_external_memory_win32";
/// The extension that lets OpenCL import Vulkan semaphores from an NT handle (Windows).
pub const EXTERNAL_SEMAPHORE_WIN32: &str = "cl_khr_external_semaphore_win32";
/// The memory extension lava-flow's imports need on this platform.
#[cfg(unix)]
pub const EXTERNAL_MEMORY: &str = EXTERNAL_MEMORY_OPAQUE_FD;
/// The memory extension lava-flow's imports need on this platform.
#[cfg(windows)]
pub const EXTERNAL_MEMORY: &str = EXTERNAL_MEMORY_WIN32;
/// The semaphore extension lava-flow's imports need on this platform.
#[cfg(unix)]
pub const EXTERNAL_SEMAPHORE: &str = EXTERNAL_SEMAPHORE_OPAQUE_FD;
/// The semaphore extension lava-flow's imports need on this platform.
#[cfg(windows)]
pub const EXTERNAL_SEMAPHORE: &str = EXTERNAL_SEMAPHORE_WIN32;

/// `CL_DEVICE_LUID_KHR` where `CL_DEVICE_LUID_VALID_KHR` is true (`cl_khr_device_uuid`).
fn device_luid(cl: &Cl, device: sys::cl_device_id) -> Result<Option<[u8; 8]>> {
    let mut valid: sys::cl_uint = 0;
    // SAFETY: a cl_bool (cl_uint) query into a cl_uint.
    check("clGetDeviceInfo(CL_DEVICE_LUID_VALID_KHR)", unsafe {
        (cl.clGetDeviceInfo)(
            device,
            sys::CL_DEVICE_LUID_VALID_KHR,
            std::mem::size_of::<sys::cl_uint>(),
            (&raw mut valid).cast(),
            std::ptr::null_mut(),
        )
    })?;
    if valid == 0 {
        return Ok(None);
    }
    let mut luid = [0u8; 8];
    // SAFETY: CL_DEVICE_LUID_KHR writes CL_LUID_SIZE_KHR (8) bytes.
    check("clGetDeviceInfo(CL_DEVICE_LUID_KHR)", unsafe {
        (cl.clGetDeviceInfo)(
            device,
            sys::CL_DEVICE_LUID_KHR,
            8,
            luid.as_mut_ptr().cast(),
            std::ptr::null_mut(),
        )
    })?;
    Ok(Some(luid))
}

impl ClDevice {
    /// The device's identity, as [`DeviceInfo::is`](crate::DeviceInfo::is) compares it.
    pub fn identity(&self) -> crate::device::Identity {
        crate::device::Identity { uuid: self.uuid, luid: self.luid }
    }
}

/// An OpenCL device as its platform describes it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClDevice {
    /// The platform's name (`NVIDIA CUDA`, `Portable Computing Language`, ...).
    pub platform: String,
    /// The device's name.
    pub name: String,
    /// `CL_DEVICE_UUID_KHR`, where the device has `cl_khr_device_uuid`.
    pub uuid: Option<Uuid>,
    /// `CL_DEVICE_LUID_KHR` on Windows, where the device has `cl_khr_device_uuid` and
    /// `CL_DEVICE_LUID_VALID_KHR` says it has one; `None` elsewhere.
    pub luid: Option<[u8; 8]>,
    /// The device's and its platform's extensions.
    pub extensions: Vec<String>,
    platform_id: sys::cl_platform_id,
    device_id: sys::cl_device_id,
}

impl ClDevice {
    /// Whether the device or its platform lists `extension`.
    pub fn has_extension(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| e == extension)
    }
}

// SAFETY: platform and device ids are process-wide handles that OpenCL lets any thread use.
unsafe impl Send for ClDevice {}
// SAFETY: as above; they are only read.
unsafe impl Sync for ClDevice {}

/// Every OpenCL device of every platform. No platform at all is an empty list; no OpenCL
/// loader is [`Error::LibraryNotFound`].
pub fn devices() -> Result<Vec<ClDevice>> {
    // One enumeration at a time in the process: PoCL 5 initialises its devices lazily inside
    // `clGetDeviceIDs` and crashed (SIGSEGV in `clGetDeviceInfo`) when another thread queried a
    // device meanwhile (found by the OpenCL tests running in parallel).
    static ENUMERATION: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = ENUMERATION.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cl = cl()?;
    let mut count = 0;
    // SAFETY: a count query.
    let status = unsafe { (cl.clGetPlatformIDs)(0, std::ptr::null_mut(), &mut count) };
    if status == -1001 {
        return Ok(Vec::new()); // CL_PLATFORM_NOT_FOUND_KHR: the loader found no ICD.
    }
    check("clGetPlatformIDs", status)?;
    let mut platforms = vec![std::ptr::null_mut(); count as usize];
    // SAFETY: `platforms` has room for `count` ids.
    check("clGetPlatformIDs", unsafe {
        (cl.clGetPlatformIDs)(count, platforms.as_mut_ptr(), std::ptr::null_mut())
    })?;
    let mut out = Vec::new();
    for platform in platforms {
        let platform_name = info_string(|size, ptr, ret| {
            // SAFETY: a platform from clGetPlatformIDs; the buffer arguments come from `info_string`.
            unsafe { (cl.clGetPlatformInfo)(platform, sys::CL_PLATFORM_NAME, size, ptr, ret) }
        })?;
        let platform_extensions = info_string(|size, ptr, ret| {
            // SAFETY: as above.
            unsafe { (cl.clGetPlatformInfo)(platform, sys::CL_PLATFORM_EXTENSIONS, size, ptr, ret) }
        })?;
        let mut n = 0;
        // SAFETY: a count query on a valid platform.
        let status = unsafe {
            (cl.clGetDeviceIDs)(platform, sys::CL_DEVICE_TYPE_ALL, 0, std::ptr::null_mut(), &mut n)
        };
        if status == -1 {
            continue; // CL_DEVICE_NOT_FOUND: a platform without devices.
        }
        check("clGetDeviceIDs", status)?;
        let mut ids = vec![std::ptr::null_mut(); n as usize];
        // SAFETY: `ids` has room for `n` ids.
        check("clGetDeviceIDs", unsafe {
            (cl.clGetDeviceIDs)(platform, sys::CL_DEVICE_TYPE_ALL, n, ids.as_mut_ptr(), std::ptr::null_mut())
        })?;
        for device in ids {
            out.push(describe(cl, &platform_name, &platform_extensions, platform, device)?);
        }
    }
    Ok(out)
}

fn describe(
    cl: &Cl,
    platform_name: &str,
    platform_extensions: &str,
    platform: sys::cl_platform_id,
    device: sys::cl_device_id,
) -> Result<ClDevice> {
    let query = |param| {
        info_string(|size, ptr, ret| {
            // SAFETY: a device from clGetDeviceIDs; the buffer arguments come from `info_string`.
            unsafe { (cl.clGetDeviceInfo)(device, param, size, ptr, ret) }
        })
    };
    let name = query(sys::CL_DEVICE_NAME)?;
    let device_extensions = query(sys::CL_DEVICE_EXTENSIONS)?;
    let mut extensions: Vec<String> = platform_extensions
        .split_whitespace()
        .chain(device_extensions.split_whitespace())
        .map(str::to_owned)
        .collect();
    extensions.sort();
    extensions.dedup();
    let uuid = if extensions.iter().any(|e| e == "cl_khr_device_uuid") {
        let mut bytes = [0u8; 16];
        // SAFETY: CL_DEVICE_UUID_KHR writes CL_UUID_SIZE_KHR (16) bytes.
        check("clGetDeviceInfo(CL_DEVICE_UUID_KHR)", unsafe {
            (cl.clGetDeviceInfo)(
                device,
                sys::CL_DEVICE_UUID_KHR,
                16,
                bytes.as_mut_ptr().cast(),
                std::ptr::null_mut(),
            )
        })?;
        Some(Uuid(bytes))
    } else {
        None
    };
    // LUIDs exist on Windows only; elsewhere the queries are not made.
    let luid = if cfg!(windows) && uuid.is_some() { device_luid(cl, device)? } else { None };
    Ok(ClDevice {
        platform: platform_name.to_owned(),
        name,
        uuid,
        luid,
        extensions,
        platform_id: platform,
        device_id: device,
    })
}

/// Runs a `clGet*Info` query twice (size, then value) and returns the string.
fn info_string(query: impl Fn(usize, *mut c_void, *mut usize) -> sys::cl_int) -> Result<String> {
    let mut size = 0;
    check("clGet*Info", query(0, std::ptr::null_mut(), &mut size))?;
    let mut bytes = vec![0u8; size];
    check("clGet*Info", query(size, bytes.as_mut_ptr().cast(), std::ptr::null_mut()))?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// An OpenCL context on the device that is a lava-flow device (same UUID), on a platform that
/// can import Vulkan memory. Released on drop.
#[derive(Debug)]
pub struct Context {
    device: ClDevice,
    context: sys::cl_context,
    /// `clEnqueueAcquireExternalMemObjectsKHR` of the device's platform.
    acquire: sys::ExternalMemObjectsFn,
    /// `clEnqueueReleaseExternalMemObjectsKHR` of the device's platform.
    release: sys::ExternalMemObjectsFn,
    /// The platform's semaphore entry points, where it has them.
    semaphores: Option<semaphore::SemaphoreFns>,
}

// SAFETY: OpenCL contexts are thread-safe handles (the OpenCL API is thread-safe apart from
// clSetKernelArg, which lava-flow does not call on shared kernels).
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    /// The context for lava-flow's `device_id`: the OpenCL device with the same UUID, chosen
    /// across all platforms (never by platform order: the GPU machine lists PoCL beside NVIDIA).
    ///
    /// Errors: [`Error::LibraryNotFound`] without an OpenCL loader; [`Error::Unsupported`] when
    /// no device has that UUID or the one that has it cannot import Vulkan memory (the message
    /// lists what was found and what is missing).
    pub fn for_device(allocator: &MemoryAllocator, device_id: u32) -> Result<Self> {
        let info = allocator.device(device_id)?;
        let all = devices()?;
        let identities: Vec<_> = all.iter().map(ClDevice::identity).collect();
        let Some(device) = crate::device::position_in(info, &identities).map(|i| &all[i]) else {
            let found: Vec<String> = all
                .iter()
                .map(|d| {
                    let uuid = d.uuid.map_or("no cl_khr_device_uuid".to_owned(), |u| u.to_string());
                    format!("{} on {} ({uuid})", d.name, d.platform)
                })
                .collect();
            return Err(info.no_device_in("OpenCL", &found, "none (no platform)"));
        };
        let cl = cl()?;
        let acquire = sys::extension_fn(cl, device.platform_id, "clEnqueueAcquireExternalMemObjectsKHR");
        let release = sys::extension_fn(cl, device.platform_id, "clEnqueueReleaseExternalMemObjectsKHR");
        let (Some(acquire), Some(release), true) = (acquire, release, device.has_extension(EXTERNAL_MEMORY))
        else {
            return Err(Error::Unsupported {
                what: format!(
                    "OpenCL device {} on {} cannot import Vulkan memory: it lacks {EXTERNAL_MEMORY}",
                    device.name, device.platform
                ),
            });
        };
        // SAFETY: the platform's entry point of this name has the Khronos signature.
        let acquire = unsafe { std::mem::transmute::<*mut c_void, sys::ExternalMemObjectsFn>(acquire) };
        // SAFETY: as above.
        let release = unsafe { std::mem::transmute::<*mut c_void, sys::ExternalMemObjectsFn>(release) };
        let semaphores = semaphore_fns(cl, device.platform_id);
        let properties = [sys::CL_CONTEXT_PLATFORM, device.platform_id as sys::cl_context_properties, 0];
        let mut status = 0;
        // SAFETY: a zero-terminated property list naming the device's platform; one device; no
        // callback.
        let context = unsafe {
            (cl.clCreateContext)(
                properties.as_ptr(),
                1,
                &device.device_id,
                std::ptr::null(),
                std::ptr::null_mut(),
                &mut status,
            )
        };
        check("clCreateContext", status)?;
        Ok(Context { device: device.clone(), context, acquire, release, semaphores })
    }

    /// The OpenCL device.
    pub fn device(&self) -> &ClDevice {
        &self.device
    }

    /// The raw `cl_context`, for the caller's own OpenCL code.
    pub fn raw(&self) -> *mut c_void {
        self.context
    }
}

impl Context {
    /// Checks that an object of the Vulkan device `found` can be used here.
    fn check_device(&self, what: &'static str, found: Uuid) -> Result<()> {
        match self.device.uuid {
            Some(expected) => crate::device::check_same_device(what, (expected, None), (found, None)),
            None => Ok(()),
        }
    }
}

/// The platform's four semaphore entry points, or `None` if it lacks any.
fn semaphore_fns(cl: &Cl, platform: sys::cl_platform_id) -> Option<semaphore::SemaphoreFns> {
    let get = |name| sys::extension_fn(cl, platform, name);
    let (create, wait, signal, release) = (
        get("clCreateSemaphoreWithPropertiesKHR")?,
        get("clEnqueueWaitSemaphoresKHR")?,
        get("clEnqueueSignalSemaphoresKHR")?,
        get("clReleaseSemaphoreKHR")?,
    );
    // SAFETY: the platform's entry points of these names have the Khronos signatures.
    let create = unsafe { std::mem::transmute::<*mut c_void, sys::CreateSemaphoreFn>(create) };
    // SAFETY: as above.
    let wait = unsafe { std::mem::transmute::<*mut c_void, sys::EnqueueSemaphoresFn>(wait) };
    // SAFETY: as above.
    let signal = unsafe { std::mem::transmute::<*mut c_void, sys::EnqueueSemaphoresFn>(signal) };
    // SAFETY: as above.
    let release = unsafe { std::mem::transmute::<*mut c_void, sys::ReleaseSemaphoreFn>(release) };
    Some(semaphore::SemaphoreFns { create, wait, signal, release })
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Ok(cl) = cl() {
            // SAFETY: created in `for_device`, released once.
            if let Err(e) = check("clReleaseContext", unsafe { (cl.clReleaseContext)(self.context) }) {
                log::error!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod platform_tests {
    use super::*;
    use crate::error::Api;
    use crate::external::{extensions, host_extensions, Os};

    #[test]
    fn the_extension_names_are_the_registrys_for_each_platform() {
        for (os, memory, semaphore) in [
            (Os::Unix, EXTERNAL_MEMORY_OPAQUE_FD, EXTERNAL_SEMAPHORE_OPAQUE_FD),
            (Os::Windows, EXTERNAL_MEMORY_WIN32, EXTERNAL_SEMAPHORE_WIN32),
        ] {
            let e = extensions(Api::OpenCl, os.opaque_handle()).expect("listed");
            assert_eq!((e.memory, e.semaphore), (memory, semaphore));
        }
        let host = host_extensions(Api::OpenCl);
        assert_eq!((host.memory, host.semaphore), (EXTERNAL_MEMORY, EXTERNAL_SEMAPHORE));
    }
}
