//! `lava-flow demo`: a zero-copy pipeline over a ring of shared buffers (two by default:
//! ping-pong).
//!
//! A Vulkan compute shader produces frame `f` into shared buffer `f % n`; the consumer (CUDA or
//! OpenGL) checksums it in place and writes the checksum into a results buffer that is shared
//! too. One timeline semaphore per direction orders it all: the producer's frame `f` waits until
//! the consumer is done with frame `f - n` (same buffer); the consumer's frame `f` waits until the
//! producer is done with it. Every checksum is checked on the CPU at the end. Then the same frames
//! go through host memory (download, upload), the way it is done without sharing, and each side
//! runs alone; all timed in the same run.

use std::time::{Duration, Instant};

use glow::HasContext;
use lava_flow::ash::vk;

use crate::vk::vk_err;
use lava_flow::opengl::{GlBuffer, GlContext};
use lava_flow::{Buffer, MemoryAllocator, MemoryLocation, Result, Submission, TimelineSemaphore};

/// What to run.
pub struct Options {
    pub frames: u32,
    /// Shared frame buffers in the ring (2: ping-pong).
    pub buffers: u32,
    /// Frames per hand-off: the producer signals, and the consumer waits, once per this many
    /// frames (1: every frame). `buffers` must be a multiple of it.
    pub batch: u32,
    pub frame_bytes: u64,
    pub consumer: String,
    pub device_id: u32,
    /// 2: the consumer runs in a child process that receives the ring over a Unix socket.
    pub processes: u32,
}

const PRODUCER: &str = r#"#version 450
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) buffer Frame { uint words[]; };
layout(push_constant) uniform Params { uint frame; uint count; } params;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < params.count) { words[i] = (i * 2654435761u) ^ (params.frame * 40503u + 2654435769u); }
}
"#;

const CHECKSUM: &str = r#"#version 450
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Frame { uint words[]; };
layout(std430, binding = 1) buffer Sums { uint sums[]; };
uniform uint count;
uniform uint frame;
shared uint partial[256];
void main() {
    uint i = gl_GlobalInvocationID.x;
    uint l = gl_LocalInvocationID.x;
    partial[l] = i < count ? words[i] : 0u;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (l < s) { partial[l] += partial[l + s]; }
        barrier();
    }
    if (l == 0u) { atomicAdd(sums[frame], partial[0]); }
}
"#;

/// The Vulkan consumer's checksum, in WGSL: naga's GLSL front end turns `barrier()` into a
/// subgroup-scoped barrier (every barrier flag set, which its SPIR-V writer maps to the subgroup
/// execution scope), so a GLSL workgroup reduction summed wrong on NVIDIA (right on lavapipe);
/// WGSL's `workgroupBarrier()` is workgroup-scoped, and WGSL has `atomicAdd` (push constants are
/// naga 30's `var<immediate>`).
const VK_CHECKSUM: &str = r#"
struct Params { frame: u32, count: u32 }
@group(0) @binding(0) var<storage, read> words: array<u32>;
@group(0) @binding(1) var<storage, read_write> sums: array<atomic<u32>>;
var<immediate> params: Params;
var<workgroup> partial: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let l = lid.x;
    var v = 0u;
    if (gid.x < params.count) { v = words[gid.x]; }
    partial[l] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (l < s) { partial[l] = partial[l] + partial[l + s]; }
        workgroupBarrier();
    }
    if (l == 0u) { atomicAdd(&sums[params.frame], partial[0]); }
}
"#;

/// The checksum the consumer must find for `frame`.
fn expected_sum(frame: u32, words: u32) -> u32 {
    (0..words).fold(0u32, |acc, i| {
        acc.wrapping_add(
            i.wrapping_mul(2_654_435_761) ^ frame.wrapping_mul(40503).wrapping_add(2_654_435_769),
        )
    })
}

/// What one run measured.
pub struct Measured {
    pub frames: u32,
    pub frame_bytes: u64,
    /// The consumer, as it describes itself (read by `bench`, which is Unix only).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub consumer: String,
    #[cfg_attr(not(unix), allow(dead_code))]
    pub gpu_semaphores: bool,
    /// The zero-copy pipeline, all frames.
    pub zero_copy: Duration,
    /// The same frames staged through host memory.
    pub staging: Duration,
    /// The producer alone, no consumer, the same number of frames.
    pub producer_alone: Duration,
    /// The consumer alone (no producer, no semaphores), the same number of frames.
    pub consumer_alone: Duration,
}

impl Measured {
    /// Frames per second and GB/s for one of the two durations.
    pub fn rate(&self, d: Duration) -> (f64, f64) {
        let bytes = f64::from(self.frames) * self.frame_bytes as f64;
        (f64::from(self.frames) / d.as_secs_f64(), bytes / d.as_secs_f64() / 1e9)
    }
}

/// `lava-flow demo`: runs the pipeline and prints what it measured.
pub fn run(options: &Options) -> Result<()> {
    let m = measure(options, false)?;
    let (zfps, zgbs) = m.rate(m.zero_copy);
    let (sfps, sgbs) = m.rate(m.staging);
    println!("zero-copy: {zfps:.1} frames/s, {zgbs:.2} GB/s shared ({:.2?})", m.zero_copy);
    println!("staging through host memory: {sfps:.1} frames/s, {sgbs:.2} GB/s ({:.2?})", m.staging);
    println!("zero-copy is {:.1}× the staged pipeline", zfps / sfps);
    let (pfps, _) = m.rate(m.producer_alone);
    let (cfps, _) = m.rate(m.consumer_alone);
    println!(
        "producer alone: {pfps:.1} frames/s, consumer alone: {cfps:.1} frames/s; the pipeline runs at \
         {:.2}× the slower of the two",
        zfps / pfps.min(cfps)
    );
    println!("all {} frame checksums verified, in both pipelines", m.frames);
    Ok(())
}

/// Runs both pipelines, checks every checksum and, with `LAVA_FLOW_VALIDATION=1`, that the
/// validation layer said nothing.
pub fn measure(options: &Options, quiet: bool) -> Result<Measured> {
    let allocator = MemoryAllocator::new()?;
    let mut logs = vec![allocator.validation_log()];
    let result = pipeline(options, allocator, quiet, &mut logs);
    // Everything is dropped now, devices included: with LAVA_FLOW_VALIDATION=1 any message the
    // validation layer printed on the way (for any device the demo made) fails the demo.
    let messages: Vec<String> = logs.iter().flatten().flat_map(|l| l.take()).collect();
    if !messages.is_empty() {
        for m in &messages {
            eprintln!("validation: {m}");
        }
        return Err(lava_flow::Error::InvalidArgument(format!("{} validation message(s)", messages.len())));
    }
    result
}

