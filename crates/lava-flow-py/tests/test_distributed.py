"""GPU tier, two GPUs or more: the NCCL example of docs/distributed.md, run as it is written
(one process per GPU, lava-flow memory on the Vulkan device of each CUDA device, torch.distributed
all-reduce on the DLPack tensors, every element checked through torch and read back through
Vulkan). With fewer than two GPUs it skips and says why; with LAVA_FLOW_REQUIRE_GPUS=2 (the
two-GPU machine) that is a failure instead."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import import_or_need

GUIDE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "distributed.md"
REQUIRED_GPUS = int(os.environ.get("LAVA_FLOW_REQUIRE_GPUS", "0") or 0)


def example() -> str:
    blocks = re.findall(r"```python distributed\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 1, f"{GUIDE.name} has {len(blocks)} `python distributed` blocks, expected 1"
    return blocks[0]


def need_gpus(count: int) -> None:
    """Skips with the reason below `count` GPUs; fails instead where LAVA_FLOW_REQUIRE_GPUS asks
    for that many."""
    torch = import_or_need("torch")
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found >= count:
        return
    message = f"{found} CUDA device(s) visible to torch: this test needs {count}"
    if REQUIRED_GPUS >= count:
        pytest.fail(f"LAVA_FLOW_REQUIRE_GPUS={REQUIRED_GPUS}: {message}")
    pytest.skip(message)


def test_the_example_is_there_and_keeps_nvlink_multicast_off():
    code = example()
    assert 'os.environ["NCCL_NVLS_ENABLE"] = "0"' in code
    assert 'os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"' in code
    assert code.index("NCCL_NVLS_ENABLE") < code.index("import torch"), "set before torch loads NCCL"
    compile(code, str(GUIDE), "exec")


def test_nccl_all_reduce_on_lava_flow_memory_across_gpus(tmp_path):
    need_gpus(2)
    script = tmp_path / "distributed_example.py"
    script.write_text(example())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the example failed (exit {done.returncode}):\n{output}"
    import torch

    world = torch.cuda.device_count()
    for rank in range(world):
        assert re.search(rf"rank {rank}: cuda:{rank} = Vulkan device \d+, \d+ elements checked twice", output), output
    assert f"across {world} GPUs: every element checked" in output, output
