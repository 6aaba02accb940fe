"""The one place that knows about ranks: process group, rank and world size, reductions, launching torchrun.

Training and pretraining call the same function in a plain process and under ``torchrun``; these helpers
answer for a plain process as rank 0 of 1, so no caller needs a separate single-process path.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so

logger = logging.getLogger(__name__)

__all__ = ["rank_world", "is_main", "barrier", "sum_over_ranks", "broadcast_from_main", "init_from_env", "under_torchrun",
           "devices_present", "check_nproc", "torchrun_command"]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0, the only one that validates and writes files."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a plain process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed element-wise over the ranks (as given in a plain process), in float64."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def under_torchrun() -> bool:
    """Whether ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> tuple[torch.device, int, int]:
    """Join the process group ``torchrun`` describes (gloo on the CPU, nccl on CUDA) and pick this rank's device.

    Outside ``torchrun`` nothing is initialised and ``device`` is returned as is.

    Returns:
        (this rank's device, rank, world size); a CUDA device becomes ``cuda:LOCAL_RANK``.
    """
    if under_torchrun():
        check_nproc(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), device)
    dev = init_distributed_device_so(device=str(device))
    return torch.device(dev["device"]), dev["global_rank"], dev["world_size"]


def devices_present(device: torch.device) -> int:
    """How many processes of one node can each have their own ``device``: GPUs for CUDA, cores for the CPU."""
    if device.type == "cuda":
        return torch.cuda.device_count()
    return os.cpu_count() or 1


def check_nproc(nproc: int, device: torch.device, name: str = "nproc") -> None:
    """Raise ``ValueError`` naming ``name`` unless 1 <= ``nproc`` <= the devices of this node.

    Raises:
        ValueError: ``nproc`` below 1 or above :func:`devices_present`.
    """
    present = devices_present(device)
    if not 1 <= nproc <= present:
        what = "GPUs" if device.type == "cuda" else "CPU cores"
        raise ValueError(f"{name} must be between 1 and the {present} {what} of this machine, got {nproc}")


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """The command that runs ``python -m module args`` as ``nproc`` DDP processes on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a plain process); a picklable value."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
