//! Releases deferred behind queued work (ADR 0014): which uses of an object are still queued, and
//! the objects dropped while some were, kept until those complete. Pure bookkeeping over a
//! [`Fence`] trait: the CUDA, OpenGL and OpenCL importers supply the fences (a CUDA event, a GL
//! sync object, an OpenCL marker) and the release (unmap, destroy, delete); the unit tests below
//! run it with fences of their own, without a driver.
#![forbid(unsafe_code)]
// The CUDA importer uses all of it; a build without CUDA uses a part (GL, OpenCL) or none.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Queued work that an API can say is complete, and wait for.
pub(crate) trait Fence {
    /// Whether the work is complete: `Ok(false)` while it is queued or running. An error means
    /// the API cannot tell (a context lost, say): the work counts as still queued.
    fn is_done(&self) -> Result<bool>;
    /// Waits on the host until the work is complete.
    fn wait(&self) -> Result<()>;
    /// Whether this fence, made after `older`, completes only once `older` has: both mark work
    /// queued in order on one queue (a CUDA stream), so the older one says nothing more. The
    /// default, `false`, keeps every fence.
    fn supersedes(&self, older: &Self) -> bool {
        let _ = older;
        false
    }
}

/// Whether `fence` is known complete; an error counts as "not known", logged.
fn known_done<F: Fence>(fence: &F) -> bool {
    match fence.is_done() {
        Ok(done) => done,
        Err(e) => {
            log::warn!("cannot tell whether queued work completed ({e}); its memory stays until it can");
            false
        }
    }
}

/// The uses of one object (a view, an import) that may still be queued: a fence per use, the
/// completed ones dropped as new ones come, so the list stays as long as the work in flight.
pub(crate) struct Uses<F> {
    pending: Vec<Arc<F>>,
}

impl<F> Default for Uses<F> {
    fn default() -> Self {
        Uses { pending: Vec::new() }
    }
}

impl<F: Fence> Uses<F> {
    /// Adds a use, made after every use already recorded; drops the ones it supersedes (work
    /// queued before it on the same queue: no query needed) and the others already complete.
    pub fn add(&mut self, fence: Arc<F>) {
        self.pending.retain(|older| !fence.supersedes(older));
        self.prune();
        self.pending.push(fence);
    }

    /// Adds every use of `other` (an object dropped before the one these are the uses of).
    pub fn extend(&mut self, other: Vec<Arc<F>>) {
        self.prune();
        self.pending.extend(other);
    }

    /// Drops the uses known complete.
    pub fn prune(&mut self) {
        self.pending.retain(|f| !known_done(&**f));
    }

    /// The uses still queued (pruned first); the list is left empty.
    pub fn take_pending(&mut self) -> Vec<Arc<F>> {
        self.prune();
        std::mem::take(&mut self.pending)
    }

    /// How many uses are recorded (complete ones included until the next prune).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Waits for every use. On an error the uses not waited for stay, and the error is returned:
    /// the caller must then not release what they use.
    pub fn wait_all(&mut self) -> Result<()> {
        while let Some(fence) = self.pending.last() {
            fence.wait()?;
            self.pending.pop();
        }
        Ok(())
    }
}

/// Semaphore waits queued on streams that may not have passed yet, per context (`key`): a fence
/// recorded after each wait. A later wait's fence on the same queue replaces the earlier ones
/// (it completes after them). What ADR 0017 holds releases back for.
pub(crate) struct PendingWaits<F> {
    waits: Vec<(usize, Arc<F>)>,
}

impl<F> PendingWaits<F> {
    /// No waits.
    pub const fn new() -> Self {
        PendingWaits { waits: Vec::new() }
    }
}

impl<F: Fence> PendingWaits<F> {
    /// Notes a wait of context `key`, marked by `fence`. The fences it replaces go to `gone`,
    /// for the caller to drop once it let go of any lock around the list (a fence's drop may end
    /// its context, whose end takes that lock).
    pub fn note(&mut self, key: usize, fence: Arc<F>, gone: &mut Vec<Arc<F>>) {
        self.take_into(gone, |k, older| k == key && fence.supersedes(older));
        self.waits.push((key, fence));
    }