/// Where a frame's hand-off happens: the consumer waits for the producer's timeline before the
/// first frame of a batch, and signals its own after the last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handoff {
    /// Wait until `produced` reaches this value first.
    pub wait: Option<u64>,
    /// Signal `consumed` to this value after the frame.
    pub signal: Option<u64>,
}

/// One consumer of the frames: CUDA, OpenGL, OpenCL or Vulkan.
pub(crate) trait Consumer {
    /// What consumes, for the report (e.g. "OpenGL compute on <renderer>").
    fn describe(&self) -> String;
    /// Whether the semaphores are waited for and signalled on the GPU (not the host fallback).
    fn gpu_semaphores(&self) -> bool;
    /// Zero-copy: queues "wait until `produced` reaches `f + 1`, checksum the shared frame in
    /// `slot` into shared `sums[f]`, then set `consumed` to `f + 1`", without waiting on the host.
    fn consume(&mut self, f: u32, slot: usize, handoff: Handoff) -> Result<()>;
    /// Staged: uploads frame `f` from host memory into the consumer's own memory and checksums it
    /// into its own sums.
    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()>;
    /// Waits for the staged work and returns its sums.
    fn staged_sums(&mut self) -> Result<Vec<u8>>;
    /// The consumer alone: checksums the shared frame in `slot` with no semaphore.
    fn consume_alone(&mut self, f: u32, slot: usize) -> Result<()>;
    /// Waits until the consumer's queued work is done.
    fn finish(&mut self) -> Result<()>;
}

fn pipeline(
    options: &Options,
    mut allocator: MemoryAllocator,
    quiet: bool,
    logs: &mut Vec<Option<lava_flow::ValidationLog>>,
) -> Result<Measured> {
    if options.frames < 2 || options.frame_bytes < 1024 || !options.frame_bytes.is_multiple_of(4) {
        return Err(lava_flow::Error::InvalidArgument(
            "at least 2 frames of at least 1024 bytes, a multiple of 4".into(),
        ));
    }
    if !(2..=16).contains(&options.buffers) {
        return Err(lava_flow::Error::InvalidArgument("2 to 16 shared buffers".into()));
    }
    if options.batch == 0 || !options.buffers.is_multiple_of(options.batch) {
        return Err(lava_flow::Error::InvalidArgument(format!(
            "--batch {} must divide --buffers {} (a hand-off covers whole groups of buffers)",
            options.batch, options.buffers
        )));
    }
    if !(1..=2).contains(&options.processes) {
        return Err(lava_flow::Error::InvalidArgument("--processes is 1 or 2".into()));
    }
    let consumer = match options.consumer.as_str() {
        "auto" => {
            if cfg!(feature = "cuda") && cuda_present(&allocator, options.device_id) {
                "cuda"
            } else {
                "opengl"
            }
        }
        "opengl" | "cuda" | "opencl" | "vulkan" => options.consumer.as_str(),
        other => return Err(lava_flow::Error::InvalidArgument(format!("unknown consumer {other:?}"))),
    };
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    let words = (options.frame_bytes / 4) as u32;
    let frames = (0..options.buffers)
        .map(|_| allocator.allocate(options.frame_bytes, location))
        .collect::<Result<Vec<_>>>()?;
    let sums = allocator.allocate(u64::from(options.frames) * 4, location)?;
    sums.write(0, &vec![0; options.frames as usize * 4])?;
    let produced = allocator.timeline_semaphore(options.device_id)?;
    let consumed = allocator.timeline_semaphore(options.device_id)?;
    let shared = Shared { frames: &frames, sums: &sums, produced: &produced, consumed: &consumed, words };
    let producer = Producer::new(&allocator, options.device_id, &frames, words)?;
    if options.processes == 2 {
        #[cfg(all(unix, feature = "cuda"))]
        if consumer == "cuda" {
            // The typed reason (no libcuda, no device with this UUID) before a child is started.
            lava_flow::cuda::Context::for_device(&allocator, options.device_id)?;
            let mut c = crate::demo_process::ProcessConsumer::spawn(options, &shared)?;
            return run_frames(options, &allocator, &producer, &shared, &mut c, quiet);
        }
        if !cfg!(unix) {
            return Err(lava_flow::Error::Unsupported {
                what: "--processes 2 hands the ring to the child over a Unix socket: Unix only".into(),
            });
        }
        return Err(lava_flow::Error::Unsupported {
            what: format!(
                "--processes 2 runs the CUDA consumer in a child process; the {consumer} consumer runs \
                 in this one (CUDA is {})",
                if cuda_present(&allocator, options.device_id) { "present" } else { "not available here" }
            ),
        });
    }
    match consumer {
        #[cfg(feature = "cuda")]
        "cuda" => {
            let mut c = cuda::CudaConsumer::new(&allocator, options, &shared)?;
            run_frames(options, &allocator, &producer, &shared, &mut c, quiet)
        }
        #[cfg(feature = "opencl")]
        "opencl" => {
            let cl = lava_flow::opencl::Context::for_device(&allocator, options.device_id)?;
            let staged = [
                allocator.allocate(options.frame_bytes, location)?,
                allocator.allocate(u64::from(options.frames) * 4, location)?,
            ];
            let mut c = opencl::ClSide::new(&cl, &shared, &staged, options)?;
            run_frames(options, &allocator, &producer, &shared, &mut c, quiet)
        }
        #[cfg(not(feature = "opencl"))]
        "opencl" => Err(lava_flow::Error::Unsupported { what: "built without the opencl feature".into() }),
        "vulkan" => {
            let other = MemoryAllocator::new()?;
            logs.push(other.validation_log());
            let mut c = VkSide::new(other, &shared, options)?;
            run_frames(options, &allocator, &producer, &shared, &mut c, quiet)
        }
        _ => {
            let gl = GlContext::headless(allocator.device(options.device_id)?)?;
            let mut c = GlSide::new(&gl, &shared, options.frames, options.frame_bytes)?;
            run_frames(options, &allocator, &producer, &shared, &mut c, quiet)
        }
    }
}

/// Whether CUDA has a device with this device's UUID.
fn cuda_present(allocator: &MemoryAllocator, device_id: u32) -> bool {
    #[cfg(feature = "cuda")]
    {
        lava_flow::cuda::Context::for_device(allocator, device_id).is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (allocator, device_id);
        false
    }
}

