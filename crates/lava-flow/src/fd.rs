//! Handing file descriptors to drivers that take ownership of them on success.
//!
//! The Vulkan, CUDA, OpenCL and OpenGL import calls take ownership of an fd when they succeed;
//! on failure the specifications leave it with the caller. Not every driver keeps that rule:
//! Mesa's lavapipe closes the fd when `vkAllocateMemory` refuses it, and Mesa's GL closes it in
//! `glImportMemoryFdEXT` whatever happens next. Closing such an fd again would close whatever
//! the process opened into that number in the meantime (another thread's export, say: Rust
//! aborts when that thread's `OwnedFd` is dropped).
//!
//! So who owns a refused fd is a fact about the driver and the failure, said by the import
//! itself ([`Refused`]), never re-derived by looking at the fd number afterwards: a number
//! freed by a driver can be reused by another thread at once, for the same file.
//!
//! Imports of the same file are also serialised. A duplicate shares its file offset with the
//! original, and Mesa imports a memory fd with `lseek(fd, 0, SEEK_SET)` then `read` of a
//! header: two threads importing the same memory at once (every export of a block is a duplicate
//! of one fd) read each other's offsets and one import fails (`GL_OUT_OF_MEMORY` from llvmpipe;
//! found by the soak test). The lock is per file (device and inode), so an import that never
//! returns (a driver stuck on a foreign fd) holds up only imports of that same file.
#![cfg(unix)]

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

pub(crate) use crate::external::{Payload, Refused};

/// Calls `import` with an fd for the same file as `fd`, which the driver owns if `import`
/// succeeds; on failure `import` says who owns it. `fd` itself is closed when this returns,
/// whatever the outcome.
///
/// First `fd` is checked for what can be checked without the driver ([`FileKind::check`]):
/// drivers read an fd's header with a blocking `read`, so a pipe or socket would hang the import
/// forever, and a regular file shorter than the memory it claims to be would be mapped and
/// fault (`SIGBUS`) when read. Then the driver gets a file description of its own where the file
/// can be reopened (memfds and other regular files, through `/proc/self/fd`), else a duplicate:
/// a duplicate shares the file offset with every other holder of the exported fd — in other
/// processes too — and Mesa seeks and reads a header at import.
pub(crate) fn give_to_driver<T>(
    fd: OwnedFd,
    payload: Payload,
    import: impl FnOnce(RawFd) -> std::result::Result<T, (Error, Refused)>,
) -> Result<T> {
    let kind = FileKind::of(&fd)?;
    kind.check(payload)?;
    let lock = file_lock(&fd);
    let handed = match kind {
        FileKind::Regular { .. } => reopen(&fd).or_else(|_| fd.try_clone()),
        _ => fd.try_clone(),
    }
    .map_err(|e| os_error("fcntl(F_DUPFD_CLOEXEC)", &e))?;
    drop(fd);
    let raw = handed.into_raw_fd();
    let result = {
        let _same_file_one_at_a_time =
            lock.as_ref().map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
        import(raw)
    };
    result.map_err(|(error, refused)| {
        if refused == Refused::StillOurs {
            // SAFETY: the import failed and the driver, by its own rule, did not take `raw`: it
            // is still the fd made above, owned by nobody else, and closed once here.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        error
    })
}

/// A new open file description of `fd`'s file (its own offset), read-write as exports are.
fn reopen(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::OpenOptions::new().read(true).write(true).open(path).map(OwnedFd::from)
}

/// What kind of file an fd is, as far as the import checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A regular file (memfds are: Mesa's exports) of this many bytes.
    Regular { size: u64 },
    /// What no driver exports: a pipe, a socket, a directory, a terminal, or an anonymous inode
    /// of a kind that is not memory (eventfd, timerfd, epoll, ...); named for the error.
    NotMemory(String),
    /// Anything else (device files, other anonymous inodes: what GPU drivers export), left to the
    /// driver.
    Other,
}

