"""lava_flow.ipc: buffers and timeline semaphores to another process over a Unix socket.

CPU tier: a real second Python process imports a buffer into its own Vulkan device and both
processes see each other's bytes. GPU tier: the consumer process hands the received buffer to
torch through DLPack, ordered by a received timeline semaphore."""

import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import lava_flow
from conftest import assert_bytes_equal, need, random_bytes

CHILD_PRELUDE = """
import os, socket, sys, struct
import lava_flow
sock = socket.socket(fileno=int(sys.argv[1]))

def send_bytes(b):
    sock.sendall(struct.pack("<Q", len(b)) + b)

def recv_bytes():
    n = struct.unpack("<Q", recv_exact(8))[0]
    return recv_exact(n)

def recv_exact(n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("the test closed the socket")
        out += chunk
    return out
"""


def send_bytes(sock, b: bytes) -> None:
    sock.sendall(len(b).to_bytes(8, "little") + b)


def recv_exact(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "the other process closed the socket"
        out += chunk
    return out


def recv_bytes(sock) -> bytes:
    return recv_exact(sock, int.from_bytes(recv_exact(sock, 8), "little"))


def spawn(code: str):
    """A second Python process running `code`, connected by a Unix socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    return child, ours


def test_a_buffer_crosses_to_another_process_both_ways(allocator):
    n = 300_000
    allocator.allocate(4096)  # the next buffer sits at an offset in the block
    buffer = allocator.allocate(n)
    data = random_bytes(n)
    buffer.write(data)
    child, sock = spawn(
        """
        other = lava_flow.MemoryAllocator()
        received = lava_flow.ipc.recv(sock, other)
        assert isinstance(received, lava_flow.Buffer), received
        send_bytes(received.read())
        mine = os.urandom(received.size)
        received.write(mine)
        other.wait_idle(0)
        send_bytes(mine)
        """
    )
    with sock:
        lava_flow.ipc.send(sock, buffer)
        assert_bytes_equal(recv_bytes(sock), data, "this process → the other")
        theirs = recv_bytes(sock)  # random bytes of its own, over ours
        assert theirs != data
        assert child.wait(timeout=120) == 0
    # The other process wrote before it answered and it has exited: its bytes are in the memory.
    assert_bytes_equal(buffer.read(), theirs, "the other process → this one")


def _child_through_a_pipe(conn):
    """The other process of the multiprocessing tests (module level: spawn imports it). Each
    object it receives was unpickled: imported into this process's default allocator."""
    while (obj := conn.recv()) is not None:
        if isinstance(obj, lava_flow.Buffer):
            conn.send(obj.read())
            mine = os.urandom(obj.size)
            obj.write(mine)
            lava_flow.default_allocator().wait_idle(0)
            conn.send(mine)
        else:
            assert isinstance(obj, lava_flow.TimelineSemaphore), obj
            obj.wait(1, timeout=30)  # the parent's signal, seen through the unpickled semaphore
            conn.send(b"seen")


def spawn_pickled_peer():
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_child_through_a_pipe, args=(theirs,))
    child.start()
    return child, ours


def test_buffers_go_through_multiprocessing(allocator):
    """Pickling sends the fd (multiprocessing's DupFd); the other process gets the same memory."""
    n = 200_000
    allocator.allocate(4096)
    buffer = allocator.allocate(n)
    data = random_bytes(n)
    buffer.write(data)
    child, ours = spawn_pickled_peer()
    try:
        ours.send(buffer)
        assert_bytes_equal(ours.recv(), data, "this process → the other, through a pickle")
        mine = ours.recv()
        assert mine != data
        assert_bytes_equal(buffer.read(), mine, "the other process → this one")
    finally:
        ours.send(None)
        child.join(60)
    assert child.exitcode == 0


def test_timeline_semaphores_go_through_multiprocessing(allocator):
    timeline = allocator.timeline_semaphore()
    try:
        os.close(timeline.export_fd())
    except lava_flow.UnsupportedError as e:
        need(str(e), "exportable timeline semaphores")
    child, ours = spawn_pickled_peer()
    try:
        ours.send(timeline)
        timeline.signal(1)
        assert ours.recv() == b"seen"
    finally:
        ours.send(None)
        child.join(60)
    assert child.exitcode == 0


def test_bad_input_is_typed(allocator):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        with pytest.raises(TypeError):
            lava_flow.ipc.send(a, b"not a buffer")
        a.sendall(b"NOPE" + bytes(4))
        with pytest.raises(lava_flow.MalformedError):
            lava_flow.ipc.recv(b, allocator)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    c.close()
    with d, pytest.raises(lava_flow.DisconnectedError) as e:
        lava_flow.ipc.recv(d, allocator)
    assert isinstance(e.value, ConnectionError)


def test_a_torch_consumer_process_gets_the_memory_ordered_by_a_timeline(cuda_allocator):
    """GPU tier: the consumer process gets a torch tensor of this process's memory through
    DLPack, waits on its stream for value 1, adds one to every byte, signals 2."""
    try:
        import torch  # noqa: F401 (only to know it is there before spawning)
    except ImportError as e:
        need(str(e), "no torch")
    n = 1 << 20
    buffer = cuda_allocator.allocate(n)
    timeline = cuda_allocator.timeline_semaphore()
    data = random_bytes(n)
    buffer.write(data)
    child, sock = spawn(
        """
        import torch
        # Kernels load lazily, and a first load waits for the device: load add_ before the
        # stream waits for a value this process cannot signal (docs/python.md).
        torch.ones(1, dtype=torch.uint8, device="cuda").add_(1)
        torch.cuda.synchronize()
        other = lava_flow.MemoryAllocator()
        received = lava_flow.ipc.recv(sock, other)
        sync = lava_flow.ipc.recv(sock, other)
        stream = torch.cuda.Stream()
        sync.cuda_wait(1, stream)
        with torch.cuda.stream(stream):
            t = torch.from_dlpack(received.__dlpack__(stream=stream.cuda_stream))
            t.add_(1)
        sync.cuda_signal(2, stream)
        send_bytes(b"queued")
        stream.synchronize()
        send_bytes(b"done")
        """
    )
    with sock:
        lava_flow.ipc.send(sock, buffer)
        lava_flow.ipc.send(sock, timeline)
        assert recv_bytes(sock) == b"queued"
        assert_bytes_equal(buffer.read(), data, "nothing ran before the producer's 1")
        timeline.signal(1)
        timeline.wait(2, timeout=30)
        assert recv_bytes(sock) == b"done"
        assert child.wait(timeout=120) == 0
    want = bytes((b + 1) & 0xFF for b in data)
    assert_bytes_equal(buffer.read(), want, "torch in the other process, ordered by the timeline")
