//! `lava-flow`: what this machine can share between Vulkan, CUDA, OpenGL and OpenCL.
//!
//! On Windows: `info` and `demo` (one process). `bench` (its raw baselines are fd calls, its
//! cross-process rows use Unix sockets) and `demo --processes 2` (Unix sockets) are Unix only.

#[cfg(unix)]
mod bench;
#[cfg(all(unix, feature = "cuda", feature = "opengl"))]
mod bench_cuda;
#[cfg(all(unix, feature = "cuda"))]
mod bench_peer;
#[cfg(all(unix, feature = "cuda"))]
mod bench_processes;
#[cfg(unix)]
mod bench_transfers;
#[cfg(all(unix, feature = "wgpu"))]
mod bench_wgpu;
#[cfg(feature = "opengl")]
mod demo;
#[cfg(all(unix, feature = "cuda", feature = "opengl"))]
mod demo_process;
mod info;
#[cfg(all(unix, feature = "cuda"))]
mod peer;
mod vk;

use clap::{Parser, Subcommand};

/// Zero-copy GPU memory sharing between Vulkan, CUDA, OpenGL and OpenCL.
#[derive(Parser)]
#[command(name = "lava-flow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per device: identity, and for each API whether it is present (or why not) and which
    /// external handle types it exports and imports.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Each lava-flow path beside its raw-API baseline, in one process: medians and ratios.
    #[cfg(unix)]
    Bench {
        /// A short run (fewer repetitions and frames).
        #[arg(long)]
        quick: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// The Vulkan device.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// Only the host-transfer rows (`write`/`read` beside raw copies).
        #[arg(long)]
        transfers_only: bool,
        /// Only the wgpu rows (a compute pass over a lava-flow buffer beside one over wgpu's
        /// own); needs the feature `wgpu`.
        #[arg(long)]
        wgpu_only: bool,
        /// Only the peer-copy rows (two GPUs: lava-flow buffers beside `cuMemAlloc` buffers);
        /// needs the feature `cuda`.
        #[arg(long)]
        peer_only: bool,
    },
    /// The peer process of `bench`'s cross-process rows (started by `bench` itself).
    #[cfg(all(unix, feature = "cuda"))]
    #[command(hide = true)]
    BenchPeer {
        /// The Unix socket `bench` listens on.
        socket: std::path::PathBuf,
    },
    /// A double-buffered zero-copy pipeline: Vulkan compute produces frames, a consumer checksums
    /// them in place, timeline semaphores order it all; then the same frames staged through host
    /// memory, for comparison.
    #[cfg(feature = "opengl")]
    Demo {
        /// Frames to produce.
        #[arg(long, default_value_t = 300)]
        frames: u32,
        /// Shared frame buffers in the ring (2 to 16; 2 is ping-pong). More buffers hide the
        /// latency of each cross-API semaphore hand-off.
        #[arg(long, default_value_t = 2)]
        buffers: u32,
        /// Frames per hand-off: the producer signals and the consumer waits once per this many
        /// frames (1: every frame); must divide --buffers. Batches amortise the cost of each
        /// cross-API semaphore hand-off.
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// Frame size in KiB.
        #[arg(long, default_value_t = 4096)]
        frame_kib: u64,
        /// The consumer: auto (CUDA where it has this device, else OpenGL), cuda, opengl, opencl
        /// (ordered through the host: OpenCL has no timelines) or vulkan (a second
        /// VkDevice importing the buffers and timelines).
        #[arg(long, default_value = "auto")]
        consumer: String,
        /// The Vulkan device.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// 2: the consumer runs in a child process that receives the ring and the timelines over
        /// a Unix socket and imports them by their handles alone (CUDA consumer; Unix only).
        #[arg(long, default_value_t = 1)]
        processes: u32,
    },
    /// The consumer process of `demo --processes 2` (started by `demo` itself).
    #[cfg(all(unix, feature = "cuda", feature = "opengl"))]
    #[command(hide = true)]
    DemoPeer {
        /// The Unix socket `demo` listens on.
        socket: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info::run(json),
        #[cfg(unix)]
        Command::Bench { quick, json, device, transfers_only, wgpu_only, peer_only } => {
            bench::run(&bench::Options {
                quick,
                json,
                device_id: device,
                transfers_only,
                wgpu_only,
                peer_only,
            })
        }
        #[cfg(all(unix, feature = "cuda"))]
        Command::BenchPeer { socket } => bench_processes::peer(&socket),
        #[cfg(all(unix, feature = "cuda", feature = "opengl"))]
        Command::DemoPeer { socket } => demo_process::peer(&socket),
        #[cfg(feature = "opengl")]
        Command::Demo { frames, buffers, batch, frame_kib, consumer, device, processes } => {
            demo::run(&demo::Options {
                frames,
                buffers,
                batch,
                frame_bytes: frame_kib * 1024,
                consumer,
                device_id: device,
                processes,
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lava-flow: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
