//! `lava_flow.Ring`: a frame ring of buffers with its two timelines, producer and consumer
//! cursors handing out `FrameStep`s (the values of `lava_flow::RingSchedule`), and waits and
//! signals on the host or on CUDA streams (PyTorch's, CuPy's).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lava_flow::ring::{batch_for_latency as rust_batch_for_latency, End, RingSchedule};
use lava_flow::RingOptions;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::allocator::{MemoryAllocator, MemoryLocation};
use crate::buffer::Buffer;
use crate::errors::OrRaise;
use crate::semaphore::TimelineSemaphore;

/// One frame as one end sees it: `slot` to use, the value of the other end's timeline to wait
/// for first (`wait`, or `None`), the value to set this end's timeline to after (`signal`, or
/// `None`).
#[pyclass(module = "lava_flow", frozen, eq)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameStep {
    /// `"producer"` or `"consumer"`.
    #[pyo3(get)]
    end: &'static str,
    /// The frame number, from 0.
    #[pyo3(get)]
    frame: u64,
    /// The slot (`frame % slots`).
    #[pyo3(get)]
    slot: usize,
    /// The other end's timeline value to wait for first.
    #[pyo3(get)]
    wait: Option<u64>,
    /// This end's timeline value to signal after.
    #[pyo3(get)]
    signal: Option<u64>,
    /// The identity of the ring whose cursor handed the step out: a ring refuses another's.
    ring: u64,
}

#[pymethods]
impl FrameStep {
    fn __repr__(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
        format!(
            "FrameStep(end={:?}, frame={}, slot={}, wait={}, signal={})",
            self.end,
            self.frame,
            self.slot,
            opt(self.wait),
            opt(self.signal)
        )
    }
}

impl FrameStep {
    fn of(step: lava_flow::FrameStep, ring: u64) -> Self {
        FrameStep {
            ring,
            end: match step.end {
                End::Producer => "producer",
                End::Consumer => "consumer",
            },
            frame: step.frame,
            slot: step.slot,
            wait: step.wait,
            signal: step.signal,
        }
    }

    fn is_producer(&self) -> bool {
        self.end == "producer"
    }
}

/// `Ring(allocator, slots, slot_size, *, batch=1, frames=None, location=None)`: `slots`
/// buffers of `slot_size` bytes and two timeline semaphores, `written` (the producer's) and
/// `released` (the consumer's), with the value arithmetic of lava-flow's Rust `Ring`: frame `f`
/// lives in slot `f % slots`; one hand-off per `batch` frames; the producer waits for the release
/// of the batch that last used a slot before refilling it. `frames` (a known length) ends the
/// last batch at the last frame.
#[pyclass(module = "lava_flow", frozen)]
pub struct Ring {
    schedule: RingSchedule,
    buffers: Vec<Py<Buffer>>,
    written: Py<TimelineSemaphore>,
    released: Py<TimelineSemaphore>,
    taken: [AtomicBool; 2],
    /// The frame each end's next cursor starts at: where the last one stopped.
    next: [AtomicU64; 2],
    /// This ring's identity, carried by the steps its cursors hand out.
    id: u64,
}

fn index(end: End) -> usize {
    match end {
        End::Producer => 0,
        End::Consumer => 1,
    }
}

impl Ring {
    /// The timelines `step`'s end waits on and signals, after checking the step is this ring's.
    fn timelines(&self, step: &FrameStep) -> PyResult<(&TimelineSemaphore, &TimelineSemaphore)> {
        if step.ring != self.id {
            let end = if step.is_producer() { End::Producer } else { End::Consumer };
            return Err(lava_flow::Error::from(lava_flow::RingError::OtherRing { frame: step.frame, end }))
                .or_raise();
        }
        if step.slot >= self.buffers.len() {
            return Err(lava_flow::Error::from(lava_flow::RingError::NoSuchSlot {
                slot: step.slot,
                slots: self.buffers.len(),
            }))
            .or_raise();
        }
        let (w, r) = (self.written.get(), self.released.get());
        Ok(if step.is_producer() { (r, w) } else { (w, r) })
    }
}