/// What producer and consumer share: two frame buffers, the sums, and the two timelines.
pub(crate) struct Shared<'a> {
    pub frames: &'a [Buffer],
    pub sums: &'a Buffer,
    pub produced: &'a TimelineSemaphore,
    pub consumed: &'a TimelineSemaphore,
    pub words: u32,
}

/// Both pipelines with one consumer: zero-copy, then staged through host memory.
fn run_frames(
    options: &Options,
    allocator: &MemoryAllocator,
    producer: &Producer,
    shared: &Shared<'_>,
    consumer: &mut dyn Consumer,
    quiet: bool,
) -> Result<Measured> {
    let (produced, consumed) = (shared.produced, shared.consumed);
    let buffers = options.buffers;
    if !quiet {
        println!(
            "lava-flow demo: {} frames of {} KiB in {} shared buffers, Vulkan compute → {} ({} semaphores)",
            options.frames,
            options.frame_bytes / 1024,
            options.buffers,
            consumer.describe(),
            if consumer.gpu_semaphores() { "GPU" } else { "host-fallback" }
        );
    }

    // Zero-copy: the producer runs ahead by at most the ring. One hand-off per batch of frames:
    // the producer signals after a batch's last frame, the consumer waits before its first. A
    // batch's frames are all submitted to the producer before the consumer's (consumers that
    // order through the host wait there for the batch's end).
    let (batch, frames) = (options.batch, options.frames);
    let start = Instant::now();
    let mut progress = Progress::new(frames, "zero-copy", quiet);
    for first in (0..frames).step_by(batch as usize) {
        let end = (first + batch).min(frames);
        for f in first..end {
            // The batch that used these slots before, ending at `first - buffers + batch`, must
            // be consumed before they are overwritten.
            let after = (f == first && f >= buffers).then(|| (consumed, u64::from(f - buffers + batch)));
            let signal = (f + 1 == end).then(|| (produced, u64::from(end)));
            producer.produce(allocator, f, (f % buffers) as usize, after, signal)?;
        }
        for f in first..end {
            let handoff = Handoff {
                wait: (f == first).then(|| u64::from(end)),
                signal: (f + 1 == end).then(|| u64::from(end)),
            };
            consumer.consume(f, (f % buffers) as usize, handoff)?;
        }
        progress.tick(end);
    }
    consumed.wait(u64::from(options.frames), Duration::from_secs(300))?;
    let zero_copy = start.elapsed();
    progress.done();
    let mut got = vec![0u8; options.frames as usize * 4];
    shared.sums.read(0, &mut got)?;
    let bad = count_bad(&got, options.frames, shared.words);

    // The same frames through host memory: download from Vulkan, upload to the consumer.
    let mut host = vec![0u8; options.frame_bytes as usize];
    let start = Instant::now();
    let mut progress = Progress::new(options.frames, "staging", quiet);
    for f in 0..options.frames {
        let value = u64::from(options.frames + f) + 1;
        producer.produce(allocator, f, 0, None, Some((produced, value)))?;
        produced.wait(value, Duration::from_secs(60))?;
        shared.frames[0].read(0, &mut host)?;
        consumer.consume_staged(f, &host)?;
        progress.tick(f + 1);
    }
    let staged_sums = consumer.staged_sums()?;
    let staging = start.elapsed();
    progress.done();
    let staged_bad = count_bad(&staged_sums, options.frames, shared.words);

    // Each side alone, for how close the pipeline comes to the slower one.
    let start = Instant::now();
    for f in 0..options.frames {
        let value = u64::from(2 * options.frames + f) + 1;
        producer.produce(allocator, f, (f % buffers) as usize, None, Some((produced, value)))?;
    }
    produced.wait(u64::from(3 * options.frames), Duration::from_secs(300))?;
    let producer_alone = start.elapsed();
    let start = Instant::now();
    for f in 0..options.frames {
        consumer.consume_alone(f, (f % buffers) as usize)?;
    }
    consumer.finish()?;
    let consumer_alone = start.elapsed();
    // Submissions waited for values the consumer signalled: a fenced wait lets the validation
    // layer see them complete before the semaphores go.
    allocator.wait_idle(options.device_id)?;

    if bad == 0 && staged_bad == 0 {
        Ok(Measured {
            frames: options.frames,
            frame_bytes: options.frame_bytes,
            consumer: consumer.describe(),
            gpu_semaphores: consumer.gpu_semaphores(),
            zero_copy,
            staging,
            producer_alone,
            consumer_alone,
        })
    } else {
        Err(lava_flow::Error::InvalidArgument(format!(
            "wrong frame checksums: {bad} of {} zero-copy, {staged_bad} staged",
            options.frames
        )))
    }
}

/// How many of the little-endian u32 sums in `got` differ from the expected ones.
fn count_bad(got: &[u8], frames: u32, words: u32) -> usize {
    (0..frames)
        .filter(|&f| {
            let i = f as usize * 4;
            u32::from_le_bytes([got[i], got[i + 1], got[i + 2], got[i + 3]]) != expected_sum(f, words)
        })
        .count()
}

/// A text progress bar on stderr.
struct Progress {
    total: u32,
    label: &'static str,
    last: Instant,
    quiet: bool,
}

impl Progress {
    fn new(total: u32, label: &'static str, quiet: bool) -> Self {
        Progress { total, label, last: Instant::now(), quiet }
    }

