#!/usr/bin/env python3
"""All-reduce bandwidth on lava-flow memory against tensors torch allocated itself: the same
sizes, the same process group, the same run, the two kinds of memory taking turns (issue 17; the
goal is 0.99x or better). One process per GPU (torch.multiprocessing), NCCL through
torch.distributed, NVLink multicast off. Every GPU's lava-flow buffer is on the Vulkan device
whose UUID is that GPU's.

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 python scripts/bench_allreduce.py [--quick] [--json FILE]

Prints, per size, the median time of one in-place float32 all-reduce (CUDA events on rank 0,
after a barrier), the bus bandwidth (bytes * 2 (n-1) / n / time, as nccl-tests reports it) and
lava-flow's ratio to torch's memory. After the timing each lava-flow tensor is all-reduced once
more with known values and every element is checked, through torch and through Vulkan.
"""

import argparse
import json
import os
import socket
import statistics
import sys

os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import lava_flow  # noqa: E402

SIZES = [1 << 20, 16 << 20, 256 << 20, 1 << 30]
QUICK_SIZES = [16 << 20, 256 << 20]


def per_op(tensor: torch.Tensor, iters: int) -> float:
    """Seconds per all-reduce, GPU time between two events on the current stream (which the
    synchronous all_reduce makes wait for NCCL's stream)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dist.barrier()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        dist.all_reduce(tensor)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def check(buffer, tensor: torch.Tensor, rank: int, world: int, what: str) -> None:
    """All-reduces known values once more and checks every element, through torch and Vulkan."""
    tensor.fill_(float(rank + 1))
    dist.all_reduce(tensor)
    torch.cuda.synchronize()
    want = float(world * (world + 1) // 2)
    bad = int((tensor != want).sum().item())
    assert bad == 0, f"{what}: {bad} elements differ from {want} (torch)"
    out = np.full(tensor.numel(), -1, np.float32)
    buffer.read_into(out)
    assert (out == want).all(), f"{what}: elements differ from {want} (Vulkan read)"


def worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        device_id=torch.device("cuda", rank),
    )
    allocator = lava_flow.MemoryAllocator()
    device_id = allocator.device_for_cuda(rank)
    rows = []
    reps, sizes = (3, QUICK_SIZES) if args.quick else (7, SIZES)
    for size in sizes:
        n = size // 4
        iters = max(5, min(200, (4 << 30) // size))
        buffer = allocator.allocate(size, lava_flow.MemoryLocation.GpuVulkan(device_id=device_id))
        lava = torch.from_dlpack(buffer.as_array("float32", [n]))
        own = torch.empty(n, dtype=torch.float32, device=torch.device("cuda", rank))
        assert lava.device == own.device
        lava.zero_()  # zeros stay zeros through any number of sums
        own.zero_()
        for t in (own, lava):  # warm-up: NCCL's buffers and registrations for both
            per_op(t, 3)
        times = {"torch": [], "lava-flow": []}
        for rep in range(reps):
            order = [("torch", own), ("lava-flow", lava)]
            if rep % 2:
                order.reverse()
            for name, t in order:
                times[name].append(per_op(t, iters))
        check(buffer, lava, rank, world, f"{size} bytes")
        if rank == 0:
            t_torch, t_lava = statistics.median(times["torch"]), statistics.median(times["lava-flow"])
            bus = lambda t: size * 2 * (world - 1) / world / t / 1e9  # noqa: E731
            rows.append({
                "bytes": size, "world": world, "iters": iters, "reps": reps,
                "torch_us": t_torch * 1e6, "lava_flow_us": t_lava * 1e6,
                "torch_busbw_gbps": bus(t_torch), "lava_flow_busbw_gbps": bus(t_lava),
                "ratio": t_torch / t_lava,
            })
        del lava, own
        buffer.close()
        torch.cuda.synchronize()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"all-reduce, float32, in place, {world} GPUs, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, "
              f"medians of {reps} repetitions, memory kinds taking turns")
        print(f"{'size':>10} {'torch us':>10} {'lava us':>10} {'torch GB/s':>11} {'lava GB/s':>10} {'ratio':>6}")
        for r in rows:
            print(f"{r['bytes'] >> 20:>7} MiB {r['torch_us']:>10.1f} {r['lava_flow_us']:>10.1f} "
                  f"{r['torch_busbw_gbps']:>11.1f} {r['lava_flow_busbw_gbps']:>10.1f} {r['ratio']:>6.3f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"devices": [torch.cuda.get_device_name(i) for i in range(world)], "rows": rows}, f, indent=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, three repetitions")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    world = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world < 2:
        print(f"all-reduce bench: skipped: {world} CUDA device(s), two or more are needed")
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, args), nprocs=world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