#[pymethods]
impl Ring {
    #[new]
    #[pyo3(signature = (allocator, slots, slot_size, *, batch = 1, frames = None, location = None))]
    fn new(
        py: Python<'_>,
        allocator: &MemoryAllocator,
        slots: u32,
        slot_size: u64,
        batch: u32,
        frames: Option<u64>,
        location: Option<&Bound<'_, MemoryLocation>>,
    ) -> PyResult<Self> {
        let options = RingOptions { slots, batch, frames };
        let schedule = options.schedule().map_err(lava_flow::Error::from).or_raise()?;
        let location = location.map_or(MemoryLocation::GpuVulkan { device_id: 0 }, |l| *l.get()).rust();
        let device_id = location.device_id();
        let shared = Arc::clone(&allocator.shared);
        let mut rust = shared.allocator();
        let buffers = py
            .detach(|| {
                (0..slots).map(|_| rust.allocate(slot_size, location)).collect::<lava_flow::Result<Vec<_>>>()
            })
            .or_raise()?;
        let written = rust.timeline_semaphore(device_id).or_raise()?;
        let released = rust.timeline_semaphore(device_id).or_raise()?;
        Ok(Ring {
            schedule,
            buffers: buffers
                .into_iter()
                .map(|b| Py::new(py, Buffer::new(Arc::clone(&shared), b)))
                .collect::<PyResult<_>>()?,
            written: Py::new(py, TimelineSemaphore::new(Arc::clone(&shared), device_id, written))?,
            released: Py::new(py, TimelineSemaphore::new(shared, device_id, released))?,
            taken: [AtomicBool::new(false), AtomicBool::new(false)],
            next: [AtomicU64::new(0), AtomicU64::new(0)],
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        })
    }

    /// The slots, as `Buffer`s (DLPack, `__cuda_array_interface__`, `read`, `write`).
    #[getter]
    fn buffers(&self, py: Python<'_>) -> Vec<Py<Buffer>> {
        self.buffers.iter().map(|b| b.clone_ref(py)).collect()
    }

    /// The producer's timeline (frames written).
    #[getter]
    fn written(&self, py: Python<'_>) -> Py<TimelineSemaphore> {
        self.written.clone_ref(py)
    }

    /// The consumer's timeline (frames released).
    #[getter]
    fn released(&self, py: Python<'_>) -> Py<TimelineSemaphore> {
        self.released.clone_ref(py)
    }

    /// The number of slots.
    #[getter]
    fn slots(&self) -> u32 {
        self.schedule.slots()
    }

    /// Frames per hand-off.
    #[getter]
    fn batch(&self) -> u32 {
        self.schedule.batch()
    }

    /// The ring's length, or `None` for an endless ring.
    #[getter]
    fn frames(&self) -> Option<u64> {
        self.schedule.frames()
    }

    /// The producer's cursor (one at a time: `InvalidArgumentError` while another lives). A
    /// cursor taken after another was dropped carries on from the frame after the last step
    /// handed out.
    fn producer(slf: &Bound<'_, Self>) -> PyResult<RingCursor> {
        RingCursor::take(slf, End::Producer)
    }

    /// The consumer's cursor (one at a time).
    fn consumer(slf: &Bound<'_, Self>) -> PyResult<RingCursor> {
        RingCursor::take(slf, End::Consumer)
    }

    /// Waits on the host for `step.wait` (nothing if `None`); `timeout` in seconds (default:
    /// none). Other Python threads run meanwhile.
    #[pyo3(signature = (step, timeout = None))]
    fn wait(&self, py: Python<'_>, step: &FrameStep, timeout: Option<f64>) -> PyResult<()> {
        let (on, _) = self.timelines(step)?;
        let Some(value) = step.wait else { return Ok(()) };
        let timeout = match timeout {
            None => Duration::from_secs(u64::from(u32::MAX)),
            Some(t) => Duration::try_from_secs_f64(t)
                .map_err(|e| PyValueError::new_err(format!("timeout {t}: {e}")))?,
        };
        let inner = Arc::clone(&on.inner);
        py.detach(move || inner.wait(value, timeout)).or_raise()
    }

