//! GPU tier for frame rings: a Vulkan producer queues every frame (random bytes) up front, and a
//! CUDA or OpenCL consumer reads each slot, poisons it and releases it; every byte of every frame
//! is checked. With CUDA the hand-offs are GPU waits on both sides (the host only queues work);
//! OpenCL orders through the host (it has no timelines). Where CUDA or OpenCL imports are absent
//! each test prints why it skips; with `LAVA_FLOW_REQUIRE_GPU=1` that is a failure.

mod common;

/// Shapes: (slots, batch, frames), rings of 1 and 64 and batches that do not divide the ring.
#[cfg(any(feature = "cuda", feature = "opencl"))]
const SHAPES: [(u32, u32, u64); 5] = [(1, 1, 5), (2, 1, 24), (3, 2, 25), (5, 5, 21), (64, 7, 300)];

/// Bytes per slot: not a multiple of anything in particular beyond 4.
#[cfg(any(feature = "cuda", feature = "opencl"))]
const SLOT: u64 = 64 * 1024 + 4;

#[cfg(any(feature = "cuda", feature = "opencl"))]
const POISON: u8 = 0xA5;

/// One test at a time: CUDA and OpenCL contexts of one device in parallel threads are not
/// what these tests are about (the first GPU run crashed with both at once).
#[cfg(any(feature = "cuda", feature = "opencl"))]
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(feature = "cuda")]
mod cuda {
    use lava_flow::cuda::{self, Context, DeviceMemory};
    use lava_flow::{MemoryLocation, Ring, RingOptions};

    use super::common::ring::VkProducer;
    use super::common::{assert_bytes_eq, Validated};
    use super::{POISON, SHAPES, SLOT};

    const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

    /// Every frame queued on both sides before anything runs: the CUDA stream copies each slot
    /// into its own memory and poisons the slot, between the ring's wait and signal.
    fn run(slots: u32, batch: u32, frames: u64) {
        let _serial = super::serial();
        let mut v = Validated::new();
        let Some(ctx) = common_cuda(&v) else { return };
        let ring = Ring::new_buffers(&mut v, DEV0, SLOT, RingOptions::new(slots).batch(batch).frames(frames))
            .expect("ring");
        let producer = VkProducer::new(&mut v, &ring, frames as usize, SLOT);
        let theirs = ring.import_cuda(&ctx).expect("import into CUDA");
        let stream = ctx.stream().expect("stream");
        let copies = ctx.alloc(SLOT * frames).expect("CUDA memory");
        copies.fill(0, (SLOT * frames) as usize, !POISON).expect("poison the copies");
        producer.produce_all(&v, &ring);
        let mut consumer = ring.consumer().expect("consumer");
        for f in 0..frames {
            let step = consumer.next_frame().expect("step");
            theirs.wait(&step, &stream).expect("CUDA wait");
            let slot = &theirs.buffers()[step.slot];
            ctx.bind().expect("bind");
            // SAFETY: both ranges lie inside their memory (SLOT bytes of a slot, frame f's SLOT
            // bytes of `copies`); the stream belongs to the context, which is current.
            let copied = unsafe {
                cuda::sys::cuMemcpyDtoDAsync_v2(
                    copies.device_ptr() + f * SLOT,
                    slot.device_ptr(),
                    SLOT as usize,
                    stream.raw(),
                )
            };
            cuda::check("cuMemcpyDtoDAsync", copied).expect("copy the slot");
            cuda::fill_async(slot, 0, SLOT as usize, POISON, &stream).expect("poison the slot");
            theirs.signal(&step, &stream).expect("CUDA signal");
        }
        stream.synchronize().expect("the stream's work");
        ring.released().wait(frames, std::time::Duration::from_secs(60)).expect("every frame released");
        let mut got = vec![0u8; SLOT as usize];
        for (f, want) in producer.data.iter().enumerate() {
            copies.copy_to_host(f as u64 * SLOT, &mut got).expect("read the copy");
            assert_bytes_eq(&got, want, &format!("ring {slots}/{batch}: frame {f} in CUDA"));
        }
        drop(consumer);
        drop(theirs);
        drop(producer);
    }

    fn common_cuda(v: &Validated) -> Option<Context> {
        super::common::or_skip(Context::for_device(v, 0), "gpu_ring::cuda", "CUDA")
    }

    #[test]
    fn cuda_consumer_sees_every_frame_of_every_shape() {
        for (slots, batch, frames) in SHAPES {
            run(slots, batch, frames);
        }
    }
}

#[cfg(feature = "opencl")]
mod opencl {
    use lava_flow::opencl::Context;
    use lava_flow::{Error, MemoryLocation, Ring, RingOptions};

    use super::common::ring::VkProducer;
    use super::common::{assert_bytes_eq, Validated};
    use super::{POISON, SHAPES, SLOT};

    const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };

    fn opencl_or_skip(v: &Validated) -> Option<Context> {
        let made = Context::for_device(v, 0);
        if let Err(e) = &made {
            assert!(
                matches!(e, Error::Unsupported { .. } | Error::LibraryNotFound { .. }),
                "a typed error without OpenCL imports: {e}"
            );
        }
        super::common::or_skip(made, "gpu_ring::opencl", "OpenCL imports")
    }

    /// The producer queues every frame; OpenCL reads each slot (blocking), checks it, poisons it
    /// and releases it through the host.
    fn run(slots: u32, batch: u32, frames: u64) {
        let _serial = super::serial();
        let mut v = Validated::new();
        let Some(cl) = opencl_or_skip(&v) else { return };
        let ring = Ring::new_buffers(&mut v, DEV0, SLOT, RingOptions::new(slots).batch(batch).frames(frames))
            .expect("ring");
        let producer = VkProducer::new(&mut v, &ring, frames as usize, SLOT);
        let theirs = ring.import_opencl(&cl).expect("import into OpenCL");
        let queue = cl.queue().expect("queue");
        producer.produce_all(&v, &ring);
        let mut consumer = ring.consumer().expect("consumer");
        let (mut got, poison) = (vec![0u8; SLOT as usize], vec![POISON; SLOT as usize]);
        for (f, want) in producer.data.iter().enumerate() {
            let step = consumer.next_frame().expect("step");
            theirs.wait(&step).expect("OpenCL wait");
            let slot = &theirs.buffers()[step.slot];
            queue.acquire(&[slot]).expect("acquire");
            got.fill(!POISON);
            slot.read(&queue, 0, &mut got).expect("OpenCL read");
            assert_bytes_eq(&got, want, &format!("ring {slots}/{batch}: frame {f} in OpenCL"));
            slot.write(&queue, 0, &poison).expect("OpenCL poison");
            queue.release(&[slot]).expect("release");
            theirs.signal(&step, &queue).expect("OpenCL signal");
        }
        ring.released().wait(frames, std::time::Duration::from_secs(60)).expect("every frame released");
        drop(consumer);
        drop(theirs);
        drop(producer);
    }

    #[test]
    fn opencl_consumer_sees_every_frame_of_every_shape() {
        for (slots, batch, frames) in SHAPES {
            run(slots, batch, frames);
        }
    }
}
