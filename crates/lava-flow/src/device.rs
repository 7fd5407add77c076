//! Device identity: what each Vulkan device is, and how other APIs find the same device.
//!
//! [`MemoryAllocator::new`](crate::MemoryAllocator::new) enumerates the Vulkan physical devices
//! once. A `device_id` is an index into that list, which is sorted in a stable, documented
//! order: discrete GPUs first, then integrated, virtual, other, and CPU devices (such as Mesa's
//! lavapipe) last; devices of the same type are ordered by their UUID. The order therefore does
//! not depend on the order in which the Vulkan loader happens to list its drivers.
//!
//! Other APIs (CUDA, OpenCL, OpenGL) find "the same device" by [`DeviceInfo::uuid`] — and on
//! Windows by [`DeviceInfo::luid`] too, the only identity DXGI and D3D12 have — never by index or
//! name: their indices follow other rules. [`DeviceInfo::is`] is the one rule.

use std::fmt;

use crate::handle::HandleType;

/// A 16-byte device or driver UUID, as Vulkan, CUDA, OpenCL and OpenGL report it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    /// The usual 8-4-4-4-12 hex form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Uuid {
    type Err = crate::Error;

    /// Parses 32 hex digits, dashes anywhere between them ignored, with an optional `GPU-`
    /// prefix (how `nvidia-smi -L` and `CUDA_VISIBLE_DEVICES` write UUIDs): the
    /// [`Display`](fmt::Display) form and nvidia-smi's both parse.
    ///
    /// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the text.
    fn from_str(text: &str) -> crate::Result<Self> {
        let bad = |why: &str| crate::Error::InvalidArgument(format!("not a device UUID: {text:?} ({why})"));
        let hex: Vec<u8> = text
            .trim()
            .trim_start_matches("GPU-")
            .bytes()
            .filter(|&c| c != b'-')
            .map(|c| {
                char::from(c)
                    .to_digit(16)
                    .map(|d| d as u8)
                    .ok_or_else(|| bad("a character is not a hex digit"))
            })
            .collect::<crate::Result<_>>()?;
        if hex.len() != 32 {
            return Err(bad(&format!("{} hex digits, 32 expected", hex.len())));
        }
        let mut bytes = [0u8; 16];
        for (b, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *b = pair[0] << 4 | pair[1];
        }
        Ok(Uuid(bytes))
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// The kind of a physical device, in the order used for `device_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DeviceType {
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU integrated with the CPU.
    IntegratedGpu,
    /// A virtualised GPU.
    VirtualGpu,
    /// Anything else.
    Other,
    /// A software rasteriser running on the CPU (lavapipe, SwiftShader).
    Cpu,
}

/// One memory heap of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInfo {
    /// The heap's index in Vulkan's memory properties.
    pub index: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is device-local memory.
    pub device_local: bool,
}

/// What external handle types a device can export and import for one kind of object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalSupport {
    /// Handle types objects of this kind can be exported as.
    pub export: Vec<HandleType>,
    /// Handle types objects of this kind can be imported from.
    pub import: Vec<HandleType>,
    /// Handle types that work only with dedicated allocations.
    pub dedicated_only: Vec<HandleType>,
}

impl ExternalSupport {
    /// Whether `handle` can be exported.
    pub fn can_export(&self, handle: HandleType) -> bool {
        self.export.contains(&handle)
    }

    /// Whether `handle` can be imported.
    pub fn can_import(&self, handle: HandleType) -> bool {
        self.import.contains(&handle)
    }
}

/// Everything lava-flow knows about one Vulkan physical device.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The `device_id` of this device (its index in the sorted list).
    pub index: u32,
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The PCI vendor id (0x10de is NVIDIA; 0x10005 is Mesa).
    pub vendor_id: u32,
    /// The vendor's device id.
    pub pci_device_id: u32,
    /// The kind of device.
    pub device_type: DeviceType,
    /// The Vulkan version the device supports, as `(major, minor, patch)`.
    pub api_version: (u32, u32, u32),
    /// The driver's name (`VkPhysicalDeviceDriverProperties::driverName`).
    pub driver_name: String,
    /// The driver's version string (`driverInfo`).
    pub driver_info: String,
    /// The device UUID, equal to CUDA's, OpenCL's and OpenGL's for the same device.
    pub uuid: Uuid,
    /// The driver UUID: opaque handles can be shared only between the same device *and* driver.
    pub driver_uuid: Uuid,
    /// The Windows LUID, where the driver reports a valid one (never on Linux drivers in practice).
    pub luid: Option<[u8; 8]>,
    /// The memory heaps.
    pub heaps: Vec<HeapInfo>,
    /// External handle support for buffers (lava-flow's buffer usage flags).
    pub buffer_handles: ExternalSupport,
    /// External handle support for 2D RGBA8 optimal-tiling images.
    pub image_handles: ExternalSupport,
    /// External handle support for timeline semaphores.
    pub timeline_semaphore_handles: ExternalSupport,
    /// External handle support for binary semaphores.
    pub binary_semaphore_handles: ExternalSupport,
}

