//! GL contexts: a headless one made through EGL for a lava-flow device, or the caller's own.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_void, CStr};
use std::rc::{Rc, Weak};

use super::memory::MemoryObject;
use super::sys::{self, Gl};
use crate::device::{DeviceInfo, Uuid};
use crate::error::{Api, Error, Result};
use crate::teardown::GlPresence;

type Egl = khronos_egl::DynamicInstance<khronos_egl::EGL1_5>;

const PLATFORM_DEVICE_EXT: khronos_egl::Enum = 0x313F;
const PLATFORM_SURFACELESS_MESA: khronos_egl::Enum = 0x31DD;
/// `EGL_TRACK_REFERENCES_KHR` (EGL_KHR_display_reference).
const TRACK_REFERENCES_KHR: khronos_egl::Attrib = 0x3352;

/// The extensions lava-flow uses: memory objects and semaphores from the platform's handle
/// (`GL_EXT_memory_object_fd` and `GL_EXT_semaphore_fd` on Unix, `..._win32` on Windows).
pub(crate) fn handle_extensions() -> crate::external::Extensions {
    crate::external::host_extensions(Api::OpenGl)
}
pub(crate) const NV_TIMELINE_SEMAPHORE: &str = "GL_NV_timeline_semaphore";

/// Which EGL platform a headless context was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EglPlatform {
    /// `EGL_EXT_platform_device`: one EGL device per GPU (NVIDIA; Mesa too).
    Device,
    /// `EGL_MESA_platform_surfaceless`: Mesa's headless platform.
    Surfaceless,
}

/// What a GL context is and can do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GlInfo {
    /// `GL_VENDOR`.
    pub vendor: String,
    /// `GL_RENDERER`.
    pub renderer: String,
    /// `GL_VERSION`.
    pub version: String,
    /// The device UUIDs the context runs on (`GL_DEVICE_UUID_EXT`); empty without
    /// `GL_EXT_memory_object`/`GL_EXT_semaphore`.
    pub device_uuids: Vec<Uuid>,
    /// `GL_DRIVER_UUID_EXT`.
    pub driver_uuid: Option<Uuid>,
    /// `GL_DEVICE_LUID_EXT`, on Windows where the context has `GL_EXT_memory_object_win32` (the
    /// LUID [`device::find_by_luid`](crate::device::find_by_luid) takes); `None` elsewhere.
    pub device_luid: Option<[u8; 8]>,
    /// The EGL platform of a headless context; `None` for an adopted context.
    pub platform: Option<EglPlatform>,
    /// The driver ignores the offset of `glNamedBufferStorageMemEXT` (Mesa's llvmpipe): lava-flow
    /// then binds one GL buffer over a whole block and hands out ranges of it.
    pub ignores_memory_offset: bool,
    extensions: HashSet<String>,
}

impl GlInfo {
    /// Who owns the fd of an import GL refused. Mesa's `glImportMemoryFdEXT` and
    /// `glImportSemaphoreFdEXT` close the fd once they have the memory object or semaphore,
    /// whatever happens next, and lava-flow only calls them with a valid object and handle type;
    /// other drivers keep the rule that a refused fd is the caller's.
    /// (NT handles are never the driver's: the answer is not asked for them.)
    pub(crate) fn refused_fd(&self) -> crate::external::Refused {
        if self.version.contains("Mesa") {
            crate::external::Refused::TakenByDriver
        } else {
            crate::external::Refused::StillOurs
        }
    }

    /// Whether the context lists `extension` (e.g. `GL_EXT_memory_object_fd`).
    ///
    /// Support is decided from this list alone: glvnd returns a function pointer for any `gl*`
    /// name, so a non-null pointer proves nothing.
    pub fn has_extension(&self, extension: &str) -> bool {
        self.extensions.contains(extension)
    }
}

/// The EGL objects of a context lava-flow made.
struct OwnedEgl {
    egl: Egl,
    display: khronos_egl::Display,
    context: khronos_egl::Context,
    /// Whether the display is reference-counted (`EGL_KHR_display_reference`) and so ours to
    /// terminate. Without it an EGL display is one per device and process, shared with every
    /// other context on it (other threads' lava-flow contexts too): terminating it would pull
    /// it from under them, so lava-flow leaves it initialised.
    terminate: bool,
}