impl FileKind {
    /// The kind of `fd` (`fstat`, and for anonymous inodes the name `/proc/self/fd` gives).
    pub(crate) fn of(fd: &OwnedFd) -> Result<Self> {
        let raw = fd.as_raw_fd();
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a `stat` into the pointed-to space or fails; `raw` is open.
        if unsafe { libc::fstat(raw, st.as_mut_ptr()) } != 0 {
            return Err(os_error("fstat", &std::io::Error::last_os_error()));
        }
        // SAFETY: fstat succeeded, so it filled the struct.
        let st = unsafe { st.assume_init() };
        let not_memory = |what: &str| Ok(FileKind::NotMemory(what.to_owned()));
        match st.st_mode & libc::S_IFMT {
            libc::S_IFIFO => return not_memory("a pipe"),
            libc::S_IFSOCK => return not_memory("a socket"),
            libc::S_IFDIR => return not_memory("a directory"),
            #[allow(clippy::unnecessary_cast, reason = "st_size's type differs between targets")]
            libc::S_IFREG => return Ok(FileKind::Regular { size: st.st_size.max(0) as u64 }),
            _ => {}
        }
        // SAFETY: isatty only asks the kernel about the number.
        if unsafe { libc::isatty(raw) } == 1 {
            return not_memory("a terminal");
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
        let link = link.to_string_lossy();
        const NOT_MEMORY: [&str; 10] = [
            "[eventfd]",
            "[timerfd]",
            "[signalfd]",
            "[eventpoll]",
            "[pidfd]",
            "inotify",
            "[fanotify]",
            "[io_uring]",
            "[userfaultfd]",
            "[perf_event]",
        ];
        match link.strip_prefix("anon_inode:") {
            Some(name) if NOT_MEMORY.contains(&name) => Ok(FileKind::NotMemory(format!("an {name} fd"))),
            _ => Ok(FileKind::Other),
        }
    }

    /// Whether a driver may be handed this file for `payload`: never what is not memory, and a
    /// regular file only if it is as large as the memory it claims to be.
    pub(crate) fn check(&self, payload: Payload) -> Result<()> {
        let what = match payload {
            Payload::Memory { .. } => "exported memory",
            Payload::Semaphore => "an exported semaphore",
        };
        match (self, payload) {
            (FileKind::NotMemory(kind), _) => Err(Error::InvalidArgument(format!(
                "the fd to import is {kind}, not {what}: refused before the driver, which could \
                 block reading it"
            ))),
            (FileKind::Regular { size }, Payload::Memory { allocation_size }) if *size < allocation_size => {
                Err(Error::InvalidArgument(format!(
                    "the fd to import is a file of {size} bytes, which cannot hold an allocation of \
                     {allocation_size} bytes"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The lock of `fd`'s file, shared by every import of that file; `None` if it cannot be
/// identified (then the import runs unlocked: `fstat` failing means the driver will refuse it).
fn file_lock(fd: &OwnedFd) -> Option<Arc<Mutex<()>>> {
    /// One lock per file (device, inode), alive while an import of that file runs.
    type Locks = HashMap<(u64, u64), std::sync::Weak<Mutex<()>>>;
    static LOCKS: Mutex<Option<Locks>> = Mutex::new(None);
    let key = stat(fd.as_raw_fd())?;
    let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    let locks = locks.get_or_insert_with(HashMap::new);
    if let Some(lock) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
        return Some(lock);
    }
    locks.retain(|_, w| w.strong_count() > 0);
    let lock = Arc::new(Mutex::new(()));
    locks.insert(key, Arc::downgrade(&lock));
    Some(lock)
}

/// [`Error::Ffi`] for a failed operating-system call.
pub(crate) fn os_error(call: &'static str, e: &std::io::Error) -> Error {
    Error::os(call, e)
}

/// The device and inode of `fd`'s file.
fn stat(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the pointed-to space or fails with EBADF; it never
    // touches the fd itself.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "the field types differ between targets")]
    Some((st.st_dev as u64, st.st_ino as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A payload every file in these tests is fine for.
    const ANY: Payload = Payload::Semaphore;

    /// A file of this test's own: counting the fds open on it is not disturbed by other tests
    /// opening and closing fds in parallel threads.
    struct Probe(std::path::PathBuf, (u64, u64));

    impl Probe {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("lava-flow-fd-{name}-{}", std::process::id()));
            let meta = std::fs::File::create(&path).and_then(|f| f.metadata()).expect("a temp file");
            Probe(path, (meta.dev(), meta.ino()))
        }

        fn open(&self) -> OwnedFd {
            std::fs::File::open(&self.0).expect("open").into()
        }

        /// How many of this process's fds are open on the file.
        fn open_fds(&self) -> usize {
            std::fs::read_dir("/proc/self/fd")
                .expect("/proc/self/fd")
                .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
                .filter(|m| (m.dev(), m.ino()) == self.1)
                .count()
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn failure_that_keeps_the_fd_closes_it_once() {
        let probe = Probe::new("keeps");
        let r: Result<()> = give_to_driver(probe.open(), ANY, |_| Err((Error::ZeroSize, Refused::StillOurs)));
        assert!(r.is_err());
        assert_eq!(probe.open_fds(), 0, "the original and the duplicate are closed");
    }

    #[test]
    fn failure_that_closes_the_fd_is_not_closed_twice() {
        let probe = Probe::new("closes");
        let r: Result<()> = give_to_driver(probe.open(), ANY, |raw| {
            // A driver that closes the fd it refuses.
            // SAFETY: `raw` is the duplicate handed to this "driver".
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            Err((Error::ZeroSize, Refused::TakenByDriver))
        });
        assert!(r.is_err(), "no abort for a double close");
        assert_eq!(probe.open_fds(), 0);
    }

    /// The race of issue 18: a driver closes the refused fd, another thread opens the same
    /// file into the freed number at once. The old same-file check closed that thread's fd.
    #[test]
    fn a_number_freed_by_the_driver_and_reused_for_the_same_file_is_left_alone() {
        let probe = Probe::new("reused");
        let original = probe.open();
        let mut other_threads_fd = None;
        let r: Result<()> = give_to_driver(original.try_clone().expect("dup"), ANY, |raw| {
            // The "driver" closes `raw` and "another thread" duplicates the same file into that
            // number at once: `dup2` does both atomically (so no other test thread can take the
            // number in between).
            // SAFETY: `raw` is the duplicate handed to this "driver"; dup2 closes it and makes
            // `raw` a new fd of the same file, which "the other thread" owns from here on.
            let reused = unsafe { libc::dup2(original.as_raw_fd(), raw) };
            assert_eq!(reused, raw, "dup2");
            // SAFETY: a new fd, owned by nobody else.
            other_threads_fd = Some(unsafe { OwnedFd::from_raw_fd(reused) });
            Err((Error::ZeroSize, Refused::TakenByDriver))
        });
        assert!(r.is_err());
        let reused = other_threads_fd.expect("the closure ran");
        assert_eq!(probe.open_fds(), 2, "the other thread's fd is still open, beside the original");
        drop(reused); // would abort if it had been closed for us
        drop(original);
        assert_eq!(probe.open_fds(), 0);
    }

    #[test]
    fn success_leaves_the_duplicate_to_the_driver() {
        let probe = Probe::new("success");
        let kept = give_to_driver(probe.open(), ANY, Ok).expect("success");
        assert_eq!(probe.open_fds(), 1, "only the driver's duplicate");
        // The "driver" owns `kept`; give it back to Rust to close it.
        // SAFETY: the duplicate is open and owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(kept) });
        assert_eq!(probe.open_fds(), 0);
    }

    /// A stuck import of one file does not hold up imports of another (the lock was one for the
    /// whole process: this test hung).
    #[test]
    fn imports_of_other_files_do_not_wait_for_a_stuck_one() {
        let (stuck_probe, free_probe) = (Probe::new("stuck"), Probe::new("free"));
        let stuck_fd = stuck_probe.open();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _: Result<()> = give_to_driver(stuck_fd, ANY, |_| {
                entered_tx.send(()).ok();
                rx.recv().ok();
                Err((Error::ZeroSize, Refused::StillOurs))
            });
        });
        entered.recv().expect("the stuck import started");
        let done = give_to_driver(free_probe.open(), ANY, Ok).expect("not blocked");
        // SAFETY: the "driver" gives its fd back to be closed.
        drop(unsafe { OwnedFd::from_raw_fd(done) });
        tx.send(()).expect("release");
        stuck.join().expect("join");
        assert_eq!(stuck_probe.open_fds() + free_probe.open_fds(), 0);
    }

    /// What would block a driver's `read` forever, or fault when mapped, is refused before the
    /// driver sees it, and closed.
    #[test]
    fn pipes_sockets_eventfds_and_short_files_never_reach_the_driver() {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        // SAFETY: eventfd returns a new fd or -1.
        let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(event >= 0);
        // SAFETY: a new fd, owned here.
        let event = unsafe { OwnedFd::from_raw_fd(event) };
        let dir: OwnedFd = std::fs::File::open("/").expect("/").into();
        let probe = Probe::new("short");
        std::fs::write(&probe.0, [0u8; 4096]).expect("4 KiB");
        let cases: [(&str, OwnedFd, Payload); 5] = [
            ("a pipe", reader.into(), ANY),
            ("a socket", socket.into(), ANY),
            ("an [eventfd] fd", event, ANY),
            ("a directory", dir, ANY),
            ("a file of 4096 bytes", probe.open(), Payload::Memory { allocation_size: 1 << 20 }),
        ];
        for (what, fd, payload) in cases {
            let called = std::cell::Cell::new(false);
            let r: Result<()> = give_to_driver(fd, payload, |_| {
                called.set(true);
                Ok(())
            });
            assert!(!called.get(), "{what} reached the driver");
            match r {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(what), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert_eq!(probe.open_fds(), 0, "the refused fd was closed");
        drop(writer);
        // A file as large as the memory is left to the driver, which gets a description of its
        // own (its own offset), not a duplicate.
        let shared: OwnedFd = probe.open();
        // SAFETY: lseek on an open fd.
        assert_eq!(unsafe { libc::lseek(shared.as_raw_fd(), 100, libc::SEEK_SET) }, 100);
        let offset_seen = give_to_driver(shared, Payload::Memory { allocation_size: 4096 }, |raw| {
            // SAFETY: reads the offset of the fd handed to this "driver".
            let at = unsafe { libc::lseek(raw, 0, libc::SEEK_CUR) };
            // SAFETY: the "driver" owns `raw` and closes it, once.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            Ok(at)
        })
        .expect("a file as large as the memory");
        assert_eq!(offset_seen, 0, "the driver's fd has an offset of its own");
    }
}