impl DeviceInfo {
    /// The spare bytes lava-flow keeps after a dedicated buffer inside its allocation on this
    /// device: [`DEDICATED_TAIL`](crate::DEDICATED_TAIL) on CPU devices (Mesa's lavapipe, whose
    /// memory llvmpipe's GL imports only with room to spare), 0 on GPUs. An importer that makes
    /// its own dedicated `VkBuffer` for such memory uses `size + dedicated_tail()`.
    ///
    /// Not on GPUs because it costs there: on an H100 a copy kernel ran at 0.91× the bandwidth
    /// of `cuMemAlloc` memory on an allocation of 256 MiB + 256 B, and at 1.00× on allocations
    /// of 256 MiB and of 256 MiB − 256 B (why the allocation just past 256 MiB is slower is not
    /// known).
    pub fn dedicated_tail(&self) -> u64 {
        if self.device_type == DeviceType::Cpu {
            crate::DEDICATED_TAIL
        } else {
            0
        }
    }

    /// Whether an object from a device with `uuid` and `driver_uuid` can be shared with this
    /// one through an opaque handle (both must match).
    pub fn matches(&self, uuid: Uuid, driver_uuid: Uuid) -> bool {
        self.uuid == uuid && self.driver_uuid == driver_uuid
    }
}

impl DeviceInfo {
    /// Checks that an object made on the device `uuid` with driver `driver_uuid` can be
    /// imported here; the error names the first UUID that differs.
    pub(crate) fn check_same_device(
        &self,
        what: &'static str,
        uuid: Uuid,
        driver_uuid: Uuid,
    ) -> crate::Result<()> {
        check_same_device(what, (self.uuid, Some(self.driver_uuid)), (uuid, Some(driver_uuid)))
    }

    /// [`Error::Unsupported`](crate::Error::Unsupported) for another API (`api`, e.g. "CUDA")
    /// that has no device with this device's UUID, listing the devices it does have (`none`
    /// where it has none).
    #[cfg_attr(not(any(feature = "cuda", feature = "opencl")), allow(dead_code))]
    pub(crate) fn no_device_in(&self, api: &str, found: &[String], none: &str) -> crate::Error {
        crate::Error::Unsupported {
            what: format!(
                "no {api} device has the UUID of device {} ({}, {}); {api} devices: {}",
                self.index,
                self.name,
                self.uuid,
                if found.is_empty() { none.to_owned() } else { found.join("; ") }
            ),
        }
    }
}

/// Finds the device with `uuid` in `devices` (the way other APIs are matched to Vulkan).
pub fn find_by_uuid(devices: &[DeviceInfo], uuid: Uuid) -> Option<&DeviceInfo> {
    find(devices, &Identity { uuid: Some(uuid), luid: None })
}

/// Finds the device with this Windows LUID in `devices`: the Vulkan device of a DXGI adapter or a
/// D3D12 device (`IDXGIAdapter::GetDesc().AdapterLuid`, `ID3D12Device::GetAdapterLuid`), which
/// know devices by LUID only. Never found on Linux, where drivers report no LUID.
pub fn find_by_luid(devices: &[DeviceInfo], luid: [u8; 8]) -> Option<&DeviceInfo> {
    find(devices, &Identity { uuid: None, luid: Some(luid) })
}

/// Finds the device `identity` describes in `devices` ([`DeviceInfo::is`]).
pub fn find<'a>(devices: &'a [DeviceInfo], identity: &Identity) -> Option<&'a DeviceInfo> {
    devices.iter().find(|d| d.is(identity))
}

/// How another API identifies one of its devices: the UUID (Vulkan, CUDA, OpenCL with
/// `cl_khr_device_uuid`, GL with `GL_EXT_memory_object`) and, on Windows, the LUID (DXGI and
/// D3D12 know only that one; CUDA `cuDeviceGetLuid`, OpenCL `CL_DEVICE_LUID_KHR`, GL
/// `GL_DEVICE_LUID_EXT` report it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    /// The device UUID, where the API reports one.
    pub uuid: Option<Uuid>,
    /// The Windows LUID, where the API reports a valid one.
    pub luid: Option<[u8; 8]>,
}

