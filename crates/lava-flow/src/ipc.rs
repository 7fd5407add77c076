//! Sending exported memory, semaphores and images to another process over a Unix socket.
//!
//! An export is a file descriptor and a descriptor ([`MemoryDescriptor`], ...). Over a connected
//! [`UnixStream`] both travel as one message: the descriptor's [wire form](MemoryDescriptor::to_bytes)
//! in the data, the fd beside it as `SCM_RIGHTS`, so that the receiver gets its own fd for the same
//! memory (the sender keeps its own; dropping the [`ExportedMemory`] after sending closes it).
//!
//! ```no_run
//! # fn main() -> lava_flow::Result<()> {
//! use std::os::unix::net::UnixStream;
//! use lava_flow::{ipc, MemoryAllocator, MemoryLocation};
//!
//! let (ours, theirs) = UnixStream::pair().expect("socketpair"); // or UnixListener / connect
//! let mut allocator = MemoryAllocator::new()?;
//! let buffer = allocator.allocate(1 << 20, MemoryLocation::GpuVulkan { device_id: 0 })?;
//! ipc::send_memory(&ours, &buffer.export()?)?;
//!
//! // In the other process:
//! let exported = ipc::recv_memory(&theirs)?;
//! let mut other = MemoryAllocator::new()?;
//! let imported = other.import_memory(0, exported)?;
//! # drop(imported);
//! # Ok(())
//! # }
//! ```
//!
//! ## The message
//! An 8-byte header, then the payload, sent by one `sendmsg` with the fd attached:
//!
//! | bytes | field |
//! |-------|-------|
//! | 4 | magic `LFIP` |
//! | 1 | kind: 1 memory, 2 semaphore, 3 image |
//! | 1 | number of fds: 1 |
//! | 2 | payload length, little-endian (at most 1024) |
//! | ... | payload: the descriptor's `to_bytes()` |
//!
//! The receiver reads until it has the whole message (a stream may deliver it in pieces) and
//! takes ownership of every fd that arrives with any piece at once, so that all of them are closed
//! on every error. It then requires the kind it was asked for, exactly one fd, and a descriptor
//! that decodes ([`from_bytes`](MemoryDescriptor::from_bytes)); anything else is
//! [`Error::Malformed`]. A peer that closes the connection before a whole message is
//! [`Error::Disconnected`]; a failed system call is [`Error::Ffi`].
//!
//! ## Rules for the stream
//! - The stream must be in blocking mode (a read timeout or a non-blocking stream makes a
//!   receive fail with `EAGAIN`, as [`Error::Ffi`], possibly in the middle of a message).
//! - One sender and one receiver at a time, each for whole messages: two threads sending on the
//!   same stream at once, or another protocol's bytes between messages, break the framing.
//! - After any error (other than one returned before anything was sent or read) the stream's
//!   framing is unknown: close it rather than reading on.
//! - The receiver trusts a descriptor as much as it trusts its peer. Decoding checks that the
//!   descriptor is well formed; whether it matches the fd (its device, driver, memory type and
//!   sizes) is checked, as far as the APIs allow, by the import.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::error::{Error, Result};
use crate::fd::os_error;
use crate::handle::{
    ExportedImage, ExportedMemory, ExportedSemaphore, ExternalHandle, ImageDescriptor, MemoryDescriptor,
    SemaphoreDescriptor,
};

/// The magic at the start of every message.
const MAGIC: [u8; 4] = *b"LFIP";
/// Magic, kind, fd count and payload length.
const HEADER_LEN: usize = 8;
/// The longest payload a receiver accepts (the descriptors are under 100 bytes).
const MAX_PAYLOAD: usize = 1024;
/// The fds a receiver has room for in one `recvmsg`: more than the one it accepts, so that a
/// sender of a few is told "wrong number of fds" rather than "truncated".
const MAX_FDS: usize = 4;

/// What an [`Error::Malformed`] from this module is about.
const MESSAGE: &str = "IPC message";

