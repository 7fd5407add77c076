//! The CUDA device with a lava-flow device's UUID, its primary context, and streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::sys;

use super::memory::ExternalMemory;
use super::raw::{check, driver};
use super::reuse::{PeerLinks, Spares};
use crate::device::{DeviceInfo, Uuid};
use crate::error::{Error, Result};
use crate::MemoryAllocator;

/// A CUDA device as the driver lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CudaDevice {
    /// The CUDA ordinal (`cuDeviceGet`), which follows CUDA's own order, not Vulkan's.
    pub ordinal: i32,
    /// `cuDeviceGetName`.
    pub name: String,
    /// `cuDeviceGetUuid_v2`: equal to the Vulkan device UUID of the same GPU.
    pub uuid: Uuid,
    /// `cuDeviceGetLuid` on Windows (equal to the Vulkan device LUID); `None` elsewhere, where
    /// CUDA has no LUIDs.
    pub luid: Option<[u8; 8]>,
}

impl CudaDevice {
    /// The device's identity, as [`DeviceInfo::is`] compares it.
    pub fn identity(&self) -> crate::device::Identity {
        crate::device::Identity { uuid: Some(self.uuid), luid: self.luid }
    }
}

/// `cuDeviceGetLuid`: the Windows LUID of `device` (WDDM devices; a TCC device has none and
/// the call fails, which is `None`).
#[cfg(windows)]
fn luid(device: sys::CUdevice) -> Option<[u8; 8]> {
    let mut luid = [0 as std::ffi::c_char; 8];
    let mut node_mask = 0;
    // SAFETY: `device` is valid; `luid` holds the 8 bytes the call writes, `node_mask` is a valid
    // out-pointer.
    let r = unsafe { sys::cuDeviceGetLuid(luid.as_mut_ptr(), &mut node_mask, device) };
    check("cuDeviceGetLuid", r).ok().map(|()| luid.map(|b| b as u8))
}

/// CUDA reports LUIDs on Windows only.
#[cfg(not(windows))]
fn luid(_device: sys::CUdevice) -> Option<[u8; 8]> {
    None
}

/// Every CUDA device, or the typed error that says why there is none (no libcuda, driver too
/// old, ...).
pub fn devices() -> Result<Vec<CudaDevice>> {
    driver()?;
    let mut count = 0;
    // SAFETY: the driver is initialised; `count` is a valid out-pointer.
    check("cuDeviceGetCount", unsafe { sys::cuDeviceGetCount(&mut count) })?;
    (0..count)
        .map(|ordinal| {
            let mut device = 0;
            // SAFETY: `ordinal` < the device count.
            check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, ordinal) })?;
            let mut uuid = sys::CUuuid { bytes: [0; 16] };
            // SAFETY: `device` is valid; `uuid` is a valid out-pointer.
            check("cuDeviceGetUuid_v2", unsafe { sys::cuDeviceGetUuid_v2(&mut uuid, device) })?;
            let mut name = [0 as std::ffi::c_char; 256];
            // SAFETY: `name` holds 256 bytes, which the call is told.
            check("cuDeviceGetName", unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), 256, device) })?;
            // SAFETY: cuDeviceGetName writes a NUL-terminated string into `name`.
            let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
            Ok(CudaDevice { ordinal, name, uuid: Uuid(uuid.bytes.map(|b| b as u8)), luid: luid(device) })
        })
        .collect()
}

/// The CUDA ordinal of the GPU that is lava-flow's `device_id`, matched by UUID (and by LUID
/// on Windows: [`DeviceInfo::is`]).
pub fn ordinal_for(allocator: &MemoryAllocator, device_id: u32) -> Result<i32> {
    let info = allocator.device(device_id)?;
    find(info).map(|d| d.ordinal)
}

/// The CUDA devices' identities, in ordinal order (position = ordinal), for the pure selection
/// functions of [`crate::device`].
fn identities(cuda: &[CudaDevice]) -> Vec<crate::device::Identity> {
    cuda.iter().map(CudaDevice::identity).collect()
}

/// The lava-flow `device_id` of CUDA device `ordinal`, matched by UUID (and LUID on Windows).
pub fn device_id_for(allocator: &MemoryAllocator, ordinal: i32) -> Result<u32> {
    let cuda = devices()?;
    let index = usize::try_from(ordinal).map_err(|_| {
        Error::InvalidArgument(format!("no CUDA device {ordinal}: {} CUDA device(s) found", cuda.len()))
    })?;
    crate::device::vulkan_device_of(&allocator.devices(), "CUDA", &identities(&cuda), index).map(|d| d.index)
}

fn find(info: &DeviceInfo) -> Result<CudaDevice> {
    let cuda = devices()?;
    match crate::device::position_in(info, &identities(&cuda)) {
        Some(ordinal) => Ok(cuda[ordinal].clone()),
        None => {
            let found: Vec<String> =
                cuda.iter().map(|d| format!("{} {} {}", d.ordinal, d.name, d.uuid)).collect();
            Err(info.no_device_in("CUDA", &found, "none"))
        }
    }
}

