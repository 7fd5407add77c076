//! What a CUDA context keeps between calls so that a copy or a recorded use costs few driver
//! calls: spare events for reuse (instead of `cuEventCreate` and `cuEventDestroy` per ordering),
//! the answer of `cuDeviceCanAccessPeer` per peer device, and the peer contexts whose memory it
//! mapped with `cuCtxEnablePeerAccess`. Pure bookkeeping, generic over what it keeps, so that
//! the unit tests below run it without a driver.
#![forbid(unsafe_code)]

use std::sync::{Arc, Weak};

use crate::error::Result;

/// How many spare events a context keeps; more are destroyed. A peer copy borrows two and gives
/// them back at once, and each memory's newest use holds one: a handful covers a loop of copies.
pub(crate) const SPARE_EVENTS: usize = 32;

/// Spare objects kept for reuse, at most `cap` of them.
pub(crate) struct Spares<T> {
    items: Vec<T>,
    cap: usize,
}

impl<T> Spares<T> {
    /// An empty store that keeps at most `cap` objects.
    pub fn new(cap: usize) -> Self {
        Spares { items: Vec::new(), cap }
    }

    /// A spare, if there is one.
    pub fn take(&mut self) -> Option<T> {
        self.items.pop()
    }

    /// Keeps `item` for reuse; hands it back (`Some`) when the store is full, for the caller to
    /// destroy.
    #[must_use = "an object handed back is to be destroyed"]
    pub fn put(&mut self, item: T) -> Option<T> {
        if self.items.len() >= self.cap {
            return Some(item);
        }
        self.items.push(item);
        None
    }

    /// Empties the store (its owner is going away): everything it kept, to destroy.
    #[must_use = "the objects are to be destroyed"]
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }
}

/// What one context knows about its peers: per peer device `D`, whether its device can access
/// that device's memory (a property of the two devices: asked once); and the peer contexts `P`
/// whose memory it mapped, held weakly: while one lives its context does, and so does the
/// mapping; a peer context that went and came back is another `Arc`, and is mapped again.
pub(crate) struct PeerLinks<D, P> {
    can_access: Vec<(D, bool)>,
    enabled: Vec<Weak<P>>,
}

impl<D, P> Default for PeerLinks<D, P> {
    fn default() -> Self {
        PeerLinks { can_access: Vec::new(), enabled: Vec::new() }
    }
}

impl<D: PartialEq + Copy, P> PeerLinks<D, P> {
    /// Whether this device can access `peer`'s memory: the remembered answer, or `ask`'s, which
    /// is remembered where it is one (an error is not).
    pub fn can_access(&mut self, peer: D, ask: impl FnOnce() -> Result<bool>) -> Result<bool> {
        if let Some(&(_, can)) = self.can_access.iter().find(|(d, _)| *d == peer) {
            return Ok(can);
        }
        let can = ask()?;
        self.can_access.push((peer, can));
        Ok(can)
    }

    /// Whether this context mapped `peer`'s memory (and `peer` still lives: it is alive here).
    pub fn is_enabled(&self, peer: &Arc<P>) -> bool {
        self.enabled.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(peer)))
    }

    /// Remembers that this context mapped `peer`'s memory; forgets peers that have gone.
    pub fn set_enabled(&mut self, peer: &Arc<P>) {
        self.enabled.retain(|w| w.strong_count() > 0);
        if !self.is_enabled(peer) {
            self.enabled.push(Arc::downgrade(peer));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::error::{Api, Error};

    #[test]
    fn spares_are_reused_up_to_the_cap_and_the_rest_handed_back() {
        let mut spares = Spares::new(2);
        assert_eq!(spares.take(), None::<u32>, "nothing kept yet: the caller creates one");
        assert_eq!(spares.put(1), None);
        assert_eq!(spares.put(2), None);
        assert_eq!(spares.put(3), Some(3), "full: the third is the caller's to destroy");
        let mut taken = vec![spares.take().expect("one kept"), spares.take().expect("two kept")];
        taken.sort_unstable();
        assert_eq!(taken, vec![1, 2]);
        assert_eq!(spares.take(), None, "each spare is handed out once");
        assert_eq!(spares.put(4), None);
        assert_eq!(spares.drain(), vec![4]);
        assert_eq!(spares.take(), None, "drained");
    }

    #[test]
    fn peer_access_is_asked_once_per_peer_device_and_errors_are_not_remembered() {
        let asked = Cell::new(0);
        let mut links = PeerLinks::<i32, ()>::default();
        let ask = |answer: bool| {
            let asked = &asked;
            move || {
                asked.set(asked.get() + 1);
                Ok(answer)
            }
        };
        assert!(links.can_access(1, ask(true)).expect("asked"));
        assert!(links.can_access(1, ask(false)).expect("remembered"), "remembered: not asked again");
        assert!(!links.can_access(2, ask(false)).expect("asked"), "another device is asked");
        assert!(!links.can_access(2, ask(true)).expect("remembered"));
        assert_eq!(asked.get(), 2);
        let failed = links.can_access(3, || {
            Err(Error::Ffi {
                api: Api::Cuda,
                call: "cuDeviceCanAccessPeer",
                name: "CUDA_ERROR_INVALID_DEVICE".into(),
                description: "invalid device ordinal".into(),
            })
        });
        assert!(failed.is_err());
        assert!(links.can_access(3, ask(true)).expect("asked again"), "a failure is asked again");
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn a_peer_context_is_mapped_once_while_it_lives_and_again_once_it_came_back() {
        let mut links = PeerLinks::<i32, String>::default();
        let (a, b) = (Arc::new("a".to_owned()), Arc::new("b".to_owned()));
        assert!(!links.is_enabled(&a));
        links.set_enabled(&a);
        links.set_enabled(&a);
        assert!(links.is_enabled(&a));
        assert!(!links.is_enabled(&b), "only the context that was mapped");
        assert_eq!(links.enabled.len(), 1, "remembered once");
        // The peer context goes; one made for the same device afterwards is mapped again (its
        // CUDA context may be a new one, without the mapping).
        drop(a);
        let again = Arc::new("a".to_owned());
        assert!(!links.is_enabled(&again));
        links.set_enabled(&b);
        assert_eq!(links.enabled.len(), 1, "the gone peer is forgotten");
        links.set_enabled(&again);
        assert!(links.is_enabled(&again) && links.is_enabled(&b));
    }
}
