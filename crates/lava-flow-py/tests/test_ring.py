"""Frame rings from Python: lava_flow.Ring's value arithmetic, cursors and typed errors, a host
producer and consumer on the CPU tier (every frame random bytes, every byte checked, each slot
poisoned after it was read), and on the GPU tier torch and CuPy streams that wait and signal on
the GPU, batch by batch. GPU tests skip where CUDA, torch or CuPy is missing,
and fail instead under LAVA_FLOW_REQUIRE_GPU=1."""

import threading
import time

import pytest

import lava_flow
from conftest import assert_bytes_equal, import_or_need, need, poison, random_bytes

# (slots, batch, frames): rings of 1 and 64, batches that do not divide the ring.
SHAPES = [(1, 1, 5), (2, 1, 12), (3, 2, 13), (5, 5, 11), (64, 7, 150)]


def steps(ring, cursor, n):
    return [(s.slot, s.wait, s.signal) for s in (cursor.next_frame() for _ in range(n))]


def test_the_values_are_the_rust_rings(allocator):
    ring = lava_flow.Ring(allocator, 4, 256, batch=2)
    assert (ring.slots, ring.batch, ring.frames) == (4, 2, None)
    assert steps(ring, ring.producer(), 8) == [
        (0, None, None),
        (1, None, 2),
        (2, None, None),
        (3, None, 4),
        (0, 2, None),
        (1, None, 6),
        (2, 4, None),
        (3, None, 8),
    ]
    consumer = ring.consumer()
    first = consumer.next_frame()
    assert (first.end, first.frame, first.slot, first.wait, first.signal) == ("consumer", 0, 0, 2, None)
    assert consumer.position == 1
    # A known length ends the last batch at the last frame.
    short = lava_flow.Ring(allocator, 4, 256, batch=3, frames=7)
    last = steps(short, short.consumer(), 7)[-1]
    assert last == (2, 7, 7)


def test_bad_shapes_and_second_cursors_are_typed_errors(allocator):
    for slots, batch in [(0, 1), (4, 0), (4, 5)]:
        with pytest.raises(lava_flow.InvalidArgumentError, match="ring"):
            lava_flow.Ring(allocator, slots, 256, batch=batch)
    with pytest.raises(lava_flow.InvalidArgumentError, match="at least 1 frame"):
        lava_flow.Ring(allocator, 2, 256, frames=0)
    ring = lava_flow.Ring(allocator, 2, 256, frames=1)
    producer = ring.producer()
    with pytest.raises(lava_flow.InvalidArgumentError, match="already taken"):
        ring.producer()
    producer.next_frame()
    with pytest.raises(lava_flow.InvalidArgumentError, match="handed out"):
        producer.next_frame()
    del producer
    ring.producer()  # the end is free again once the cursor is gone
    # A step of another ring of as many slots: its values are that ring's.
    other = lava_flow.Ring(allocator, 2, 256, batch=2)
    step = other.producer().next_frame()
    with pytest.raises(lava_flow.InvalidArgumentError, match="another ring"):
        ring.signal(step)
    with pytest.raises(lava_flow.InvalidArgumentError, match="another ring"):
        ring.wait(step)
    assert lava_flow.batch_for_latency(16, 0.001, 0.004) == 4
    assert lava_flow.batch_for_latency(4, 0.001, 1.0) == 2
    with pytest.raises(ValueError):
        lava_flow.batch_for_latency(4, -1.0, 1.0)


def host_ring(allocator, slots, batch, frames, delay):
    """A producer thread and this thread's consumer, both through the host."""
    size = 4096 + 4
    ring = lava_flow.Ring(allocator, slots, size, batch=batch, frames=frames)
    data = [random_bytes(size) for _ in range(frames)]
    failed = []

    def produce():
        try:
            producer = ring.producer()
            for f in range(frames):
                step = producer.next_frame()
                ring.wait(step, timeout=60)
                ring.buffers[step.slot].write(data[f])
                ring.signal(step)
        except Exception as e:  # reported by the consumer's thread
            failed.append(e)
            raise

    thread = threading.Thread(target=produce)
    thread.start()
    consumer = ring.consumer()
    for f in range(frames):
        step = consumer.next_frame()
        ring.wait(step, timeout=60)
        time.sleep(delay)
        slot = ring.buffers[step.slot]
        assert_bytes_equal(slot.read(), data[f], f"ring {slots}/{batch}: frame {f} in slot {step.slot}")
        slot.write(poison(size))
        ring.signal(step)
    thread.join()
    assert not failed, failed
    assert ring.written.value == frames and ring.released.value == frames