/// The kinds of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Semaphore,
    Image,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Memory => 1,
            Kind::Semaphore => 2,
            Kind::Image => 3,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Memory),
            2 => Some(Kind::Semaphore),
            3 => Some(Kind::Image),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Semaphore => "semaphore",
            Kind::Image => "image",
        }
    }
}

/// Sends exported memory (its fd and its [`MemoryDescriptor`]) as one message, for
/// [`recv_memory`] at the other end. The sender keeps its own fd.
///
/// Errors: [`Error::Disconnected`] if the peer has closed its end, [`Error::Ffi`] if `sendmsg`
/// fails otherwise. A message may then have been sent in part: close the stream.
pub fn send_memory(stream: &UnixStream, exported: &ExportedMemory) -> Result<()> {
    send_message(stream, Kind::Memory, &exported.descriptor().to_bytes(), fd_of(exported.handle()))
}

/// Receives what [`send_memory`] sent: a new fd for the same memory, owned by the result, and its
/// descriptor. Blocks until a whole message has arrived.
///
/// Errors: [`Error::Malformed`] for a message that is not a memory message with exactly one fd
/// and a valid descriptor, [`Error::Disconnected`] if the peer closed the connection first,
/// [`Error::Ffi`] if `recvmsg` fails. Every fd received with the message is closed on error.
pub fn recv_memory(stream: &UnixStream) -> Result<ExportedMemory> {
    let (fd, payload) = recv_message(stream, Kind::Memory)?;
    let descriptor = MemoryDescriptor::from_bytes(&payload)?;
    Ok(ExportedMemory::from_parts(ExternalHandle::OpaqueFd(fd), descriptor))
}

/// Sends an exported semaphore (its fd and its [`SemaphoreDescriptor`]) as one message, for
/// [`recv_semaphore`] at the other end. Errors as for [`send_memory`].
pub fn send_semaphore(stream: &UnixStream, exported: &ExportedSemaphore) -> Result<()> {
    send_message(stream, Kind::Semaphore, &exported.descriptor().to_bytes(), fd_of(exported.handle()))
}

/// Receives what [`send_semaphore`] sent. Errors as for [`recv_memory`].
pub fn recv_semaphore(stream: &UnixStream) -> Result<ExportedSemaphore> {
    let (fd, payload) = recv_message(stream, Kind::Semaphore)?;
    let descriptor = SemaphoreDescriptor::from_bytes(&payload)?;
    Ok(ExportedSemaphore::from_parts(ExternalHandle::OpaqueFd(fd), descriptor))
}

/// Sends an exported image (the fd of its memory and its [`ImageDescriptor`]) as one message, for
/// [`recv_image`] at the other end. Errors as for [`send_memory`].
pub fn send_image(stream: &UnixStream, exported: &ExportedImage) -> Result<()> {
    send_message(stream, Kind::Image, &exported.descriptor().to_bytes(), fd_of(exported.handle()))
}

/// Receives what [`send_image`] sent. Errors as for [`recv_memory`].
pub fn recv_image(stream: &UnixStream) -> Result<ExportedImage> {
    let (fd, payload) = recv_message(stream, Kind::Image)?;
    let descriptor = ImageDescriptor::from_bytes(&payload)?;
    Ok(ExportedImage::from_parts(ExternalHandle::OpaqueFd(fd), descriptor))
}

/// One message of any kind, as [`recv`] returns it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Message {
    /// What [`send_memory`] sent.
    Memory(ExportedMemory),
    /// What [`send_semaphore`] sent.
    Semaphore(ExportedSemaphore),
    /// What [`send_image`] sent.
    Image(ExportedImage),
}

