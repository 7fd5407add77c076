//! `lava-flow demo --processes 2`: the CUDA consumer in a child process (this program again, as
//! the hidden `demo-peer` command), which receives the ring of frame buffers, the sums buffer and
//! both timelines over a Unix socket (`lava_flow::ipc`), imports them into CUDA by their handles
//! alone (it never creates a Vulkan device), and then takes one small command per frame.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;

use lava_flow::cuda::Context;
use lava_flow::ipc;

use lava_flow::ring::End;
use lava_flow::FrameStep;

use super::cuda::{CudaConsumer, Imports, RingView};
use super::{Consumer, Options, Shared};
use crate::error::{Error, Result};
use crate::peer::{get, io, put};

/// The commands, one fixed-size record each: op, frame, slot, wait, signal.
const CONSUME: u8 = b'C';
const STAGED: u8 = b'S';
const STAGED_SUMS: u8 = b'G';
const ALONE: u8 = b'A';
const FINISH: u8 = b'F';
const QUIT: u8 = b'Q';
/// Work rounds per word from now on, in the frame field.
const ROUNDS: u8 = b'W';
const RECORD: usize = 1 + 4 + 4 + 8 + 8;

/// A consumer step's wait and signal (`None`: none), as a record carries them.
#[derive(Clone, Copy)]
struct Handoff {
    wait: Option<u64>,
    signal: Option<u64>,
}

impl From<&FrameStep> for Handoff {
    fn from(step: &FrameStep) -> Self {
        Handoff { wait: step.wait, signal: step.signal }
    }
}

fn record(op: u8, f: u32, slot: usize, handoff: Handoff) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0] = op;
    r[1..5].copy_from_slice(&f.to_le_bytes());
    r[5..9].copy_from_slice(&(slot as u32).to_le_bytes());
    r[9..17].copy_from_slice(&handoff.wait.unwrap_or(0).to_le_bytes());
    r[17..25].copy_from_slice(&handoff.signal.unwrap_or(0).to_le_bytes());
    r
}

const NO_HANDOFF: Handoff = Handoff { wait: None, signal: None };

/// The parent's side: a [`Consumer`] whose every call is a command to the child.
pub struct ProcessConsumer {
    child: Child,
    stream: UnixStream,
    description: String,
    frames: u32,
}

impl ProcessConsumer {
    /// Starts the child and sends it the ring's slots, the consumer's own frames, the sums and
    /// the ring's two timelines.
    pub fn spawn(options: &Options, shared: &Shared<'_>) -> Result<Self> {
        let (child, stream) = crate::peer::spawn("demo-peer")?;
        let mut consumer =
            ProcessConsumer { child, stream, description: String::new(), frames: options.frames };
        let s = &consumer.stream;
        let frames = shared.frames();
        put(s, &(frames.len() as u32).to_le_bytes())?;
        put(s, &options.frames.to_le_bytes())?;
        put(s, &options.frame_bytes.to_le_bytes())?;
        put(s, &shared.words.to_le_bytes())?;
        for frame in frames {
            ipc::send_memory(s, &frame.export()?)?;
        }
        ipc::send_memory(s, &shared.sums.export()?)?;
        ipc::send_semaphore(s, &shared.ring.written().export()?)?;
        ipc::send_semaphore(s, &shared.ring.released().export()?)?;
        let mut len = [0u8; 4];
        get(s, &mut len)?;
        let mut text = vec![0u8; u32::from_le_bytes(len) as usize];
        get(s, &mut text)?;
        consumer.description = format!("{} in a child process", String::from_utf8_lossy(&text));
        Ok(consumer)
    }
}

impl Consumer for ProcessConsumer {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn gpu_semaphores(&self) -> bool {
        true
    }

    fn set_rounds(&mut self, rounds: u32) -> Result<()> {
        put(&self.stream, &record(ROUNDS, rounds, 0, NO_HANDOFF))
    }

    fn consume(&mut self, f: u32, step: &FrameStep) -> Result<()> {
        put(&self.stream, &record(CONSUME, f, step.slot, step.into()))
    }