    fn tick(&mut self, done: u32) {
        if self.quiet || (self.last.elapsed() < Duration::from_millis(100) && done != self.total) {
            return;
        }
        self.last = Instant::now();
        let width = 30;
        let filled = (done as usize * width) / self.total.max(1) as usize;
        eprint!(
            "\r{:>9} [{}{}] {done}/{}",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
    }

    fn done(&self) {
        if !self.quiet {
            eprintln!();
        }
    }
}

/// A Vulkan compute pass: one shader, one descriptor set per slot (binding `i` of a set is its
/// `i`-th buffer), two `uint` push constants, and a ring of command buffers with fences. The
/// producer writes frames with it; the Vulkan consumer checksums them.
struct Compute {
    device: lava_flow::ash::Device,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    descriptor_pool: vk::DescriptorPool,
    sets: Vec<vk::DescriptorSet>,
    pool: vk::CommandPool,
    /// A ring of command buffers; one is re-recorded only when its frame is long done.
    cmds: Vec<vk::CommandBuffer>,
    fences: Vec<vk::Fence>,
    /// Workgroups per dispatch.
    groups: u32,
    device_id: u32,
    /// Submissions so far: which ring entry the next one uses.
    submitted: std::sync::atomic::AtomicUsize,
}

const RING: usize = 8;

/// A compute shader's source, GLSL or WGSL (naga compiles both to SPIR-V).
enum Shader<'s> {
    Glsl(&'s str),
    Wgsl(&'s str),
}

fn compile(source: Shader<'_>) -> Result<Vec<u32>> {
    let invalid = |what: String| lava_flow::Error::InvalidArgument(format!("compute shader: {what}"));
    let module = match source {
        Shader::Glsl(text) => naga::front::glsl::Frontend::default()
            .parse(&naga::front::glsl::Options::from(naga::ShaderStage::Compute), text)
            .map_err(|e| invalid(format!("{e:?}")))?,
        Shader::Wgsl(text) => {
            naga::front::wgsl::parse_str(text).map_err(|e| invalid(e.emit_to_string(text)))?
        }
    };
    let info =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| invalid(format!("{e:?}")))?;
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        .map_err(|e| invalid(e.to_string()))
}

impl Compute {
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "plain Vulkan set-up, as users write it")]
    fn new(
        allocator: &MemoryAllocator,
        device_id: u32,
        source: Shader<'_>,
        slots: &[Vec<&Buffer>],
        groups: u32,
    ) -> Result<Self> {
        let n = slots.len() as u32;
        let per_set = slots.first().map_or(0, Vec::len) as u32;
        let (device, family) = allocator.ash_device(device_id)?;
        let spirv = compile(source)?;
        // SAFETY: plain object creation on lava-flow's live device with valid parameters; every
        // object is destroyed in `destroy`.
        unsafe {
            let module = device
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&spirv), None)
                .map_err(vk_err("vkCreateShaderModule"))?;
            let binding: Vec<_> = (0..per_set)
                .map(|b| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(b)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let set_layout = device
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&binding),
                    None,
                )
                .map_err(vk_err("vkCreateDescriptorSetLayout"))?;
            let push = [vk::PushConstantRange::default().stage_flags(vk::ShaderStageFlags::COMPUTE).size(8)];
            let set_layouts = [set_layout];
            let layout = device
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&set_layouts)
                        .push_constant_ranges(&push),
                    None,
                )
                .map_err(vk_err("vkCreatePipelineLayout"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let pipeline = device
                .create_compute_pipelines(
                    vk::PipelineCache::null(),
                    &[vk::ComputePipelineCreateInfo::default().stage(stage).layout(layout)],
                    None,
                )
                .map_err(|(_, e)| vk_err("vkCreateComputePipelines")(e))?[0];
            let sizes = [vk::DescriptorPoolSize {
                ty: vk::DescriptorType::STORAGE_BUFFER,
                descriptor_count: n * per_set,
            }];
            let descriptor_pool = device
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default().max_sets(n).pool_sizes(&sizes),
                    None,
                )
                .map_err(vk_err("vkCreateDescriptorPool"))?;
            let layouts = vec![set_layout; slots.len()];
            let sets = device
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(descriptor_pool)
                        .set_layouts(&layouts),
                )
                .map_err(vk_err("vkAllocateDescriptorSets"))?;
            for (set, buffers) in sets.iter().zip(slots) {
                for (b, buffer) in buffers.iter().enumerate() {
                    let info = [vk::DescriptorBufferInfo {
                        buffer: buffer.vk_buffer(),
                        offset: 0,
                        range: buffer.size(),
                    }];
                    let write = vk::WriteDescriptorSet::default()
                        .dst_set(*set)
                        .dst_binding(b as u32)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(&info);
                    device.update_descriptor_sets(&[write], &[]);
                }
            }
            let pool = device
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                )
                .map_err(vk_err("vkCreateCommandPool"))?;
            let cmds = device
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .command_buffer_count(RING as u32),
                )
                .map_err(vk_err("vkAllocateCommandBuffers"))?;
            let signalled = vk::FenceCreateInfo::default().flags(vk::FenceCreateFlags::SIGNALED);
            let fences = (0..RING)
                .map(|_| device.create_fence(&signalled, None).map_err(vk_err("vkCreateFence")))
                .collect::<Result<Vec<_>>>()?;
            Ok(Compute {
                device,
                module,
                set_layout,
                layout,
                pipeline,
                descriptor_pool,
                sets,
                pool,
                cmds,
                fences,
                groups,
                device_id,
                submitted: std::sync::atomic::AtomicUsize::new(0),
            })
        }
    }

    /// Records and submits one dispatch with `push` constants over the buffers of `slot`: wait
    /// for `after` (e.g. the consumer's release of the buffer), dispatch, then signal `signal` (a
    /// semaphore and its next value, which also picks the ring entry).
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one command buffer's recording")]
    fn run(
        &self,
        allocator: &MemoryAllocator,
        push: [u32; 2],
        slot: usize,
        after: Option<(&TimelineSemaphore, u64)>,
        signal: Option<(&TimelineSemaphore, u64)>,
    ) -> Result<()> {
        let ring = self.submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % RING;
        let (cmd, fence) = (self.cmds[ring], self.fences[ring]);
        let d = &self.device;
        // The ring entry was last used RING submissions ago; in steady state that one is long
        // done and this returns at once. Its fence (not only the timeline value) tells the
        // validation layer that the command buffer may be recorded again.
        // SAFETY: the fence belongs to this device and is not in use by a pending submission once
        // waited for.
        unsafe {
            d.wait_for_fences(&[fence], true, 60_000_000_000).map_err(vk_err("vkWaitForFences"))?;
            d.reset_fences(&[fence]).map_err(vk_err("vkResetFences"))?;
        }
        let push: Vec<u8> = push.iter().flat_map(|w| w.to_le_bytes()).collect();
        // SAFETY: the command buffer is not pending (its last frame's fence was waited for above);
        // every handle belongs to this device.
        unsafe {
            d.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())
                .map_err(vk_err("vkBeginCommandBuffer"))?;
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.sets[slot]],
                &[],
            );
            d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, &push);
            d.cmd_dispatch(cmd, self.groups, 1, 1);
            crate::vk::barrier_to_all(
                d,
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::AccessFlags::SHADER_WRITE,
            );
            d.end_command_buffer(cmd).map_err(vk_err("vkEndCommandBuffer"))?;
        }
        let cmds = [cmd];
        // SAFETY: `cmd` was recorded above on this device and `fence` reset; both stay valid until
        // `drop`, which waits for the device first.
        let mut submission = unsafe { Submission::new().command_buffers(&cmds).fence(fence) };
        if let Some((sem, v)) = after {
            submission = submission.wait(sem, v);
        }
        if let Some((sem, v)) = signal {
            submission = submission.signal(sem, v);
        }
        allocator.submit(self.device_id, &submission)
    }
}

