//! `lava-flow`: what this machine can share between Vulkan, CUDA, OpenGL and OpenCL.
//!
//! On Windows: `info` and `demo` (one process). `bench` (its raw baselines are fd calls, its
//! cross-process rows use Unix sockets) and `demo --processes 2` (Unix sockets) are Unix only.

#[cfg(unix)]
mod bench;
#[cfg(all(unix, feature = "cuda"))]
mod bench_cuda;
#[cfg(all(unix, feature = "cuda"))]
mod bench_peer;
#[cfg(unix)]
mod bench_pipeline;
#[cfg(all(unix, feature = "cuda"))]
mod bench_processes;
#[cfg(unix)]
mod bench_transfers;
#[cfg(all(unix, feature = "wgpu"))]
mod bench_wgpu;
mod compute;
mod demo;
mod error;
mod info;
#[cfg(feature = "cuda")]
mod kernels;
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
        /// Only the pipeline rows: the ring against its measured ceiling (with latency) and the
        /// hand-off knobs.
        #[arg(long)]
        pipeline_only: bool,
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
    /// memory, each side alone and both at once without hand-offs, for comparison.
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
        /// The consumer (each but Vulkan needs its feature in the build).
        #[arg(long, value_enum, default_value_t = demo::ConsumerKind::Auto)]
        consumer: demo::ConsumerKind,
        /// The Vulkan device.
        #[arg(long, default_value_t = 0)]
        device: u32,
        /// 2: the consumer runs in a child process that receives the ring and the timelines over
        /// a Unix socket and imports them by their handles alone (CUDA consumer; Unix only).
        #[arg(long, default_value_t = 1)]
        processes: u32,
        /// At most this many frames queued beyond the last one consumed (the host waits; at
        /// least --batch). Default: only the ring bounds how far ahead the producer runs.
        #[arg(long)]
        ahead: Option<u32>,
        /// About this much GPU work per frame on each side, in milliseconds (a loop count
        /// calibrated on each side alone first).
        #[arg(long)]
        work_ms: Option<f64>,
        /// The global priority of the producer's Vulkan queue (VK_KHR/EXT_global_priority; a
        /// refused one fails the demo).
        #[arg(long, value_enum)]
        queue_priority: Option<QueuePriority>,
        /// The CUDA consumer's stream priority.
        #[arg(long, value_enum)]
        cuda_stream_priority: Option<demo::StreamPriority>,
        /// The CUDA consumer's context scheduling (CU_CTX_SCHED_*).
        #[arg(long, value_enum)]
        cuda_sched: Option<demo::CudaSched>,
    },
    /// The consumer process of `demo --processes 2` (started by `demo` itself).
    #[cfg(all(unix, feature = "cuda"))]
    #[command(hide = true)]
    DemoPeer {
        /// The Unix socket `demo` listens on.
        socket: std::path::PathBuf,
    },
}

/// A Vulkan queue's global priority, for `--queue-priority`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum QueuePriority {
    Low,
    Medium,
    High,
    Realtime,
}

impl From<QueuePriority> for lava_flow::QueueGlobalPriority {
    fn from(p: QueuePriority) -> Self {
        match p {
            QueuePriority::Low => lava_flow::QueueGlobalPriority::Low,
            QueuePriority::Medium => lava_flow::QueueGlobalPriority::Medium,
            QueuePriority::High => lava_flow::QueueGlobalPriority::High,
            QueuePriority::Realtime => lava_flow::QueueGlobalPriority::Realtime,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info::run(json).map_err(error::Error::from),
        #[cfg(unix)]
        Command::Bench { quick, json, device, transfers_only, wgpu_only, peer_only, pipeline_only } => {
            bench::run(&bench::Options {
                quick,
                json,
                device_id: device,
                transfers_only,
                wgpu_only,
                peer_only,
                pipeline_only,
            })
        }
        #[cfg(all(unix, feature = "cuda"))]
        Command::BenchPeer { socket } => bench_processes::peer(&socket),
        #[cfg(all(unix, feature = "cuda"))]
        Command::DemoPeer { socket } => demo::process::peer(&socket),
        Command::Demo {
            frames,
            buffers,
            batch,
            frame_kib,
            consumer,
            device,
            processes,
            ahead,
            work_ms,
            queue_priority,
            cuda_stream_priority,
            cuda_sched,
        } => demo::run(&demo::Options {
            buffers,
            batch,
            processes,
            ahead,
            work_ms,
            queue_priority: queue_priority.map(Into::into),
            stream_priority: cuda_stream_priority,
            cuda_sched,
            ..demo::Options::new(frames, frame_kib * 1024, consumer, device)
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lava-flow: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
