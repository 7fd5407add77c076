//! `Send` and `Sync` exactly where safe. What must stay on its thread is proven by the
//! compile-fail cases (`tests/compile_fail/*_is_not_send.rs`); this proves the rest can move.

mod common;

fn send_sync<T: Send + Sync>() {}

#[test]
fn shareable_types_are_send_and_sync() {
    send_sync::<lava_flow::MemoryAllocator>();
    send_sync::<lava_flow::Buffer>();
    send_sync::<lava_flow::Image>();
    send_sync::<lava_flow::TimelineSemaphore>();
    send_sync::<lava_flow::BinarySemaphore>();
    send_sync::<lava_flow::ExportedMemory>();
    send_sync::<lava_flow::ExportedSemaphore>();
    send_sync::<lava_flow::ValidationLog>();
    send_sync::<lava_flow::Error>();
    #[cfg(feature = "cuda")]
    {
        send_sync::<lava_flow::cuda::Context>();
        send_sync::<lava_flow::cuda::Stream>();
        send_sync::<lava_flow::cuda::DeviceBuffer>();
        send_sync::<lava_flow::cuda::CudaBuffer<'static>>();
        send_sync::<lava_flow::cuda::Module>();
        send_sync::<lava_flow::cuda::Event>();
    }
    #[cfg(feature = "opencl")]
    {
        send_sync::<lava_flow::opencl::Context>();
        send_sync::<lava_flow::opencl::Queue<'static>>();
        send_sync::<lava_flow::opencl::ClBuffer<'static>>();
        send_sync::<lava_flow::opencl::ClSemaphore<'static>>();
        send_sync::<lava_flow::opencl::Program<'static>>();
    }
}

/// Timeline semaphores used from several threads at once: one thread signals 1..=N from the host,
/// four wait for every value, two submit queue work that waits for each value and signals a
/// timeline of its own. Everything arrives; the validation layer says nothing.
#[test]
fn semaphores_signalled_waited_and_submitted_from_several_threads() {
    use std::time::Duration;
    let v = common::Validated::new();
    let mut a = v.clone();
    let n = 200u64;
    let timeline = a.timeline_semaphore(0).expect("timeline");
    let mut mine = Vec::new();
    for _ in 0..2 {
        mine.push(a.timeline_semaphore(0).expect("timeline"));
    }
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let t = &timeline;
            scope.spawn(move || {
                for value in 1..=n {
                    t.wait(value, Duration::from_secs(30)).expect("every value arrives");
                }
            });
        }
        for own in &mine {
            let (t, allocator) = (&timeline, v.clone());
            scope.spawn(move || {
                for value in 1..=n {
                    let submission = lava_flow::Submission::new().wait(t, value).signal(own, value);
                    allocator.submit(0, &submission).expect("submit");
                }
                own.wait(n, Duration::from_secs(30)).expect("the queue saw every value");
            });
        }
        let t = &timeline;
        scope.spawn(move || {
            for value in 1..=n {
                t.signal(value).expect("host signal");
                if value % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
    });
    for own in &mine {
        assert_eq!(own.value().expect("value"), n);
    }
    v.wait_idle(0).expect("queue idle");
}