    /// Whether a wait of context `key` may still be pending. The waits that have passed are
    /// forgotten (into `gone`, as for [`note`](PendingWaits::note)), and so are those whose fence
    /// cannot be queried any more (its context ended): nothing is held back for a wait nobody
    /// can see.
    pub fn pending(&mut self, key: usize, gone: &mut Vec<Arc<F>>) -> bool {
        self.take_into(gone, |_, fence| fence.is_done().unwrap_or(true));
        self.waits.iter().any(|(k, _)| *k == key)
    }

    /// Takes out the waits whose fence `mine` claims (those of a context that is ending), into
    /// `gone`.
    pub fn forget(&mut self, mine: impl Fn(&F) -> bool, gone: &mut Vec<Arc<F>>) {
        self.take_into(gone, |_, fence| mine(fence));
    }

    fn take_into(&mut self, gone: &mut Vec<Arc<F>>, which: impl Fn(usize, &F) -> bool) {
        let mut kept = Vec::with_capacity(self.waits.len());
        for (key, fence) in std::mem::take(&mut self.waits) {
            if which(key, &fence) {
                gone.push(fence);
            } else {
                kept.push((key, fence));
            }
        }
        self.waits = kept;
    }
}

/// Asks `ready` again and again, with pauses growing from 50 µs to 5 ms, until it answers yes
/// (`Ok(true)`), fails (its error), or `deadline` has passed (`Ok(false)`).
pub(crate) fn poll_until(deadline: Instant, mut ready: impl FnMut() -> Result<bool>) -> Result<bool> {
    let mut pause = Duration::from_micros(50);
    loop {
        if ready()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Waits until each fence of `fences` is complete, dropping those that are: `Ok`, or the error
/// of one that cannot answer, or [`Error::Timeout`] (naming `limit`) once `deadline` has passed.
fn wait_fences<F: Fence>(fences: &mut Vec<Arc<F>>, deadline: Instant, limit: Duration) -> Result<()> {
    let all_done = poll_until(deadline, || {
        let mut unanswered = None;
        fences.retain(|f| match f.is_done() {
            Ok(done) => !done,
            Err(e) => {
                unanswered.get_or_insert(e);
                true
            }
        });
        unanswered.map_or(Ok(fences.is_empty()), Err)
    })?;
    if all_done {
        Ok(())
    } else {
        Err(Error::Timeout(limit, "the work queued before an object was dropped"))
    }
}

/// Objects dropped under queued work, each with the fences of that work: an object is handed
/// back for release once all of its fences are complete, never before.
pub(crate) struct ReleaseList<F, T> {
    entries: Vec<(Vec<Arc<F>>, T)>,
}

impl<F, T> Default for ReleaseList<F, T> {
    fn default() -> Self {
        ReleaseList { entries: Vec::new() }
    }
}

impl<F: Fence, T> ReleaseList<F, T> {
    /// Keeps `item` until every fence of `fences` is complete.
    pub fn defer(&mut self, fences: Vec<Arc<F>>, item: T) {
        self.entries.push((fences, item));
    }

    /// The objects whose work has completed, to release now, in the order they were deferred;
    /// the rest stay.
    #[must_use = "the returned objects are to be released"]
    pub fn reclaim(&mut self) -> Vec<T> {
        let mut ready = Vec::new();
        let mut kept = Vec::with_capacity(self.entries.len());
        for (mut fences, item) in std::mem::take(&mut self.entries) {
            fences.retain(|f| !known_done(&**f));
            if fences.is_empty() {
                ready.push(item);
            } else {
                kept.push((fences, item));
            }
        }
        self.entries = kept;
        ready
    }

    /// Empties the list, waiting on the host for each object's work (the owner is going away),
    /// until `deadline` (`limit` after the owner's end began, which a timeout names): the objects whose work completed, to release, and those whose work
    /// could not be waited for — still running at the limit (a wait for a semaphore nobody
    /// signals never completes), or unanswerable — which must be leaked rather than released
    /// under work that may still run.
    #[must_use = "the returned objects are to be released (the first) or leaked (the second)"]
    pub fn drain_waiting(&mut self, deadline: Instant, limit: Duration) -> (Vec<T>, Vec<T>) {
        let (mut ready, mut failed) = (Vec::new(), Vec::new());
        for (mut fences, item) in std::mem::take(&mut self.entries) {
            match wait_fences(&mut fences, deadline, limit) {
                Ok(()) => ready.push(item),
                Err(e) => {
                    log::error!("waiting for queued work before a release failed: {e}");
                    failed.push(item);
                }
            }
        }
        (ready, failed)
    }

    /// Empties the list without waiting or asking: every object, to leak (its work, or work
    /// ahead of its release, may never complete).
    pub fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.entries).into_iter().map(|(_, item)| item).collect()
    }

    /// How many objects wait for their work.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::error::{Api, Error};

    /// Work that the test completes by hand; it may refuse to answer or to be waited for.
    #[derive(Default)]
    struct Work {
        done: AtomicBool,
        broken: AtomicBool,
        queries: AtomicUsize,
        /// The queue it was made on, if the test says: a later fence of the same queue
        /// supersedes it.
        queue: Option<u32>,
    }

    fn lost() -> Error {
        Error::Ffi {
            api: Api::Cuda,
            call: "cuEventQuery",
            name: "CUDA_ERROR_LAUNCH_FAILED".into(),
            description: "lost".into(),
        }
    }

    impl Fence for Work {
        fn is_done(&self) -> Result<bool> {
            self.queries.fetch_add(1, Ordering::Relaxed);
            if self.broken.load(Ordering::Relaxed) {
                return Err(lost());
            }
            Ok(self.done.load(Ordering::Relaxed))
        }
        fn wait(&self) -> Result<()> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(lost());
            }
            // The host waits until the GPU finishes: here the wait is what finishes it.
            self.done.store(true, Ordering::Relaxed);
            Ok(())
        }
        fn supersedes(&self, older: &Self) -> bool {
            self.queue.is_some() && self.queue == older.queue
        }
    }

    fn work() -> Arc<Work> {
        Arc::new(Work::default())
    }

    fn work_on(queue: u32) -> Arc<Work> {
        Arc::new(Work { queue: Some(queue), ..Work::default() })
    }

    fn finish(w: &Work) {
        w.done.store(true, Ordering::Relaxed);
    }

    #[test]
    fn an_object_is_released_only_once_all_of_its_work_completed() {
        let (a, b) = (work(), work());
        let mut list = ReleaseList::default();
        list.defer(vec![Arc::clone(&a), Arc::clone(&b)], "mapping");
        assert!(list.reclaim().is_empty(), "nothing completed");
        finish(&a);
        assert!(list.reclaim().is_empty(), "one of two uses still queued");
        assert_eq!(list.len(), 1);
        finish(&b);
        assert_eq!(list.reclaim(), vec!["mapping"]);
        assert_eq!(list.len(), 0);
        assert!(list.reclaim().is_empty(), "released once, never twice");
    }

    #[test]
    fn objects_are_reclaimed_independently_in_the_order_they_were_dropped() {
        let (a, b, c) = (work(), work(), work());
        let mut list = ReleaseList::default();
        list.defer(vec![Arc::clone(&a)], 1);
        list.defer(vec![Arc::clone(&b)], 2);
        list.defer(vec![Arc::clone(&c)], 3);
        finish(&c);
        finish(&a);
        assert_eq!(list.reclaim(), vec![1, 3]);
        assert_eq!(list.len(), 1);
        finish(&b);
        assert_eq!(list.reclaim(), vec![2]);
    }

    #[test]
    fn work_that_cannot_be_queried_keeps_its_object() {
        let a = work();
        a.broken.store(true, Ordering::Relaxed);
        let mut list = ReleaseList::default();
        list.defer(vec![Arc::clone(&a)], "import");
        assert!(list.reclaim().is_empty(), "an error is not 'complete'");
        assert_eq!(list.len(), 1);
        let start = Instant::now();
        let (ready, failed) =
            list.drain_waiting(Instant::now() + Duration::from_secs(60), Duration::from_secs(60));
        assert!(ready.is_empty());
        assert_eq!(failed, vec!["import"], "a failed wait leaks the object, never releases it");
        assert_eq!(list.len(), 0);
        assert!(start.elapsed() < Duration::from_secs(30), "an unanswerable fence is not waited out");
    }

    #[test]
    fn the_owners_end_waits_for_every_objects_work_then_releases_it() {
        let (a, b) = (work(), work());
        let mut list = ReleaseList::default();
        list.defer(vec![Arc::clone(&a)], 'x');
        list.defer(vec![Arc::clone(&a), Arc::clone(&b)], 'y');
        let finisher = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                finish(&a);
                std::thread::sleep(Duration::from_millis(20));
                finish(&b);
            })
        };
        let (ready, failed) =
            list.drain_waiting(Instant::now() + Duration::from_secs(60), Duration::from_secs(60));
        finisher.join().expect("the finishing thread");
        assert_eq!(ready, vec!['x', 'y']);
        assert!(failed.is_empty());
        assert!(a.done.load(Ordering::Relaxed) && b.done.load(Ordering::Relaxed), "waited for both");
    }

    #[test]
    fn the_owners_end_leaks_what_is_still_queued_at_the_limit_and_releases_the_rest() {
        // Work that waits for a semaphore nobody signals never completes: the end gives up on
        // it after the limit instead of hanging, and leaks only what it holds.
        let (stuck, done) = (work(), work());
        finish(&done);
        let mut list = ReleaseList::default();
        list.defer(vec![Arc::clone(&stuck)], "stuck");
        list.defer(vec![Arc::clone(&done)], "done");
        let start = Instant::now();
        let (ready, failed) =
            list.drain_waiting(Instant::now() + Duration::from_millis(50), Duration::from_millis(50));
        let took = start.elapsed();
        assert_eq!(ready, vec!["done"]);
        assert_eq!(failed, vec!["stuck"]);
        assert!(took >= Duration::from_millis(50), "gave up after {took:?}, before the limit");
        assert!(took < Duration::from_secs(10), "the limit is for all the objects together: {took:?}");
        assert!(stuck.queries.load(Ordering::Relaxed) >= 2, "asked again while waiting");
    }

    #[test]
    fn uses_forget_completed_work_so_the_list_stays_as_long_as_the_work_in_flight() {
        let mut uses = Uses::default();
        for _ in 0..1000 {
            let w = work();
            uses.add(Arc::clone(&w));
            finish(&w);
        }
        // Each add pruned the ones before it: one left, itself complete.
        assert_eq!(uses.len(), 1);
        let queued = work();
        uses.add(Arc::clone(&queued));
        let pending = uses.take_pending();
        assert_eq!(pending.len(), 1);
        assert!(Arc::ptr_eq(&pending[0], &queued));
        assert_eq!(uses.len(), 0);
    }

    #[test]
    fn a_views_uses_move_to_its_import_and_hold_it() {
        // A view dropped under work hands its uses to the import it maps; the import, dropped
        // later, is deferred behind them.
        let (view_work, import_work) = (work(), work());
        let mut view = Uses::default();
        view.add(Arc::clone(&view_work));
        let mut import = Uses::default();
        import.add(Arc::clone(&import_work));
        import.extend(view.take_pending());
        finish(&import_work);
        let mut list = ReleaseList::default();
        list.defer(import.take_pending(), "import");
        assert!(list.reclaim().is_empty(), "the view's work is still queued");
        finish(&view_work);
        assert_eq!(list.reclaim(), vec!["import"]);
    }

    #[test]
    fn waiting_for_uses_stops_at_the_first_failure_and_keeps_the_rest() {
        let (a, b) = (work(), work());
        b.broken.store(true, Ordering::Relaxed);
        let mut uses = Uses::default();
        uses.add(Arc::clone(&a));
        uses.add(Arc::clone(&b));
        assert!(uses.wait_all().is_err());
        assert_eq!(uses.len(), 2, "a use not waited for stays recorded");
        b.broken.store(false, Ordering::Relaxed);
        uses.wait_all().expect("waits");
        assert_eq!(uses.len(), 0);
    }

    #[test]
    fn a_use_on_the_same_queue_replaces_the_older_ones_without_asking_the_driver() {
        let mut uses = Uses::default();
        let older: Vec<_> = (0..100).map(|_| work_on(1)).collect();
        for w in &older {
            uses.add(Arc::clone(w));
        }
        // Nothing completed, yet one use is kept: each one covers the queue's work before it.
        assert_eq!(uses.len(), 1);
        assert_eq!(older.iter().map(|w| w.queries.load(Ordering::Relaxed)).sum::<usize>(), 0, "no query");
        let other = work_on(2);
        uses.add(Arc::clone(&other));
        let newest = work_on(1);
        uses.add(Arc::clone(&newest));
        // The other queue's use is still queued: asked, and kept beside the newest of queue 1.
        assert_eq!(other.queries.load(Ordering::Relaxed), 1);
        let pending = uses.take_pending();
        assert_eq!(pending.len(), 2);
        assert!(
            pending.iter().any(|p| Arc::ptr_eq(p, &other)) && pending.iter().any(|p| Arc::ptr_eq(p, &newest))
        );
        // Uses handed over from a dropped view are not in queue order with these: all are kept.
        let mut import = Uses::default();
        import.add(work_on(1));
        import.extend(vec![work_on(1), work_on(1)]);
        assert_eq!(import.len(), 3);
        // Fences that say nothing of their queue keep each other.
        let mut plain = Uses::default();
        plain.add(work());
        plain.add(work());
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn pending_waits_hold_their_context_until_they_pass_and_the_newest_of_a_queue_stands_for_all() {
        let mut waits = PendingWaits::new();
        let mut gone = Vec::new();
        assert!(!waits.pending(1, &mut gone), "nothing noted");
        let first = work_on(7);
        let second = work_on(7);
        waits.note(1, Arc::clone(&first), &mut gone);
        waits.note(1, Arc::clone(&second), &mut gone);
        assert!(gone.len() == 1 && Arc::ptr_eq(&gone[0], &first), "the replaced fence is handed out");
        let other = work_on(8);
        waits.note(2, Arc::clone(&other), &mut gone);
        assert!(waits.pending(1, &mut gone) && waits.pending(2, &mut gone));
        assert_eq!(
            first.queries.load(Ordering::Relaxed),
            0,
            "replaced by the newer wait of its queue: never asked"
        );
        finish(&second);
        assert!(!waits.pending(1, &mut gone), "the newest wait of context 1 passed");
        assert!(waits.pending(2, &mut gone), "context 2's wait is its own");
        // A fence that cannot be queried (its context ended) holds nothing back.
        other.broken.store(true, Ordering::Relaxed);
        assert!(!waits.pending(2, &mut gone));
        assert!(waits.waits.is_empty(), "passed and unqueryable waits are forgotten");
        assert_eq!(gone.len(), 3, "every fence that left the list is handed out, none dropped inside");
    }

    #[test]
    fn an_ending_context_takes_its_own_waits_out_and_leaves_the_others() {
        let mut waits = PendingWaits::new();
        let mut gone = Vec::new();
        let (mine, theirs) = (work_on(1), work_on(2));
        waits.note(5, Arc::clone(&mine), &mut gone);
        waits.note(5, Arc::clone(&theirs), &mut gone);
        waits.forget(|f| f.queue == Some(1), &mut gone);
        assert!(gone.len() == 1 && Arc::ptr_eq(&gone[0], &mine));
        assert!(waits.pending(5, &mut gone), "the other owner's wait still holds the context");
        assert_eq!(mine.queries.load(Ordering::Relaxed), 0, "taken out without asking the driver");
    }

    #[test]
    fn taking_everything_asks_nothing() {
        let stuck = work();
        let mut list = ReleaseList::default();
        list.defer(vec![Arc::clone(&stuck)], 'a');
        list.defer(Vec::new(), 'b');
        assert_eq!(list.take_all(), vec!['a', 'b']);
        assert_eq!(list.len(), 0);
        assert_eq!(stuck.queries.load(Ordering::Relaxed), 0);
    }
}