impl Drop for OwnedEgl {
    fn drop(&mut self) {
        let released = self.egl.make_current(self.display, None, None, None);
        let destroyed = self.egl.destroy_context(self.display, self.context);
        let terminated = if self.terminate { self.egl.terminate(self.display) } else { Ok(()) };
        for (call, r) in
            [("eglMakeCurrent", released), ("eglDestroyContext", destroyed), ("eglTerminate", terminated)]
        {
            if let Err(e) = r {
                log::error!("{} while destroying a GL context", egl_error(call, e));
            }
        }
    }
}

/// How long a context's end waits for the work queued before each deferred memory object was
/// dropped, before leaking it (work that waits for a semaphore nobody signals never completes).
const END_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Shared {
    /// The context's end waits for the work queued before each deferred memory object was
    /// dropped, then deletes it (the one host wait of ADR 0014's GL side).
    fn drop(&mut self) {
        let (staging, _) = self.read_staging.get();
        if self.deferred.borrow().is_empty() && staging == 0 {
            return;
        }
        match self.current() {
            Ok(gl) => {
                if staging != 0 {
                    // SAFETY: the context is current; the buffer is this context's, used by
                    // nothing now (reads wait for their copies before they return).
                    unsafe { gl.DeleteBuffers(1, &staging) };
                }
                self.reclaim(true);
            }
            Err(e) => log::error!(
                "{} GL memory objects dropped under queued work are leaked: {e}",
                self.deferred.borrow().len()
            ),
        }
    }
}

/// Host reads of imported buffers go through a GL buffer of the context's own in pieces of at
/// most this many bytes (`GlBuffer::read` says why).
pub(crate) const READ_CHUNK: u64 = 16 << 20;

/// What every GL object needs after its context is gone from view: the functions and the means
/// to make the context current again.
pub(crate) struct Shared {
    pub gl: Gl,
    pub nv_timeline: Option<sys::NvTimeline>,
    pub info: GlInfo,
    /// Memory objects dropped while GL work queued before their drop had not completed, each
    /// with the fence sync placed at its drop: deleted once the fence signalled (ADR 0014).
    pub deferred: RefCell<Vec<(sys::types::GLsync, sys::GLuint)>>,
    /// The GL buffer that host reads of imported memory go through (`GlBuffer::read`): its
    /// name and size, made on first use (0: none yet).
    pub read_staging: std::cell::Cell<(sys::GLuint, u64)>,
    owned: Option<OwnedEgl>,
    /// Holds off `vkDestroyDevice` on drivers where it deadlocks with GL (`crate::teardown`);
    /// declared after `owned`, so it is dropped after the EGL context.
    _presence: GlPresence,
}

impl Shared {
    /// Makes the context current on this thread (for a headless context; an adopted one is the
    /// caller's to keep current) and returns the function table.
    pub fn current(&self) -> Result<&Gl> {
        if let Some(o) = &self.owned {
            if o.egl.get_current_context() != Some(o.context) {
                o.egl
                    .make_current(o.display, None, None, Some(o.context))
                    .map_err(|e| egl_error("eglMakeCurrent", e))?;
            }
        }
        Ok(&self.gl)
    }

    /// Deletes memory object `name` once the GL work queued so far has completed: now if a
    /// fence placed here is already signalled, otherwise on a later import, a
    /// [`GlContext::reclaim`] or at the context's end (ADR 0014). The context is current.
    pub(crate) fn delete_memory_after_queued_work(&self, name: sys::GLuint) -> Result<()> {
        // SAFETY: the context is current (the caller's contract); a fence of every command so far.
        let sync = unsafe { self.gl.FenceSync(sys::SYNC_GPU_COMMANDS_COMPLETE, 0) };
        self.check("glFenceSync")?;
        self.deferred.borrow_mut().push((sync, name));
        self.reclaim(false);
        Ok(())
    }