    /// The staged path across processes: the frame's bytes through the socket.
    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        put(&self.stream, &record(STAGED, f, 0, NO_HANDOFF))?;
        put(&self.stream, host)
    }

    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        put(&self.stream, &record(STAGED_SUMS, 0, 0, NO_HANDOFF))?;
        let mut sums = vec![0u8; self.frames as usize * 4];
        get(&self.stream, &mut sums)?;
        Ok(sums)
    }

    fn consume_alone(&mut self, f: u32, own: usize) -> Result<()> {
        put(&self.stream, &record(ALONE, f, own, NO_HANDOFF))
    }

    fn finish(&mut self) -> Result<()> {
        put(&self.stream, &record(FINISH, 0, 0, NO_HANDOFF))?;
        let mut ack = [0u8; 1];
        get(&self.stream, &mut ack)
    }
}

impl Drop for ProcessConsumer {
    fn drop(&mut self) {
        let _ = put(&self.stream, &record(QUIT, 0, 0, NO_HANDOFF));
        match self.child.wait() {
            Ok(status) if !status.success() => eprintln!("demo consumer process: {status}"),
            Err(e) => eprintln!("demo consumer process: {e}"),
            Ok(_) => {}
        }
    }
}

/// The child: `lava-flow demo-peer SOCKET`. CUDA only.
pub fn peer(socket: &Path) -> Result<()> {
    let stream = UnixStream::connect(socket).map_err(io("connect"))?;
    let mut word = [0u8; 4];
    let mut long = [0u8; 8];
    get(&stream, &mut word)?;
    let buffers = u32::from_le_bytes(word);
    get(&stream, &mut word)?;
    let frames = u32::from_le_bytes(word);
    get(&stream, &mut long)?;
    let frame_bytes = u64::from_le_bytes(long);
    get(&stream, &mut word)?;
    let words = u32::from_le_bytes(word);
    let received: Vec<_> =
        (0..buffers).map(|_| ipc::recv_memory(&stream)).collect::<lava_flow::Result<_>>()?;
    let sums = ipc::recv_memory(&stream)?;
    let (written, released) = (ipc::recv_semaphore(&stream)?, ipc::recv_semaphore(&stream)?);
    let ctx = Context::for_uuid(sums.descriptor().device_uuid)?;
    // The ring's slots, then as many of the consumer's own frames.
    let mut slots: Vec<_> =
        received.into_iter().map(|m| ctx.import_memory(m)).collect::<lava_flow::Result<_>>()?;
    let own = slots.split_off(slots.len() / 2);
    let imports = Imports {
        ring: RingView::Imported {
            slots,
            written: ctx.import_exported_semaphore(written)?,
            released: ctx.import_exported_semaphore(released)?,
        },
        own,
        sums: ctx.import_memory(sums)?,
    };
    let mut consumer = CudaConsumer::from_imports(ctx, imports, frames, frame_bytes, words)?;
    let description = consumer.describe();
    put(&stream, &(description.len() as u32).to_le_bytes())?;
    put(&stream, description.as_bytes())?;
    let mut host = vec![0u8; frame_bytes as usize];
    loop {
        let mut r = [0u8; RECORD];
        get(&stream, &mut r)?;
        let field = |a: usize, b: usize| r[a..b].iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        let (f, slot) = (field(1, 5) as u32, field(5, 9) as usize);
        let optional = |v: u64| (v != 0).then_some(v);
        let handoff = Handoff { wait: optional(field(9, 17)), signal: optional(field(17, 25)) };
        match r[0] {
            CONSUME => {
                let step = FrameStep::new(End::Consumer, u64::from(f), slot, handoff.wait, handoff.signal);
                consumer.consume(f, &step)?;
            }
            STAGED => {
                get(&stream, &mut host)?;
                consumer.consume_staged(f, &host)?;
            }
            STAGED_SUMS => put(&stream, &consumer.staged_sums()?)?,
            ALONE => consumer.consume_alone(f, slot)?,
            ROUNDS => consumer.set_rounds(f)?,
            FINISH => {
                consumer.finish()?;
                put(&stream, b"k")?;
            }
            QUIT => return consumer.finish(),
            other => {
                return Err(Error::Protocol(format!("demo consumer process: unknown command {other:#x}")))
            }
        }
    }
}
