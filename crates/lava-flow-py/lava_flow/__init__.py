"""GPU memory allocated through Vulkan, shared without copies with PyTorch, CuPy and JAX.

The classes, functions and exceptions are Rust, in the extension module ``lava_flow._lava_flow``;
this package re-exports them (and ``lava_flow.ipc``). Their types are in ``__init__.pyi`` and
``ipc.pyi`` beside this file; the guide is docs/python.md in the repository.
"""

from ._lava_flow import *  # noqa: F403 (every public class, function and exception)
from ._lava_flow import __all__ as __all__