@pytest.mark.parametrize("slots,batch,frames", SHAPES)
def test_host_ends_see_every_frame(allocator, slots, batch, frames):
    host_ring(allocator, slots, batch, frames, 0.0)


def test_a_slow_consumer_holds_the_producer_back(allocator):
    host_ring(allocator, 2, 1, 12, 0.005)
    host_ring(allocator, 3, 2, 12, 0.005)


@pytest.fixture
def torch(cuda_allocator):
    torch = import_or_need("torch")
    need(None if torch.cuda.is_available() else "torch.cuda.is_available() is False", "no CUDA in torch")
    return torch


def batches(ring, frames):
    """The frame ranges of each hand-off: both ends of one CUDA context queue batch by batch."""
    return [range(first, min(first + ring.batch, frames)) for first in range(0, frames, ring.batch)]


def alternate(torch, ring, frames, size, consume):
    """A torch producer and `consume(step, frame)` in the same CUDA context, queued batch by
    batch: each batch's writes, then its reads. Every wait is then queued after the signal it
    waits for. Queuing every producer frame first hung on the H200 (CUDA multiplexes streams onto
    a few hardware queues, and a GPU wait for a value signalled by work queued behind it on the
    same hardware queue never ends; docs/rings.md). Returns the frames' bytes (on the GPU)."""
    source = torch.randint(0, 256, (frames, size), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    slots = [torch.from_dlpack(b) for b in ring.buffers]
    torch.cuda.synchronize()
    producer, consumer = ring.producer(), ring.consumer()
    for batch in batches(ring, frames):
        with torch.cuda.stream(stream):
            for f in batch:
                step = producer.next_frame()
                ring.cuda_wait(step, stream)
                slots[step.slot].copy_(source[f])
                ring.cuda_signal(step, stream)
        for f in batch:
            consume(consumer.next_frame(), f)
    return source


@pytest.mark.parametrize("slots,batch,frames", SHAPES)
def test_torch_streams_on_both_ends(cuda_allocator, torch, slots, batch, frames):
    size = 64 * 1024
    ring = lava_flow.Ring(cuda_allocator, slots, size, batch=batch, frames=frames)
    out = torch.full((frames, size), 0x5A, dtype=torch.uint8, device="cuda")
    views = [torch.from_dlpack(b) for b in ring.buffers]
    stream = torch.cuda.Stream()

    def consume(step, f):
        with torch.cuda.stream(stream):
            ring.cuda_wait(step, stream)
            out[f].copy_(views[step.slot])
            views[step.slot].fill_(0xA5)  # poison after reading: an early overwrite would show
            ring.cuda_signal(step, stream)

    source = alternate(torch, ring, frames, size, consume)
    ring.released.wait(frames, timeout=60)
    torch.cuda.synchronize()
    for f in range(frames):
        assert torch.equal(out[f], source[f]), f"ring {slots}/{batch}: frame {f}"


def test_torch_producer_cupy_consumer(cuda_allocator, torch):
    cupy = import_or_need("cupy")
    slots, batch, frames, size = 3, 2, 25, 64 * 1024
    ring = lava_flow.Ring(cuda_allocator, slots, size, batch=batch, frames=frames)
    out = cupy.full((frames, size), 0x5A, dtype=cupy.uint8)
    views = [cupy.from_dlpack(b) for b in ring.buffers]
    stream = cupy.cuda.Stream(non_blocking=True)

    def consume(step, f):
        with stream:
            ring.cuda_wait(step, stream)
            out[f][...] = views[step.slot]
            views[step.slot].fill(0xA5)
            ring.cuda_signal(step, stream)

    source = alternate(torch, ring, frames, size, consume)
    stream.synchronize()
    ring.released.wait(frames, timeout=60)
    torch.cuda.synchronize()
    want = source.cpu().numpy()
    got = cupy.asnumpy(out)
    for f in range(frames):
        assert_bytes_equal(got[f].tobytes(), want[f].tobytes(), f"frame {f} in CuPy")
