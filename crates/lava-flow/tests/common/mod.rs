//! Helpers shared by the CPU-tier tests: validated allocators, random data, fd counts.
#![allow(dead_code)]

pub mod ring;

use lava_flow::{AllocatorOptions, MemoryAllocator, ValidationLog};
use rand::RngCore;

/// Whether this is the GPU tier (`LAVA_FLOW_REQUIRE_GPU=1`), where a test that would skip for
/// missing hardware or drivers fails instead.
pub fn require_gpu() -> bool {
    std::env::var("LAVA_FLOW_REQUIRE_GPU").is_ok_and(|x| x == "1")
}

/// The value of `made`, or `None` with the reason printed where `what` is missing; on the GPU
/// tier a missing `what` fails the test.
pub fn or_skip<T>(made: lava_flow::Result<T>, test: &str, what: &str) -> Option<T> {
    match made {
        Ok(t) => Some(t),
        Err(e) if require_gpu() => panic!("{test}: the GPU tier needs {what}: {e}"),
        Err(e) => {
            println!("{test}: skipped, no {what}: {e}");
            None
        }
    }
}

/// Small blocks, so that tests cross block boundaries and exercise the block policy.
pub const TEST_BLOCK_SIZE: u64 = 4 << 20;

/// An allocator with the Khronos validation layer on. When it is dropped (after the buffers
/// and semaphores a test made, which are declared after it), the allocator and its devices are
/// destroyed first and then the log is checked: any warning or error the layer reported, leaked
/// objects at device destruction included, fails the test.
pub struct Validated {
    allocator: Option<MemoryAllocator>,
    log: ValidationLog,
}

impl Validated {
    pub fn new() -> Self {
        Self::with_block_size(TEST_BLOCK_SIZE)
    }

    pub fn with_block_size(block_size: u64) -> Self {
        Self::with_options(|o| {
            o.block_size = block_size;
            o.dedicated_threshold = block_size / 2;
        })
    }

    /// Validation on, the test block size, then `adjust`.
    pub fn with_options(adjust: impl FnOnce(&mut AllocatorOptions)) -> Self {
        let mut options = AllocatorOptions::default();
        // Validation on, except where no build of the layer exists for the test binary: the
        // Windows tests under Wine (`.ci/run` sets this; the layer is a Linux one here).
        let validation = std::env::var_os("LAVA_FLOW_TEST_NO_VALIDATION_LAYER").is_none();
        options.validation = validation;
        options.block_size = TEST_BLOCK_SIZE;
        options.dedicated_threshold = TEST_BLOCK_SIZE / 2;
        adjust(&mut options);
        let allocator = MemoryAllocator::with_options(options).unwrap_or_else(|e| {
            panic!("the CPU tier needs Vulkan (Mesa lavapipe) and the validation layer: {e}")
        });
        let log = if validation {
            allocator.validation_log().expect("validation was requested")
        } else {
            ValidationLog::default()
        };
        Validated { allocator: Some(allocator), log }
    }
}

impl std::ops::Deref for Validated {
    type Target = MemoryAllocator;
    fn deref(&self) -> &MemoryAllocator {
        self.allocator.as_ref().expect("alive until dropped")
    }
}

impl std::ops::DerefMut for Validated {
    fn deref_mut(&mut self) -> &mut MemoryAllocator {
        self.allocator.as_mut().expect("alive until dropped")
    }
}

impl Drop for Validated {
    fn drop(&mut self) {
        drop(self.allocator.take());
        if !std::thread::panicking() {
            let messages = self.log.take();
            assert!(messages.is_empty(), "validation messages:\n{}", messages.join("\n"));
        }
    }
}

/// Takes `log`'s messages and fails on any but one: a known bug of the Debian 12 layer (1.3.239),
/// fixed upstream later. Reading the counter of an exported timeline (one another device or API
/// may move) records the value read as a signal, which stays "pending" when it is no higher than
/// the last value the layer saw (the initial 0, say), so the next host signal, lava-flow's own
/// included (it reads the counter first), is reported as VUID-VkSemaphoreSignalInfo-value-03259
/// (Vulkan-ValidationLayers issue 8212, PR 8396). Queue signals are not affected: tests that can
/// signal through a queue do that instead; this is for those that share a timeline between two
/// devices.
pub fn tolerate_orphaned_pending_signal(log: &ValidationLog) {
    let rest: Vec<String> =
        log.take().into_iter().filter(|m| !m.contains("VUID-VkSemaphoreSignalInfo-value-03259")).collect();
    assert!(rest.is_empty(), "validation messages:\n{}", rest.join("\n"));
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A destination filled with a byte the data is checked not to be entirely made of.
pub fn poisoned(len: usize) -> Vec<u8> {
    vec![0xA5; len]
}

/// Compares every byte and reports the first difference.
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}: got {:#04x}, want {:#04x}", got[i], want[i]);
    }
}