    /// The context's read staging buffer (name, size), holding at least `min(len, READ_CHUNK)`
    /// bytes: made on first use, replaced by a larger one when a longer read needs it. The
    /// context is current.
    pub(crate) fn read_staging(&self, len: u64) -> Result<(sys::GLuint, u64)> {
        let want = len.clamp(1, READ_CHUNK);
        let (name, size) = self.read_staging.get();
        if name != 0 && size >= want {
            return Ok((name, size));
        }
        if name != 0 {
            // SAFETY: the context is current; the old buffer is ours and its last read has
            // returned (reads wait for their copies).
            unsafe { self.gl.DeleteBuffers(1, &name) };
            self.read_staging.set((0, 0));
        }
        let size = want.max(size);
        let mut name = 0;
        // SAFETY: the context is current; one name is written.
        unsafe { self.gl.CreateBuffers(1, &mut name) };
        if let Err(e) = self.check("glCreateBuffers") {
            if name != 0 {
                // SAFETY: made above (the error may be an earlier call's), used by nothing.
                unsafe { self.gl.DeleteBuffers(1, &name) };
            }
            return Err(e);
        }
        // SAFETY: a fresh buffer of this context; no initial data; GL-side storage only.
        unsafe { self.gl.NamedBufferStorage(name, size as isize, std::ptr::null(), 0) };
        if let Err(e) = self.check("glNamedBufferStorage") {
            // SAFETY: made above, used by nothing.
            unsafe { self.gl.DeleteBuffers(1, &name) };
            return Err(e);
        }
        self.read_staging.set((name, size));
        Ok((name, size))
    }

    /// Waits on the host (up to a bound) until the GL work queued so far has completed: a fence
    /// and `glClientWaitSync`. The context is current.
    pub(crate) fn wait_for_queued_work(&self) -> Result<()> {
        // SAFETY: the context is current (the caller's contract).
        let sync = unsafe { self.gl.FenceSync(sys::SYNC_GPU_COMMANDS_COMPLETE, 0) };
        self.check("glFenceSync")?;
        // SAFETY: the fence just made; the flush makes it able to signal.
        let status =
            unsafe { self.gl.ClientWaitSync(sync, sys::SYNC_FLUSH_COMMANDS_BIT, END_WAIT.as_nanos() as u64) };
        let checked = self.check("glClientWaitSync");
        // SAFETY: our fence, deleted once.
        unsafe { self.gl.DeleteSync(sync) };
        checked?;
        match status {
            sys::ALREADY_SIGNALED | sys::CONDITION_SATISFIED => Ok(()),
            _ => Err(Error::Timeout(END_WAIT, "the GL work queued before a buffer was dropped")),
        }
    }

    /// Deletes the deferred memory objects whose fence has signalled (with `wait`, after waiting
    /// for each); returns how many are left. The context is current.
    pub(crate) fn reclaim(&self, wait: bool) -> usize {
        let entries = std::mem::take(&mut *self.deferred.borrow_mut());
        let mut left = Vec::new();
        for (sync, name) in entries {
            let timeout = if wait { END_WAIT.as_nanos() as u64 } else { 0 };
            // SAFETY: a fence of this context, current; the flush makes it able to signal.
            let status = unsafe { self.gl.ClientWaitSync(sync, sys::SYNC_FLUSH_COMMANDS_BIT, timeout) };
            match status {
                sys::ALREADY_SIGNALED | sys::CONDITION_SATISFIED => {
                    // SAFETY: the fence and the memory object belong to this context; the work
                    // queued before the memory object was dropped has completed.
                    unsafe { self.gl.DeleteSync(sync) };
                    // SAFETY: as above; deleted once (it left the list).
                    unsafe { self.gl.DeleteMemoryObjectsEXT(1, &name) };
                    if let Err(e) = self.check("glDeleteMemoryObjectsEXT") {
                        log::error!("{e}");
                    }
                }
                sys::TIMEOUT_EXPIRED => {
                    if wait {
                        log::error!(
                            "GL memory object {name} is leaked: GL work queued before it was dropped \
                             is still running after {END_WAIT:?} (waiting for a semaphore nobody signals?)"
                        );
                    } else {
                        left.push((sync, name));
                    }
                }
                _ => {
                    // GL_WAIT_FAILED: the fence cannot tell; the memory object is kept (leaked
                    // at the context's end) rather than deleted under work that may still run.
                    log::error!(
                        "{}; GL memory object {name} is kept",
                        self.check("glClientWaitSync")
                            .err()
                            .map_or_else(|| "glClientWaitSync failed".to_owned(), |e| e.to_string())
                    );
                    if !wait {
                        left.push((sync, name));
                    }
                }
            }
        }
        let count = left.len();
        self.deferred.borrow_mut().extend(left);
        count
    }