pub(crate) struct Inner {
    pub device: sys::CUdevice,
    pub context: sys::CUcontext,
    pub uuid: Uuid,
    /// Whether lava-flow retained the primary context (and so releases it).
    retained: bool,
    /// One import per memory, shared by every buffer of it mapped in this context.
    pub imports: Mutex<HashMap<crate::MemoryId, Weak<ExternalMemory>>>,
    /// Views, imports and allocations dropped while work that uses them was queued: released
    /// once it completes (ADR 0014).
    pub deferred: super::release::Releases,
    /// Events without timing that lava-flow's own orderings and fences used and gave back,
    /// for reuse (`cuEventCreate` and `cuEventDestroy` are not per call); destroyed at the end.
    pub spares: Mutex<Spares<sys::CUevent>>,
    /// Peer access as this context has seen it: `cuDeviceCanAccessPeer` per peer device, and the
    /// peer contexts it mapped with `cuCtxEnablePeerAccess`.
    pub peers: Mutex<PeerLinks<sys::CUdevice, Inner>>,
}

impl Inner {
    fn new(device: sys::CUdevice, context: sys::CUcontext, uuid: Uuid, retained: bool) -> Self {
        Inner {
            device,
            context,
            uuid,
            retained,
            imports: Mutex::default(),
            deferred: Mutex::default(),
            spares: Mutex::new(Spares::new(super::reuse::SPARE_EVENTS)),
            peers: Mutex::default(),
        }
    }
}

// SAFETY: a CUcontext is a handle the driver API lets any thread use (made current with
// cuCtxSetCurrent, which lava-flow does before each call); the map is behind a mutex.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // What was dropped under queued work goes first, once that work completed (the context's
        // end is the one place that waits for it): nothing else holds the context any more.
        super::release::release_all(self);
        // Then the spare events (the fences just released gave theirs back to no one: with the
        // context's last `Arc` gone they destroyed their own).
        let spares = self.spares.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).drain();
        for event in spares {
            // SAFETY: the context is still live; each spare is an event of it, unused by queued
            // work's host side (a queued record or wait completes after the destroy).
            super::release::release_in(self.context, "cuEventDestroy_v2", || unsafe {
                sys::cuEventDestroy_v2(event)
            });
        }
        if self.retained {
            // SAFETY: retained once in `Context::for_device`, released once here, after every
            // import and mapping (which hold an `Arc<Inner>`) is gone.
            if let Err(e) = check("cuDevicePrimaryCtxRelease_v2", unsafe {
                sys::cuDevicePrimaryCtxRelease_v2(self.device)
            }) {
                log::error!("{e}");
            }
        }
    }
}

/// A CUDA context on the GPU of a lava-flow device: the device's primary context, retained for
/// as long as this value or anything imported through it lives. Cheap to clone; `Send + Sync`.
/// lava-flow makes it current on the calling thread before each of its CUDA calls.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("device", &self.inner.device).field("uuid", &self.inner.uuid).finish()
    }
}

impl Context {
    /// The primary context of the CUDA device whose UUID is `device_id`'s.
    ///
    /// Errors: [`Error::LibraryNotFound`] without libcuda; [`Error::Unsupported`] for a driver
    /// too old or no CUDA device with that UUID (the message lists the CUDA devices).
    pub fn for_device(allocator: &MemoryAllocator, device_id: u32) -> Result<Self> {
        let info = allocator.device(device_id)?;
        Self::primary(find(info)?)
    }

    /// The primary context of the CUDA device with this UUID — the device UUID in a
    /// [`MemoryDescriptor`](crate::MemoryDescriptor) received from another process, say. Loads
    /// only libcuda: a consumer that imports exported handles into CUDA never loads Vulkan.
    ///
    /// Errors: [`Error::LibraryNotFound`] without libcuda; [`Error::Unsupported`] for a driver
    /// too old or no CUDA device with that UUID (the message lists the CUDA devices).
    pub fn for_uuid(uuid: Uuid) -> Result<Self> {
        let cuda = devices()?;
        let device = cuda.iter().find(|d| d.uuid == uuid).cloned().ok_or_else(|| {
            let found: Vec<String> =
                cuda.iter().map(|d| format!("{} {} {}", d.ordinal, d.name, d.uuid)).collect();
            Error::Unsupported {
                what: format!(
                    "no CUDA device has the UUID {uuid}; CUDA devices: {}",
                    if found.is_empty() { "none".to_owned() } else { found.join("; ") }
                ),
            }
        })?;
        Self::primary(device)
    }

