//! The CUDA kernels of `demo` and `bench` (PTX in `shaders/kernels.ptx`, JIT-compiled by the
//! driver: the command needs no CUDA toolkit) and their launches.

use std::ffi::c_void;

use lava_flow::cuda::{Module, Stream};

use crate::error::Result;

/// The kernels' PTX.
pub const KERNELS: &str = include_str!("shaders/kernels.ptx");

/// Threads per block of the kernels (a multiple of 32: the checksums reduce per warp).
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
    Ok(unsafe { function.launch(stream, (grid, 1, 1), (BLOCK, 1, 1), &mut params) }?)
}

/// Queues `checksum_work(words, count, sum, rounds, 0)`: the same sum as [`launch_checksum`],
/// after `rounds` rounds of calibrated work per word that leave it unchanged. `rounds == 0` is
/// the plain checksum.
pub fn launch_checksum_work(
    module: &Module,
    stream: &Stream,
    words: u64,
    count: u32,
    sum: u64,
    rounds: u32,
) -> Result<()> {
    if rounds == 0 {
        return launch_checksum(module, stream, words, count, sum);
    }
    let function = module.function("checksum_work")?;
    let (mut words, mut count, mut sum, mut rounds, mut mask) = (words, count, sum, rounds, 0u32);
    let mut params = [
        (&raw mut words).cast::<c_void>(),
        (&raw mut count).cast::<c_void>(),
        (&raw mut sum).cast::<c_void>(),
        (&raw mut rounds).cast::<c_void>(),
        (&raw mut mask).cast::<c_void>(),
    ];
    let grid = count.div_ceil(BLOCK).clamp(1, 4096);
    // SAFETY: one pointer per parameter, of the kernel's types (u64, u32, u64, u32, u32); the
    // caller's `words` (count u32s) and `sum` (one u32) are device memory that outlives the launch.
    Ok(unsafe { function.launch(stream, (grid, 1, 1), (BLOCK, 1, 1), &mut params) }?)
}

/// Queues `copy16(dst, src, bytes / 16)` (for `bench`, Unix only).
#[cfg(unix)]
pub fn launch_copy(module: &Module, stream: &Stream, dst: u64, src: u64, bytes: u64) -> Result<()> {
    let function = module.function("copy16")?;
    let (mut dst, mut src, mut count) = (dst, src, bytes / 16);
    let mut params =
        [(&raw mut dst).cast::<c_void>(), (&raw mut src).cast::<c_void>(), (&raw mut count).cast::<c_void>()];
    let grid = count.div_ceil(256).clamp(1, 4096) as u32;
    // SAFETY: one pointer per parameter, of the kernel's types (u64 ×3); both ranges are
    // `bytes` of device memory the caller keeps alive until the stream is synchronised.
    Ok(unsafe { function.launch(stream, (grid, 1, 1), (256, 1, 1), &mut params) }?)
}
