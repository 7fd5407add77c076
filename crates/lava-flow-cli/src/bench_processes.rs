//! The rows across processes (issue 13): a peer process — this program again, as the hidden
//! `bench-peer` command — that has only CUDA (it never creates a Vulkan device), reached over a
//! Unix socket with `lava_flow::ipc`.
//!
//! g. Vulkan → CUDA → Vulkan round trips on one timeline with CUDA in the peer process, against
//!    the same pattern in one process.
//! h. Handing a 256 MiB frame to the peer: the fd and descriptor, then the peer's CUDA import and
//!    mapping, against sending the frame's bytes through the socket (a pipe's cost).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use lava_flow::cuda::Context;
use lava_flow::{ipc, AllocationOptions, MemoryAllocator, MemoryLocation, Submission};

use crate::error::{Error, Result};

use crate::bench::{human, median, per_iter, Options, Row};
use crate::peer::{io, put};

/// What the peer is asked to do: one byte, then the request's own data.
const ROUND_TRIPS: u8 = b'R';
const HAND_OFF: u8 = b'H';
const BYTES: u8 = b'B';
const QUIT: u8 = b'Q';

/// An error of the benchmark's own protocol with the peer.
fn peer_error(what: String) -> Error {
    Error::Protocol(format!("bench peer: {what}"))
}

fn get<const N: usize>(stream: &UnixStream) -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    crate::peer::get(stream, &mut buf)?;
    Ok(buf)
}

fn expect_ack(stream: &UnixStream, what: &str) -> Result<()> {
    match get::<1>(stream)? {
        [b'k'] => Ok(()),
        [other] => Err(peer_error(format!("{what}: answered {other:#x}"))),
    }
}

/// The peer process, connected and ready.
struct Peer {
    child: Child,
    stream: UnixStream,
}

impl Peer {
    fn spawn() -> Result<Self> {
        let (child, stream) = crate::peer::spawn("bench-peer")?;
        Ok(Peer { child, stream })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = put(&self.stream, &[QUIT]);
        if let Err(e) = self.child.wait() {
            eprintln!("bench peer: {e}");
        }
    }
}

/// Rows g and h, where CUDA has the device; a printed reason otherwise.
pub fn rows(
    allocator: &mut MemoryAllocator,
    options: &Options,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let Some(ctx) = context_or_skip(allocator, options.device_id, "cross-process rows") else {
        return Ok(());
    };
    let peer = Peer::spawn()?;
    round_trips(allocator, options, &ctx, &peer, reps, rows)?;
    hand_off(allocator, options, &peer, reps, rows)
}

/// The CUDA context of `device_id`, or `None` with the reason printed (`rows` skipped).
pub fn context_or_skip(allocator: &MemoryAllocator, device_id: u32, rows: &str) -> Option<Context> {
    Context::for_device(allocator, device_id).map_err(|e| println!("{rows} skipped: {e}\n")).ok()
}

/// g. The peer's CUDA stream waits for 2i and signals 2i + 1; Vulkan here waits for 2i + 1 and
/// signals 2i + 2. Both sides queue everything at once; the host waits only for the end.
fn round_trips(
    allocator: &mut MemoryAllocator,
    options: &Options,
    ctx: &Context,
    peer: &Peer,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = if options.quick { 200u64 } else { 2000 };
    let device = options.device_id;
    let stream = ctx.stream()?;
    let one_process = median(reps, || one_process_round_trips(allocator, device, ctx, &stream, n))?;
    let two_processes = median(reps, || {
        let timeline = allocator.timeline_semaphore(device)?;
        put(&peer.stream, &[ROUND_TRIPS])?;
        put(&peer.stream, &n.to_le_bytes())?;
        ipc::send_semaphore(&peer.stream, &timeline.export()?)?;
        expect_ack(&peer.stream, "timeline imported")?;
        let start = Instant::now();
        put(&peer.stream, b"g")?;
        for i in 0..n {
            allocator
                .submit(device, &Submission::new().wait(&timeline, 2 * i + 1).signal(&timeline, 2 * i + 2))?;
        }
        timeline.wait(2 * n, Duration::from_secs(120))?;
        let us = per_iter(start.elapsed(), n as usize);
        expect_ack(&peer.stream, "round trips")?;
        allocator.wait_idle(device)?;
        Ok(us)
    })?;
    let group = "Vulkan → CUDA → Vulkan round trip, CUDA in another process";
    let base = Row::baseline(
        group,
        "both in one process (lava-flow submit + CudaTimeline)".into(),
        one_process,
        "µs",
    );
    let row = Row::against(
        &base,
        "CUDA in a peer process (timeline sent with ipc::send_semaphore)".into(),
        two_processes,
    );
    rows.push(base);
    rows.push(row);
    Ok(())
}

