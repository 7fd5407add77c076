"""Fixtures of lava_flow's Python tests.

Every allocator a test makes runs with the Khronos validation layer when LAVA_FLOW_VALIDATION=1
(as scripts/test.sh sets), and any message it reports fails the test. GPU-tier tests skip with
the reason where CUDA (or torch, cupy, jax) is missing; under LAVA_FLOW_REQUIRE_GPU=1 (the GPU
machine) they fail instead.
"""

import os

import pytest

import lava_flow

REQUIRE_GPU = os.environ.get("LAVA_FLOW_REQUIRE_GPU") == "1"


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def poison(n: int) -> bytes:
    return b"\xcd" * n


def assert_bytes_equal(got: bytes, want: bytes, what: str) -> None:
    """Every byte, with the first difference named."""
    assert len(got) == len(want), f"{what}: {len(got)} bytes, expected {len(want)}"
    if got != want:
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        raise AssertionError(f"{what}: first difference at byte {first}: {got[first]:#x} != {want[first]:#x}")


@pytest.fixture
def allocator():
    a = lava_flow.MemoryAllocator()
    yield a
    messages = a.validation_messages()
    assert not messages, "validation layer:\n" + "\n".join(messages)


def cuda_reason(allocator) -> str | None:
    """None where lava-flow reaches CUDA on device 0, else why not."""
    probe = allocator.allocate(256)
    try:
        probe.__dlpack_device__()
        return None
    except BufferError as e:
        return str(e)


def need(condition_reason: str | None, what: str) -> None:
    """Skips (or, on the GPU machine, fails) when `condition_reason` says something is missing."""
    if condition_reason is None:
        return
    message = f"{what}: {condition_reason}"
    if REQUIRE_GPU:
        pytest.fail("the GPU tier needs it: " + message)
    pytest.skip(message)


@pytest.fixture
def cuda_allocator(allocator):
    need(cuda_reason(allocator), "no CUDA")
    return allocator


def import_or_need(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        need(str(e), f"no {name}")