/// Receives the next message whatever its kind: for a receiver that does not know what comes
/// next (the Python module's `lava_flow.ipc.recv`). Errors as for [`recv_memory`], but any
/// kind is accepted.
pub fn recv(stream: &UnixStream) -> Result<Message> {
    let (kind, fd, payload) = recv_any(stream, None)?;
    let handle = ExternalHandle::OpaqueFd(fd);
    Ok(match kind {
        Kind::Memory => {
            Message::Memory(ExportedMemory::from_parts(handle, MemoryDescriptor::from_bytes(&payload)?))
        }
        Kind::Semaphore => Message::Semaphore(ExportedSemaphore::from_parts(
            handle,
            SemaphoreDescriptor::from_bytes(&payload)?,
        )),
        Kind::Image => {
            Message::Image(ExportedImage::from_parts(handle, ImageDescriptor::from_bytes(&payload)?))
        }
    })
}

fn fd_of(handle: &ExternalHandle) -> BorrowedFd<'_> {
    match handle {
        ExternalHandle::OpaqueFd(fd) => fd.as_fd(),
    }
}

fn malformed(reason: String) -> Error {
    Error::Malformed { what: MESSAGE, reason }
}

/// The flags of every send: no `SIGPIPE` when the peer has gone (an `EPIPE` error instead).
fn send_flags() -> SendFlags {
    #[cfg(not(any(target_os = "macos", target_os = "ios")))]
    let flags = SendFlags::NOSIGNAL;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    let flags = SendFlags::empty();
    flags
}

/// A failed send: [`Error::Disconnected`] for a peer that has gone, else [`Error::Ffi`].
fn send_error(call: &'static str, e: Errno) -> Error {
    if e == Errno::PIPE || e == Errno::CONNRESET {
        Error::Disconnected { during: "before the whole message was sent" }
    } else {
        os_error(call, &e.into())
    }
}

/// Sends the header and `payload` with `fd` attached, in one `sendmsg` (and, should the kernel
/// take only part of it, the rest after it without the fd).
fn send_message(stream: &UnixStream, kind: Kind, payload: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    let len =
        u16::try_from(payload.len()).ok().filter(|&l| usize::from(l) <= MAX_PAYLOAD).ok_or_else(|| {
            Error::InvalidArgument(format!("a payload of {} bytes (at most {MAX_PAYLOAD})", payload.len()))
        })?;
    let mut message = Vec::with_capacity(HEADER_LEN + payload.len());
    message.extend_from_slice(&MAGIC);
    message.push(kind.code());
    message.push(1);
    message.extend_from_slice(&len.to_le_bytes());
    message.extend_from_slice(payload);

    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Error::Unsupported { what: "an SCM_RIGHTS message does not fit its buffer".into() });
    }
    let mut sent = loop {
        match rustix::net::sendmsg(stream, &[IoSlice::new(&message)], &mut control, send_flags()) {
            Ok(n) => break n,
            // Nothing was sent: send it all again, with the fd.
            Err(Errno::INTR) => continue,
            Err(e) => return Err(send_error("sendmsg", e)),
        }
    };
    // The fd went with the first byte; the rest goes without.
    while let Some(rest) = message.get(sent..).filter(|r| !r.is_empty()) {
        match rustix::net::send(stream, rest, send_flags()) {
            Ok(0) => return Err(Error::Disconnected { during: "before the whole message was sent" }),
            Ok(n) => sent += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(send_error("send", e)),
        }
    }
    Ok(())
}

/// What has arrived with the pieces of one message so far.
#[derive(Default)]
struct Received {
    /// The first fd that came with any piece, owned (closed when dropped). Later ones are
    /// counted and closed at once: a peer that trickles a message with fds in every piece pins
    /// no more than one fd here.
    fd: Option<OwnedFd>,
    /// How many fds came with the message's pieces.
    fds: usize,
    /// Whether the kernel dropped ancillary data that did not fit (`MSG_CTRUNC`).
    truncated: bool,
}

/// Receives one whole message of `expected` kind: its one fd and its payload.
fn recv_message(stream: &UnixStream, expected: Kind) -> Result<(OwnedFd, Vec<u8>)> {
    recv_any(stream, Some(expected)).map(|(_, fd, payload)| (fd, payload))
}

