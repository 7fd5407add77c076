//! `lava-flow info`: the capability matrix.

use lava_flow::{DeviceInfo, HandleType, MemoryAllocator};
use serde::Serialize;

/// Everything `info` reports.
#[derive(Serialize)]
struct Report {
    lava_flow_version: &'static str,
    devices: Vec<DeviceReport>,
    /// Which ordered pairs of GPUs can access each other's memory (CUDA peer access).
    peer_access: PeerReport,
}

/// CUDA peer access between the GPUs, or why it is not known.
#[derive(Serialize)]
struct PeerReport {
    /// Whether the pairs could be asked (CUDA present).
    available: bool,
    /// Why not, or how many pairs there are.
    detail: String,
    pairs: Vec<PeerPair>,
}

/// One ordered pair: can `from` access `to`'s memory (`cuDeviceCanAccessPeer`)?
#[derive(Serialize)]
struct PeerPair {
    from_cuda: i32,
    to_cuda: i32,
    /// lava-flow's `device_id`s of the two GPUs (by UUID), where Vulkan has them.
    from_device_id: Option<u32>,
    to_device_id: Option<u32>,
    possible: bool,
}

#[derive(Serialize)]
struct DeviceReport {
    device_id: u32,
    name: String,
    device_type: String,
    uuid: String,
    driver_uuid: String,
    driver: String,
    vulkan: ApiReport,
    cuda: ApiReport,
    opengl: ApiReport,
    opencl: ApiReport,
}

/// One API on one device: present or why not, and what it can do.
#[derive(Serialize)]
struct ApiReport {
    available: bool,
    /// What was found (driver, renderer, CUDA device), or why the API is not usable.
    detail: String,
    /// Capabilities as `object: handle types` lines.
    capabilities: Vec<String>,
}

impl ApiReport {
    fn missing(why: impl Into<String>) -> Self {
        ApiReport { available: false, detail: why.into(), capabilities: Vec::new() }
    }
}

pub fn run(json: bool) -> lava_flow::Result<()> {
    let allocator = MemoryAllocator::new()?;
    let cuda = cuda_devices();
    let devices = allocator.devices().iter().map(|d| device_report(d, &cuda)).collect();
    let peer_access = peer_report(&allocator, &cuda);
    let report = Report { lava_flow_version: env!("CARGO_PKG_VERSION"), devices, peer_access };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        );
    } else {
        print_text(&report);
    }
    Ok(())
}

/// A CUDA device as `info` needs it: ordinal, name, UUID.
struct CudaDevice {
    ordinal: i32,
    name: String,
    uuid: [u8; 16],
}

/// The CUDA devices, or why there are none.
type CudaDevices = Result<Vec<CudaDevice>, String>;

fn handles(list: &[HandleType]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ")
    }
}

