//! The Vulkan pieces the demo and the benchmarks both record with.

use lava_flow::ash::vk;

/// `.map_err(vk_err("vkCall"))`: lava-flow's error for a failed Vulkan call of the command's own.
pub fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> crate::error::Error {
    move |r| lava_flow::Error::vk(call, r).into()
}

/// Records a global barrier that makes the writes of `src_stage`/`src_access` so far available
/// and visible to every later command (and, through the semaphore signal that follows, to the
/// other API).
///
/// # Safety
/// `cmd` is a command buffer of `device` in the recording state.
pub unsafe fn barrier_to_all(
    device: &lava_flow::ash::Device,
    cmd: vk::CommandBuffer,
    src_stage: vk::PipelineStageFlags,
    src_access: vk::AccessFlags,
) {
    let barrier = vk::MemoryBarrier::default()
        .src_access_mask(src_access)
        .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE);
    // SAFETY: the caller's contract.
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            src_stage,
            vk::PipelineStageFlags::ALL_COMMANDS,
            vk::DependencyFlags::empty(),
            &[barrier],
            &[],
            &[],
        );
    }
}
