"""Host transfers from Python: lava_flow's write / read_into (and their asynchronous forms)
from and into numpy (pageable) memory, beside torch's copies of the same sizes from pinned and
pageable memory, in one process. Medians; ratios against torch's pinned copy.

    python crates/lava-flow-py/bench/transfers.py [--quick] [--max-mib N] [--reps N]

Needs lava_flow installed (scripts/python-test.sh builds it into target/py-venv) and numpy;
torch with CUDA for the baselines (without it, only lava_flow's rows are printed).
"""

import argparse
import statistics
import time

import numpy as np

import lava_flow

SIZES = [4 << 10, 1 << 20, 64 << 20, 256 << 20, 1 << 30]


def seconds_per_call(fn, iters, reps, sync=None):
    """The median over `reps` of the mean time of `iters` calls, after one warm-up."""
    fn()
    if sync:
        sync()
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        if sync:
            sync()
        runs.append((time.perf_counter() - start) / iters)
    return statistics.median(runs)


def show(size, seconds):
    if size < 1 << 20:
        return f"{seconds * 1e6:.1f} µs"
    return f"{size / seconds / 1e9:.1f} GB/s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 64 MiB, fewer repetitions")
    parser.add_argument("--max-mib", type=int, default=1024, help="the largest size, in MiB")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", type=int, default=0, help="the Vulkan device (and CUDA device)")
    args = parser.parse_args()
    max_bytes = (64 if args.quick else args.max_mib) << 20
    reps = 3 if args.quick else args.reps

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        torch, cuda = None, False
    if not cuda:
        print("torch with CUDA is missing: lava_flow rows only (no baseline)")
    allocator = lava_flow.MemoryAllocator(validation=False)
    imports = lava_flow.MemoryAllocator(validation=False, host_memory_import=True)
    location = lava_flow.MemoryLocation.GpuVulkan(device_id=args.device)
    print(f"| size | path | write (host → device) | read (device → host) | write vs torch pinned | read vs torch pinned |")
    print("|---|---|---|---|---|---|")
    for size in [s for s in SIZES if s <= max_bytes]:
        iters = max(3, min(2000, (2 << 30) // size // (4 if args.quick else 1)))
        host = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        back = np.empty_like(host)
        results = []  # (path, write seconds, read seconds)
        if cuda:
            dev = torch.empty(size, dtype=torch.uint8, device=f"cuda:{args.device}")
            sync = torch.cuda.synchronize
            pinned = torch.from_numpy(host).pin_memory()
            pinned_out = torch.empty(size, dtype=torch.uint8).pin_memory()
            pageable = torch.from_numpy(host)
            pageable_out = torch.from_numpy(back)
            results.append(("torch, pinned", seconds_per_call(lambda: dev.copy_(pinned), iters, reps, sync),
                            seconds_per_call(lambda: pinned_out.copy_(dev), iters, reps, sync)))
            results.append(("torch, pageable", seconds_per_call(lambda: dev.copy_(pageable), iters, reps, sync),
                            seconds_per_call(lambda: pageable_out.copy_(dev), iters, reps, sync)))
            del dev, pinned, pinned_out
        for name, a in [("lava_flow write / read_into", allocator), ("lava_flow, host memory import", imports)]:
            buffer = a.allocate(size, location)
            buffer.write(host)
            buffer.read_into(back)
            if not np.array_equal(host, back):
                raise SystemExit(f"{name}: the bytes read back differ at {size} bytes")
            results.append((name, seconds_per_call(lambda: buffer.write(host), iters, reps),
                            seconds_per_call(lambda: buffer.read_into(back), iters, reps)))
            if a is allocator:
                results.append(("lava_flow *_async + wait",
                                seconds_per_call(lambda: buffer.write_async(host).wait(), iters, reps),
                                seconds_per_call(lambda: buffer.read_into_async(back).wait(), iters, reps)))
            del buffer
        base = results[0] if cuda else None
        for path, w, r in results:
            ratio = (f"{base[1] / w:.2f}×", f"{base[2] / r:.2f}×") if base else ("", "")
            label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
            print(f"| {label} | {path} | {show(size, w)} | {show(size, r)} | {ratio[0]} | {ratio[1]} |")


if __name__ == "__main__":
    main()
