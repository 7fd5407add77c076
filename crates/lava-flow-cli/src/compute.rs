//! A Vulkan compute pass on lava-flow's device: the demo's producer, its second-device
//! consumer, and the benchmarks' producer all record with it.

use lava_flow::ash::vk;
use lava_flow::{Buffer, MemoryAllocator, Submission, TimelineSemaphore};

use crate::error::{Error, Result};
use crate::vk::vk_err;

/// Push constants of every pass: frame, word count, work rounds, mask (0; see
/// `shaders/producer.comp`).
pub type Push = [u32; 4];

/// A Vulkan compute pass: one shader, one descriptor set per slot (binding `i` of a set is its
/// `i`-th buffer), two `uint` push constants, and a ring of command buffers with fences. The
/// producer writes frames with it; the Vulkan consumer checksums them.
pub struct Compute {
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
    pub device_id: u32,
    /// Submissions so far: which ring entry the next one uses.
    submitted: std::sync::atomic::AtomicUsize,
}

const RING: usize = 8;

/// A compute shader's source, GLSL or WGSL (naga compiles both to SPIR-V).
pub enum Shader<'s> {
    Glsl(&'s str),
    Wgsl(&'s str),
}

/// SPIR-V of a compute shader.
pub fn compile(source: Shader<'_>) -> Result<Vec<u32>> {
    let invalid = Error::Shader;
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
    /// A pass of `source` over one descriptor set per slot (`slots[s][i]` at binding `i`),
    /// dispatching `groups` workgroups.
    pub fn new(
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
            let push = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .size(std::mem::size_of::<Push>() as u32)];
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
    /// for `after` (e.g. the consumer's release of the buffer), dispatch, then signal `signal`.
    pub fn run(
        &self,
        allocator: &MemoryAllocator,
        push: Push,
        slot: usize,
        after: Option<(&TimelineSemaphore, u64)>,
        signal: Option<(&TimelineSemaphore, u64)>,
    ) -> Result<()> {
        let recorded = self.record(push, slot)?;
        let mut submission = Submission::new();
        if let Some((sem, v)) = after {
            submission = submission.wait(sem, v);
        }
        if let Some((sem, v)) = signal {
            submission = submission.signal(sem, v);
        }
        Ok(allocator.submit(self.device_id, &recorded.submission(submission))?)
    }

    /// Records one dispatch with `push` constants over the buffers of `slot` into the next
    /// command buffer of the pass's ring, for one submission ([`Recorded::submission`]).
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one command buffer's recording")]
    pub fn record(&self, push: Push, slot: usize) -> Result<Recorded> {
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
        Ok(Recorded { cmds: [cmd], fence })
    }
}

/// One recorded dispatch of a [`Compute`] pass, not yet submitted: submit it once.
pub struct Recorded {
    cmds: [vk::CommandBuffer; 1],
    fence: vk::Fence,
}

impl Recorded {
    /// `base` (its waits and signals: a ring's step, say) with this dispatch's command buffer
    /// and fence.
    pub fn submission<'s>(&'s self, base: Submission<'s>) -> Submission<'s> {
        // SAFETY: the command buffer was recorded on the pass's device; it stays valid until the
        // pass's drop, which waits for the device first.
        let submission = unsafe { base.command_buffers(&self.cmds) };
        // SAFETY: the fence was reset for this submission; it lives as long as the command buffer.
        unsafe { submission.fence(self.fence) }
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
                eprintln!("lava-flow: vkDeviceWaitIdle failed: {e}");
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
