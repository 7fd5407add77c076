//! OpenCL, loaded at run time: the core functions lava-flow calls, from the ICD loader
//! (`libOpenCL.so.1`); extension functions, which loaders do not export, come from
//! `clGetExtensionFunctionAddressForPlatform`. Types and constants follow the Khronos headers
//! (`CL/cl.h`, `CL/cl_ext.h`).
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

use crate::error::{Api, Error, Result};
use crate::external::Os;

pub type cl_int = i32;
pub type cl_uint = u32;
pub type cl_bitfield = u64;
pub type cl_platform_id = *mut c_void;
pub type cl_device_id = *mut c_void;
pub type cl_context = *mut c_void;
pub type cl_context_properties = isize;
pub type cl_command_queue = *mut c_void;
pub type cl_mem = *mut c_void;
pub type cl_program = *mut c_void;
pub type cl_kernel = *mut c_void;
pub type cl_event = *mut c_void;
pub type cl_mem_properties = u64;
pub type cl_queue_properties = u64;
pub type cl_semaphore_khr = *mut c_void;
pub type cl_semaphore_properties_khr = u64;

pub const CL_SUCCESS: cl_int = 0;
pub const CL_PLATFORM_NAME: cl_uint = 0x0902;
pub const CL_PLATFORM_EXTENSIONS: cl_uint = 0x0904;
pub const CL_DEVICE_TYPE_ALL: cl_bitfield = 0xFFFF_FFFF;
pub const CL_DEVICE_NAME: cl_uint = 0x102B;
pub const CL_DEVICE_EXTENSIONS: cl_uint = 0x1030;
/// `cl_khr_device_uuid`.
pub const CL_DEVICE_UUID_KHR: cl_uint = 0x106A;
/// `cl_khr_device_uuid`: whether the device has a LUID (Windows), and the LUID.
pub const CL_DEVICE_LUID_VALID_KHR: cl_uint = 0x106C;
pub const CL_DEVICE_LUID_KHR: cl_uint = 0x106D;
pub const CL_CONTEXT_PLATFORM: cl_context_properties = 0x1084;
/// Bits; the alignment of sub-buffer origins.
pub const CL_DEVICE_MEM_BASE_ADDR_ALIGN: cl_uint = 0x1019;
pub const CL_MEM_READ_WRITE: cl_bitfield = 1;
pub const CL_BUFFER_CREATE_TYPE_REGION: cl_uint = 0x1220;
pub const CL_PROGRAM_BUILD_LOG: cl_uint = 0x1183;
pub const CL_TRUE: cl_uint = 1;
/// `cl_khr_external_memory`: the devices an imported object is for.
pub const CL_DEVICE_HANDLE_LIST_KHR: cl_mem_properties = 0x2051;
pub const CL_DEVICE_HANDLE_LIST_END_KHR: cl_mem_properties = 0;
/// `cl_khr_external_memory_opaque_fd`.
pub const CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR: cl_mem_properties = 0x2060;
/// `cl_khr_external_memory_win32`.
pub const CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_WIN32_KHR: cl_mem_properties = 0x2061;

/// Images (`CL/cl.h`): the device query, the 2-D type, channel orders and data types.
pub const CL_DEVICE_IMAGE_SUPPORT: cl_uint = 0x1016;
pub const CL_MEM_OBJECT_IMAGE2D: cl_uint = 0x10F1;
pub const CL_R: cl_uint = 0x10B0;
pub const CL_RG: cl_uint = 0x10B2;
pub const CL_RGBA: cl_uint = 0x10B5;
pub const CL_UNORM_INT8: cl_uint = 0x10D2;
pub const CL_UNSIGNED_INT32: cl_uint = 0x10DC;
pub const CL_HALF_FLOAT: cl_uint = 0x10DD;
pub const CL_FLOAT: cl_uint = 0x10DE;
/// `cl_khr_external_memory`: the handle types a device imports images of as linear ones (all
/// others are imported in the implementation's optimal layout).
pub const CL_DEVICE_EXTERNAL_MEMORY_IMPORT_ASSUME_LINEAR_IMAGES_HANDLE_TYPES_KHR: cl_uint = 0x2052;

/// `cl_image_format`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cl_image_format {
    pub image_channel_order: cl_uint,
    pub image_channel_data_type: cl_uint,
}

