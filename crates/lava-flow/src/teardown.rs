//! When a `VkDevice` may be destroyed: a guard against a driver deadlock.
//!
//! NVIDIA's driver (580 on an H200) can hang in `vkDestroyDevice` while OpenGL works on other
//! threads of the process: the destroying thread waits in the driver for a worker thread that
//! waits, in turn, for a lock other threads' GL calls hold (RELIABILITY.md has the backtraces).
//! Keeping device creation and destruction apart from GL context creation was not enough (tried,
//! 1 hang in 8 runs), so on those drivers lava-flow does not destroy a device while any OpenGL
//! context it knows of is alive: the device's objects and memory are freed at once as always;
//! only `vkDestroyDevice` itself (and the instance behind it) waits until the last such context
//! is dropped, and runs then, while new contexts are held off. Destructions of devices run in
//! parallel with each other; only the making of GL contexts waits for them.
//!
//! The rule is [`Gate`], a plain value with tests; the process has one ([`destroy_device`],
//! [`GlPresence`]).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

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

    /// Keeps `destroy` for later if `avoid_gl` (the driver is one that deadlocks) and an OpenGL
    /// context is alive; otherwise hands it back, to be run now.
    fn defer(&mut self, avoid_gl: bool, destroy: Deferred) -> Option<Deferred> {
        if avoid_gl && self.gl_contexts > 0 {
            self.deferred.push(destroy);
            None
        } else {
            Some(destroy)
        }
    }

    fn gl_created(&mut self) {
        self.gl_contexts += 1;
    }

    /// Counts a context gone; the last one gets the destructions that waited for it, to run.
    fn gl_dropped(&mut self) -> Vec<Deferred> {
        self.gl_contexts = self.gl_contexts.saturating_sub(1);
        if self.gl_contexts == 0 {
            std::mem::take(&mut self.deferred)
        } else {
            Vec::new()
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.deferred.len()
    }
}

/// The process's gate: counts and waiting destructions, held only briefly, never while the
/// driver is called.
static GATE: Mutex<Gate> = Mutex::new(Gate::new());

/// Held for reading while devices are destroyed (so destructions run in parallel), for writing
/// while an OpenGL context is counted in: no context is made while a device is being destroyed.
/// A stuck `vkDestroyDevice` then holds up the making of GL contexts, not other devices'
/// destruction. Always taken before `GATE`.
static DESTROYING: RwLock<()> = RwLock::new(());

fn gate() -> MutexGuard<'static, Gate> {
    // The counts change before anything runs, so a panic elsewhere leaves them right.
    GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `destroy` (a `vkDestroyDevice` and whatever must outlive it) now, or once no OpenGL
/// context lava-flow made or wraps is alive, if `avoid_gl` says the driver deadlocks otherwise.
pub(crate) fn destroy_device(avoid_gl: bool, destroy: impl FnOnce() + Send + 'static) {
    if !avoid_gl {
        destroy();
        return;
    }
    let _destroying = DESTROYING.read().unwrap_or_else(PoisonError::into_inner);
    let mut gate = gate();
    let now = gate.defer(true, Box::new(destroy));
    let waiting = gate.deferred.len();
    drop(gate);
    match now {
        Some(destroy) => destroy(),
        // Each waiting VkDevice keeps driver resources (channels, threads, device files) until
        // the last GL context goes: say so once a few have piled up.
        None if waiting > WARN_AFTER => log::warn!(
            "{waiting} VkDevices wait for the last OpenGL context to be dropped before they are \
             destroyed (NVIDIA deadlock guard): keep one MemoryAllocator alive rather than \
             making and dropping them while a GL context lives"
        ),
        None => log::debug!(
            "vkDestroyDevice deferred until the last OpenGL context is dropped (NVIDIA deadlock guard)"
        ),
    }
}

/// How many devices may wait for the GL contexts before a warning is logged.
const WARN_AFTER: usize = 4;

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
        let _no_destroying = DESTROYING.write().unwrap_or_else(PoisonError::into_inner);
        gate().gl_created();
        GlPresence(())
    }
}

impl Drop for GlPresence {
    fn drop(&mut self) {
        // The last context runs the destructions that waited for it: outside the gate's lock,
        // with new contexts held off.
        let _destroying = DESTROYING.read().unwrap_or_else(PoisonError::into_inner);
        let waiting = gate().gl_dropped();
        for destroy in waiting {
            destroy();
        }
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
        (runs, move || -> Deferred {
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
        gate.defer(true, destroy()).expect("no GL context: now")();
        gate.gl_created();
        gate.defer(false, destroy()).expect("a driver that does not deadlock waits for nothing")();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn destructions_wait_for_the_last_gl_context_and_run_once() {
        let (runs, destroy) = counter();
        let mut gate = Gate::new();
        gate.gl_created();
        gate.gl_created();
        assert!(gate.defer(true, destroy()).is_none());
        assert!(gate.defer(true, destroy()).is_none());
        assert!(gate.gl_dropped().is_empty(), "one context is still alive");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let waiting = gate.gl_dropped();
        assert_eq!(waiting.len(), 2);
        waiting.into_iter().for_each(|d| d());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(gate.waiting(), 0);
        // A later context and drop run nothing again; a stray extra drop does not underflow.
        gate.gl_created();
        assert!(gate.gl_dropped().is_empty());
        assert!(gate.gl_dropped().is_empty());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        gate.defer(true, destroy()).expect("no GL context: now")();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn only_nvidia_waits() {
        assert!(driver_deadlocks_with_gl(0x10de));
        assert!(!driver_deadlocks_with_gl(0x10005));
        assert!(!driver_deadlocks_with_gl(0x1002));
    }
}
