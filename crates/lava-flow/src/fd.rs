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

use crate::error::{Api, Error, Result};

/// Who owns the fd after a driver refused to import it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The specifications' rule: the caller still owns it (lava-flow closes it).
    StillOurs,
    /// The driver closed it (or kept it): lava-flow must never touch that number again.
    TakenByDriver,
}

/// The result of an import by a driver that keeps the specifications' rule: a refused fd is
/// still the caller's.
pub(crate) fn spec_rule<T>(result: Result<T>) -> std::result::Result<T, (Error, Refused)> {
    result.map_err(|e| (e, Refused::StillOurs))
}

/// Calls `import` with a duplicate of `fd` that the driver owns if `import` succeeds; on failure
/// `import` says who owns the duplicate. `fd` itself is closed when this returns, whatever the
/// outcome.
pub(crate) fn give_to_driver<T>(
    fd: OwnedFd,
    import: impl FnOnce(RawFd) -> std::result::Result<T, (Error, Refused)>,
) -> Result<T> {
    let lock = file_lock(&fd);
    let dup = fd.try_clone().map_err(|e| os_error("fcntl(F_DUPFD_CLOEXEC)", &e))?;
    drop(fd);
    let raw = dup.into_raw_fd();
    let result = {
        let _same_file_one_at_a_time = lock.as_ref().map(|l| l.lock().unwrap_or_else(PoisonError::into_inner));
        import(raw)
    };
    result.map_err(|(error, refused)| {
        if refused == Refused::StillOurs {
            // SAFETY: the import failed and the driver, by its own rule, did not take `raw`: it
            // is still the duplicate made above, owned by nobody else, and closed once here.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        error
    })
}

/// The lock of `fd`'s file, shared by every import of that file; `None` if it cannot be
/// identified (then the import runs unlocked: `fstat` failing means the driver will refuse it).
fn file_lock(fd: &OwnedFd) -> Option<Arc<Mutex<()>>> {
    static LOCKS: Mutex<Option<HashMap<(u64, u64), std::sync::Weak<Mutex<()>>>>> = Mutex::new(None);
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
    Error::Ffi {
        api: Api::Os,
        call,
        name: e.raw_os_error().map_or_else(|| format!("{:?}", e.kind()), |c| format!("errno {c}")),
        description: e.to_string(),
    }
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

    /// The tests count the process's fds: one at a time.
    static FDS: Mutex<()> = Mutex::new(());

    fn open_count() -> usize {
        std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn failure_that_keeps_the_fd_closes_it_once() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let before = open_count() - 1;
        let r: Result<()> = give_to_driver(fd, |_| Err((Error::ZeroSize, Refused::StillOurs)));
        assert!(r.is_err());
        assert_eq!(open_count(), before);
    }

    #[test]
    fn failure_that_closes_the_fd_is_not_closed_twice() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let before = open_count() - 1;
        let r: Result<()> = give_to_driver(fd, |raw| {
            // A driver that closes the fd it refuses.
            // SAFETY: `raw` is the duplicate handed to this "driver".
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            Err((Error::ZeroSize, Refused::TakenByDriver))
        });
        assert!(r.is_err(), "no abort for a double close");
        assert_eq!(open_count(), before);
    }

    /// The race of issue 18: a driver closes the refused fd, another thread opens the same
    /// file into the freed number at once. The old same-file check closed that thread's fd.
    #[test]
    fn a_number_freed_by_the_driver_and_reused_for_the_same_file_is_left_alone() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let original: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let mut other_threads_fd = None;
        let r: Result<()> = give_to_driver(original.try_clone().expect("dup"), |raw| {
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
        // Still open: fcntl succeeds. (Dropping it would abort if it had been closed for us.)
        // SAFETY: F_GETFD only reads the flags of a number.
        assert_ne!(unsafe { libc::fcntl(reused.as_raw_fd(), libc::F_GETFD) }, -1, "the other fd was closed");
        drop(reused);
    }

    #[test]
    fn success_leaves_the_duplicate_to_the_driver() {
        let _turn = FDS.lock().unwrap_or_else(PoisonError::into_inner);
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let kept = give_to_driver(fd, Ok).expect("success");
        // The "driver" owns `kept`; give it back to Rust to close it.
        // SAFETY: the duplicate is open and owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(kept) });
    }

    /// A stuck import of one file does not hold up imports of another.
    #[test]
    fn imports_of_other_files_do_not_wait_for_a_stuck_one() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let fd: OwnedFd = std::fs::File::open("/dev/zero").expect("open").into();
            let _: Result<()> = give_to_driver(fd, |_| {
                rx.recv().ok();
                Err((Error::ZeroSize, Refused::StillOurs))
            });
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let done = give_to_driver(fd, |raw| Ok(raw)).expect("not blocked");
        // SAFETY: the "driver" gives its fd back to be closed.
        drop(unsafe { OwnedFd::from_raw_fd(done) });
        tx.send(()).expect("release");
        stuck.join().expect("join");
    }
}
