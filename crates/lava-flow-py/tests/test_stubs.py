"""The type stubs as a user's type checker sees them: mypy finds them in the installed package
(through py.typed), accepts correct code and names the mistakes in wrong code. (Whether the
stubs match the module is mypy's stubtest, run by scripts/python-test.sh.)"""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (scripts/python-wheel.sh installs it)")

GOOD = """
import socket
import lava_flow
from lava_flow import MemoryLocation

allocator = lava_flow.MemoryAllocator(validation=False)
with allocator.allocate(1024, MemoryLocation.HostVisible(device_id=0), dedicated=True) as buffer:
    size: int = buffer.size + buffer.descriptor()["allocation_size"]
    view = buffer.as_array("float32", [16, 16], strides=[1, 16], offset=0)
    shape: list[int] = view.shape
    data: bytes = buffer.read(4, 0)
    buffer.write(bytearray(4), 8)
sem = allocator.timeline_semaphore(0)
sem.wait(1, timeout=0.5)
a, b = socket.socketpair()
lava_flow.ipc.send(a, sem)
received = lava_flow.ipc.recv(b, allocator)
try:
    allocator.allocate(0)
except lava_flow.InvalidArgumentError as e:
    message: str = str(e)
"""

BAD = """
import lava_flow

allocator = lava_flow.MemoryAllocator()
buffer = allocator.allocate("1024")
name: str = allocator.allocate(1).size
lava_flow.ipc.send(3, buffer)
buffer.write(3.5)
"""


def mypy(code: str, tmp_path) -> list[str]:
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir=/dev/null", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    return [line for line in done.stdout.splitlines() if ": error:" in line]


def test_correct_code_type_checks(tmp_path):
    assert mypy(GOOD, tmp_path) == []


def test_mistakes_are_found_where_they_are(tmp_path):
    errors = mypy(BAD, tmp_path)
    lines = sorted(int(e.split(":")[1]) for e in errors)
    assert lines == [5, 6, 7, 8], "\n".join(errors)