    /// Reads `glGetError` and turns anything but `GL_NO_ERROR` into [`Error::Ffi`] naming `call`.
    pub fn check(&self, call: &'static str) -> Result<()> {
        // SAFETY: the context is current (callers called `current` first).
        let code = unsafe { self.gl.GetError() };
        match code {
            sys::NO_ERROR => Ok(()),
            code => Err(gl_error(call, code)),
        }
    }
}

/// An OpenGL context that imports lava-flow memory and semaphores.
///
/// Made headless for a lava-flow device ([`GlContext::headless`]) or around the caller's current
/// context ([`GlContext::from_current`]). Like every GL context it belongs to one thread: it is
/// neither `Send` nor `Sync`, and the objects it imports borrow it.
pub struct GlContext {
    pub(crate) shared: Rc<Shared>,
    /// One memory object per imported block, shared by the buffers in it.
    pub(crate) memories: RefCell<HashMap<crate::MemoryId, Weak<MemoryObject>>>,
}

impl std::fmt::Debug for GlContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlContext").field("info", &self.shared.info).finish_non_exhaustive()
    }
}

impl GlContext {
    /// Makes a headless OpenGL 4.5 core context on the GPU `device` is (matched by UUID): on the
    /// EGL device platform where there is one, else Mesa's surfaceless platform. The context is
    /// current on the calling thread when this returns.
    ///
    /// Errors: [`Error::LibraryNotFound`] without libEGL, [`Error::Unsupported`] when no EGL
    /// display gives a GL 4.5 context on a device with that UUID (the message lists what was
    /// found).
    pub fn headless(device: &DeviceInfo) -> Result<Self> {
        Self::headless_on(device.uuid, || {
            format!("device {} ({}, UUID {})", device.index, device.name, device.uuid)
        })
    }

    /// As [`headless`](GlContext::headless), for the GPU with this UUID — the device UUID in a
    /// [`MemoryDescriptor`](crate::MemoryDescriptor) received from another process, say. Loads
    /// only EGL and GL: no Vulkan.
    pub fn for_uuid(uuid: Uuid) -> Result<Self> {
        Self::headless_on(uuid, || format!("the device with UUID {uuid}"))
    }

    fn headless_on(uuid: Uuid, describe: impl FnOnce() -> String) -> Result<Self> {
        let egl = load_egl()?;
        let client = egl
            .query_string(None, khronos_egl::EXTENSIONS)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut candidates = Vec::new();
        if client.contains("EGL_EXT_platform_device") {
            candidates.extend(query_devices(&egl).into_iter().map(|d| (EglPlatform::Device, d)));
        }
        if client.contains("EGL_MESA_platform_surfaceless") {
            candidates.push((EglPlatform::Surfaceless, std::ptr::null_mut()));
        }
        let mut seen = Vec::new();
        for (platform, native) in candidates {
            let counted = client.contains("EGL_KHR_display_reference");
            match try_display(load_egl()?, platform, native, counted) {
                Ok(shared) if shared.info.device_uuids.contains(&uuid) => {
                    return Ok(GlContext { shared: Rc::new(shared), memories: RefCell::default() });
                }
                // Dropping `shared` destroys that context and display.
                Ok(shared) => seen.push(format!(
                    "{platform:?}: {} (device UUIDs {})",
                    shared.info.renderer,
                    shared.info.device_uuids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
                )),
                Err(e) => seen.push(format!("{platform:?}: {e}")),
            }
        }
        Err(Error::Unsupported {
            what: format!(
                "no EGL display gives an OpenGL 4.5 context on {}; tried: {}",
                describe(),
                if seen.is_empty() {
                    "no EGL device or surfaceless platform".into()
                } else {
                    seen.join("; ")
                }
            ),
        })
    }