fn device_report(d: &DeviceInfo, cuda: &CudaDevices) -> DeviceReport {
    let vulkan = ApiReport {
        available: true,
        detail: format!(
            "Vulkan {}.{}.{}, {} {}",
            d.api_version.0, d.api_version.1, d.api_version.2, d.driver_name, d.driver_info
        ),
        capabilities: [
            ("buffers", &d.buffer_handles),
            ("images", &d.image_handles),
            ("timeline semaphores", &d.timeline_semaphore_handles),
            ("binary semaphores", &d.binary_semaphore_handles),
        ]
        .into_iter()
        .map(|(what, h)| format!("{what}: export {}; import {}", handles(&h.export), handles(&h.import)))
        .collect(),
    };
    let cuda = match cuda {
        Err(why) => ApiReport::missing(why.clone()),
        Ok(list) => match list.iter().find(|c| c.uuid == d.uuid.0) {
            Some(c) => ApiReport {
                available: true,
                detail: format!("CUDA device {} ({}), same UUID", c.ordinal, c.name),
                capabilities: vec![
                    "buffers: import OpaqueFd (one import and mapping per block)".into(),
                    "timeline semaphores: import OpaqueFd (TIMELINE_SEMAPHORE_FD)".into(),
                ],
            },
            None => {
                ApiReport::missing(format!("no CUDA device has this UUID ({} CUDA device(s))", list.len()))
            }
        },
    };
    DeviceReport {
        device_id: d.index,
        name: d.name.clone(),
        device_type: format!("{:?}", d.device_type),
        uuid: d.uuid.to_string(),
        driver_uuid: d.driver_uuid.to_string(),
        driver: format!("{} {}", d.driver_name, d.driver_info),
        vulkan,
        cuda,
        opengl: opengl_report(d),
        opencl: opencl_report(d),
    }
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> CudaDevices {
    lava_flow::cuda::devices()
        .map(|list| {
            list.into_iter()
                .map(|d| CudaDevice { ordinal: d.ordinal, name: d.name, uuid: d.uuid.0 })
                .collect()
        })
        .map_err(|e| e.to_string())
}

#[cfg(feature = "cuda")]
fn peer_report(allocator: &MemoryAllocator, cuda: &CudaDevices) -> PeerReport {
    let cuda = match cuda {
        Ok(list) => list,
        Err(e) => return PeerReport { available: false, detail: e.clone(), pairs: Vec::new() },
    };
    let device_id = |ordinal: i32| {
        let uuid = cuda.iter().find(|c| c.ordinal == ordinal)?.uuid;
        lava_flow::device::find_by_uuid(&allocator.devices(), lava_flow::Uuid(uuid)).map(|d| d.index)
    };
    match lava_flow::cuda::peer_access() {
        Ok(list) => PeerReport {
            available: true,
            detail: if list.is_empty() {
                format!("{} CUDA device(s): no pairs", cuda.len())
            } else {
                format!("{} ordered pairs of CUDA devices", list.len())
            },
            pairs: list
                .into_iter()
                .map(|p| PeerPair {
                    from_cuda: p.from,
                    to_cuda: p.to,
                    from_device_id: device_id(p.from),
                    to_device_id: device_id(p.to),
                    possible: p.possible,
                })
                .collect(),
        },
        Err(e) => PeerReport { available: false, detail: e.to_string(), pairs: Vec::new() },
    }
}

#[cfg(not(feature = "cuda"))]
fn peer_report(_: &MemoryAllocator, cuda: &CudaDevices) -> PeerReport {
    PeerReport {
        available: false,
        detail: cuda.as_ref().err().cloned().unwrap_or_default(),
        pairs: Vec::new(),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> CudaDevices {
    Err("this build of lava-flow has no CUDA support (feature `cuda`)".into())
}

#[cfg(feature = "opencl")]
fn opencl_report(d: &DeviceInfo) -> ApiReport {
    use lava_flow::opencl;
    let devices = match opencl::devices() {
        Ok(list) => list,
        Err(e) => return ApiReport::missing(e.to_string()),
    };
    match devices.iter().find(|c| c.uuid == Some(d.uuid)) {
        None => ApiReport::missing(format!(
            "no OpenCL device has this UUID ({} OpenCL device(s): {})",
            devices.len(),
            devices.iter().map(|c| format!("{} on {}", c.name, c.platform)).collect::<Vec<_>>().join(", ")
        )),
        Some(c) => {
            let has = |e: &str| if c.has_extension(e) { "yes" } else { "no" };
            ApiReport {
                available: c.has_extension(opencl::EXTERNAL_MEMORY_OPAQUE_FD),
                detail: format!("{} on {}, same UUID", c.name, c.platform),
                capabilities: vec![
                    format!(
                        "{}: {}",
                        opencl::EXTERNAL_MEMORY_OPAQUE_FD,
                        has(opencl::EXTERNAL_MEMORY_OPAQUE_FD)
                    ),
                    format!(
                        "{}: {}",
                        opencl::EXTERNAL_SEMAPHORE_OPAQUE_FD,
                        has(opencl::EXTERNAL_SEMAPHORE_OPAQUE_FD)
                    ),
                    "lava-flow imports: buffers (whole allocation, sub-buffer where aligned), 2-D images of one level, binary semaphores".into(),
                ],
            }
        }
    }
}

#[cfg(not(feature = "opencl"))]
fn opencl_report(_: &DeviceInfo) -> ApiReport {
    ApiReport::missing("this build of lava-flow has no OpenCL support (feature `opencl`)")
}

#[cfg(feature = "opengl")]
fn opengl_report(d: &DeviceInfo) -> ApiReport {
    use lava_flow::opengl::GlContext;
    match GlContext::headless(d) {
        Err(e) => ApiReport::missing(e.to_string()),
        Ok(gl) => {
            let info = gl.info();
            let has = |e: &str| if info.has_extension(e) { "yes" } else { "no" };
            ApiReport {
                available: true,
                detail: format!(
                    "{} / {} / {}{}",
                    info.vendor,
                    info.renderer,
                    info.version,
                    info.platform.map(|p| format!(" (EGL {p:?} platform)")).unwrap_or_default()
                ),
                capabilities: vec![
                    format!("buffers and textures: import OpaqueFd: {}", has("GL_EXT_memory_object_fd")),
                    format!(
                        "semaphores: GL_EXT_semaphore_fd {}, GL_NV_timeline_semaphore {}{}",
                        has("GL_EXT_semaphore_fd"),
                        has("GL_NV_timeline_semaphore"),
                        if info.has_extension("GL_NV_timeline_semaphore") {
                            ""
                        } else {
                            " (host fallback: glFinish + host signal)"
                        }
                    ),
                    format!(
                        "buffer offsets: {}",
                        if info.ignores_memory_offset {
                            "ignored by the driver; lava-flow binds whole blocks and hands out ranges"
                        } else {
                            "honoured"
                        }
                    ),
                ],
            }
        }
    }
}

#[cfg(not(feature = "opengl"))]
fn opengl_report(_: &DeviceInfo) -> ApiReport {
    ApiReport::missing("this build of lava-flow has no OpenGL support (feature `opengl`)")
}

fn print_text(report: &Report) {
    println!("lava-flow {}", report.lava_flow_version);
    if report.devices.is_empty() {
        println!("no Vulkan device (Vulkan 1.2 or newer) was found");
    }
    for d in &report.devices {
        println!();
        println!("device {}: {} ({})", d.device_id, d.name, d.device_type);
        println!("  UUID {}  driver UUID {}", d.uuid, d.driver_uuid);
        for (api, r) in
            [("Vulkan", &d.vulkan), ("CUDA", &d.cuda), ("OpenGL", &d.opengl), ("OpenCL", &d.opencl)]
        {
            println!("  {api:<7} {} {}", if r.available { "yes" } else { "no " }, r.detail);
            for c in &r.capabilities {
                println!("          {c}");
            }
        }
    }
    let p = &report.peer_access;
    println!();
    println!("peer access between GPUs (CUDA): {}", p.detail);
    let device = |id: Option<u32>| id.map_or("no Vulkan device".to_owned(), |i| format!("device {i}"));
    for pair in &p.pairs {
        println!(
            "  cuda:{} ({}) -> cuda:{} ({}): {}",
            pair.from_cuda,
            device(pair.from_device_id),
            pair.to_cuda,
            device(pair.to_device_id),
            if pair.possible { "yes" } else { "no (copies are staged through host memory)" }
        );
    }
}