    /// Signals `step.signal` from the host (nothing if `None`): after the host's work on the slot.
    fn signal(&self, step: &FrameStep) -> PyResult<()> {
        let (_, on) = self.timelines(step)?;
        match step.signal {
            Some(value) => on.inner.signal(value).or_raise(),
            None => Ok(()),
        }
    }

    /// Makes CUDA work queued on `stream` (torch, CuPy, an int handle; default: lava-flow's own
    /// stream, which DLPack exports order their consumers after) wait for `step.wait` on the GPU.
    #[pyo3(signature = (step, stream = None))]
    fn cuda_wait(&self, step: &FrameStep, stream: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (on, _) = self.timelines(step)?;
        match step.wait {
            Some(value) => on.cuda_wait_value(value, stream),
            None => Ok(()),
        }
    }

    /// Signals `step.signal` once the CUDA work queued on `stream` so far is done.
    fn cuda_signal(&self, step: &FrameStep, stream: &Bound<'_, PyAny>) -> PyResult<()> {
        let (_, on) = self.timelines(step)?;
        match step.signal {
            Some(value) => on.cuda_signal_value(value, stream),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Ring(slots={}, batch={}, frames={})",
            self.schedule.slots(),
            self.schedule.batch(),
            self.schedule.frames().map_or_else(|| "None".to_owned(), |n| n.to_string())
        )
    }
}

/// A ring's producer or consumer cursor: `next_frame()` hands out the end's steps in order.
#[pyclass(module = "lava_flow", frozen)]
pub struct RingCursor {
    ring: Py<Ring>,
    end: End,
    next: AtomicU64,
}

impl RingCursor {
    fn take(ring: &Bound<'_, Ring>, end: End) -> PyResult<Self> {
        let r = ring.get();
        if r.taken[index(end)].swap(true, Ordering::AcqRel) {
            return Err(lava_flow::Error::from(lava_flow::RingError::EndTaken { end })).or_raise();
        }
        // Where the last cursor stopped: the steps it handed out are spent (timeline values only
        // grow, and a producer starting over would refill slots that were never released).
        let next = AtomicU64::new(r.next[index(end)].load(Ordering::Acquire));
        Ok(RingCursor { ring: ring.clone().unbind(), end, next })
    }
}

#[pymethods]
impl RingCursor {
    /// The next frame's step. `InvalidArgumentError` past the ring's length.
    fn next_frame(&self) -> PyResult<FrameStep> {
        let schedule = &self.ring.get().schedule;
        loop {
            let frame = self.next.load(Ordering::Acquire);
            let step = schedule.step(self.end, frame).map_err(lava_flow::Error::from).or_raise()?;
            // Two threads sharing a cursor each get their own frame.
            if self.next.compare_exchange(frame, frame + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Ok(FrameStep::of(step, self.ring.get().id));
            }
        }
    }

    /// The frame the next step is for.
    #[getter]
    fn position(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }
}

impl Drop for RingCursor {
    fn drop(&mut self) {
        let ring = self.ring.get();
        ring.next[index(self.end)].store(*self.next.get_mut(), Ordering::Release);
        ring.taken[index(self.end)].store(false, Ordering::Release);
    }
}

/// `batch_for_latency(slots, frame_time, budget)`: the batch a ring should use when a frame takes
/// `frame_time` seconds on the slower side and batching may add `budget` seconds of latency
/// (lava-flow's rule: the largest K with (K − 1) · frame_time + one hand-off ≤ budget, at most
/// half the ring, at least 1).
#[pyfunction]
pub fn batch_for_latency(slots: u32, frame_time: f64, budget: f64) -> PyResult<u32> {
    let secs = |what: &str, t: f64| {
        Duration::try_from_secs_f64(t).map_err(|e| PyValueError::new_err(format!("{what} {t}: {e}")))
    };
    Ok(rust_batch_for_latency(slots, secs("frame_time", frame_time)?, secs("budget", budget)?))
}