/// `cl_image_desc` (its last member is a union of `buffer` and `mem_object`).
#[repr(C)]
pub struct cl_image_desc {
    pub image_type: cl_uint,
    pub image_width: usize,
    pub image_height: usize,
    pub image_depth: usize,
    pub image_array_size: usize,
    pub image_row_pitch: usize,
    pub image_slice_pitch: usize,
    pub num_mip_levels: cl_uint,
    pub num_samples: cl_uint,
    pub mem_object: cl_mem,
}

/// `cl_khr_semaphore`: the semaphore's type, and the binary type (the only one).
pub const CL_SEMAPHORE_TYPE_KHR: cl_semaphore_properties_khr = 0x203D;
pub const CL_SEMAPHORE_TYPE_BINARY_KHR: cl_semaphore_properties_khr = 1;
/// `cl_khr_semaphore`: the devices a semaphore is for (its own property, not the memory one).
pub const CL_SEMAPHORE_DEVICE_HANDLE_LIST_KHR: cl_semaphore_properties_khr = 0x2053;
pub const CL_SEMAPHORE_DEVICE_HANDLE_LIST_END_KHR: cl_semaphore_properties_khr = 0;
/// `cl_khr_external_semaphore_opaque_fd`.
pub const CL_SEMAPHORE_HANDLE_OPAQUE_FD_KHR: cl_semaphore_properties_khr = 0x2055;
/// `cl_khr_external_semaphore_win32`.
pub const CL_SEMAPHORE_HANDLE_OPAQUE_WIN32_KHR: cl_semaphore_properties_khr = 0x2056;

/// `clCreateSemaphoreWithPropertiesKHR`.
pub type CreateSemaphoreFn =
    unsafe extern "C" fn(cl_context, *const cl_semaphore_properties_khr, *mut cl_int) -> cl_semaphore_khr;
/// `clEnqueueWaitSemaphoresKHR` and `clEnqueueSignalSemaphoresKHR`.
pub type EnqueueSemaphoresFn = unsafe extern "C" fn(
    cl_command_queue,
    cl_uint,
    *const cl_semaphore_khr,
    *const u64,
    cl_uint,
    *const cl_event,
    *mut cl_event,
) -> cl_int;
/// `clReleaseSemaphoreKHR`.
pub type ReleaseSemaphoreFn = unsafe extern "C" fn(cl_semaphore_khr) -> cl_int;

/// `cl_buffer_region`.
#[repr(C)]
pub struct cl_buffer_region {
    pub origin: usize,
    pub size: usize,
}

/// `clEnqueueAcquireExternalMemObjectsKHR` and `clEnqueueReleaseExternalMemObjectsKHR`.
pub type ExternalMemObjectsFn = unsafe extern "C" fn(
    cl_command_queue,
    cl_uint,
    *const cl_mem,
    cl_uint,
    *const cl_event,
    *mut cl_event,
) -> cl_int;

macro_rules! functions {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The core OpenCL functions lava-flow calls.
        #[allow(non_snake_case)]
        pub struct Cl {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
            /// Keeps the library loaded while the pointers are used.
            _library: libloading::Library,
        }

        impl Cl {
            /// Looks every function up in `library`.
            ///
            /// # Safety
            /// `library` is an OpenCL ICD loader, whose functions have the Khronos signatures.
            unsafe fn load(library: libloading::Library) -> std::result::Result<Self, String> {
                $(
                    // SAFETY: the caller's contract: the symbol has this signature.
                    let $name = *unsafe {
                        library.get::<unsafe extern "C" fn($($arg),*) -> $ret>(concat!(stringify!($name), "\0").as_bytes())
                    }
                    .map_err(|e| format!("{}: {e}", stringify!($name)))?;
                )*
                Ok(Cl { $($name,)* _library: library })
            }
        }
    };
}