/// The UUID of a physical device of a caller's instance (`VkPhysicalDeviceIDProperties`).
pub fn physical_uuid(
    instance: &lava_flow::ash::Instance,
    physical: lava_flow::ash::vk::PhysicalDevice,
) -> [u8; 16] {
    let mut id = lava_flow::ash::vk::PhysicalDeviceIDProperties::default();
    let mut props = lava_flow::ash::vk::PhysicalDeviceProperties2::default().push_next(&mut id);
    // SAFETY: a physical device of this live instance (Vulkan 1.1+); `props` chains live locals.
    unsafe { instance.get_physical_device_properties2(physical, &mut props) };
    id.device_uuid
}

/// The physical device of a caller's instance that is lava-flow's device 0 (by UUID: with
/// several GPUs, the caller's first device need not be lava-flow's first).
pub fn physical_of_device0(instance: &lava_flow::ash::Instance) -> lava_flow::ash::vk::PhysicalDevice {
    let want = MemoryAllocator::new().expect("lava-flow").device(0).expect("device 0").uuid.0;
    // SAFETY: a live instance.
    let all = unsafe { instance.enumerate_physical_devices() }.expect("physical devices");
    all.into_iter()
        .find(|&p| physical_uuid(instance, p) == want)
        .expect("lava-flow's device 0 among the caller's")
}

/// What each open file descriptor of this process points at (for messages when counts differ).
#[allow(dead_code, reason = "not every test binary lists fds")]
pub fn fd_targets() -> std::collections::BTreeMap<u32, String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default()))
        })
        .collect()
}

/// Asserts that the fds open now are those of `baseline` (from [`fd_targets`]), after `what`.
/// NVIDIA's driver opens its device files (`/dev/nvidia*`) itself when it needs another channel
/// and keeps them for the process, so up to two new ones of those are the driver's, not a leak;
/// an exported or imported NVIDIA handle is such an fd too, so a leak per object still shows as
/// many. Every other fd must be back exactly.
#[allow(dead_code, reason = "not every test binary lists fds")]
pub fn assert_fds_back(baseline: &std::collections::BTreeMap<u32, String>, what: &str) {
    let now = fd_targets();
    let driver = |t: &String| t.starts_with("/dev/nvidia");
    let new: Vec<_> = now.iter().filter(|(fd, t)| baseline.get(fd) != Some(t)).collect();
    let gone: Vec<_> = baseline.iter().filter(|(fd, t)| now.get(fd) != Some(t)).collect();
    let driver_new = new.iter().filter(|(_, t)| driver(t)).count();
    assert!(
        new.iter().all(|(_, t)| driver(t)) && driver_new <= 2 && gone.iter().all(|(_, t)| driver(t)),
        "{what}: fds not back to the baseline ({} before, {} now); new: {new:?}; gone: {gone:?}",
        baseline.len(),
        now.len()
    );
}

/// The number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// Random texels for `format`: any bytes for integer and normalised formats; for float formats,
/// finite values of random mantissa (so that no NaN payload or denormal can be canonicalised
/// on the way and every byte can be compared).
pub fn texel_data(format: lava_flow::ImageFormat, len: usize) -> Vec<u8> {
    use lava_flow::ImageFormat as F;
    let mut v = random_bytes(len);
    match format {
        F::R16Float | F::Rgba16Float => {
            for h in v.chunks_exact_mut(2) {
                let bits = (u16::from_le_bytes([h[0], h[1]]) & 0x83FF) | (15 << 10);
                h.copy_from_slice(&bits.to_le_bytes());
            }
        }
        F::R32Float | F::Rgba32Float => {
            for f in v.chunks_exact_mut(4) {
                let bits = (u32::from_le_bytes([f[0], f[1], f[2], f[3]]) & 0x807F_FFFF) | (127 << 23);
                f.copy_from_slice(&bits.to_le_bytes());
            }
        }
        _ => {}
    }
    v
}

/// Two recorded command buffers on an allocator's device 0: the first writes `pattern` over all
/// of `src`, the second copies `src` into `dst`; each ends with a barrier that makes its writes
/// visible to later work. Drop it only after the work has completed.
pub struct FillThenCopy(Recorded);

impl FillThenCopy {
    pub fn record(
        allocator: &MemoryAllocator,
        src: &lava_flow::Buffer,
        dst: &lava_flow::Buffer,
        pattern: u32,
    ) -> Self {
        use lava_flow::ash::vk;
        let size = src.size();
        FillThenCopy(Recorded::new(allocator, 2, |i, device, cmd| {
            if i == 0 {
                // SAFETY: recording a command buffer of this device; the buffers outlive the
                // work (the caller waits for it before dropping anything).
                unsafe { device.cmd_fill_buffer(cmd, src.vk_buffer(), 0, size, pattern) };
            } else {
                let region = vk::BufferCopy { src_offset: 0, dst_offset: 0, size };
                // SAFETY: as above.
                unsafe { device.cmd_copy_buffer(cmd, src.vk_buffer(), dst.vk_buffer(), &[region]) };
            }
        }))
    }

    /// Submissions of the fill and of the copy, to add waits and signals to.
    pub fn submissions(&self) -> (lava_flow::Submission<'static>, lava_flow::Submission<'static>) {
        (self.0.with(0, lava_flow::Submission::new()), self.0.with(1, lava_flow::Submission::new()))
    }
}

