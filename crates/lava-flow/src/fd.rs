//! Handing file descriptors to drivers that take ownership of them on success.
//!
//! The Vulkan, CUDA, OpenCL and OpenGL import calls take ownership of an fd only when they
//! succeed; on failure it stays the caller's. Not every driver keeps that rule: Mesa 22.3's
//! lavapipe closes the fd when `vkAllocateMemory` refuses it, and closing it again would close
//! whatever the process opened in the meantime (Rust aborts on such a double close).
//! [`give_to_driver`] makes both behaviours safe: the driver gets a duplicate; after a failure
//! the duplicate is closed only if it still refers to the same open file.
//!
//! Imports are also serialised process-wide. A duplicate shares its file offset with the
//! original, and Mesa (22.3) imports a memory fd with `lseek(fd, 0, SEEK_SET)` then `read` of a
//! header: two threads importing the same memory at once (every export of a block is a duplicate
//! of one fd, and lavapipe's own exports duplicate its memfd) read each other's offsets and one
//! import fails (`GL_OUT_OF_MEMORY` from llvmpipe; found by the soak test). Imports are rare and
//! short next to what they save, so one lock costs nothing measurable.
#![cfg(unix)]

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::error::{Api, Error, Result};

/// Calls `import` with a duplicate of `fd` that the driver owns if `import` succeeds. `fd`
/// itself is closed when this returns, whatever the outcome.
pub(crate) fn give_to_driver<T>(fd: OwnedFd, import: impl FnOnce(RawFd) -> Result<T>) -> Result<T> {
    static IMPORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dup = fd.try_clone().map_err(|e| os_error("fcntl(F_DUPFD_CLOEXEC)", &e))?;
    let raw = dup.into_raw_fd();
    let result = {
        let _one_at_a_time = IMPORTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        import(raw)
    };
    if result.is_err() && same_open_file(fd.as_raw_fd(), raw) {
        // SAFETY: the import failed and `raw` still refers to the file we duplicated it from, so
        // the driver did not close or keep it: it is still ours, and closed exactly once here.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    result
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

/// Whether `a` and `b` are open and refer to the same file (device and inode).
fn same_open_file(a: RawFd, b: RawFd) -> bool {
    match (stat(a), stat(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

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
    static FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn open_count() -> usize {
        std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn failure_that_keeps_the_fd_closes_it_once() {
        let _turn = FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let before = open_count() - 1;
        let r: Result<()> = give_to_driver(fd, |_| Err(Error::ZeroSize));
        assert!(r.is_err());
        assert_eq!(open_count(), before);
    }

    #[test]
    fn failure_that_closes_the_fd_is_not_closed_twice() {
        let _turn = FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let r: Result<()> = give_to_driver(fd, |raw| {
            // A driver that breaks the rule: closes the fd and fails.
            // SAFETY: `raw` is the duplicate handed to this "driver".
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            Err(Error::ZeroSize)
        });
        assert!(r.is_err(), "no abort for a double close");
    }

    #[test]
    fn success_leaves_the_duplicate_to_the_driver() {
        let _turn = FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        let kept = give_to_driver(fd, Ok).expect("success");
        // The "driver" owns `kept`; give it back to Rust to close it.
        // SAFETY: the duplicate is open and owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(kept) });
    }
}