/// The Vulkan producer: a compute pass writing frame `f` into the frame buffer of its slot.
struct Producer {
    pass: Compute,
    words: u32,
}

impl Producer {
    fn new(allocator: &MemoryAllocator, device_id: u32, frames: &[Buffer], words: u32) -> Result<Self> {
        let slots: Vec<Vec<&Buffer>> = frames.iter().map(|f| vec![f]).collect();
        let pass = Compute::new(allocator, device_id, Shader::Glsl(PRODUCER), &slots, words.div_ceil(256))?;
        Ok(Producer { pass, words })
    }

    /// Frame `f` into `slot`, after `after`, then `signal`.
    fn produce(
        &self,
        allocator: &MemoryAllocator,
        f: u32,
        slot: usize,
        after: Option<(&TimelineSemaphore, u64)>,
        signal: Option<(&TimelineSemaphore, u64)>,
    ) -> Result<()> {
        self.pass.run(allocator, [f, self.words], slot, after, signal)
    }
}

impl Drop for Compute {
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "plain Vulkan teardown")]
    fn drop(&mut self) {
        let d = &self.device;
        // SAFETY: the device is idle after the wait (on failure, waiting is all that can be
        // done; destroying is still the least bad); every object was made in `new`.
        unsafe {
            if let Err(e) = d.device_wait_idle() {
                eprintln!("lava-flow demo: vkDeviceWaitIdle failed: {e}");
            }
            for fence in &self.fences {
                d.destroy_fence(*fence, None);
            }
            d.destroy_command_pool(self.pool, None);
            d.destroy_descriptor_pool(self.descriptor_pool, None);
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
            d.destroy_shader_module(self.module, None);
        }
    }
}

/// A GL error for the demo's own calls.
fn gl_check(gl: &glow::Context, call: &'static str) -> Result<()> {
    // SAFETY: the demo's context is current (lava-flow made it so and nothing else runs here).
    let code = unsafe { gl.get_error() };
    if code == glow::NO_ERROR {
        return Ok(());
    }
    Err(lava_flow::Error::Ffi {
        api: lava_flow::Api::OpenGl,
        call,
        name: format!("GL error {code:#x}"),
        description: "see glGetError".into(),
    })
}

/// A GL buffer range to bind: (name, offset, size).
type Range = (u32, u64, u64);

/// The OpenGL consumer: a compute program that checksums frames, the shared buffers and
/// timelines imported into GL, and plain GL buffers for the staged pipeline.
struct GlSide<'a> {
    ctx: &'a GlContext,
    gl: glow::Context,
    program: glow::Program,
    count: glow::UniformLocation,
    frame: glow::UniformLocation,
    frames: Vec<GlBuffer<'a>>,
    sums: GlBuffer<'a>,
    produced: lava_flow::opengl::GlTimeline<'a>,
    consumed: lava_flow::opengl::GlTimeline<'a>,
    staged_frame: glow::Buffer,
    staged_sums: glow::Buffer,
    frame_count: u32,
    frame_bytes: u64,
    words: u32,
}

impl<'a> GlSide<'a> {
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "plain GL set-up, as users write it")]
    fn new(ctx: &'a GlContext, shared: &Shared<'a>, frame_count: u32, frame_bytes: u64) -> Result<Self> {
        // SAFETY: the context is current on this thread; the loader is its own.
        let gl = unsafe { glow::Context::from_loader_function(|s| ctx.proc_address(s)) };
        let failed = |what: String| lava_flow::Error::Unsupported { what: format!("GL consumer: {what}") };
        // SAFETY: plain GL calls on the current context; every object is deleted on drop (or
        // with the context, on an early error).
        let (program, count, frame, staged_frame, staged_sums) = unsafe {
            let shader = gl.create_shader(glow::COMPUTE_SHADER).map_err(failed)?;
            gl.shader_source(shader, CHECKSUM);
            gl.compile_shader(shader);
            if !gl.get_shader_compile_status(shader) {
                return Err(failed(gl.get_shader_info_log(shader)));
            }
            let program = gl.create_program().map_err(failed)?;
            gl.attach_shader(program, shader);
            gl.link_program(program);
            gl.delete_shader(shader);
            if !gl.get_program_link_status(program) {
                return Err(failed(gl.get_program_info_log(program)));
            }
            let count =
                gl.get_uniform_location(program, "count").ok_or_else(|| failed("no uniform count".into()))?;
            let frame =
                gl.get_uniform_location(program, "frame").ok_or_else(|| failed("no uniform frame".into()))?;
            let staged_frame = gl.create_buffer().map_err(failed)?;
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(staged_frame));
            gl.buffer_storage(
                glow::SHADER_STORAGE_BUFFER,
                frame_bytes as i32,
                None,
                glow::DYNAMIC_STORAGE_BIT,
            );
            let staged_sums = gl.create_buffer().map_err(failed)?;
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(staged_sums));
            let zeros = vec![0u8; frame_count as usize * 4];
            gl.buffer_storage(
                glow::SHADER_STORAGE_BUFFER,
                zeros.len() as i32,
                Some(&zeros),
                glow::DYNAMIC_STORAGE_BIT,
            );
            (program, count, frame, staged_frame, staged_sums)
        };
        gl_check(&gl, "glBufferStorage")?;
        Ok(GlSide {
            ctx,
            gl,
            program,
            count,
            frame,
            frames: shared.frames.iter().map(|b| ctx.import_buffer(b)).collect::<Result<_>>()?,
            sums: ctx.import_buffer(shared.sums)?,
            produced: ctx.import_timeline(shared.produced)?,
            consumed: ctx.import_timeline(shared.consumed)?,
            staged_frame,
            staged_sums,
            frame_count,
            frame_bytes,
            words: shared.words,
        })
    }

    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one dispatch's GL calls")]
    fn dispatch(&self, f: u32, frame: Range, sums: Range) -> Result<()> {
        let gl = &self.gl;
        let name = |n: u32| std::num::NonZeroU32::new(n).map(glow::NativeBuffer);
        // SAFETY: plain GL calls on the current context; the ranges lie inside their buffers.
        unsafe {
            gl.use_program(Some(self.program));
            gl.uniform_1_u32(Some(&self.count), self.words);
            gl.uniform_1_u32(Some(&self.frame), f);
            gl.bind_buffer_range(
                glow::SHADER_STORAGE_BUFFER,
                0,
                name(frame.0),
                frame.1 as i32,
                frame.2 as i32,
            );
            gl.bind_buffer_range(glow::SHADER_STORAGE_BUFFER, 1, name(sums.0), sums.1 as i32, sums.2 as i32);
            gl.dispatch_compute(self.words.div_ceil(256), 1, 1);
            gl.memory_barrier(glow::ALL_BARRIER_BITS);
        }
        gl_check(gl, "glDispatchCompute")
    }
}