    /// Wraps the context that is current on this thread (the caller's window, say), loading GL
    /// functions through `loader` (e.g. `eglGetProcAddress`, `glfwGetProcAddress`).
    ///
    /// lava-flow never makes it current nor destroys it: keep it current on this thread while
    /// the returned value and the objects imported through it are used and dropped.
    ///
    /// # Safety
    /// A GL context is current on the calling thread, and `loader` returns that context's
    /// functions (or null).
    pub unsafe fn from_current(mut loader: impl FnMut(&str) -> *const c_void) -> Result<Self> {
        let presence = GlPresence::enter();
        let gl = Gl::load_with(&mut loader);
        if !gl.GetString.is_loaded() || !gl.GetError.is_loaded() {
            return Err(Error::Unsupported { what: "the loader returned no glGetString/glGetError".into() });
        }
        // SAFETY: the caller's contract: a context is current.
        let info = unsafe { read_info(&gl, None) };
        let nv_timeline =
            if info.has_extension(NV_TIMELINE_SEMAPHORE) { sys::NvTimeline::load(loader) } else { None };
        Ok(GlContext {
            shared: Rc::new(Shared {
                gl,
                nv_timeline,
                info,
                deferred: RefCell::default(),
                read_staging: Default::default(),
                owned: None,
                _presence: presence,
            }),
            memories: RefCell::default(),
        })
    }

    /// What the context is and can do.
    pub fn info(&self) -> &GlInfo {
        &self.shared.info
    }

    /// Makes the context current on this thread (headless contexts only; a no-op for adopted
    /// ones). lava-flow does this itself before each of its calls; call it before your own GL
    /// calls if other contexts were made current meanwhile.
    pub fn make_current(&self) -> Result<()> {
        self.shared.current().map(|_| ())
    }

    /// The address of a GL or EGL function of a headless context (for `glow` or `gl` bindings of
    /// your own: `glow::Context::from_loader_function`); null if unknown, and always null for an
    /// adopted context, whose loader you already have.
    ///
    /// As with any GL loader, a non-null pointer does not prove the function exists (glvnd
    /// returns one for any `gl*` name): check [`GlInfo::has_extension`].
    pub fn proc_address(&self, name: &str) -> *const c_void {
        self.shared
            .owned
            .as_ref()
            .and_then(|o| o.egl.get_proc_address(name))
            .map_or(std::ptr::null(), |f| f as *const c_void)
    }

    /// Deletes the imported memory objects that were dropped while GL work that could use them
    /// was queued, and whose work has completed since; returns how many still wait (ADR 0014).
    /// lava-flow calls it on every import; call it where a program drops imports and then runs
    /// only its own GL for long. Never waits.
    pub fn reclaim(&self) -> Result<usize> {
        self.shared.current()?;
        Ok(self.shared.reclaim(false))
    }

    /// Calls `glFinish`: every GL command issued so far has completed when this returns.
    pub fn finish(&self) -> Result<()> {
        let gl = self.shared.current()?;
        // SAFETY: the context is current.
        unsafe { gl.Finish() };
        self.shared.check("glFinish")
    }

    /// Checks that memory of device `uuid` / driver `driver_uuid` can be imported here.
    pub(crate) fn check_device(&self, what: &'static str, uuid: Uuid, driver_uuid: Uuid) -> Result<()> {
        let info = &self.shared.info;
        // A GL context may span several devices (GL_NUM_DEVICE_UUIDS_EXT): any of them is ours.
        let expected = if info.device_uuids.contains(&uuid) {
            uuid
        } else {
            info.device_uuids.first().copied().unwrap_or_default()
        };
        crate::device::check_same_device(what, (expected, info.driver_uuid), (uuid, Some(driver_uuid)))
    }

    /// Fails with [`Error::Unsupported`] unless the context lists `extension`.
    pub(crate) fn require(&self, extension: &str, for_what: &str) -> Result<()> {
        if self.shared.info.has_extension(extension) {
            Ok(())
        } else {
            Err(Error::Unsupported {
                what: format!(
                    "{for_what} needs {extension}, which {} does not have",
                    self.shared.info.renderer
                ),
            })
        }
    }
}

fn load_egl() -> Result<Egl> {
    // SAFETY: loading the system's EGL library runs its initialisers; that is its purpose.
    #[cfg(unix)]
    let loaded = unsafe { Egl::load_required() };
    // SAFETY: as above. khronos-egl looks for `libEGL.so.1` by default, which Windows has not.
    #[cfg(windows)]
    let loaded = unsafe { Egl::load_required_from_filename(crate::external::Os::HOST.library(Api::Egl)) };
    loaded.map_err(|e| Error::LibraryNotFound {
        api: Api::Egl,
        library: crate::external::Os::HOST.library(Api::Egl),
        reason: e.to_string(),
    })
}

