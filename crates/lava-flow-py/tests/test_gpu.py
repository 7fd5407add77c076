"""GPU tier: lava-flow buffers in PyTorch, CuPy and JAX without copies, in both directions,
ordered by timeline semaphores on the GPU. Skips where CUDA or a library is missing; fails
instead under LAVA_FLOW_REQUIRE_GPU=1."""

import gc
import os
import time

import pytest

import lava_flow
from conftest import assert_bytes_equal, import_or_need, need, poison, random_bytes

# JAX would otherwise take 75% of the GPU at its first use, beside torch and cupy.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

np = pytest.importorskip("numpy")


@pytest.fixture
def torch(cuda_allocator):
    torch = import_or_need("torch")
    need(None if torch.cuda.is_available() else "torch.cuda.is_available() is False", "no CUDA in torch")
    return torch


def plus_one(data: bytes) -> bytes:
    return (np.frombuffer(data, np.uint8) + np.uint8(1)).tobytes()


def test_vulkan_writes_torch_reads_torch_writes_vulkan_reads(cuda_allocator, torch):
    n = 1 << 20
    buffer = cuda_allocator.allocate(n)
    buffer.write(poison(n))
    data = random_bytes(n)
    buffer.write(data)
    t = torch.from_dlpack(buffer)
    assert t.device.type == "cuda" and t.dtype == torch.uint8 and tuple(t.shape) == (n,)
    assert t.data_ptr() == buffer.__cuda_array_interface__["data"][0], "zero-copy: the same memory"
    assert_bytes_equal(t.cpu().numpy().tobytes(), data, "Vulkan → torch")
    t.add_(1)
    torch.cuda.synchronize()
    assert_bytes_equal(buffer.read(), plus_one(data), "torch add_ → Vulkan")


def test_typed_views_at_offsets_in_torch(cuda_allocator, torch):
    buffer = cuda_allocator.allocate(256 + 4 * 64 * 64 + 256)
    buffer.write(poison(buffer.size))
    values = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    buffer.write(values, 256)
    t = torch.from_dlpack(buffer.as_array(torch.float32, [64, 64], offset=256))
    np.testing.assert_array_equal(t.cpu().numpy(), values)
    transposed = torch.from_dlpack(buffer.as_array("float32", [64, 64], strides=[1, 64], offset=256))
    np.testing.assert_array_equal(transposed.cpu().numpy(), values.T)
    t.mul_(3)
    torch.cuda.synchronize()
    out = np.empty((64, 64), np.float32)
    buffer.read_into(out, 256)
    np.testing.assert_array_equal(out, values * np.float32(3))
    assert_bytes_equal(buffer.read(256), poison(256), "the bytes before the view")
    assert_bytes_equal(buffer.read(256, 256 + 4 * 64 * 64), poison(256), "the bytes after the view")


def test_the_tensor_outlives_the_python_buffer(cuda_allocator, torch):
    before = cuda_allocator.stats()["buffers"]
    buffer = cuda_allocator.allocate(1 << 20, dedicated=True)
    data = random_bytes(1 << 20)
    buffer.write(data)
    t = torch.from_dlpack(buffer.as_array("uint8", [1 << 20]))
    del buffer
    gc.collect()
    assert cuda_allocator.stats()["buffers"] == before + 1, "the capsule's consumer holds the buffer"
    t.add_(1)
    torch.cuda.synchronize()
    assert_bytes_equal(t.cpu().numpy().tobytes(), plus_one(data), "used after the buffer's Python object died")
    del t
    gc.collect()
    torch.cuda.synchronize()
    assert cuda_allocator.stats()["buffers"] == before, "the last consumer gone, the memory is freed"


