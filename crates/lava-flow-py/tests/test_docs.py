"""Runs every example of docs/python.md: ```python blocks everywhere, ```python gpu blocks where
CUDA and PyTorch are present (the GPU tier)."""

import pathlib
import re

import pytest

from conftest import cuda_reason, import_or_need, need

GUIDE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "python.md"
BLOCKS = re.findall(r"```python( gpu)?\n(.*?)```", GUIDE.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_guide_example(index, allocator):
    gpu, code = BLOCKS[index]
    if gpu:
        need(cuda_reason(allocator), "no CUDA")
        torch = import_or_need("torch")
        need(None if torch.cuda.is_available() else "torch has no CUDA", "no CUDA in torch")
    exec(compile(code, f"{GUIDE.name} example {index + 1}", "exec"), {})


def test_the_guide_has_examples_of_both_tiers():
    assert sum(1 for gpu, _ in BLOCKS if gpu) >= 3
    assert sum(1 for gpu, _ in BLOCKS if not gpu) >= 3