/// Command buffers recorded on one allocator's device 0, in one pool, destroyed on drop (after a
/// fenced wait for the device).
pub struct Recorded {
    allocator: MemoryAllocator,
    device: lava_flow::ash::Device,
    pool: lava_flow::ash::vk::CommandPool,
    cmds: Vec<lava_flow::ash::vk::CommandBuffer>,
}

impl Recorded {
    /// `count` command buffers, each filled in by `record(index, command_buffer)`, then ended
    /// with a barrier that makes their writes visible to later work (and to the host).
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one plain sequence of Vulkan calls")]
    pub fn new(
        allocator: &MemoryAllocator,
        count: usize,
        record: impl Fn(usize, &lava_flow::ash::Device, lava_flow::ash::vk::CommandBuffer),
    ) -> Self {
        let (device, family) = allocator.ash_device(0).expect("device");
        let barrier = lava_flow::ash::vk::MemoryBarrier::default()
            .src_access_mask(lava_flow::ash::vk::AccessFlags::MEMORY_WRITE)
            .dst_access_mask(
                lava_flow::ash::vk::AccessFlags::MEMORY_READ | lava_flow::ash::vk::AccessFlags::MEMORY_WRITE,
            );
        // SAFETY: plain Vulkan calls on lava-flow's device with valid arguments; what the
        // command buffers use outlives their work (the tests wait for it before dropping).
        unsafe {
            let pool = device
                .create_command_pool(
                    &lava_flow::ash::vk::CommandPoolCreateInfo::default().queue_family_index(family),
                    None,
                )
                .expect("pool");
            let cmds = device
                .allocate_command_buffers(
                    &lava_flow::ash::vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .command_buffer_count(count as u32),
                )
                .expect("command buffers");
            for (i, &cmd) in cmds.iter().enumerate() {
                device
                    .begin_command_buffer(cmd, &lava_flow::ash::vk::CommandBufferBeginInfo::default())
                    .expect("begin");
                record(i, &device, cmd);
                device.cmd_pipeline_barrier(
                    cmd,
                    lava_flow::ash::vk::PipelineStageFlags::TRANSFER,
                    lava_flow::ash::vk::PipelineStageFlags::ALL_COMMANDS
                        | lava_flow::ash::vk::PipelineStageFlags::HOST,
                    lava_flow::ash::vk::DependencyFlags::empty(),
                    &[barrier.dst_access_mask(
                        lava_flow::ash::vk::AccessFlags::MEMORY_READ
                            | lava_flow::ash::vk::AccessFlags::MEMORY_WRITE
                            | lava_flow::ash::vk::AccessFlags::HOST_READ,
                    )],
                    &[],
                    &[],
                );
                device.end_command_buffer(cmd).expect("end");
            }
            Recorded { allocator: allocator.clone(), device, pool, cmds }
        }
    }

    /// `submission` with command buffer `i` added.
    pub fn with<'a>(&self, i: usize, submission: lava_flow::Submission<'a>) -> lava_flow::Submission<'a> {
        // SAFETY: recorded on this device; lives until `self` drops, after the work is done.
        unsafe { submission.command_buffers(&[self.cmds[i]]) }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Err(e) = self.allocator.wait_idle(0) {
            eprintln!("Recorded: {e}");
        }
        // SAFETY: the work is done; the pool frees its command buffers.
        unsafe { self.device.destroy_command_pool(self.pool, None) };
    }
}

/// Writes all of a shared buffer from host bytes, through one API.
pub type WriteAll<'a> = Box<dyn Fn(&[u8]) + 'a>;
/// Reads all of a shared buffer into host bytes, through one API.
pub type ReadAll<'a> = Box<dyn Fn(&mut [u8]) + 'a>;

/// One API's view of a shared buffer, as the both-ways check uses it.
pub struct Side<'a> {
    pub name: &'a str,
    pub write: WriteAll<'a>,
    pub read: ReadAll<'a>,
}

impl<'a> Side<'a> {
    /// A lava-flow buffer, written and read from offset 0 through lava-flow.
    pub fn buffer(name: &'a str, b: &'a lava_flow::Buffer) -> Self {
        Side {
            name,
            write: Box::new(move |d| b.write(0, d).unwrap_or_else(|e| panic!("{name} write: {e}"))),
            read: Box::new(move |o| b.read(0, o).unwrap_or_else(|e| panic!("{name} read: {e}"))),
        }
    }
}

/// Random bytes written by `a` and read by `b` into a poisoned destination, every byte compared;
/// then the same from `b` to `a`.
pub fn check_both_ways(size: usize, what: &str, a: Side<'_>, b: Side<'_>) {
    for (from, to) in [(&a, &b), (&b, &a)] {
        let data = random_bytes(size);
        (from.write)(&data);
        let mut out = poisoned(size);
        (to.read)(&mut out);
        assert_bytes_eq(&out, &data, &format!("{what}: {} → {}", from.name, to.name));
    }
}