/// `eglQueryDevicesEXT`: the EGL devices, or none.
fn query_devices(egl: &Egl) -> Vec<*mut c_void> {
    type QueryDevices = unsafe extern "system" fn(i32, *mut *mut c_void, *mut i32) -> u32;
    let Some(f) = egl.get_proc_address("eglQueryDevicesEXT") else { return Vec::new() };
    // SAFETY: eglQueryDevicesEXT has this signature (EGL_EXT_device_enumeration), and the client
    // extension string listed the device platform.
    let query: QueryDevices = unsafe { std::mem::transmute::<extern "system" fn(), QueryDevices>(f) };
    let mut count = 0;
    // SAFETY: a count query with a null list.
    if unsafe { query(0, std::ptr::null_mut(), &mut count) } == 0 || count <= 0 {
        return Vec::new();
    }
    let mut devices = vec![std::ptr::null_mut(); count as usize];
    // SAFETY: `devices` has room for `count` entries.
    if unsafe { query(count, devices.as_mut_ptr(), &mut count) } == 0 {
        return Vec::new();
    }
    devices.truncate(count.max(0) as usize);
    devices
}

/// Makes a GL 4.5 core context on one EGL display, current on this thread, and reads what it is.
fn try_display(egl: Egl, platform: EglPlatform, native: *mut c_void, counted: bool) -> Result<Shared> {
    // Counted before the EGL context exists: no NVIDIA device is destroyed while it is made.
    let presence = GlPresence::enter();
    let kind = match platform {
        EglPlatform::Device => PLATFORM_DEVICE_EXT,
        EglPlatform::Surfaceless => PLATFORM_SURFACELESS_MESA,
    };
    let attribs: &[khronos_egl::Attrib] = if counted {
        &[TRACK_REFERENCES_KHR, khronos_egl::TRUE as khronos_egl::Attrib, khronos_egl::ATTRIB_NONE]
    } else {
        &[khronos_egl::ATTRIB_NONE]
    };
    // SAFETY: `native` is an EGLDeviceEXT from eglQueryDevicesEXT for the device platform, and
    // EGL_DEFAULT_DISPLAY (null) for the surfaceless one; the attribute list is terminated.
    let display = unsafe { egl.get_platform_display(kind, native, attribs) }
        .map_err(|e| egl_error("eglGetPlatformDisplay", e))?;
    let context = match make_context(&egl, display) {
        Ok(c) => c,
        Err(e) => {
            if counted {
                let _ = egl.terminate(display);
            }
            return Err(e);
        }
    };
    let owned = OwnedEgl { egl, display, context, terminate: counted };
    let loader =
        |name: &str| owned.egl.get_proc_address(name).map_or(std::ptr::null(), |f| f as *const c_void);
    let gl = Gl::load_with(loader);
    // SAFETY: the context was just made current on this thread.
    let mut info = unsafe { read_info(&gl, Some(platform)) };
    info.platform = Some(platform);
    let nv_timeline =
        if info.has_extension(NV_TIMELINE_SEMAPHORE) { sys::NvTimeline::load(loader) } else { None };
    Ok(Shared {
        gl,
        nv_timeline,
        info,
        deferred: RefCell::default(),
        read_staging: Default::default(),
        owned: Some(owned),
        _presence: presence,
    })
}

fn make_context(egl: &Egl, display: khronos_egl::Display) -> Result<khronos_egl::Context> {
    egl.initialize(display).map_err(|e| egl_error("eglInitialize", e))?;
    egl.bind_api(khronos_egl::OPENGL_API).map_err(|e| egl_error("eglBindAPI", e))?;
    let config = egl
        // No surface: a surface type of 0 requires none, so pbuffer-only and surfaceless configs match.
        .choose_first_config(
            display,
            &[
                khronos_egl::SURFACE_TYPE,
                0,
                khronos_egl::RENDERABLE_TYPE,
                khronos_egl::OPENGL_BIT,
                khronos_egl::NONE,
            ],
        )
        .map_err(|e| egl_error("eglChooseConfig", e))?
        .ok_or_else(|| Error::Unsupported { what: "no EGL config renders OpenGL".into() })?;
    let attribs = [
        khronos_egl::CONTEXT_MAJOR_VERSION,
        4,
        khronos_egl::CONTEXT_MINOR_VERSION,
        5,
        khronos_egl::CONTEXT_OPENGL_PROFILE_MASK,
        khronos_egl::CONTEXT_OPENGL_CORE_PROFILE_BIT,
        khronos_egl::NONE,
    ];
    let context =
        egl.create_context(display, config, None, &attribs).map_err(|e| egl_error("eglCreateContext", e))?;
    if let Err(e) = egl.make_current(display, None, None, Some(context)) {
        let _ = egl.destroy_context(display, context);
        return Err(egl_error("eglMakeCurrent", e));
    }
    Ok(context)
}