functions! {
    clGetPlatformIDs: fn(cl_uint, *mut cl_platform_id, *mut cl_uint) -> cl_int;
    clGetPlatformInfo: fn(cl_platform_id, cl_uint, usize, *mut c_void, *mut usize) -> cl_int;
    clGetDeviceIDs: fn(cl_platform_id, cl_bitfield, cl_uint, *mut cl_device_id, *mut cl_uint) -> cl_int;
    clGetDeviceInfo: fn(cl_device_id, cl_uint, usize, *mut c_void, *mut usize) -> cl_int;
    clCreateContext: fn(*const cl_context_properties, cl_uint, *const cl_device_id, *const c_void, *mut c_void, *mut cl_int) -> cl_context;
    clReleaseContext: fn(cl_context) -> cl_int;
    clGetExtensionFunctionAddressForPlatform: fn(cl_platform_id, *const c_char) -> *mut c_void;
    clCreateCommandQueueWithProperties: fn(cl_context, cl_device_id, *const cl_queue_properties, *mut cl_int) -> cl_command_queue;
    clReleaseCommandQueue: fn(cl_command_queue) -> cl_int;
    clRetainCommandQueue: fn(cl_command_queue) -> cl_int;
    clFinish: fn(cl_command_queue) -> cl_int;
    clFlush: fn(cl_command_queue) -> cl_int;
    clCreateBufferWithProperties: fn(cl_context, *const cl_mem_properties, cl_bitfield, usize, *mut c_void, *mut cl_int) -> cl_mem;
    clCreateSubBuffer: fn(cl_mem, cl_bitfield, cl_uint, *const c_void, *mut cl_int) -> cl_mem;
    clReleaseMemObject: fn(cl_mem) -> cl_int;
    clEnqueueReadBuffer: fn(cl_command_queue, cl_mem, cl_uint, usize, usize, *mut c_void, cl_uint, *const cl_event, *mut cl_event) -> cl_int;
    clEnqueueWriteBuffer: fn(cl_command_queue, cl_mem, cl_uint, usize, usize, *const c_void, cl_uint, *const cl_event, *mut cl_event) -> cl_int;
    clCreateProgramWithSource: fn(cl_context, cl_uint, *const *const c_char, *const usize, *mut cl_int) -> cl_program;
    clBuildProgram: fn(cl_program, cl_uint, *const cl_device_id, *const c_char, *const c_void, *mut c_void) -> cl_int;
    clGetProgramBuildInfo: fn(cl_program, cl_device_id, cl_uint, usize, *mut c_void, *mut usize) -> cl_int;
    clReleaseProgram: fn(cl_program) -> cl_int;
    clCreateKernel: fn(cl_program, *const c_char, *mut cl_int) -> cl_kernel;
    clReleaseKernel: fn(cl_kernel) -> cl_int;
    clSetKernelArg: fn(cl_kernel, cl_uint, usize, *const c_void) -> cl_int;
    clEnqueueNDRangeKernel: fn(cl_command_queue, cl_kernel, cl_uint, *const usize, *const usize, *const usize, cl_uint, *const cl_event, *mut cl_event) -> cl_int;
    clCreateImageWithProperties: fn(cl_context, *const cl_mem_properties, cl_bitfield, *const cl_image_format, *const cl_image_desc, *mut c_void, *mut cl_int) -> cl_mem;
    clGetSupportedImageFormats: fn(cl_context, cl_bitfield, cl_uint, cl_uint, *mut cl_image_format, *mut cl_uint) -> cl_int;
    clEnqueueReadImage: fn(cl_command_queue, cl_mem, cl_uint, *const usize, *const usize, usize, usize, *mut c_void, cl_uint, *const cl_event, *mut cl_event) -> cl_int;
    clEnqueueWriteImage: fn(cl_command_queue, cl_mem, cl_uint, *const usize, *const usize, usize, usize, *const c_void, cl_uint, *const cl_event, *mut cl_event) -> cl_int;
}

/// The loaded library, or why there is none; looked for once.
pub(crate) fn cl() -> Result<&'static Cl> {
    static CL: OnceLock<std::result::Result<Cl, String>> = OnceLock::new();
    let loaded = CL.get_or_init(|| {
        // SAFETY: loading the ICD loader runs its initialisers; that is its purpose.
        let library =
            unsafe { libloading::Library::new(Os::HOST.library(Api::OpenCl)) }.map_err(|e| e.to_string())?;
        // SAFETY: libOpenCL.so.1 (OpenCL.dll) is the Khronos ICD loader.
        unsafe { Cl::load(library) }.map_err(|missing| format!("the OpenCL loader lacks {missing}"))
    });
    loaded.as_ref().map_err(|reason| Error::LibraryNotFound {
        api: Api::OpenCl,
        library: Os::HOST.library(Api::OpenCl),
        reason: reason.clone(),
    })
}

