//! When a `VkDevice` may be destroyed: a guard against a driver deadlock.
//!
//! NVIDIA's driver (580 on an H200) can hang in `vkDestroyDevice` while OpenGL works on other
//! threads of the process: the destroying thread waits in the driver for a worker thread that
//! waits, in turn, for a lock other threads' GL calls hold (RELIABILITY.md has the backtraces).
//! Keeping device creation and destruction apart from GL context creation was not enough (tried,
//! 1 hang in 8 runs), so on those drivers lava-flow does not destroy a device while any OpenGL
//! context it knows of is alive: the device's objects and memory are freed at once as always;
//! only `vkDestroyDevice` itself (and the instance behind it) waits until the last such context
//! is dropped, and runs then, under a lock that holds off new contexts meanwhile.
//!
//! The rule is [`Gate`], a plain value with tests; the process has one ([`destroy_device`],
//! [`GlPresence`]).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A device destruction waiting for the last OpenGL context.
type Deferred = Box<dyn FnOnce() + Send>;

/// The live OpenGL contexts and the device destructions waiting for them to go.
#[derive(Default)]
pub(crate) struct Gate {
    gl_contexts: usize,
    deferred: Vec<Deferred>,
}

impl Gate {
    const fn new() -> Self {
        Gate { gl_contexts: 0, deferred: Vec::new() }
    }

    /// Destroys a device now, or later if `avoid_gl` (the driver is one that deadlocks) and an
    /// OpenGL context is alive. Returns whether it ran now.
    fn destroy(&mut self, avoid_gl: bool, destroy: Deferred) -> bool {
        if avoid_gl && self.gl_contexts > 0 {
            self.deferred.push(destroy);
            false
        } else {
            destroy();
            true
        }
    }

    fn gl_created(&mut self) {
        self.gl_contexts += 1;
    }

    /// Counts a context gone; the last one runs the destructions that waited for it.
    fn gl_dropped(&mut self) {
        self.gl_contexts = self.gl_contexts.saturating_sub(1);
        if self.gl_contexts == 0 {
            for destroy in self.deferred.drain(..) {
                destroy();
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.deferred.len()
    }
}

/// The process's gate. Destructions run while it is held, so no context is made meanwhile.
static GATE: Mutex<Gate> = Mutex::new(Gate::new());

fn gate() -> MutexGuard<'static, Gate> {
    // A panic inside a destruction leaves the counts right (they change before it runs).
    GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `destroy` (a `vkDestroyDevice` and whatever must outlive it) now, or once no OpenGL
/// context lava-flow made or wraps is alive, if `avoid_gl` says the driver deadlocks otherwise.
pub(crate) fn destroy_device(avoid_gl: bool, destroy: impl FnOnce() + Send + 'static) {
    if !gate().destroy(avoid_gl, Box::new(destroy)) {
        log::debug!(
            "vkDestroyDevice deferred until the last OpenGL context is dropped (NVIDIA deadlock guard)"
        );
    }
}

/// Whether `vkDestroyDevice` must wait for OpenGL on this device's driver: NVIDIA's
/// (PCI vendor 0x10de).
pub(crate) fn driver_deadlocks_with_gl(vendor_id: u32) -> bool {
    vendor_id == 0x10de
}

/// Held by every OpenGL context while it lives (made before the EGL context, dropped after it).
#[cfg_attr(not(feature = "opengl"), allow(dead_code))]
pub(crate) struct GlPresence(());

#[cfg_attr(not(feature = "opengl"), allow(dead_code))]
impl GlPresence {
    pub(crate) fn enter() -> Self {
        gate().gl_created();
        GlPresence(())
    }
}

impl Drop for GlPresence {
    fn drop(&mut self) {
        gate().gl_dropped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Deferred) {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        (runs, move || {
            let r = Arc::clone(&r);
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    #[test]
    fn without_gl_or_on_other_drivers_devices_are_destroyed_at_once() {
        let (runs, destroy) = counter();
        let mut gate = Gate::new();
        assert!(gate.destroy(true, destroy()));
        gate.gl_created();
        assert!(gate.destroy(false, destroy()), "a driver that does not deadlock waits for nothing");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn destructions_wait_for_the_last_gl_context_and_run_once() {
        let (runs, destroy) = counter();
        let mut gate = Gate::new();
        gate.gl_created();
        gate.gl_created();
        assert!(!gate.destroy(true, destroy()));
        assert!(!gate.destroy(true, destroy()));
        gate.gl_dropped();
        assert_eq!(runs.load(Ordering::SeqCst), 0, "one context is still alive");
        gate.gl_dropped();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(gate.waiting(), 0);
        // A later context and drop run nothing again; a stray extra drop does not underflow.
        gate.gl_created();
        gate.gl_dropped();
        gate.gl_dropped();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(gate.destroy(true, destroy()));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn only_nvidia_waits() {
        assert!(driver_deadlocks_with_gl(0x10de));
        assert!(!driver_deadlocks_with_gl(0x10005));
        assert!(!driver_deadlocks_with_gl(0x1002));
    }
}