/// `n` Vulkan → CUDA → Vulkan round trips on a new timeline, both sides in this process and
/// queued at once (CUDA waits for 2i and signals 2i + 1, Vulkan waits for 2i + 1 and signals
/// 2i + 2), the host waiting only for the end: µs per round trip.
pub fn one_process_round_trips(
    allocator: &mut MemoryAllocator,
    device: u32,
    ctx: &Context,
    stream: &lava_flow::cuda::Stream,
    n: u64,
) -> Result<f64> {
    let timeline = allocator.timeline_semaphore(device)?;
    let sync = ctx.import_timeline(&timeline)?;
    let start = Instant::now();
    for i in 0..n {
        if i > 0 {
            sync.wait(2 * i, stream)?;
        }
        sync.signal(2 * i + 1, stream)?;
        allocator
            .submit(device, &Submission::new().wait(&timeline, 2 * i + 1).signal(&timeline, 2 * i + 2))?;
    }
    timeline.wait(2 * n, Duration::from_secs(120))?;
    let us = per_iter(start.elapsed(), n as usize);
    allocator.wait_idle(device)?;
    Ok(us)
}

/// h. A 256 MiB frame to the peer: zero-copy (fd + descriptor; the peer imports and maps it in
/// CUDA, then answers) against its bytes through the socket (the peer reads them all, then
/// answers).
fn hand_off(
    allocator: &mut MemoryAllocator,
    options: &Options,
    peer: &Peer,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let size = 256u64 << 20;
    let location = MemoryLocation::GpuVulkan { device_id: options.device_id };
    let frame = allocator.allocate_with(size, location, AllocationOptions::default().dedicated(true))?;
    let bytes = vec![0x5Au8; size as usize];
    let through_socket = median(reps, || {
        let start = Instant::now();
        put(&peer.stream, &[BYTES])?;
        put(&peer.stream, &size.to_le_bytes())?;
        put(&peer.stream, &bytes)?;
        expect_ack(&peer.stream, "bytes")?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    })?;
    let zero_copy = median(reps, || {
        let start = Instant::now();
        let exported = frame.export()?;
        put(&peer.stream, &[HAND_OFF])?;
        ipc::send_memory(&peer.stream, &exported)?;
        expect_ack(&peer.stream, "import")?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    })?;
    let group = "256 MiB frame to another process";
    let base = Row::baseline(
        group,
        format!("{} of bytes through the Unix socket (what a pipe costs)", human(size)),
        through_socket,
        "ms",
    );
    let row = Row::against(
        &base,
        "zero-copy: ipc::send_memory, the peer's cuImportExternalMemory + mapping".into(),
        zero_copy,
    );
    rows.push(base);
    rows.push(row);
    Ok(())
}

/// The peer: `lava-flow bench-peer SOCKET`. Only CUDA: it never creates a Vulkan device.
pub fn peer(socket: &Path) -> Result<()> {
    let stream = UnixStream::connect(socket).map_err(io("connect"))?;
    let mut ctx: Option<Context> = None;
    let mut context_for = |uuid| -> Result<Context> {
        if let Some(c) = &ctx {
            return Ok(c.clone());
        }
        let c = Context::for_uuid(uuid)?;
        ctx = Some(c.clone());
        Ok(c)
    };
    loop {
        match get::<1>(&stream)? {
            [QUIT] => return Ok(()),
            [ROUND_TRIPS] => {
                let n = u64::from_le_bytes(get::<8>(&stream)?);
                let exported = ipc::recv_semaphore(&stream)?;
                let ctx = context_for(exported.descriptor().device_uuid)?;
                let sync = ctx.import_exported_semaphore(exported)?;
                let cuda_stream = ctx.stream()?;
                put(&stream, b"k")?;
                get::<1>(&stream)?;
                for i in 0..n {
                    if i > 0 {
                        sync.wait(2 * i, &cuda_stream)?;
                    }
                    sync.signal(2 * i + 1, &cuda_stream)?;
                }
                cuda_stream.synchronize()?;
                put(&stream, b"k")?;
            }
            [HAND_OFF] => {
                let exported = ipc::recv_memory(&stream)?;
                let ctx = context_for(exported.descriptor().device_uuid)?;
                let view = ctx.import_memory(exported)?;
                put(&stream, b"k")?;
                drop(view);
            }
            [BYTES] => {
                let len = u64::from_le_bytes(get::<8>(&stream)?);
                let mut bytes = vec![0u8; len as usize];
                (&stream).read_exact(&mut bytes).map_err(io("read"))?;
                put(&stream, b"k")?;
            }
            [other] => return Err(peer_error(format!("unknown request {other:#x}"))),
        }
    }
}