impl Consumer for GlSide<'_> {
    fn describe(&self) -> String {
        format!("OpenGL compute on {}", self.ctx.info().renderer)
    }

    fn gpu_semaphores(&self) -> bool {
        self.produced.is_gpu_path()
    }

    fn consume(&mut self, f: u32, slot: usize, handoff: Handoff) -> Result<()> {
        let (frame, sums) = (&self.frames[slot], &self.sums);
        // A batch's wait and signal cover every frame buffer (the batch's are among them).
        let all: Vec<&GlBuffer<'_>> = self.frames.iter().chain([sums]).collect();
        if let Some(v) = handoff.wait {
            self.produced.wait(v, &all[..all.len() - 1], &[])?;
        }
        self.dispatch(
            f,
            (frame.gl_buffer(), frame.offset(), frame.size()),
            (sums.gl_buffer(), sums.offset(), sums.size()),
        )?;
        match handoff.signal {
            Some(v) => self.consumed.signal(v, &all, &[]),
            None => Ok(()),
        }
    }

    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        // SAFETY: the buffer holds `frame_bytes` = `host.len()` bytes; the context is current.
        unsafe { self.gl.named_buffer_sub_data_u8_slice(self.staged_frame, 0, host) };
        gl_check(&self.gl, "glNamedBufferSubData")?;
        self.dispatch(
            f,
            (self.staged_frame.0.get(), 0, self.frame_bytes),
            (self.staged_sums.0.get(), 0, u64::from(self.frame_count) * 4),
        )
    }

    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one read-back's GL calls")]
    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        let gl = &self.gl;
        let mut out = vec![0u8; self.frame_count as usize * 4];
        // SAFETY: the buffer holds exactly `out.len()` bytes; the context is current. The read
        // waits for the dispatches.
        unsafe {
            gl.memory_barrier(glow::BUFFER_UPDATE_BARRIER_BIT);
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.staged_sums));
            gl.get_buffer_sub_data(glow::SHADER_STORAGE_BUFFER, 0, &mut out);
        }
        gl_check(gl, "glGetBufferSubData")?;
        Ok(out)
    }

    fn consume_alone(&mut self, f: u32, slot: usize) -> Result<()> {
        let (frame, sums) = (&self.frames[slot], &self.sums);
        self.dispatch(
            f,
            (frame.gl_buffer(), frame.offset(), frame.size()),
            (sums.gl_buffer(), sums.offset(), sums.size()),
        )
    }

    fn finish(&mut self) -> Result<()> {
        self.ctx.finish()
    }
}

impl Drop for GlSide<'_> {
    fn drop(&mut self) {
        // SAFETY: the program and buffers were made by this context, which is still current.
        unsafe {
            self.gl.delete_program(self.program);
        }
        // SAFETY: as above.
        unsafe { self.gl.delete_buffer(self.staged_frame) };
        // SAFETY: as above.
        unsafe { self.gl.delete_buffer(self.staged_sums) };
    }
}

/// The CUDA consumer: a PTX checksum kernel on the shared buffers, ordered by the timelines
/// imported into CUDA; for the staged pipeline, memory from `cuMemAlloc`.
#[cfg(feature = "cuda")]
pub mod cuda {
    use std::ffi::c_void;

    use lava_flow::cuda::{Context, CudaBuffer, CudaTimeline, DeviceBuffer, DeviceMemory, Module, Stream};
    use lava_flow::{MemoryAllocator, Result};

    use super::{Consumer, Handoff, Options, Shared};

    /// The demo's and the benchmark's kernels (PTX, JIT-compiled by the driver).
    pub const KERNELS: &str = include_str!("kernels.ptx");

    /// Threads per block of the kernels (a multiple of 32: the checksum reduces per warp).
    const BLOCK: u32 = 256;

    /// Queues `checksum(words, count, sum)`: `*sum += words[0] + ... + words[count - 1]`.
    pub fn launch_checksum(module: &Module, stream: &Stream, words: u64, count: u32, sum: u64) -> Result<()> {
        let function = module.function("checksum")?;
        let (mut words, mut count, mut sum) = (words, count, sum);
        let mut params = [
            (&raw mut words).cast::<c_void>(),
            (&raw mut count).cast::<c_void>(),
            (&raw mut sum).cast::<c_void>(),
        ];
        let grid = count.div_ceil(BLOCK).clamp(1, 4096);
        // SAFETY: one pointer per parameter, of the kernel's types (u64, u32, u64); the caller's
        // `words` (count u32s) and `sum` (one u32) are device memory that outlives the launch.
        unsafe { function.launch(stream, (grid, 1, 1), (BLOCK, 1, 1), &mut params) }
    }

