"""What every benchmark times with: the median of calls on a synchronised device, the copy bandwidth, and a label
for the CPU a ratio was measured on."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from rwkvlab.engine.cpu_memory import malloc_tunable


def cpu_label() -> str:
    """The CPU's model name, the widest vector instructions PyTorch uses on it, the threads and whether freed memory is
    kept (:mod:`rwkvlab.engine.cpu_memory`): what a CPU speed ratio depends on (issue 10: two 2-core machines ran the
    convolution-bound BasicUNet 2x apart, the memory-bound RWKV-UNet-T about as fast)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    model = names[0] if names else (platform.processor() or "unknown CPU")
    malloc = "freed memory kept" if malloc_tunable() else "system malloc"
    return (f"CPU {model} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
            f"{malloc}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, runs: int, budget: float = float("inf")) -> float:
    """Median over ``runs`` calls, or fewer (at least one) once ``budget`` seconds are spent."""
    times: list[float] = []
    while len(times) < runs and sum(times) < budget:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bandwidth(device: torch.device, nbytes: int = 2**28) -> float:
    """Bytes per second of a large tensor copy (read + write), median of 5."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / median_time(lambda: dst.copy_(src), device, 5)