/// Reads the strings, extensions and UUIDs of the current context.
///
/// # Safety
/// The context `gl` was loaded from is current on this thread.
unsafe fn read_info(gl: &Gl, platform: Option<EglPlatform>) -> GlInfo {
    let string = |name| {
        // SAFETY: the caller's contract; glGetString returns a static string or null.
        let p = unsafe { gl.GetString(name) };
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null result is a NUL-terminated string owned by GL.
            unsafe { CStr::from_ptr(p.cast()) }.to_string_lossy().into_owned()
        }
    };
    let mut extensions = HashSet::new();
    let mut count = 0;
    // SAFETY: the caller's contract; `count` is a valid out-pointer.
    unsafe { gl.GetIntegerv(sys::NUM_EXTENSIONS, &mut count) };
    for i in 0..count.max(0) as u32 {
        // SAFETY: `i` is below GL_NUM_EXTENSIONS.
        let p = unsafe { gl.GetStringi(sys::EXTENSIONS, i) };
        if !p.is_null() {
            // SAFETY: as for glGetString.
            extensions.insert(unsafe { CStr::from_ptr(p.cast()) }.to_string_lossy().into_owned());
        }
    }
    let has_uuids = extensions.contains("GL_EXT_memory_object") || extensions.contains("GL_EXT_semaphore");
    let mut device_uuids = Vec::new();
    let mut driver_uuid = None;
    if has_uuids {
        let mut n = 0;
        // SAFETY: the extensions that define these queries are present.
        unsafe { gl.GetIntegerv(sys::NUM_DEVICE_UUIDS_EXT, &mut n) };
        for i in 0..n.max(0) as u32 {
            let mut uuid = [0u8; 16];
            // SAFETY: `uuid` holds GL_UUID_SIZE_EXT (16) bytes; `i` < GL_NUM_DEVICE_UUIDS_EXT.
            unsafe { gl.GetUnsignedBytei_vEXT(sys::DEVICE_UUID_EXT, i, uuid.as_mut_ptr()) };
            device_uuids.push(Uuid(uuid));
        }
        let mut uuid = [0u8; 16];
        // SAFETY: as above.
        unsafe { gl.GetUnsignedBytevEXT(sys::DRIVER_UUID_EXT, uuid.as_mut_ptr()) };
        driver_uuid = Some(Uuid(uuid));
    }
    let mut device_luid = None;
    if cfg!(windows) && extensions.contains("GL_EXT_memory_object_win32") {
        let mut luid = [0u8; 8];
        // SAFETY: GL_EXT_memory_object_win32 is present; `luid` holds GL_LUID_SIZE_EXT (8) bytes.
        unsafe { gl.GetUnsignedBytevEXT(sys::DEVICE_LUID_EXT, luid.as_mut_ptr()) };
        device_luid = Some(luid);
    }
    // Clear any error the queries left, so that the next checked call starts clean.
    // SAFETY: the caller's contract.
    while unsafe { gl.GetError() } != sys::NO_ERROR {}
    let renderer = string(sys::RENDERER);
    GlInfo {
        vendor: string(sys::VENDOR),
        ignores_memory_offset: renderer.starts_with("llvmpipe"),
        renderer,
        version: string(sys::VERSION),
        device_uuids,
        driver_uuid,
        device_luid,
        platform,
        extensions,
    }
}