    /// What the CUDA consumer uses, imported into its context.
    pub struct Imports<'a> {
        pub frames: Vec<CudaBuffer<'a>>,
        pub sums: CudaBuffer<'a>,
        pub produced: CudaTimeline<'a>,
        pub consumed: CudaTimeline<'a>,
    }

    pub struct CudaConsumer<'a> {
        ctx: Context,
        stream: Stream,
        module: Module,
        frames: Vec<CudaBuffer<'a>>,
        sums: CudaBuffer<'a>,
        produced: CudaTimeline<'a>,
        consumed: CudaTimeline<'a>,
        staged_frame: DeviceBuffer,
        staged_sums: DeviceBuffer,
        frame_count: u32,
        words: u32,
    }

    impl<'a> CudaConsumer<'a> {
        pub(super) fn new(
            allocator: &MemoryAllocator,
            options: &Options,
            shared: &Shared<'a>,
        ) -> Result<Self> {
            let ctx = Context::for_device(allocator, options.device_id)?;
            let imports = Imports {
                frames: shared.frames.iter().map(|b| ctx.import_buffer(b)).collect::<Result<_>>()?,
                sums: ctx.import_buffer(shared.sums)?,
                produced: ctx.import_timeline(shared.produced)?,
                consumed: ctx.import_timeline(shared.consumed)?,
            };
            Self::from_imports(ctx, imports, options.frames, options.frame_bytes, shared.words)
        }

        /// The consumer over memory and timelines already imported into `ctx` (from this
        /// process's buffers, or from handles another process sent).
        pub fn from_imports(
            ctx: Context,
            imports: Imports<'a>,
            frame_count: u32,
            frame_bytes: u64,
            words: u32,
        ) -> Result<Self> {
            let staged_sums = ctx.alloc(u64::from(frame_count) * 4)?;
            staged_sums.fill(0, frame_count as usize * 4, 0)?;
            Ok(CudaConsumer {
                stream: ctx.stream()?,
                module: ctx.load_ptx(KERNELS)?,
                frames: imports.frames,
                sums: imports.sums,
                produced: imports.produced,
                consumed: imports.consumed,
                staged_frame: ctx.alloc(frame_bytes)?,
                staged_sums,
                frame_count,
                words,
                ctx,
            })
        }
    }

    impl Consumer for CudaConsumer<'_> {
        fn describe(&self) -> String {
            let name = lava_flow::cuda::devices()
                .ok()
                .and_then(|d| d.into_iter().find(|d| d.uuid == self.ctx.uuid()))
                .map_or_else(|| "?".to_owned(), |d| d.name);
            format!("CUDA kernel on {name}")
        }

        fn gpu_semaphores(&self) -> bool {
            true
        }

        fn consume(&mut self, f: u32, slot: usize, handoff: Handoff) -> Result<()> {
            if let Some(v) = handoff.wait {
                self.produced.wait(v, &self.stream)?;
            }
            let sum = self.sums.device_ptr() + u64::from(f) * 4;
            launch_checksum(&self.module, &self.stream, self.frames[slot].device_ptr(), self.words, sum)?;
            match handoff.signal {
                Some(v) => self.consumed.signal(v, &self.stream),
                None => Ok(()),
            }
        }

        fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
            // The previous frame's kernel reads the staging memory: let it finish first
            // (cuMemcpyHtoD is not ordered with a non-blocking stream).
            self.stream.synchronize()?;
            self.staged_frame.copy_from_host(0, host)?;
            let sum = self.staged_sums.device_ptr() + u64::from(f) * 4;
            launch_checksum(&self.module, &self.stream, self.staged_frame.device_ptr(), self.words, sum)
        }

        fn staged_sums(&mut self) -> Result<Vec<u8>> {
            self.stream.synchronize()?;
            let mut out = vec![0u8; self.frame_count as usize * 4];
            self.staged_sums.copy_to_host(0, &mut out)?;
            Ok(out)
        }

        fn consume_alone(&mut self, f: u32, slot: usize) -> Result<()> {
            let sum = self.sums.device_ptr() + u64::from(f) * 4;
            launch_checksum(&self.module, &self.stream, self.frames[slot].device_ptr(), self.words, sum)
        }

        fn finish(&mut self) -> Result<()> {
            self.stream.synchronize()
        }
    }
}

/// The Vulkan consumer: a second `VkDevice` on the same GPU (its own `MemoryAllocator`, as another
/// process would have) imports the frames and the sums (`export` → `import_memory`) and the two
/// timelines where the driver exports them, and checksums with a compute shader. Where timelines
/// cannot be exported (lavapipe), it orders through the host, as the GL fallback does.
struct VkSide<'a> {
    other: MemoryAllocator,
    pass: Compute,
    /// The frames and the sums as the second device sees them (kept alive for the pass).
    _imported: Vec<Buffer>,
    staged_frame: Buffer,
    staged_sums: Buffer,
    /// The timelines imported into the second device, or `None` for the host fallback.
    imported_timelines: Option<(TimelineSemaphore, TimelineSemaphore)>,
    /// The shared timelines, for the host fallback.
    produced: &'a TimelineSemaphore,
    consumed: &'a TimelineSemaphore,
    /// The second device's own timeline, for work it waits for itself.
    done: TimelineSemaphore,
    next: u64,
    frame_count: u32,
    words: u32,
    staged_slot: usize,
}

impl<'a> VkSide<'a> {
    fn new(mut other: MemoryAllocator, shared: &Shared<'a>, options: &Options) -> Result<Self> {
        let id = options.device_id;
        let mut imported = Vec::new();
        for b in shared.frames.iter().chain([shared.sums]) {
            imported.push(other.import_memory(id, b.export()?)?);
        }
        let location = MemoryLocation::GpuVulkan { device_id: id };
        let staged_frame = other.allocate(options.frame_bytes, location)?;
        let staged_sums = other.allocate(u64::from(options.frames) * 4, location)?;
        staged_sums.write(0, &vec![0; options.frames as usize * 4])?;
        let (frames, sums) = imported.split_at(imported.len() - 1);
        let mut slots: Vec<Vec<&Buffer>> = frames.iter().map(|f| vec![f, &sums[0]]).collect();
        slots.push(vec![&staged_frame, &staged_sums]);
        let staged_slot = slots.len() - 1;
        let pass = Compute::new(&other, id, Shader::Wgsl(VK_CHECKSUM), &slots, shared.words.div_ceil(256))?;
        let mut import = |t: &TimelineSemaphore| -> Result<Option<TimelineSemaphore>> {
            match t.export() {
                Ok(e) => other.import_timeline_semaphore(id, e).map(Some),
                Err(lava_flow::Error::Unsupported { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let imported_timelines = match (import(shared.produced)?, import(shared.consumed)?) {
            (Some(p), Some(c)) => Some((p, c)),
            _ => None,
        };
        let done = other.timeline_semaphore(id)?;
        Ok(VkSide {
            other,
            pass,
            _imported: imported,
            staged_frame,
            staged_sums,
            imported_timelines,
            produced: shared.produced,
            consumed: shared.consumed,
            done,
            next: 0,
            frame_count: options.frames,
            words: shared.words,
            staged_slot,
        })
    }

    /// A checksum of `slot` into `sums[f]` signalling the second device's own timeline; returns
    /// the value it signals.
    fn dispatch_alone(&mut self, f: u32, slot: usize) -> Result<u64> {
        self.next += 1;
        self.pass.run(&self.other, [f, self.words], slot, None, Some((&self.done, self.next)))?;
        Ok(self.next)
    }
}

impl Consumer for VkSide<'_> {
    fn describe(&self) -> String {
        let name = self.other.device(self.pass.device_id).map_or_else(|_| "?".to_owned(), |d| d.name.clone());
        format!("Vulkan compute on a second VkDevice of {name}")
    }

    fn gpu_semaphores(&self) -> bool {
        self.imported_timelines.is_some()
    }

    fn consume(&mut self, f: u32, slot: usize, handoff: Handoff) -> Result<()> {
        if let Some((produced, consumed)) = &self.imported_timelines {
            return self.pass.run(
                &self.other,
                [f, self.words],
                slot,
                handoff.wait.map(|v| (produced, v)),
                handoff.signal.map(|v| (consumed, v)),
            );
        }
        if let Some(v) = handoff.wait {
            self.produced.wait(v, Duration::from_secs(60))?;
        }
        let done = self.dispatch_alone(f, slot)?;
        if let Some(v) = handoff.signal {
            self.done.wait(done, Duration::from_secs(60))?;
            self.consumed.signal(v)?;
        }
        Ok(())
    }

    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        // The previous staged dispatch reads the staging frame: it is waited for before the next
        // upload (as the other consumers' staged paths do).
        self.staged_frame.write(0, host)?;
        let done = self.dispatch_alone(f, self.staged_slot)?;
        self.done.wait(done, Duration::from_secs(60))
    }

    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.frame_count as usize * 4];
        self.staged_sums.read(0, &mut out)?;
        Ok(out)
    }