impl DeviceInfo {
    /// Whether `other` is this device: the UUIDs are equal where both sides report one, the
    /// LUIDs are equal where both report one, and at least one of the two was compared (an
    /// identity with neither matches nothing). The one rule by which other APIs' devices are
    /// matched to Vulkan's.
    pub fn is(&self, other: &Identity) -> bool {
        let uuid = other.uuid.map(|u| u == self.uuid);
        let luid = match (other.luid, self.luid) {
            (Some(theirs), Some(ours)) => Some(theirs == ours),
            _ => None,
        };
        match (uuid, luid) {
            (None, None) => false,
            (u, l) => u.unwrap_or(true) && l.unwrap_or(true),
        }
    }

    /// This device's identity, as other APIs compare it.
    pub fn identity(&self) -> Identity {
        Identity { uuid: Some(self.uuid), luid: self.luid }
    }
}

/// The one check every importer (Vulkan, CUDA, OpenCL, OpenGL) makes before it imports memory,
/// a semaphore or an image, or uses a stream or event of another context: the object was made on
/// `found` (its device UUID, and its driver UUID where known), the importer is `expected`.
/// Device UUIDs must be equal; driver UUIDs too where both sides know theirs (opaque handles are
/// shared only between the same device and driver). Otherwise [`Error::DeviceMismatch`] naming
/// both UUIDs — on a host with several GPUs, memory of GPU 0 offered to GPU 1 is this error,
/// never a mapping of the wrong memory.
///
/// [`Error::DeviceMismatch`]: crate::Error::DeviceMismatch
pub(crate) fn check_same_device(
    what: &'static str,
    expected: (Uuid, Option<Uuid>),
    found: (Uuid, Option<Uuid>),
) -> crate::Result<()> {
    if expected.0 != found.0 {
        return Err(crate::Error::DeviceMismatch { what, expected: expected.0, found: found.0 });
    }
    match (expected.1, found.1) {
        (Some(e), Some(f)) if e != f => {
            Err(crate::Error::DeviceMismatch { what: "the driver of that device", expected: e, found: f })
        }
        _ => Ok(()),
    }
}

/// Where another API's device list (CUDA ordinals, OpenCL devices across platforms, EGL
/// devices) has the Vulkan device `info`: the position of the first entry that
/// [`is`](DeviceInfo::is) it. The lists follow each API's own order, which is not Vulkan's; for
/// CUDA the position is the ordinal.
///
/// ```
/// use lava_flow::device::{position_in, Identity};
/// # fn f(vulkan: &[lava_flow::DeviceInfo], cuda: &[Identity]) {
/// // The CUDA ordinal of Vulkan device 1, whatever the two orders are.
/// let ordinal = position_in(&vulkan[1], cuda);
/// # }
/// ```
pub fn position_in(info: &DeviceInfo, others: &[Identity]) -> Option<usize> {
    others.iter().position(|o| info.is(o))
}

/// The Vulkan device that is entry `index` of another API's device list (e.g. the Vulkan device
/// of CUDA ordinal `index`), matched by [`DeviceInfo::is`].
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an index past the list
/// (`api` names it, e.g. "CUDA"); [`Error::Unsupported`](crate::Error::Unsupported) when no
/// Vulkan device has that identity (the message names it and lists the Vulkan devices).
pub fn vulkan_device_of<'a>(
    devices: &'a [DeviceInfo],
    api: &str,
    others: &[Identity],
    index: usize,
) -> crate::Result<&'a DeviceInfo> {
    let identity = others.get(index).ok_or_else(|| {
        crate::Error::InvalidArgument(format!(
            "no {api} device {index}: {} {api} device(s) found",
            others.len()
        ))
    })?;
    find(devices, identity).ok_or_else(|| {
        let listed: Vec<String> =
            devices.iter().map(|d| format!("{} {} {}", d.index, d.name, d.uuid)).collect();
        crate::Error::Unsupported {
            what: format!(
                "{api} device {index} ({}) has no Vulkan device; Vulkan devices: {}",
                identity.describe(),
                if listed.is_empty() { "none".to_owned() } else { listed.join("; ") }
            ),
        }
    })
}

