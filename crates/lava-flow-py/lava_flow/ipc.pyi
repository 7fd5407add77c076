# Type stubs of `lava_flow.ipc` (a Rust submodule); see __init__.pyi.

from typing import Protocol

from . import Buffer, MemoryAllocator, TimelineSemaphore

__all__ = ["send", "recv"]

class _Socket(Protocol):
    # A connected Unix socket in blocking mode (`socket.socket`), or anything with `fileno()`.
    def fileno(self) -> int: ...

def send(sock: _Socket, obj: Buffer | TimelineSemaphore) -> None: ...
def recv(
    sock: _Socket, allocator: MemoryAllocator | None = None, device_id: int | None = None
) -> Buffer | TimelineSemaphore: ...
def _rebuild(kind: str, dup: object, descriptor: bytes) -> Buffer | TimelineSemaphore: ...