/// Receives one whole message of any kind, or of `expected` kind: its kind, its one fd and its
/// payload.
fn recv_any(stream: &UnixStream, expected: Option<Kind>) -> Result<(Kind, OwnedFd, Vec<u8>)> {
    let mut received = Received::default();
    let mut header = [0u8; HEADER_LEN];
    recv_exact(stream, &mut header, &mut received, true)?;
    let [m0, m1, m2, m3, kind, fd_count, l0, l1] = header;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(malformed(format!(
            "magic {:?}, expected {:?} (not a lava-flow message, or the stream is out of step)",
            String::from_utf8_lossy(&[m0, m1, m2, m3]),
            String::from_utf8_lossy(&MAGIC)
        )));
    }
    let len = usize::from(u16::from_le_bytes([l0, l1]));
    if len > MAX_PAYLOAD {
        return Err(malformed(format!("a payload of {len} bytes, at most {MAX_PAYLOAD} are accepted")));
    }
    // The whole message is read before it is judged: the fds of every piece are then owned here.
    let mut payload = vec![0u8; len];
    recv_exact(stream, &mut payload, &mut received, false)?;

    let kind = Kind::from_code(kind).ok_or_else(|| malformed(format!("unknown message kind {kind}")))?;
    if let Some(expected) = expected.filter(|&e| e != kind) {
        return Err(malformed(format!(
            "a {} message where a {} message was expected",
            kind.name(),
            expected.name()
        )));
    }
    if received.truncated {
        return Err(malformed(format!(
            "the kernel truncated its ancillary data (more than the {MAX_FDS} fds a receiver has room for \
             in one piece, or no fd numbers left in this process)"
        )));
    }
    if fd_count != 1 {
        return Err(malformed(format!("its header announces {fd_count} fds, a message carries 1")));
    }
    match (received.fd, received.fds) {
        (Some(fd), 1) => Ok((kind, fd, payload)),
        (_, count) => Err(malformed(format!("{count} fds arrived with it, a message carries exactly 1"))),
    }
}