def test_a_non_default_torch_stream_is_ordered_by_a_timeline(cuda_allocator, torch):
    n = 1 << 22
    buffer = cuda_allocator.allocate(n)
    buffer.write(poison(n))
    sem = cuda_allocator.timeline_semaphore()
    # Before anything waits for the host: creating a stream synchronizes the device (see
    # docs/python.md, "Waiting on the GPU for the host").
    s = torch.cuda.Stream()
    sem.cuda_wait(1)  # lava-flow's stream waits, on the GPU, for value 1
    with torch.cuda.stream(s):
        t = torch.from_dlpack(buffer)  # passes s: s is made to wait for lava-flow's stream
        copy = t.clone()  # queued on s
    time.sleep(0.2)
    assert not s.query(), "the torch stream waits for the semaphore"
    data = random_bytes(n)
    buffer.write(data)  # Vulkan writes
    sem.signal(1)
    s.synchronize()
    assert_bytes_equal(copy.cpu().numpy().tobytes(), data, "the clone ran after Vulkan's write")
    # The other way: torch writes on s, signals on s; the host (Vulkan) waits, then reads.
    with torch.cuda.stream(s):
        t.fill_(7)
        sem.cuda_signal(2, s)
    sem.wait(2, timeout=10)
    assert_bytes_equal(buffer.read(), bytes([7]) * n, "Vulkan reads after torch's signal")


def test_stream_arguments_follow_the_array_api(cuda_allocator):
    buffer = cuda_allocator.allocate(4096)
    buffer.__dlpack__(stream=-1)
    buffer.__dlpack__(stream=None)
    buffer.__dlpack__(stream=1, max_version=(1, 0))
    with pytest.raises(ValueError, match="0"):
        buffer.__dlpack__(stream=0)
    assert buffer.__dlpack_device__()[0] == 2
    cai = buffer.as_array("float32", [32, 32]).__cuda_array_interface__
    assert cai["version"] == 3 and cai["shape"] == (32, 32) and cai["typestr"] == "<f4" and cai["strides"] is None
    assert cai["stream"] not in (None, 0)
    assert buffer.as_array("float32", [32, 32], strides=[1, 32]).__cuda_array_interface__["strides"] == (4, 128)


def test_semaphores_export_on_the_gpu(cuda_allocator):
    fd = cuda_allocator.timeline_semaphore().export_fd()
    os.fstat(fd)
    os.close(fd)


def test_cupy_through_dlpack_and_the_cuda_array_interface(cuda_allocator):
    cp = import_or_need("cupy")
    buffer = cuda_allocator.allocate(4 * 1000)
    values = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    buffer.write(values)
    a = cp.from_dlpack(buffer.as_array("float32", [1000]))
    np.testing.assert_array_equal(cp.asnumpy(a), values)
    b = cp.asarray(buffer.as_array("float32", [1000]))  # __cuda_array_interface__
    assert b.data.ptr == a.data.ptr, "both zero-copy"
    # The whole buffer as bytes, and a strided view (a transpose), through the same protocol.
    whole = cp.asarray(buffer)
    assert whole.dtype == cp.uint8 and whole.size == buffer.size and whole.data.ptr == a.data.ptr
    np.testing.assert_array_equal(cp.asnumpy(whole), values.view(np.uint8))
    transposed = cp.asarray(buffer.as_array("float32", [10, 100], strides=[1, 10]))
    assert transposed.data.ptr == a.data.ptr and transposed.strides == (4, 40)
    np.testing.assert_array_equal(cp.asnumpy(transposed), values.reshape(100, 10).T)
    b += 1
    cp.cuda.runtime.deviceSynchronize()
    out = np.empty(1000, np.float32)
    buffer.read_into(out)
    np.testing.assert_array_equal(out, values + np.float32(1))
    # CuPy's memory as a borrowed view, copied into Vulkan memory on the GPU.
    src = cp.arange(1000, dtype=cp.float32)
    view = cuda_allocator.wrap_cuda(src)
    view.copy_to(buffer)
    buffer.read_into(out)
    np.testing.assert_array_equal(out, np.arange(1000, dtype=np.float32))


def test_jax_reads_vulkan_memory(cuda_allocator):
    jax = import_or_need("jax")
    import jax.dlpack

    need(None if jax.devices()[0].platform == "gpu" else f"JAX runs on {jax.devices()[0].platform}", "no GPU in JAX")
    buffer = cuda_allocator.allocate(4 * 1024)
    values = np.random.default_rng(9).standard_normal(1024).astype(np.float32)
    buffer.write(values)
    x = jax.dlpack.from_dlpack(buffer.as_array("float32", [1024]))
    np.testing.assert_array_equal(np.asarray(x), values)
    np.testing.assert_array_equal(np.asarray((x * 2).block_until_ready()), values * np.float32(2))


