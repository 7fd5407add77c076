"""An outside attack on lava_flow.Ring and the asynchronous transfers (CPU tier): a producer cursor
taken again mid-ring, one transfer waited for from two threads, a buffer closed under a read in
flight, and misused destinations. Every byte checked."""

import threading
import time

import numpy as np
import pytest

import lava_flow
from conftest import assert_bytes_equal, poison, random_bytes


def test_a_producer_taken_again_does_not_overwrite_unreleased_frames(allocator):
    """A producer that takes a new cursor for every batch (a loop restarted, a thread per batch)
    must carry on at the next frame, whose step waits for the release of the frame the slot held
    before; a cursor starting again at frame 0 waits for nothing and overwrites slot 0 while the
    (slow) consumer has yet to read it."""
    size, frames = 4096, 6
    ring = lava_flow.Ring(allocator, 2, size, batch=2, frames=frames)
    data = [random_bytes(size) for _ in range(frames)]
    failed = []

    def produce():
        try:
            content = 0
            for _batch in range(frames // 2):
                producer = ring.producer()
                assert producer.position == content, "a new cursor carries on"
                for _ in range(2):
                    step = producer.next_frame()
                    ring.wait(step, timeout=10)
                    ring.buffers[step.slot].write(data[content])
                    content += 1
                    ring.signal(step)
                del producer
        except Exception as e:  # reported by the consumer's thread
            failed.append(e)
            raise

    thread = threading.Thread(target=produce)
    thread.start()
    consumer = ring.consumer()
    try:
        for f in range(frames):
            step = consumer.next_frame()
            ring.wait(step, timeout=10)
            time.sleep(0.02)  # a slow consumer: an unordered producer overwrites the slot meanwhile
            slot = ring.buffers[step.slot]
            assert_bytes_equal(slot.read(), data[f], f"frame {f} in slot {step.slot}")
            slot.write(poison(size))
            ring.signal(step)
    finally:
        thread.join()
    assert not failed, failed
    assert ring.written.value == frames and ring.released.value == frames


def test_a_wait_on_another_thread_returns_only_once_the_transfer_finished(allocator):
    """Two threads wait for one read: the second must not return (nor `done()` say True) while
    the first is still waiting — the destination would then be read before its bytes landed.
    A read of 64 MiB through the staging ring holds its last 48 MiB in ring slots until a wait
    finishes it."""
    size = 64 << 20
    buffer = allocator.allocate(size)
    data = np.frombuffer(random_bytes(size), dtype=np.uint8)
    buffer.write(data)
    for round in range(2):
        out = np.full(size, 0xA5, dtype=np.uint8)
        transfer = buffer.read_into_async(out)
        started = repr(transfer)
        first = threading.Thread(target=transfer.wait)
        first.start()
        # Until the first thread has the transfer in hand.
        while repr(transfer) == started:
            time.sleep(0)
        transfer.wait()
        assert transfer.done()
        assert_bytes_equal(out.tobytes(), data.tobytes(), f"round {round}: after the second wait")
        first.join()


def test_a_buffer_closed_under_a_read_in_flight(allocator):
    """close() while reads and writes are in flight: the close waits for them, the reads land
    whole in their destinations, and the buffer is closed for later calls."""
    size = (48 << 20) + 5
    buffer = allocator.allocate(size)
    data = random_bytes(size)
    writing = buffer.write_async(data)
    out = bytearray(poison(size))
    reading = buffer.read_into_async(out)
    buffer.close()
    writing.wait()
    reading.wait()
    assert_bytes_equal(bytes(out), data, "the read queued before close()")
    with pytest.raises(lava_flow.ClosedError):
        buffer.read_into_async(bytearray(4))


def test_misused_destinations_are_typed_errors_that_keep_nothing_exported(allocator):
    buffer = allocator.allocate(4096)
    payload = random_bytes(4096)
    buffer.write(payload)
    with pytest.raises(BufferError, match="read-only"):
        buffer.read_into_async(b"immutable")
    with pytest.raises(BufferError, match="C-contiguous"):
        buffer.read_into_async(np.zeros(2048, dtype=np.uint8)[::2])
    with pytest.raises(TypeError, match="bytes-like"):
        buffer.write_async("text")
    # Past the end: refused, and the destination is not left exported (it can be resized).
    too_long = bytearray(4097)
    with pytest.raises(lava_flow.InvalidArgumentError):
        buffer.read_into_async(too_long)
    too_long.extend(b"x")
    source = bytearray(16)
    with pytest.raises(lava_flow.InvalidArgumentError):
        buffer.write_async(source, 4090)
    source.extend(b"x")
    # Any dtype: the bytes are the array's bytes.
    floats = np.full(1024, np.nan, dtype=np.float32)
    buffer.read_into_async(floats).wait()
    assert_bytes_equal(floats.tobytes(), payload, "a float32 destination")
    # A destination resized while a read is in flight is refused by the export.
    grow = bytearray(1024)
    reading = buffer.read_into_async(grow)
    with pytest.raises(BufferError):
        grow.extend(b"x")
    reading.wait()
    assert_bytes_equal(bytes(grow), payload[:1024], "the read into the bytearray")