/// Fills `buf` from the stream, as many `recvmsg` calls as it takes, taking ownership of every fd
/// that arrives on the way. `at_start`: whether `buf` begins a message (for the error when the
/// peer has closed the connection).
fn recv_exact(stream: &UnixStream, buf: &mut [u8], received: &mut Received, at_start: bool) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or_default();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let result =
            rustix::net::recvmsg(stream, &mut [IoSliceMut::new(rest)], &mut control, RecvFlags::CMSG_CLOEXEC);
        // Own the fds before anything else can fail.
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    received.fds += 1;
                    if received.fd.is_none() {
                        received.fd = Some(fd);
                    } // else dropped (closed) here
                }
            }
        }
        match result {
            Ok(r) => {
                if r.flags.contains(ReturnFlags::CTRUNC) {
                    received.truncated = true;
                }
                if r.bytes == 0 {
                    let during = if at_start && filled == 0 {
                        "before a message"
                    } else {
                        "in the middle of a message"
                    };
                    return Err(Error::Disconnected { during });
                }
                filled += r.bytes;
            }
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => {
                let during =
                    if at_start && filled == 0 { "before a message" } else { "in the middle of a message" };
                return Err(Error::Disconnected { during });
            }
            Err(e) => return Err(os_error("recvmsg", &e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Uuid;
    use crate::handle::{MemoryId, SemaphoreKind};
    use crate::{ImageDesc, ImageFormat, ImageTiling};
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use std::sync::{Mutex, PoisonError};

    /// These tests count open fds: one at a time.
    static FDS: Mutex<()> = Mutex::new(());

    /// A temporary file, removed when dropped.
    struct TempFile {
        path: PathBuf,
        file: File,
    }

    impl TempFile {
        fn new() -> TempFile {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name =
                format!("lava-flow-ipc-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let path = std::env::temp_dir().join(name);
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .expect("create a temp file");
            TempFile { path, file }
        }

        /// The file's device and inode.
        fn id(&self) -> (u64, u64) {
            let m = self.file.metadata().expect("fstat");
            (m.dev(), m.ino())
        }

        /// A new fd for the file.
        fn fd(&self) -> OwnedFd {
            self.file.try_clone().expect("dup").into()
        }

        /// How many of this process's fds refer to the file, `self.file` included: the entries
        /// of `/proc/self/fd` whose file has this device and inode. (Only this file's fds are
        /// counted, so other tests opening and closing fds at the same time do not disturb it.)
        fn open_fds(&self) -> usize {
            let id = self.id();
            std::fs::read_dir("/proc/self/fd")
                .expect("/proc/self/fd")
                .filter_map(|entry| std::fs::metadata(entry.ok()?.path()).ok())
                .filter(|m| (m.dev(), m.ino()) == id)
                .count()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn memory_descriptor() -> MemoryDescriptor {
        MemoryDescriptor {
            size: 1000,
            offset: 24,
            allocation_size: 4096,
            memory_type_index: 2,
            dedicated: false,
            device_uuid: Uuid([7; 16]),
            driver_uuid: Uuid([9; 16]),
            memory_id: MemoryId(42),
        }
    }

    fn semaphore_descriptor() -> SemaphoreDescriptor {
        SemaphoreDescriptor {
            kind: SemaphoreKind::Binary,
            device_uuid: Uuid([3; 16]),
            driver_uuid: Uuid([4; 16]),
        }
    }

    fn image_descriptor() -> ImageDescriptor {
        ImageDescriptor {
            memory: MemoryDescriptor { dedicated: true, offset: 0, size: 4096, ..memory_descriptor() },
            image: ImageDesc::new(ImageFormat::Rgba16Float, 32, 8).mip_levels(6).tiling(ImageTiling::Linear),
        }
    }

    /// A header for `payload_len` bytes of `kind`, announcing one fd.
    fn header(kind: u8, payload_len: u16) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&[kind, 1]);
        h.extend_from_slice(&payload_len.to_le_bytes());
        h
    }

    /// A well-formed memory message, as bytes.
    fn memory_message() -> Vec<u8> {
        let payload = memory_descriptor().to_bytes();
        let mut m = header(1, u16::try_from(payload.len()).expect("small"));
        m.extend_from_slice(&payload);
        m
    }

    /// Sends `bytes` with `fds` attached, in one `sendmsg`: how a test makes any message.
    fn send_raw(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let sent = rustix::net::sendmsg(stream, &[IoSlice::new(bytes)], &mut control, SendFlags::empty())
            .expect("sendmsg");
        assert_eq!(sent, bytes.len());
    }

    /// A peer that trickles a message one byte a piece with fds in every piece pins one fd in
    /// the receiver while it waits, not all of them (issue 13's outside review: 4,124).
    #[test]
    fn a_trickled_message_pins_one_fd() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let receiver = std::thread::spawn(move || recv_memory(&b).map(drop));
        let fds: Vec<OwnedFd> = (0..4).map(|_| file.fd()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        for byte in &MAGIC {
            send_raw(&a, &[*byte], &borrowed);
        }
        drop(fds);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(file.open_fds(), 2, "the file itself and the receiver's one fd, of 16 sent");
        drop(a);
        match receiver.join().expect("receiver") {
            Err(Error::Disconnected { during }) => assert_eq!(during, "in the middle of a message"),
            other => panic!("{other:?}"),
        }
        assert_eq!(file.open_fds(), 1);
    }

    fn expect_malformed(e: Error, what: &str, words: &[&str]) {
        match &e {
            Error::Malformed { what: w, reason } => {
                assert_eq!(*w, what, "{e}");
                for word in words {
                    assert!(reason.contains(word), "{e:?} does not say {word:?}");
                }
            }
            other => panic!("expected Error::Malformed, got {other:?}"),
        }
    }

    /// Runs a receive that must fail, and checks that no fd of `file` is left open beyond the
    /// ones the test holds (`held`) afterwards.
    fn refused<T: std::fmt::Debug>(file: &TempFile, held: usize, recv: impl FnOnce() -> Result<T>) -> Error {
        let e = recv().expect_err("the receive must fail");
        assert_eq!(file.open_fds(), held, "an fd received with a refused message is still open ({e})");
        e
    }

    #[test]
    fn memory_round_trip_refers_to_the_same_file() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let exported = ExportedMemory::from_parts(ExternalHandle::OpaqueFd(file.fd()), memory_descriptor());
        send_memory(&a, &exported).expect("send");
        drop(exported);
        assert_eq!(file.open_fds(), 1, "in flight, not in this process's table");

        let received = recv_memory(&b).expect("receive");
        assert_eq!(*received.descriptor(), memory_descriptor());
        assert_eq!(file.open_fds(), 2);
        let mut through = File::from(received.into_parts().0.into_fd());
        assert_eq!(
            {
                let m = through.metadata().expect("fstat");
                (m.dev(), m.ino())
            },
            file.id()
        );
        // Bytes written through one fd are read through the other.
        through.write_all(b"hello over SCM_RIGHTS").expect("write");
        let mut back = String::new();
        let mut original = &file.file;
        original.seek(SeekFrom::Start(0)).expect("seek");
        original.read_to_string(&mut back).expect("read");
        assert_eq!(back, "hello over SCM_RIGHTS");
        drop(through);
        assert_eq!(file.open_fds(), 1);
    }

    #[test]
    fn semaphore_round_trip_refers_to_the_same_file() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let exported =
            ExportedSemaphore::from_parts(ExternalHandle::OpaqueFd(file.fd()), semaphore_descriptor());
        send_semaphore(&a, &exported).expect("send");
        let received = recv_semaphore(&b).expect("receive");
        assert_eq!(*received.descriptor(), semaphore_descriptor());
        let through = File::from(received.into_parts().0.into_fd());
        let m = through.metadata().expect("fstat");
        assert_eq!((m.dev(), m.ino()), file.id());
        drop((exported, through));
        assert_eq!(file.open_fds(), 1);
    }

    #[test]
    fn image_round_trip_refers_to_the_same_file() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let exported = ExportedImage::from_parts(ExternalHandle::OpaqueFd(file.fd()), image_descriptor());
        send_image(&a, &exported).expect("send");
        let received = recv_image(&b).expect("receive");
        assert_eq!(*received.descriptor(), image_descriptor());
        let through = File::from(received.into_parts().0.into_fd());
        let m = through.metadata().expect("fstat");
        assert_eq!((m.dev(), m.ino()), file.id());
        drop((exported, through));
        assert_eq!(file.open_fds(), 1);
    }

    /// Several messages of different kinds in a row keep their framing.
    #[test]
    fn messages_in_a_row() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let memory = ExportedMemory::from_parts(ExternalHandle::OpaqueFd(file.fd()), memory_descriptor());
        let semaphore =
            ExportedSemaphore::from_parts(ExternalHandle::OpaqueFd(file.fd()), semaphore_descriptor());
        let image = ExportedImage::from_parts(ExternalHandle::OpaqueFd(file.fd()), image_descriptor());
        for _ in 0..3 {
            send_image(&a, &image).expect("send");
            send_memory(&a, &memory).expect("send");
            send_semaphore(&a, &semaphore).expect("send");
        }
        for _ in 0..3 {
            assert_eq!(*recv_image(&b).expect("receive").descriptor(), image_descriptor());
            assert_eq!(*recv_memory(&b).expect("receive").descriptor(), memory_descriptor());
            assert_eq!(*recv_semaphore(&b).expect("receive").descriptor(), semaphore_descriptor());
        }
        drop((memory, semaphore, image));
        assert_eq!(file.open_fds(), 1);
    }

    /// `recv` takes any kind and says which it was.
    #[test]
    fn recv_takes_any_kind() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let memory = ExportedMemory::from_parts(ExternalHandle::OpaqueFd(file.fd()), memory_descriptor());
        let semaphore =
            ExportedSemaphore::from_parts(ExternalHandle::OpaqueFd(file.fd()), semaphore_descriptor());
        let image = ExportedImage::from_parts(ExternalHandle::OpaqueFd(file.fd()), image_descriptor());
        send_semaphore(&a, &semaphore).expect("send");
        send_image(&a, &image).expect("send");
        send_memory(&a, &memory).expect("send");
        assert!(matches!(recv(&b), Ok(Message::Semaphore(s)) if *s.descriptor() == semaphore_descriptor()));
        assert!(matches!(recv(&b), Ok(Message::Image(i)) if *i.descriptor() == image_descriptor()));
        assert!(matches!(recv(&b), Ok(Message::Memory(m)) if *m.descriptor() == memory_descriptor()));
        drop((memory, semaphore, image));
        assert_eq!(file.open_fds(), 1, "every received fd was closed with its message");
    }

    /// A message delivered in pieces, its fd with a later piece, is received whole.
    #[test]
    fn message_in_pieces_with_the_fd_in_a_later_piece() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let message = memory_message();
        let fd = file.fd();
        let sender = std::thread::spawn(move || {
            send_raw(&a, &message[..3], &[]);
            std::thread::sleep(std::time::Duration::from_millis(20));
            send_raw(&a, &message[3..10], &[]);
            std::thread::sleep(std::time::Duration::from_millis(20));
            send_raw(&a, &message[10..40], &[fd.as_fd()]);
            std::thread::sleep(std::time::Duration::from_millis(20));
            send_raw(&a, &message[40..], &[]);
            drop(fd);
            a
        });
        let received = recv_memory(&b).expect("receive");
        let a = sender.join().expect("sender");
        assert_eq!(*received.descriptor(), memory_descriptor());
        assert_eq!(file.open_fds(), 2);
        drop((received, a));
        assert_eq!(file.open_fds(), 1);
    }

    #[test]
    fn peer_closing_before_a_message() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(a);
        let e = refused(&file, 1, || recv_memory(&b));
        assert!(matches!(e, Error::Disconnected { during: "before a message" }), "{e:?}");
    }

    #[test]
    fn peer_closing_in_the_middle_of_the_header() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        send_raw(&a, &memory_message()[..5], &[file.file.as_fd()]);
        drop(a);
        let e = refused(&file, 1, || recv_memory(&b));
        assert!(matches!(e, Error::Disconnected { during: "in the middle of a message" }), "{e:?}");
    }

    #[test]
    fn truncated_message_then_peer_closing() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let message = memory_message();
        send_raw(&a, &message[..message.len() - 10], &[file.file.as_fd()]);
        drop(a);
        let e = refused(&file, 1, || recv_memory(&b));
        assert!(matches!(e, Error::Disconnected { during: "in the middle of a message" }), "{e:?}");
        // Also when the rest's own fd arrived with the last piece.
        let (a, b) = UnixStream::pair().expect("socketpair");
        send_raw(&a, &message[..20], &[file.file.as_fd()]);
        send_raw(&a, &message[20..30], &[file.file.as_fd(), file.file.as_fd()]);
        drop(a);
        let e = refused(&file, 1, || recv_memory(&b));
        assert!(matches!(e, Error::Disconnected { during: "in the middle of a message" }), "{e:?}");
    }

    #[test]
    fn oversized_length() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        // Only the header: the receiver must not wait for the 60000 bytes it announces.
        send_raw(&a, &header(1, 60_000), &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["60000", "1024"]);
        // Just over the limit.
        send_raw(&a, &header(1, 1025), &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["1025"]);
    }

    #[test]
    fn zero_fds() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        send_raw(&a, &memory_message(), &[]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["0 fds"]);
    }

    #[test]
    fn two_and_three_fds() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        for n in [2, 3] {
            let fds = vec![file.file.as_fd(); n];
            send_raw(&a, &memory_message(), &fds);
            let e = refused(&file, 1, || recv_memory(&b));
            expect_malformed(e, MESSAGE, &[&format!("{n} fds")]);
        }
        // Two fds, each with a piece of one message.
        let message = memory_message();
        send_raw(&a, &message[..30], &[file.file.as_fd()]);
        send_raw(&a, &message[30..], &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["2 fds"]);
    }

    /// More fds than the receiver has room for: the kernel truncates (and closes the rest).
    #[test]
    fn too_many_fds_for_the_buffer() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let fds = vec![file.file.as_fd(); 40];
        send_raw(&a, &memory_message(), &fds);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["truncated"]);
    }

    #[test]
    fn header_announcing_two_fds() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let mut message = memory_message();
        message[5] = 2;
        send_raw(&a, &message, &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["announces 2 fds"]);
    }

    #[test]
    fn wrong_magic() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let mut message = memory_message();
        message[..4].copy_from_slice(b"HTTP");
        send_raw(&a, &message, &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["magic", "HTTP", "LFIP"]);
    }

    #[test]
    fn wrong_kind() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let semaphore =
            ExportedSemaphore::from_parts(ExternalHandle::OpaqueFd(file.fd()), semaphore_descriptor());
        send_semaphore(&a, &semaphore).expect("send");
        drop(semaphore);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, MESSAGE, &["a semaphore message where a memory message was expected"]);

        let memory = ExportedMemory::from_parts(ExternalHandle::OpaqueFd(file.fd()), memory_descriptor());
        send_memory(&a, &memory).expect("send");
        drop(memory);
        let e = refused(&file, 1, || recv_image(&b));
        expect_malformed(e, MESSAGE, &["memory", "image"]);

        let mut message = memory_message();
        message[4] = 9;
        send_raw(&a, &message, &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_semaphore(&b));
        expect_malformed(e, MESSAGE, &["unknown message kind 9"]);
    }

    #[test]
    fn garbage_descriptor() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        let mut message = header(1, 77);
        message.extend((0..77u8).map(|i| i.wrapping_mul(37)));
        send_raw(&a, &message, &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, "memory descriptor", &["magic"]);

        // A well-formed descriptor of the wrong kind inside a memory message.
        let payload = semaphore_descriptor().to_bytes();
        let mut message = header(1, u16::try_from(payload.len()).expect("small"));
        message.extend_from_slice(&payload);
        send_raw(&a, &message, &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, "memory descriptor", &["LFSD"]);

        // A descriptor that breaks its own rules.
        let bad = MemoryDescriptor { size: 0, ..memory_descriptor() };
        let payload = bad.to_bytes();
        let mut message = header(1, u16::try_from(payload.len()).expect("small"));
        message.extend_from_slice(&payload);
        send_raw(&a, &message, &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_memory(&b));
        expect_malformed(e, "memory descriptor", &["does not describe a buffer"]);

        // An empty payload.
        send_raw(&a, &header(3, 0), &[file.file.as_fd()]);
        let e = refused(&file, 1, || recv_image(&b));
        expect_malformed(e, "image descriptor", &["0 bytes"]);
    }

    #[test]
    fn sending_to_a_closed_peer() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let file = TempFile::new();
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(b);
        let memory = ExportedMemory::from_parts(ExternalHandle::OpaqueFd(file.fd()), memory_descriptor());
        let e = send_memory(&a, &memory).expect_err("the peer is gone");
        assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
        drop(memory);
        assert_eq!(file.open_fds(), 1);
    }

    #[test]
    fn os_failures_are_ffi_errors() {
        let (_a, b) = UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let e = recv_memory(&b).expect_err("nothing to read");
        assert!(matches!(e, Error::Ffi { call: "recvmsg", .. }), "{e:?}");
    }
}