    fn consume_alone(&mut self, f: u32, slot: usize) -> Result<()> {
        self.dispatch_alone(f, slot).map(|_| ())
    }

    fn finish(&mut self) -> Result<()> {
        self.done.wait(self.next, Duration::from_secs(60))?;
        // Submissions that waited for the first device's values: a fenced wait lets the
        // validation layer see them complete.
        self.other.wait_idle(self.pass.device_id)
    }
}

/// The OpenCL consumer: the shared buffers imported into OpenCL, a kernel built from source at run
/// time. The demo orders frames with timelines, which OpenCL cannot import (its semaphores are
/// binary), so each frame is ordered through the host: wait for the producer's value, run,
/// `clFinish`, signal.
#[cfg(feature = "opencl")]
mod opencl {
    use std::time::Duration;

    use lava_flow::opencl::{ClBuffer, Context, Program, Queue};
    use lava_flow::{Buffer, Result, TimelineSemaphore};

    use super::{Consumer, Handoff, Options, Shared};

    const CHECKSUM: &str = r#"
__kernel void checksum(__global const uint* words, ulong offset, uint count,
                       __global uint* sums, ulong sums_offset, uint frame) {
    __local uint partial[256];
    uint i = get_global_id(0);
    uint l = get_local_id(0);
    partial[l] = i < count ? words[offset + i] : 0u;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = 128; s > 0; s >>= 1) {
        if (l < s) { partial[l] += partial[l + s]; }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l == 0) { atomic_add(&sums[sums_offset + frame], partial[0]); }
}
"#;

    pub(super) struct ClSide<'c> {
        cl: &'c Context,
        queue: Queue<'c>,
        program: Program<'c>,
        frames: Vec<ClBuffer<'c>>,
        sums: ClBuffer<'c>,
        staged_frame: ClBuffer<'c>,
        staged_sums: ClBuffer<'c>,
        produced: &'c TimelineSemaphore,
        consumed: &'c TimelineSemaphore,
        frame_count: u32,
        words: u32,
    }

    impl<'c> ClSide<'c> {
        /// `staged` is a frame-sized and a sums-sized lava-flow buffer for the staged pipeline
        /// (written from host memory through OpenCL there, never shared with Vulkan).
        pub(super) fn new(
            cl: &'c Context,
            shared: &Shared<'c>,
            staged: &'c [Buffer; 2],
            options: &Options,
        ) -> Result<Self> {
            let queue = cl.queue()?;
            let staged_sums = cl.import_buffer(&staged[1])?;
            staged_sums.write(&queue, 0, &vec![0; options.frames as usize * 4])?;
            Ok(ClSide {
                program: cl.build(CHECKSUM)?,
                frames: shared.frames.iter().map(|b| cl.import_buffer(b)).collect::<Result<_>>()?,
                sums: cl.import_buffer(shared.sums)?,
                staged_frame: cl.import_buffer(&staged[0])?,
                staged_sums,
                produced: shared.produced,
                consumed: shared.consumed,
                frame_count: options.frames,
                words: shared.words,
                queue,
                cl,
            })
        }

        /// Queues the checksum of `frame` into `sums[f]`, between acquire and release.
        fn checksum(&self, f: u32, frame: &ClBuffer<'_>, sums: &ClBuffer<'_>) -> Result<()> {
            let mut kernel = self.program.kernel("checksum")?;
            kernel.arg_buffer(0, frame)?;
            kernel.arg_u64(1, frame.offset() / 4)?;
            kernel.arg_u32(2, self.words)?;
            kernel.arg_buffer(3, sums)?;
            kernel.arg_u64(4, sums.offset() / 4)?;
            kernel.arg_u32(5, f)?;
            self.queue.acquire(&[frame, sums])?;
            let global = self.words.div_ceil(256) as usize * 256;
            self.queue.launch(&kernel, global, Some(256))?;
            self.queue.release(&[frame, sums])
        }
    }

    impl Consumer for ClSide<'_> {
        fn describe(&self) -> String {
            format!("OpenCL kernel on {} ({})", self.cl.device().name, self.cl.device().platform)
        }

        fn gpu_semaphores(&self) -> bool {
            false
        }

        fn consume(&mut self, f: u32, slot: usize, handoff: Handoff) -> Result<()> {
            if let Some(v) = handoff.wait {
                self.produced.wait(v, Duration::from_secs(60))?;
            }
            self.checksum(f, &self.frames[slot], &self.sums)?;
            match handoff.signal {
                Some(v) => {
                    self.queue.finish()?;
                    self.consumed.signal(v)
                }
                None => Ok(()),
            }
        }

        fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
            // A blocking write: the previous frame's kernel, queued before it, is done first.
            self.staged_frame.write(&self.queue, 0, host)?;
            self.checksum(f, &self.staged_frame, &self.staged_sums)
        }

        fn staged_sums(&mut self) -> Result<Vec<u8>> {
            let mut out = vec![0u8; self.frame_count as usize * 4];
            self.staged_sums.read(&self.queue, 0, &mut out)?;
            Ok(out)
        }

        fn consume_alone(&mut self, f: u32, slot: usize) -> Result<()> {
            self.checksum(f, &self.frames[slot], &self.sums)
        }

        fn finish(&mut self) -> Result<()> {
            self.queue.finish()
        }
    }
}