/// [`Error::Ffi`] for an EGL failure.
pub(crate) fn egl_error(call: &'static str, e: khronos_egl::Error) -> Error {
    let name = format!("{e:?}");
    let mut screaming = String::from("EGL");
    for ch in name.chars() {
        if ch.is_ascii_uppercase() {
            screaming.push('_');
        }
        screaming.push(ch.to_ascii_uppercase());
    }
    Error::Ffi { api: Api::Egl, call, name: screaming, description: e.to_string() }
}

/// [`Error::Ffi`] for a GL error code.
pub(crate) fn gl_error(call: &'static str, code: sys::GLenum) -> Error {
    let (name, description) = match code {
        sys::INVALID_ENUM => ("GL_INVALID_ENUM", "an enum argument is out of range"),
        sys::INVALID_VALUE => ("GL_INVALID_VALUE", "a numeric argument is out of range"),
        sys::INVALID_OPERATION => {
            ("GL_INVALID_OPERATION", "the operation is not allowed in the current state")
        }
        sys::INVALID_FRAMEBUFFER_OPERATION => {
            ("GL_INVALID_FRAMEBUFFER_OPERATION", "the framebuffer is not complete")
        }
        sys::OUT_OF_MEMORY => ("GL_OUT_OF_MEMORY", "there is not enough memory left to execute the command"),
        sys::STACK_UNDERFLOW => ("GL_STACK_UNDERFLOW", "an internal stack would underflow"),
        sys::STACK_OVERFLOW => ("GL_STACK_OVERFLOW", "an internal stack would overflow"),
        _ => ("GL_UNKNOWN_ERROR", "an error code this build does not know"),
    };
    let name = if name == "GL_UNKNOWN_ERROR" { format!("{name} ({code:#x})") } else { name.to_owned() };
    Error::Ffi { api: Api::OpenGl, call, name, description: description.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context value whose GL functions are never called: enough for the checks that run
    /// before any GL call.
    fn fake(device_uuids: Vec<Uuid>, driver_uuid: Option<Uuid>, extensions: &[&str]) -> GlContext {
        let info = GlInfo {
            vendor: "test".into(),
            renderer: "fake renderer".into(),
            version: "4.5".into(),
            device_uuids,
            driver_uuid,
            device_luid: None,
            platform: None,
            ignores_memory_offset: false,
            extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
        };
        let gl = Gl::load_with(|_| std::ptr::null());
        GlContext {
            shared: Rc::new(Shared {
                gl,
                nv_timeline: None,
                info,
                deferred: RefCell::default(),
                read_staging: Default::default(),
                owned: None,
                _presence: GlPresence::enter(),
            }),
            memories: RefCell::default(),
        }
    }

    #[test]
    fn memory_of_another_device_is_refused_naming_both_uuids() {
        let ctx = fake(vec![Uuid([1; 16])], Some(Uuid([2; 16])), &[handle_extensions().memory]);
        ctx.check_device("x", Uuid([1; 16]), Uuid([2; 16])).expect("same device and driver");
        let e =
            ctx.check_device("the buffer's memory", Uuid([9; 16]), Uuid([2; 16])).expect_err("other device");
        let text = e.to_string();
        assert!(text.contains("01010101-0101") && text.contains("09090909-0909"), "{text}");
        let e = ctx.check_device("x", Uuid([1; 16]), Uuid([3; 16])).expect_err("other driver");
        assert!(e.to_string().contains("driver"), "{e}");
    }

    #[test]
    fn a_missing_extension_is_unsupported_and_named() {
        let ctx = fake(vec![Uuid([1; 16])], None, &[]);
        match ctx.require(handle_extensions().memory, "importing Vulkan memory") {
            Err(e @ Error::Unsupported { .. }) => {
                let platforms =
                    if cfg!(windows) { "GL_EXT_memory_object_win32" } else { "GL_EXT_memory_object_fd" };
                assert!(e.to_string().contains(platforms) && e.to_string().contains("fake renderer"), "{e}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn egl_and_gl_errors_are_named() {
        let e = egl_error("eglInitialize", khronos_egl::Error::BadDisplay);
        assert!(e.to_string().starts_with("EGL eglInitialize failed: EGL_BAD_DISPLAY ("), "{e}");
        let e = gl_error("glImportMemoryFdEXT", sys::INVALID_VALUE);
        assert_eq!(
            e.to_string(),
            "OpenGL glImportMemoryFdEXT failed: GL_INVALID_VALUE (a numeric argument is out of range)"
        );
    }
}