impl Identity {
    /// The identity as text: `UUID …`, `LUID …`, both, or `no UUID or LUID`.
    pub fn describe(&self) -> String {
        let luid = self.luid.map(|l| l.iter().map(|b| format!("{b:02x}")).collect::<String>());
        match (self.uuid, luid) {
            (Some(u), Some(l)) => format!("UUID {u}, LUID {l}"),
            (Some(u), None) => format!("UUID {u}"),
            (None, Some(l)) => format!("LUID {l}"),
            (None, None) => "no UUID or LUID".to_owned(),
        }
    }
}

/// Sort key that gives `device_id` its documented order.
pub(crate) fn order_key(device_type: DeviceType, uuid: Uuid) -> (DeviceType, Uuid) {
    (device_type, uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_prints_in_canonical_form() {
        let u = Uuid([0x6d, 0x65, 0x73, 0x61, 0x32, 0x32, 0x2e, 0x33, 0x2e, 0x36, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(u.to_string(), "6d657361-3232-2e33-2e36-0000000000ff");
    }

    #[test]
    fn uuids_parse_from_their_printed_form_and_nvidia_smis() {
        let u = Uuid([0x6d, 0x65, 0x73, 0x61, 0x32, 0x32, 0x2e, 0x33, 0x2e, 0x36, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!("6d657361-3232-2e33-2e36-0000000000ff".parse::<Uuid>().expect("printed form"), u);
        assert_eq!("GPU-6D657361-3232-2E33-2E36-0000000000FF".parse::<Uuid>().expect("nvidia-smi"), u);
        assert_eq!("6d65736132322e332e360000000000ff".parse::<Uuid>().expect("no dashes"), u);
        for (bad, why) in [
            ("6d657361", "8 hex digits, 32 expected"),
            ("zz657361-3232-2e33-2e36-0000000000ff", "not a hex digit"),
        ] {
            match bad.parse::<Uuid>() {
                Err(crate::Error::InvalidArgument(m)) => assert!(m.contains(why) && m.contains(bad), "{m}"),
                other => panic!("{bad}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    fn device(uuid: u8, luid: Option<u8>) -> DeviceInfo {
        DeviceInfo {
            index: 0,
            name: String::new(),
            vendor_id: 0,
            pci_device_id: 0,
            device_type: DeviceType::DiscreteGpu,
            api_version: (1, 3, 0),
            driver_name: String::new(),
            driver_info: String::new(),
            uuid: Uuid([uuid; 16]),
            driver_uuid: Uuid([0; 16]),
            luid: luid.map(|l| [l; 8]),
            heaps: Vec::new(),
            buffer_handles: ExternalSupport::default(),
            image_handles: ExternalSupport::default(),
            timeline_semaphore_handles: ExternalSupport::default(),
            binary_semaphore_handles: ExternalSupport::default(),
        }
    }

    /// Windows: two GPUs, each with a UUID and a LUID. A DXGI adapter (LUID only) finds its
    /// device; a CUDA or OpenCL device (both) must agree on both; Linux (UUID only) as before.
    #[test]
    fn devices_match_by_uuid_and_by_luid_where_both_sides_have_one() {
        let devices = [device(1, Some(0x11)), device(2, Some(0x22)), device(3, None)];
        let by = |uuid: Option<u8>, luid: Option<u8>| {
            find(&devices, &Identity { uuid: uuid.map(|u| Uuid([u; 16])), luid: luid.map(|l| [l; 8]) })
                .map(|d| d.uuid.0[0])
        };
        assert_eq!(by(None, Some(0x22)), Some(2), "a DXGI adapter by LUID");
        assert_eq!(find_by_luid(&devices, [0x11; 8]).map(|d| d.uuid.0[0]), Some(1));
        assert_eq!(by(Some(2), Some(0x22)), Some(2), "both agree");
        assert_eq!(by(Some(2), Some(0x11)), None, "the UUID of one GPU and the LUID of the other");
        assert_eq!(by(Some(3), Some(0x33)), Some(3), "no LUID on the Vulkan side: the UUID decides");
        assert_eq!(by(None, Some(0x33)), None, "a LUID no device has");
        assert_eq!(by(None, None), None, "nothing to compare matches nothing");
        assert_eq!(find_by_uuid(&devices, Uuid([1; 16])).map(|d| d.index), Some(0));
        assert!(devices[1].is(&devices[1].identity()));
    }

    /// Two GPUs whose orders differ: Vulkan lists A then B, CUDA lists B then A, OpenCL lists a
    /// CPU device without a UUID (PoCL) first, then A, then B. Every selection goes by UUID.
    #[test]
    fn devices_are_selected_by_uuid_when_the_apis_orders_differ() {
        let mut a = device(0xA, None);
        let mut b = device(0xB, None);
        a.index = 0;
        b.index = 1;
        let vulkan = [a.clone(), b.clone()];
        let cuda = [b.identity(), a.identity()];
        let opencl = [Identity::default(), a.identity(), b.identity()];
        // Vulkan device -> CUDA ordinal, OpenCL device.
        assert_eq!(position_in(&vulkan[0], &cuda), Some(1), "Vulkan 0 is cuda:1");
        assert_eq!(position_in(&vulkan[1], &cuda), Some(0), "Vulkan 1 is cuda:0");
        assert_eq!(position_in(&vulkan[0], &opencl), Some(1));
        assert_eq!(position_in(&vulkan[1], &opencl), Some(2));
        // CUDA ordinal -> Vulkan device.
        let of = |i| vulkan_device_of(&vulkan, "CUDA", &cuda, i).map(|d| d.index);
        assert_eq!(of(0).expect("cuda:0"), 1);
        assert_eq!(of(1).expect("cuda:1"), 0);
        match of(2) {
            Err(crate::Error::InvalidArgument(m)) => {
                assert_eq!(m, "no CUDA device 2: 2 CUDA device(s) found")
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        // An OpenCL device with no UUID (PoCL) is no Vulkan device; the message says why.
        match vulkan_device_of(&vulkan, "OpenCL", &opencl, 0) {
            Err(crate::Error::Unsupported { what }) => {
                assert!(what.starts_with("OpenCL device 0 (no UUID or LUID) has no Vulkan device"), "{what}");
                assert!(what.contains("0a0a0a0a-0a0a") && what.contains("0b0b0b0b-0b0b"), "{what}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // A third GPU only CUDA sees (e.g. hidden from Vulkan) is named by its UUID.
        let c = device(0xC, None);
        let cuda3 = [b.identity(), c.identity(), a.identity()];
        assert_eq!(vulkan_device_of(&vulkan, "CUDA", &cuda3, 2).map(|d| d.index).expect("cuda:2"), 0);
        let e = vulkan_device_of(&vulkan, "CUDA", &cuda3, 1).expect_err("cuda:1 has no Vulkan device");
        assert!(e.to_string().contains("UUID 0c0c0c0c-0c0c-0c0c-0c0c-0c0c0c0c0c0c"), "{e}");
        // No list entry for a device: None, never a neighbour's index.
        assert_eq!(position_in(&c, &cuda), None);
    }

    /// Memory, semaphores and images of GPU A offered to GPU B: one typed error naming both
    /// UUIDs; the driver UUID compared only where both sides know it.
    #[test]
    fn objects_of_another_gpu_are_refused_naming_both_uuids() {
        let (a, b, drv, other_drv) = (Uuid([0xA; 16]), Uuid([0xB; 16]), Uuid([1; 16]), Uuid([2; 16]));
        check_same_device("x", (a, Some(drv)), (a, Some(drv))).expect("same device and driver");
        check_same_device("x", (a, None), (a, Some(other_drv))).expect("driver unknown on one side");
        match check_same_device("the memory", (b, None), (a, Some(drv))) {
            Err(crate::Error::DeviceMismatch { what, expected, found }) => {
                assert_eq!((what, expected, found), ("the memory", b, a));
            }
            other => panic!("expected DeviceMismatch, got {other:?}"),
        }
        let text = check_same_device("the memory", (b, None), (a, None)).expect_err("other GPU").to_string();
        assert_eq!(
            text,
            "device mismatch: the memory belongs to device 0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a, \
             expected device 0b0b0b0b-0b0b-0b0b-0b0b-0b0b0b0b0b0b"
        );
        let e = check_same_device("x", (a, Some(drv)), (a, Some(other_drv))).expect_err("other driver");
        assert!(e.to_string().contains("the driver of that device"), "{e}");
        let info = device(0xA, None);
        info.check_same_device("the image", a, Uuid([0; 16])).expect("DeviceInfo: same");
        info.check_same_device("the image", b, Uuid([0; 16])).expect_err("DeviceInfo: other GPU");
    }

    #[test]
    fn discrete_gpus_sort_before_cpus() {
        let mut keys = [
            order_key(DeviceType::Cpu, Uuid([0; 16])),
            order_key(DeviceType::DiscreteGpu, Uuid([9; 16])),
            order_key(DeviceType::DiscreteGpu, Uuid([1; 16])),
        ];
        keys.sort();
        assert_eq!(keys[0], (DeviceType::DiscreteGpu, Uuid([1; 16])));
        assert_eq!(keys[2].0, DeviceType::Cpu);
    }
}