def test_a_torch_tensor_is_a_borrowed_view_that_cannot_go_to_vulkan(cuda_allocator, torch):
    src = torch.randint(0, 256, (100_000,), dtype=torch.uint8, device="cuda")
    view = cuda_allocator.wrap_cuda(src)
    assert view.ptr == src.data_ptr() and view.size == 100_000 and view.device_id == 0
    with pytest.raises(lava_flow.UnsupportedError, match="cannot be exported to Vulkan.*from_dlpack"):
        view.export_fd()
    buffer = cuda_allocator.allocate(100_000)
    buffer.write(poison(100_000))
    view.copy_to(buffer)
    assert_bytes_equal(buffer.read(), src.cpu().numpy().tobytes(), "torch → Vulkan, GPU copy")
    data = random_bytes(100_000)
    buffer.write(data)
    view.copy_from(buffer)
    torch.cuda.synchronize()
    assert_bytes_equal(src.cpu().numpy().tobytes(), data, "Vulkan → torch, GPU copy")
    del src
    gc.collect()
    assert_bytes_equal(view.read(), data, "the view keeps the tensor alive")
    with pytest.raises(BufferError, match="C-contiguous"):
        cuda_allocator.wrap_cuda(torch.zeros((10, 10), device="cuda").t())


class CaiOnly:
    """Only the CUDA array interface of `obj` (no __dlpack__), so that a consumer takes that
    path. The consumer holds this object, which holds the buffer: as when it holds the buffer."""

    def __init__(self, obj):
        self.obj = obj

    @property
    def __cuda_array_interface__(self):
        return self.obj.__cuda_array_interface__


@pytest.mark.parametrize("convert", ["as_tensor", "asarray"])
def test_torch_as_tensor_and_asarray_through_the_cuda_array_interface(cuda_allocator, torch, convert):
    n = 4 * 64 * 64
    buffer = cuda_allocator.allocate(256 + n + 256)
    buffer.write(poison(buffer.size))
    values = np.random.default_rng(13).standard_normal((64, 64)).astype(np.float32)
    buffer.write(values, 256)
    to_torch = getattr(torch, convert)
    whole = to_torch(CaiOnly(buffer), device="cuda")
    assert whole.dtype == torch.uint8 and tuple(whole.shape) == (buffer.size,)
    assert whole.data_ptr() == buffer.__cuda_array_interface__["data"][0], "zero-copy"
    view = buffer.as_array("float32", [64, 64], offset=256)
    t = to_torch(CaiOnly(view), device="cuda")
    assert t.dtype == torch.float32 and t.data_ptr() == view.__cuda_array_interface__["data"][0]
    np.testing.assert_array_equal(t.cpu().numpy(), values)
    transposed = to_torch(CaiOnly(buffer.as_array("float32", [64, 64], strides=[1, 64], offset=256)), device="cuda")
    assert transposed.data_ptr() == t.data_ptr() and transposed.stride() == (1, 64)
    np.testing.assert_array_equal(transposed.cpu().numpy(), values.T)
    t.mul_(3)  # torch writes, Vulkan reads
    torch.cuda.synchronize()
    out = np.empty((64, 64), np.float32)
    buffer.read_into(out, 256)
    np.testing.assert_array_equal(out, values * np.float32(3))
    assert_bytes_equal(buffer.read(256), poison(256), "the bytes before the view")
    assert_bytes_equal(buffer.read(256, 256 + n), poison(256), "the bytes after the view")
    # The buffer and the view themselves, whichever protocol torch prefers: the same memory.
    assert to_torch(view, device="cuda").data_ptr() == t.data_ptr()
    assert to_torch(buffer, device="cuda").data_ptr() == whole.data_ptr()


