//! The pipeline rows: the demo's Vulkan producer and its consumer (CUDA where CUDA has the
//! device, else OpenGL, else a second Vulkan device) through the ring, each run beside its
//! measured ceiling — both sides at once with no hand-off, each on its own frames, in the same
//! run — with per-frame latency; at 4 MiB frames, at 3840×2160 RGBA8 frames with about 1 ms of
//! GPU work per side, and the hand-off knobs (batch, ring depth, how far ahead, queue and stream
//! priorities, CUDA scheduling).

use std::time::Duration;

use crate::bench::{Options, Row};
use crate::demo::{self, ConsumerKind, CudaSched, Measured, StreamPriority};
use crate::error::Result;
use lava_flow::QueueGlobalPriority;

/// A 3840×2160 RGBA8 frame, in bytes.
const FRAME_4K: u64 = 3840 * 2160 * 4;

/// The median of `f` over the runs.
fn median(runs: &[Measured], f: impl Fn(&Measured) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The pipeline's row: frames/s against the ceiling of the same runs, with latency.
fn pipeline_row(group: &'static str, path: String, runs: &[Measured]) -> Row {
    let fps = median(runs, |m| m.rate(m.zero_copy).0);
    let ceiling = median(runs, |m| m.rate(m.both_at_once).0);
    let p50 = median(runs, |m| m.latency_percentile(50).as_secs_f64());
    let p99 = median(runs, |m| m.latency_percentile(99).as_secs_f64());
    Row::beside(group, path, fps, "frames/s", ("the ceiling of the same runs".into(), ceiling))
        .with_latency(Duration::from_secs_f64(p50), Duration::from_secs_f64(p99))
}

/// All pipeline rows.
pub fn rows(options: &Options, rows: &mut Vec<Row>) -> Result<()> {
    let runs = if options.quick { 1 } else { 3 };
    let measure =
        |o: &demo::Options| -> Result<Vec<Measured>> { (0..runs).map(|_| demo::measure(o, true)).collect() };
    let base = |frames: u32, frame_bytes: u64, buffers: u32, batch: u32| demo::Options {
        buffers,
        batch,
        staged: false,
        ..demo::Options::new(frames, frame_bytes, ConsumerKind::Auto, options.device_id)
    };

    // The ring against the ceiling, two frame sizes.
    let small = if options.quick { 32 } else { 304 };
    let large = if options.quick { 8 } else { 120 };
    let rings: &[(u32, u32)] = if options.quick { &[(2, 1), (4, 2)] } else { &[(2, 1), (8, 1), (16, 8)] };
    for (frames, bytes, work, group) in [
        (small, 4u64 << 20, None, "Vulkan → consumer pipeline vs its ceiling, 4 MiB frames"),
        (
            large,
            FRAME_4K,
            Some(1.0),
            "Vulkan → consumer pipeline vs its ceiling, 3840×2160 RGBA8, ~1 ms work per side",
        ),
    ] {
        let mut first = None;
        let mut ring_rows = Vec::new();
        for &(buffers, batch) in rings {
            let mut o = base(frames, bytes, buffers, batch);
            o.work_ms = work;
            let m = measure(&o)?;
            let path = format!("ring of {buffers}, one hand-off per {batch} frame(s)");
            ring_rows.push(pipeline_row(group, path, &m));
            first.get_or_insert(m);
        }
        // The sides of the first configuration's runs, each against the same ceiling.
        let m = first.expect("at least one ring");
        let ceiling = median(&m, |m| m.rate(m.both_at_once).0);
        let work_note = match work {
            Some(_) => format!(", work rounds {} / {}", m[0].rounds.0, m[0].rounds.1),
            None => String::new(),
        };
        let ceiling_row = Row::baseline(
            group,
            format!(
                "the ceiling: both sides at once, no hand-off, each on its own frames ({}{work_note})",
                m[0].consumer
            ),
            ceiling,
            "frames/s",
        );
        let sides = [
            ("Vulkan producer alone", median(&m, |m| m.rate(m.producer_alone).0)),
            ("consumer alone", median(&m, |m| m.rate(m.consumer_alone).0)),
        ];
        let sides: Vec<Row> =
            sides.into_iter().map(|(name, fps)| Row::against(&ceiling_row, name.into(), fps)).collect();
        // The batch the ring picks from a latency budget (`RingOptions::latency_budget`), given
        // the slower side's frame time measured alone above: a ring of 16 (not in --quick).
        if work.is_some() && !options.quick {
            let slower =
                median(&m, |m| m.producer_alone.max(m.consumer_alone).as_secs_f64()) / f64::from(frames);
            let frame_time = Duration::from_secs_f64(slower);
            for budget in [Duration::from_millis(2), Duration::from_millis(8)] {
                let batch = lava_flow::ring::batch_for_latency(16, frame_time, budget);
                let o = demo::Options { work_ms: Some(1.0), ..base(frames, bytes, 16, batch) };
                let path = format!(
                    "ring of 16, one hand-off per {batch} frame(s): the batch for a {budget:?} latency budget \
                     at {frame_time:.2?} per frame"
                );
                ring_rows.push(pipeline_row(group, path, &measure(&o)?));
            }
        }
        rows.push(ceiling_row);
        rows.extend(sides);
        rows.extend(ring_rows);
    }

    // The hand-off knobs, one at a time from a ring of 8 (4 MiB frames), each against the
    // ceiling of its own runs.
    let group = "hand-off knobs, 4 MiB frames (each vs the ceiling of its own runs)";
    let mut knob = |path: String, o: demo::Options| -> Result<()> {
        match measure(&o) {
            // The CUDA knobs as they took effect (read back), in the consumer's description.
            Ok(m) if o.cuda_sched.is_some() || o.stream_priority.is_some() => {
                rows.push(pipeline_row(group, format!("{path}: {}", m[0].consumer), &m));
            }
            Ok(m) => rows.push(pipeline_row(group, path, &m)),
            // A setting this machine refuses (a queue priority without privileges, CUDA flags on a
            // context in use) is a finding, not a failure of the benchmark.
            Err(e) if o.queue_priority.is_some() || o.cuda_sched.is_some() || o.stream_priority.is_some() => {
                println!("{path}: not measured: {e}");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    };
    let (batches, depths, aheads): (&[u32], &[u32], &[u32]) = if options.quick {
        (&[1, 4], &[2, 8], &[2])
    } else {
        (&[1, 2, 4, 8, 16], &[2, 4, 8, 16], &[1, 2, 4, 8])
    };
    for &batch in batches {
        knob(format!("batch {batch} (ring of 16)"), base(small, 4 << 20, 16, batch))?;
    }
    for &depth in depths {
        knob(format!("ring depth {depth} (batch 1)"), base(small, 4 << 20, depth, 1))?;
    }
    for &ahead in aheads {
        knob(
            format!("{ahead} frame(s) queued ahead of the consumer (ring of 8, batch 1)"),
            demo::Options { ahead: Some(ahead), ..base(small, 4 << 20, 8, 1) },
        )?;
    }
    let priorities: &[QueueGlobalPriority] = if options.quick {
        &[QueueGlobalPriority::High]
    } else {
        &[
            QueueGlobalPriority::Low,
            QueueGlobalPriority::Medium,
            QueueGlobalPriority::High,
            QueueGlobalPriority::Realtime,
        ]
    };
    for &p in priorities {
        knob(
            format!("Vulkan queue global priority {p:?} (ring of 8)"),
            demo::Options { queue_priority: Some(p), ..base(small, 4 << 20, 8, 1) },
        )?;
    }
    if cfg!(feature = "cuda") && cuda_here(options.device_id) {
        for p in [StreamPriority::Least, StreamPriority::Greatest] {
            knob(
                format!("CUDA stream priority {p:?} (ring of 8)"),
                demo::Options { stream_priority: Some(p), ..base(small, 4 << 20, 8, 1) },
            )?;
        }
        for s in [CudaSched::Auto, CudaSched::Spin, CudaSched::Yield, CudaSched::BlockingSync] {
            knob(
                format!("CUDA context scheduling {s:?} (ring of 8)"),
                demo::Options { cuda_sched: Some(s), ..base(small, 4 << 20, 8, 1) },
            )?;
        }
    } else {
        println!("CUDA stream priority and scheduling rows: skipped, no CUDA consumer here");
    }
    Ok(())
}

/// Whether the consumer `Auto` picks is CUDA.
fn cuda_here(device_id: u32) -> bool {
    #[cfg(feature = "cuda")]
    {
        lava_flow::MemoryAllocator::new()
            .and_then(|a| lava_flow::cuda::Context::for_device(&a, device_id).map(drop))
            .is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device_id;
        false
    }
}