    /// Retains the primary context of `cuda`.
    fn primary(cuda: CudaDevice) -> Result<Self> {
        let mut device = 0;
        // SAFETY: the driver is initialised (by `devices`); the ordinal exists.
        check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, cuda.ordinal) })?;
        let mut context = std::ptr::null_mut();
        // SAFETY: `device` is valid; `context` is a valid out-pointer.
        check("cuDevicePrimaryCtxRetain", unsafe { sys::cuDevicePrimaryCtxRetain(&mut context, device) })?;
        Ok(Context { inner: Arc::new(Inner::new(device, context, cuda.uuid, true)) })
    }

    /// Adopts a context the caller already has (from cudarc, or their own code). lava-flow
    /// neither retains nor destroys it.
    ///
    /// # Safety
    /// `context` is a valid context of `device` and outlives the returned value and everything
    /// imported through it.
    pub unsafe fn from_raw(context: sys::CUcontext, device: sys::CUdevice) -> Result<Self> {
        driver()?;
        let mut uuid = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: the caller's contract: `device` is valid.
        check("cuDeviceGetUuid_v2", unsafe { sys::cuDeviceGetUuid_v2(&mut uuid, device) })?;
        Ok(Context { inner: Arc::new(Inner::new(device, context, Uuid(uuid.bytes.map(|b| b as u8)), false)) })
    }

    /// The raw context, for the caller's own CUDA code.
    pub fn raw(&self) -> sys::CUcontext {
        self.inner.context
    }

    /// The CUDA device.
    pub fn raw_device(&self) -> sys::CUdevice {
        self.inner.device
    }

    /// The device's UUID.
    pub fn uuid(&self) -> Uuid {
        self.inner.uuid
    }

    /// Makes the context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: the context is valid while `inner` lives.
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.inner.context) })
    }

    /// Waits until all work in the context has completed (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the context is current.
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    }

    /// Waits for the work queued on the context's legacy default stream (`cuStreamSynchronize`
    /// on the null stream), with the context current. CUDA's "synchronous" copies from pageable
    /// host memory, device-to-device copies and memsets return before their DMA has landed
    /// (the CUDA driver API's "API synchronization behavior"): the copies and fills that
    /// lava-flow calls synchronous call this before they return, so that Vulkan or a host read
    /// after them sees their bytes. lava-flow's streams are non-blocking, so this does not wait
    /// for their work.
    pub(crate) fn finish_default_stream(&self) -> Result<()> {
        // SAFETY: the context is current (every caller bound it for the call it finishes); the
        // null stream is the context's legacy default stream.
        check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(std::ptr::null_mut()) })
    }

    /// Free and total device memory (`cuMemGetInfo`), in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0, 0);
        // SAFETY: the context is current; both are valid out-pointers.
        check("cuMemGetInfo_v2", unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
        Ok((free, total))
    }

    /// A new non-blocking stream in this context.
    pub fn stream(&self) -> Result<Stream> {
        self.reclaim();
        self.bind()?;
        let mut stream = std::ptr::null_mut();
        let flags = sys::CUstream_flags_enum::CU_STREAM_NON_BLOCKING as u32;
        // SAFETY: the context is current; `stream` is a valid out-pointer.
        check("cuStreamCreate", unsafe { sys::cuStreamCreate(&mut stream, flags) })?;
        Ok(Stream { ctx: self.clone(), stream, id: next_stream_id(), owned: true })
    }

    /// Makes the context current and runs `release`, a driver call that destroys or frees
    /// something, logging a failure: for `Drop`, which cannot return it.
    pub(crate) fn release(&self, call: &'static str, release: impl FnOnce() -> sys::CUresult) {
        if let Err(e) = self.bind().and_then(|()| check(call, release())) {
            log::error!("{e}");
        }
    }

    /// Checks that an object of the device `uuid` can be used here.
    pub(crate) fn check_device(&self, what: &'static str, uuid: Uuid) -> Result<()> {
        crate::device::check_same_device(what, (self.inner.uuid, None), (uuid, None))
    }
}

/// A CUDA stream of a [`Context`].
pub struct Stream {
    pub(crate) ctx: Context,
    pub(crate) stream: sys::CUstream,
    /// This value's own number, never reused in the process (a destroyed stream's handle may
    /// be): fences recorded on it supersede older ones of the same number only.
    pub(crate) id: u64,
    owned: bool,
}

/// The next [`Stream::id`].
fn next_stream_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: a CUstream is a driver handle usable from any thread with its context current.
unsafe impl Send for Stream {}
// SAFETY: as above; lava-flow's calls on it are the driver's, which are thread-safe.
unsafe impl Sync for Stream {}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("stream", &self.stream).field("owned", &self.owned).finish()
    }
}

impl Stream {
    /// Adopts a stream the caller already has (from cudarc, PyTorch, ...), never destroyed by
    /// lava-flow. The null stream (the legacy default stream) is allowed.
    ///
    /// # Safety
    /// `stream` belongs to `ctx` and outlives the returned value.
    pub unsafe fn from_raw(ctx: &Context, stream: sys::CUstream) -> Self {
        Stream { ctx: ctx.clone(), stream, id: next_stream_id(), owned: false }
    }

    /// The raw stream, for kernel launches of the caller's own.
    pub fn raw(&self) -> sys::CUstream {
        self.stream
    }

    /// Waits until the stream's work has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: the stream is valid in its context, which is current.
        check("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(self.stream) })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: our own stream, destroyed once; pending work still completes.
        self.ctx.release("cuStreamDestroy_v2", || unsafe { sys::cuStreamDestroy_v2(self.stream) });
    }
}