def test_close_keeps_the_memory_that_tensors_hold(cuda_allocator, torch):
    """After close(), a tensor made through DLPack holds the memory through its capsule; one made
    through the CUDA array interface holds the buffer object, which keeps the memory until it
    is freed. Neither ever sees freed memory."""
    before = cuda_allocator.stats()["buffers"]
    n = 1 << 20
    data = random_bytes(n)
    by_pointer_buffer = cuda_allocator.allocate(n, dedicated=True)
    by_pointer_buffer.write(data)
    by_pointer = torch.as_tensor(CaiOnly(by_pointer_buffer), device="cuda")
    by_capsule_buffer = cuda_allocator.allocate(n, dedicated=True)
    by_capsule_buffer.write(data)
    by_capsule = torch.from_dlpack(by_capsule_buffer)
    by_pointer_buffer.close()
    by_capsule_buffer.close()
    with pytest.raises(lava_flow.ClosedError):
        by_pointer_buffer.read()
    with pytest.raises(lava_flow.ClosedError):
        torch.from_dlpack(by_capsule_buffer)
    borrowed = cuda_allocator.wrap_cuda(by_capsule)  # holds the tensor: deleted below
    with pytest.raises(lava_flow.ClosedError):
        borrowed.copy_to(by_capsule_buffer)
    del borrowed
    assert cuda_allocator.stats()["buffers"] == before + 2, "both tensors hold their memory"
    by_pointer.add_(1)
    by_capsule.add_(1)
    torch.cuda.synchronize()
    assert_bytes_equal(by_pointer.cpu().numpy().tobytes(), plus_one(data), "through the pointer, after close")
    assert_bytes_equal(by_capsule.cpu().numpy().tobytes(), plus_one(data), "through the capsule, after close")
    del by_capsule
    gc.collect()
    torch.cuda.synchronize()
    assert cuda_allocator.stats()["buffers"] == before + 1, "the capsule's tensor gone, its memory is freed"
    del by_pointer
    gc.collect()
    assert cuda_allocator.stats()["buffers"] == before + 1, "the closed buffer's object still lives"
    del by_pointer_buffer
    gc.collect()
    assert cuda_allocator.stats()["buffers"] == before, "and with it the memory goes"


def later_buffers_keep_their_bytes(allocator, n, stream):
    """After a buffer was closed with a copy into it still queued on `stream`: buffers allocated
    meanwhile (which would take its memory, were it freed) are poisoned, and still hold every
    poisoned byte once the copy ran."""
    gc.collect()
    later = [allocator.allocate(n) for _ in range(4)]
    for b in later:
        b.write(poison(n))
    stream.synchronize()
    for i, b in enumerate(later):
        assert_bytes_equal(b.read(), poison(n), f"buffer {i}, allocated while the copy was queued")


def test_a_tensor_freed_under_queued_torch_work_keeps_its_memory(cuda_allocator, torch):
    """ADR 0014: torch frees a tensor on the host while its kernels are still queued. The
    capsule's deleter records an event on the stream the consumer named in __dlpack__ (torch's
    current stream), so the buffer's memory — here its range of a shared block — stays until
    that work ran: buffers allocated meanwhile never get it."""
    n = 4 << 20
    data_bytes = random_bytes(n)
    data = torch.frombuffer(bytearray(data_bytes), dtype=torch.uint8).cuda()
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()

    # First with the buffer kept: the copy queued behind the spin lands, every byte.
    kept = cuda_allocator.allocate(n)
    kept.write(poison(n))
    with torch.cuda.stream(stream):
        t = torch.from_dlpack(kept)  # __dlpack__(stream=<stream>)
        torch.cuda._sleep(1 << 28)  # keeps the stream busy for ~100 ms or more
        t.copy_(data)
    del t
    stream.synchronize()
    assert_bytes_equal(kept.read(), data_bytes, "a copy queued before the tensor was freed")

    # Then with the buffer closed as well: nothing in Python holds the memory any more.
    buffer = cuda_allocator.allocate(n)
    with torch.cuda.stream(stream):
        t = torch.from_dlpack(buffer)
        torch.cuda._sleep(1 << 28)
        t.copy_(data)
    del t
    buffer.close()
    later_buffers_keep_their_bytes(cuda_allocator, n, stream)


def test_release_after_covers_work_on_streams_dlpack_was_not_told_of(cuda_allocator, torch):
    """Work on a stream other than the one named in __dlpack__ (or through the CUDA array
    interface) is the caller's to announce with Buffer.release_after."""
    n = 4 << 20
    data = torch.frombuffer(bytearray(random_bytes(n)), dtype=torch.uint8).cuda()
    other = torch.cuda.Stream()
    torch.cuda.synchronize()
    buffer = cuda_allocator.allocate(n)
    t = torch.from_dlpack(buffer)  # named the default stream
    with torch.cuda.stream(other):
        torch.cuda._sleep(1 << 28)
        t.copy_(data)
    buffer.release_after(other)
    del t
    buffer.close()
    later_buffers_keep_their_bytes(cuda_allocator, n, other)
    with pytest.raises(lava_flow.ClosedError):
        buffer.release_after(other)
