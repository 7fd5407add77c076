"""CPU tier (and everywhere): allocation, bytes in and out, exports, typed views, errors."""

import gc
import os

import pytest

import lava_flow
from lava_flow import MemoryLocation
from conftest import assert_bytes_equal, poison, random_bytes

np = pytest.importorskip("numpy")


def test_the_readme_start_allocates_and_exports(allocator):
    buffer = allocator.allocate(1_000_000, MemoryLocation.GpuVulkan(device_id=0))
    fd = buffer.export_fd()
    try:
        os.fstat(fd)  # an open descriptor, ours to close
        assert buffer.size == 1_000_000
        assert buffer.location == MemoryLocation.GpuVulkan(device_id=0)
        assert buffer.exportable
    finally:
        os.close(fd)


@pytest.mark.parametrize("location", [MemoryLocation.GpuVulkan(), MemoryLocation.GpuMappable(), MemoryLocation.HostVisible()])
@pytest.mark.parametrize("size", [1, 4095, 70_001, 1 << 20])
def test_bytes_round_trip_at_every_offset_kind(allocator, location, size):
    try:
        buffer = allocator.allocate(size, location)
    except lava_flow.UnsupportedError as e:
        # Allowed by the API: GpuMappable needs resizable BAR (the H100 machine has none).
        pytest.skip(f"{location}: {e}")
    buffer.write(poison(size))
    data = random_bytes(size)
    buffer.write(data)
    assert_bytes_equal(buffer.read(), data, f"{location} whole")
    if size > 8:
        patch = random_bytes(size // 3)
        at = size // 2 - size // 6
        buffer.write(patch, at)
        want = data[:at] + patch + data[at + len(patch):]
        assert_bytes_equal(buffer.read(), want, f"{location} patched at {at}")
        assert_bytes_equal(buffer.read(len(patch), at), patch, f"{location} read at {at}")


def test_numpy_arrays_in_and_out(allocator):
    buffer = allocator.allocate(4 * 1000)
    values = np.random.default_rng(7).standard_normal(1000).astype(np.float32)
    buffer.write(values)
    out = np.full(1000, np.nan, dtype=np.float32)
    buffer.read_into(out)
    np.testing.assert_array_equal(out, values)
    # A 2-D array, a memoryview, a bytearray.
    grid = np.arange(200, dtype=np.int64).reshape(10, 20)
    buffer.write(grid, 800)
    back = np.empty((10, 20), dtype=np.int64)
    buffer.read_into(back, 800)
    np.testing.assert_array_equal(back, grid)
    buffer.write(memoryview(b"abc"), 5)
    target = bytearray(3)
    buffer.read_into(target, 5)
    assert target == b"abc"


def test_bad_data_and_destinations_are_clear_errors(allocator):
    buffer = allocator.allocate(1000)
    with pytest.raises(TypeError, match="bytes-like"):
        buffer.write("text")
    with pytest.raises(BufferError, match="C-contiguous"):
        buffer.write(np.arange(100, dtype=np.float32)[::2])
    with pytest.raises(BufferError, match="read-only"):
        buffer.read_into(b"immutable")


def test_errors_are_typed_and_carry_the_rust_message(allocator):
    buffer = allocator.allocate(1000)
    with pytest.raises(lava_flow.InvalidArgumentError, match="at least 1 byte") as e:
        allocator.allocate(0)
    assert isinstance(e.value, ValueError) and isinstance(e.value, lava_flow.LavaFlowError)
    with pytest.raises(lava_flow.InvalidArgumentError, match="heap"):
        allocator.allocate(1 << 62)
    with pytest.raises(lava_flow.UnknownDeviceError, match="unknown device_id 7"):
        allocator.allocate(100, MemoryLocation.GpuVulkan(device_id=7))
    with pytest.raises(lava_flow.InvalidArgumentError, match="out of range"):
        buffer.write(b"x" * 10, 995)
    with pytest.raises(lava_flow.InvalidArgumentError, match="out of range"):
        buffer.read(10, 995)
    with pytest.raises(lava_flow.InvalidArgumentError, match="out of range"):
        buffer.read(offset=1001)
    with pytest.raises(lava_flow.UnknownDeviceError):
        allocator.timeline_semaphore(9)
    with pytest.raises(OverflowError):
        allocator.allocate(-1)


def test_exhausting_a_heap_budget_is_a_memory_error_that_loses_nothing():
    budget = 8 << 20
    allocator = lava_flow.MemoryAllocator(heap_budget=budget)
    kept = []
    with pytest.raises(lava_flow.OutOfMemoryError, match="heap budget") as e:
        for _ in range(64):
            b = allocator.allocate(1 << 20, dedicated=True)
            data = random_bytes(1 << 20)
            b.write(data)
            kept.append((b, data))
    assert isinstance(e.value, MemoryError)
    # 8 buffers where the budget holds nothing else; fewer where staging shares the heap.
    assert 2 <= len(kept) <= 8
    for b, data in kept:
        assert_bytes_equal(b.read(), data, "kept through exhaustion")
    kept.clear()
    allocator.allocate(1 << 20, dedicated=True)


def test_buffers_free_when_python_lets_go(allocator):
    before = allocator.stats()
    buffers = [allocator.allocate(10_000 + i) for i in range(50)]
    assert allocator.stats()["buffers"] == before["buffers"] + 50
    del buffers
    gc.collect()
    assert allocator.stats()["buffers"] == before["buffers"]


def test_exports_are_new_fds_and_the_descriptor_says_what_to_import(allocator):
    buffer = allocator.allocate(5000)
    second = allocator.allocate(5000)
    fds = [buffer.export_fd() for _ in range(3)]
    assert len(set(fds)) == 3
    for fd in fds:
        os.close(fd)
    d = second.descriptor()
    assert d["offset"] == second.offset and d["size"] == 5000
    assert d["allocation_size"] == second.allocation_size >= second.offset + 5000
    assert d["device_uuid"] == allocator.devices()[0]["uuid"]
    assert d["dedicated"] is False


def test_typed_views_are_checked_against_the_buffer(allocator):
    buffer = allocator.allocate(4096)
    view = buffer.as_array("float32", [32, 32])
    assert (view.shape, view.strides, view.dtype, view.offset) == ([32, 32], [32, 1], "float32", 0)
    assert buffer.as_array(np.float32, [10]).dtype == "float32"
    assert buffer.as_array(np.dtype("<i2"), [10]).dtype == "int16"
    assert buffer.as_array("f8", [2, 3], strides=[1, 2], offset=8).strides == [1, 2]
    with pytest.raises(lava_flow.InvalidArgumentError, match="does not fit"):
        buffer.as_array("float32", [33, 32])
    with pytest.raises(lava_flow.InvalidArgumentError, match="does not fit"):
        buffer.as_array("uint8", [10], offset=4090)
    with pytest.raises(lava_flow.InvalidArgumentError, match="multiple"):
        buffer.as_array("float32", [4], offset=2)
    with pytest.raises(lava_flow.InvalidArgumentError, match="negative"):
        buffer.as_array("float32", [4], strides=[-1])
    with pytest.raises(lava_flow.InvalidArgumentError, match="strides for"):
        buffer.as_array("float32", [4, 4], strides=[1])
    with pytest.raises(ValueError, match="unsupported dtype"):
        buffer.as_array("float128", [4])
    assert buffer.as_array("uint8", [0], offset=4096).shape == [0]


def test_gpu_memory_without_cuda_is_a_clear_buffer_error(allocator):
    """Device-local memory is a CUDA tensor: without libcuda DLPack says why, and the CUDA array
    interface is absent (hasattr is False) rather than broken."""
    buffer = allocator.allocate(4096)
    try:
        buffer.__dlpack_device__()
        pytest.skip("CUDA is present here: the GPU tier covers it")
    except BufferError as e:
        assert "CUDA" in str(e)
    for exporter in (buffer, buffer.as_array("float32", [1024])):
        with pytest.raises(BufferError, match="cannot export this buffer through DLPack: .*CUDA"):
            exporter.__dlpack__()
        with pytest.raises(BufferError):
            np.from_dlpack(exporter)
        assert not hasattr(exporter, "__cuda_array_interface__")


def test_release_after_is_for_cuda_work_on_gpu_buffers(allocator):
    """Buffer.release_after records CUDA work; host memory has none to record, and a stream
    argument is checked before anything else."""
    buffer = allocator.allocate(64, MemoryLocation.HostVisible())
    with pytest.raises(lava_flow.UnsupportedError, match="host-visible"):
        buffer.release_after(1)
    with pytest.raises(TypeError, match="expected a CUDA stream"):
        buffer.release_after("the default stream")


def test_host_visible_memory_is_a_numpy_array_without_copies(allocator):
    buffer = allocator.allocate(4 * 1024, MemoryLocation.HostVisible())
    assert buffer.__dlpack_device__() == (1, 0)
    view = buffer.as_array("float32", [32, 32])
    array = np.from_dlpack(view)
    assert array.shape == (32, 32) and array.dtype == np.float32
    # Vulkan writes, numpy sees; numpy writes, Vulkan reads.
    values = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    buffer.write(values)
    np.testing.assert_array_equal(array, values)
    array *= 2
    back = np.empty((32, 32), dtype=np.float32)
    buffer.read_into(back)
    np.testing.assert_array_equal(back, values * 2)
    # A strided view at an offset.
    column = np.from_dlpack(buffer.as_array("float32", [32], strides=[32], offset=4 * 3))
    np.testing.assert_array_equal(column, values[:, 3] * 2)
    # The array outlives the Python buffer and view: the capsule holds the Vulkan memory.
    stats = allocator.stats()["buffers"]
    del buffer, view
    gc.collect()
    assert allocator.stats()["buffers"] == stats, "the numpy array keeps the buffer"
    np.testing.assert_array_equal(array, values * 2)
    array += 1
    del array, column
    gc.collect()
    assert allocator.stats()["buffers"] == stats - 1, "letting go of the array frees it"


def test_dlpack_capsules_follow_the_array_api(allocator):
    import ctypes

    is_valid = ctypes.pythonapi.PyCapsule_IsValid
    is_valid.restype = ctypes.c_int
    is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
    buffer = allocator.allocate(64, MemoryLocation.HostVisible())
    assert is_valid(buffer.__dlpack__(), b"dltensor")
    assert is_valid(buffer.__dlpack__(max_version=(0, 8)), b"dltensor")
    assert is_valid(buffer.__dlpack__(max_version=(1, 0)), b"dltensor_versioned")
    assert is_valid(buffer.__dlpack__(max_version=(1, 3), dl_device=(1, 0), copy=False), b"dltensor_versioned")
    with pytest.raises(BufferError, match="zero-copy"):
        buffer.__dlpack__(copy=True)
    with pytest.raises(BufferError, match="cross-device"):
        buffer.__dlpack__(dl_device=(2, 0))
    # A capsule never consumed frees nothing twice and leaks nothing.
    before = allocator.stats()["buffers"]
    capsules = [buffer.__dlpack__(max_version=(1, 0)) for _ in range(100)]
    del buffer, capsules
    gc.collect()
    assert allocator.stats()["buffers"] == before - 1


def test_timeline_semaphores_on_the_host(allocator):
    s = allocator.timeline_semaphore()
    assert s.value == 0
    s.signal(3)
    assert s.value == 3
    s.wait(3, timeout=1)
    with pytest.raises(lava_flow.TimeoutError) as e:
        s.wait(4, timeout=0.05)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(lava_flow.InvalidArgumentError):
        s.signal(2)


def test_a_semaphore_signalled_from_another_thread_wakes_a_waiter(allocator):
    import threading

    s = allocator.timeline_semaphore()
    t = threading.Timer(0.05, s.signal, args=(1,))
    t.start()
    s.wait(1, timeout=10)  # releases the GIL, so the timer thread runs
    t.join()


def test_the_other_direction_needs_cuda_memory(allocator):
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        allocator.wrap_cuda(np.zeros(4))


def test_exception_classes():
    assert issubclass(lava_flow.LibraryNotFoundError, lava_flow.UnsupportedError)
    assert issubclass(lava_flow.DeviceMismatchError, ValueError)
    assert issubclass(lava_flow.OutOfMemoryError, MemoryError)
    assert issubclass(lava_flow.DriverError, lava_flow.LavaFlowError)
    assert lava_flow.LavaFlowError.__module__ == "lava_flow"
    assert issubclass(lava_flow.ClosedError, ValueError) and issubclass(lava_flow.ClosedError, lava_flow.LavaFlowError)


def uses_of(buffer, view):
    """Every way to use a buffer (and a view of it), each a callable."""
    import pickle
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return {
        "size": lambda: buffer.size,
        "offset": lambda: buffer.offset,
        "allocation_size": lambda: buffer.allocation_size,
        "dedicated": lambda: buffer.dedicated,
        "exportable": lambda: buffer.exportable,
        "device_id": lambda: buffer.device_id,
        "location": lambda: buffer.location,
        "len": lambda: len(buffer),
        "write": lambda: buffer.write(b"x"),
        "read": lambda: buffer.read(),
        "read_into": lambda: buffer.read_into(bytearray(4)),
        "export_fd": lambda: buffer.export_fd(),
        "descriptor": lambda: buffer.descriptor(),
        "as_array": lambda: buffer.as_array("uint8", [4]),
        "__dlpack__": lambda: buffer.__dlpack__(),
        "__dlpack_device__": lambda: buffer.__dlpack_device__(),
        "__cuda_array_interface__": lambda: buffer.__cuda_array_interface__,
        "release_after": lambda: buffer.release_after(1),
        "pickle": lambda: pickle.dumps(buffer),
        "ipc.send": lambda: lava_flow.ipc.send(a, buffer),
        "with": lambda: buffer.__enter__(),
        "view.__dlpack__": lambda: view.__dlpack__(),
        "view.__dlpack_device__": lambda: view.__dlpack_device__(),
        "view.__cuda_array_interface__": lambda: view.__cuda_array_interface__,
        "numpy.from_dlpack": lambda: np.from_dlpack(view),
    }, (a, b)


@pytest.mark.parametrize("location", [MemoryLocation.GpuVulkan(), MemoryLocation.HostVisible()])
def test_close_frees_now_and_every_later_use_is_a_closed_error(allocator, location):
    before = allocator.stats()
    buffer = allocator.allocate(4096, location, dedicated=True)
    view = buffer.as_array("float32", [1024])
    buffer.write(random_bytes(4096))
    assert not buffer.closed
    assert allocator.stats()["buffers"] == before["buffers"] + 1
    buffer.close()
    assert buffer.closed
    after = allocator.stats()
    assert after["buffers"] == before["buffers"] and after["dedicated_bytes"] == before["dedicated_bytes"], (
        "closed: freed without waiting for the garbage collector (the Python objects still live)"
    )
    uses, sockets = uses_of(buffer, view)
    try:
        for name, use in uses.items():
            with pytest.raises(lava_flow.ClosedError, match="closed"):
                use()
                pytest.fail(f"{name} worked on a closed buffer")
    finally:
        for s in sockets:
            s.close()
    assert repr(buffer) == "Buffer(closed)"
    buffer.close()  # again: nothing
    assert view.shape == [1024], "a view's own description stays readable"


def test_with_closes_at_the_end_of_the_block_and_on_errors(allocator):
    before = allocator.stats()["buffers"]
    data = random_bytes(70_001)
    with allocator.allocate(70_001) as buffer:
        buffer.write(poison(70_001))
        buffer.write(data)
        assert_bytes_equal(buffer.read(), data, "inside the with block")
        assert allocator.stats()["buffers"] == before + 1
    assert buffer.closed and allocator.stats()["buffers"] == before
    with pytest.raises(KeyError, match="raised inside"):
        with allocator.allocate(100) as other:
            raise KeyError("raised inside")
    assert other.closed and allocator.stats()["buffers"] == before, "closed, and the exception went on"


def test_a_closed_buffer_stays_alive_for_the_arrays_made_from_it(allocator):
    """DLPack consumers hold the memory through their capsules: close() cannot pull it from
    under them. The memory goes when the last of them does."""
    before = allocator.stats()["buffers"]
    buffer = allocator.allocate(4 * 4096, MemoryLocation.HostVisible())
    values = np.random.default_rng(11).standard_normal(4096).astype(np.float32)
    buffer.write(np.full(4096, np.nan, np.float32))
    buffer.write(values)
    array = np.from_dlpack(buffer.as_array("float32", [4096]))
    tail = np.from_dlpack(buffer.as_array("float32", [16], offset=4 * 4080))
    buffer.close()
    assert allocator.stats()["buffers"] == before + 1, "the arrays hold the memory"
    np.testing.assert_array_equal(array, values)
    array += 1  # still the same, writable memory
    np.testing.assert_array_equal(tail, values[4080:] + np.float32(1))
    del array
    gc.collect()
    assert allocator.stats()["buffers"] == before + 1, "one array still holds it"
    np.testing.assert_array_equal(tail, values[4080:] + np.float32(1))
    del tail
    gc.collect()
    assert allocator.stats()["buffers"] == before, "the last array gone, the memory is freed"


@pytest.mark.parametrize("host_memory_import", [True, False])
@pytest.mark.parametrize("size", [1, 4097, (256 << 10) + 3, (16 << 20) + 1])
def test_transfers_both_paths_every_byte_at_odd_addresses(host_memory_import, size):
    """write / read_into, synchronous and asynchronous, from numpy memory at odd addresses."""
    a = lava_flow.MemoryAllocator(host_memory_import=host_memory_import)
    buffer = a.allocate(size + 100)
    storage = np.frombuffer(random_bytes(size + 3), dtype=np.uint8).copy()
    data = storage[3:]  # an address 3 bytes past the array's
    buffer.write(poison(size + 100))
    buffer.write(data, 100)
    out = np.full(size + 1, 0xA5, dtype=np.uint8)
    buffer.read_into(out[1:], 100)
    assert_bytes_equal(out[1:].tobytes(), data.tobytes(), "read_into")
    # Asynchronous: the source stays exported (cannot be resized) until waited for.
    source = bytearray(random_bytes(size))
    transfer = buffer.write_async(source, 100)
    with pytest.raises(BufferError):
        source.extend(b"x")
    transfer.wait()
    source.extend(b"x")  # resizable again once the transfer let go
    back = bytearray(size)
    reading = buffer.read_into_async(back, 100)
    reading.wait()
    assert reading.done()
    assert_bytes_equal(bytes(back), bytes(source[:size]), "read_into_async")
    stats = a.transfer_stats()
    if host_memory_import and size >= 256 << 10:
        assert stats["imported"] > 0, stats
    if not host_memory_import:
        assert stats["imported"] == 0, stats
    assert not a.validation_messages()