/// An extension function of `platform`, or `None` where the platform does not provide it.
pub(crate) fn extension_fn(cl: &Cl, platform: cl_platform_id, name: &str) -> Option<*mut c_void> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `platform` came from clGetPlatformIDs; `cname` is NUL-terminated.
    let f = unsafe { (cl.clGetExtensionFunctionAddressForPlatform)(platform, cname.as_ptr()) };
    (!f.is_null()).then_some(f)
}

/// Turns an OpenCL status into `Ok` or [`Error::Ffi`] naming `call`.
pub(crate) fn check(call: &'static str, status: cl_int) -> Result<()> {
    if status == CL_SUCCESS {
        return Ok(());
    }
    let (name, description) = match status {
        -1 => ("CL_DEVICE_NOT_FOUND", "no device of the requested type"),
        -2 => ("CL_DEVICE_NOT_AVAILABLE", "the device is not available"),
        -4 => ("CL_MEM_OBJECT_ALLOCATION_FAILURE", "memory for the object could not be allocated"),
        -5 => ("CL_OUT_OF_RESOURCES", "the device ran out of resources"),
        -6 => ("CL_OUT_OF_HOST_MEMORY", "the host ran out of memory"),
        -11 => ("CL_BUILD_PROGRAM_FAILURE", "the program failed to build"),
        -10 => ("CL_IMAGE_FORMAT_NOT_SUPPORTED", "the device does not support this image format"),
        -13 => ("CL_MISALIGNED_SUB_BUFFER_OFFSET", "the sub-buffer offset is not aligned for the device"),
        -30 => ("CL_INVALID_VALUE", "an argument has an invalid value"),
        -32 => ("CL_INVALID_PLATFORM", "the platform is not valid"),
        -33 => ("CL_INVALID_DEVICE", "the device is not valid"),
        -34 => ("CL_INVALID_CONTEXT", "the context is not valid"),
        -36 => ("CL_INVALID_COMMAND_QUEUE", "the command queue is not valid"),
        -38 => ("CL_INVALID_MEM_OBJECT", "the memory object is not valid"),
        -39 => ("CL_INVALID_IMAGE_FORMAT_DESCRIPTOR", "the image format is not valid"),
        -40 => ("CL_INVALID_IMAGE_SIZE", "the image size is not supported"),
        -44 => ("CL_INVALID_PROGRAM", "the program is not valid"),
        -45 => ("CL_INVALID_PROGRAM_EXECUTABLE", "the program has no executable for the device"),
        -46 => ("CL_INVALID_KERNEL_NAME", "no kernel of that name in the program"),
        -48 => ("CL_INVALID_KERNEL", "the kernel is not valid"),
        -51 => ("CL_INVALID_ARG_SIZE", "a kernel argument has the wrong size"),
        -52 => ("CL_INVALID_KERNEL_ARGS", "kernel arguments are missing"),
        -54 => ("CL_INVALID_WORK_GROUP_SIZE", "the work-group size is not valid"),
        -63 => ("CL_INVALID_GLOBAL_WORK_SIZE", "the global work size is not valid"),
        -59 => ("CL_INVALID_OPERATION", "the operation is not valid in this state"),
        -61 => ("CL_INVALID_BUFFER_SIZE", "the buffer size is not valid"),
        -64 => ("CL_INVALID_PROPERTY", "a property is not supported or not valid"),
        -65 => ("CL_INVALID_IMAGE_DESCRIPTOR", "the image descriptor is not valid"),
        -1001 => ("CL_PLATFORM_NOT_FOUND_KHR", "the ICD loader found no platform"),
        -1142 => ("CL_INVALID_SEMAPHORE_KHR", "the semaphore is not valid"),
        _ => ("", ""),
    };
    let (name, description) = if name.is_empty() {
        (format!("CL error {status}"), "a status this build does not name".to_owned())
    } else {
        (name.to_owned(), description.to_owned())
    };
    Err(Error::Ffi { api: Api::OpenCl, call, name, description })
}
