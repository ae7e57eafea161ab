"""Data-parallel plumbing for ``torchrun``: process group from the environment, rank-0 helpers, reductions.

``torchrun --nproc_per_node N glocal train ...`` (and multi-node through its rendezvous) sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is a single process. The backend is NCCL on CUDA and gloo
on CPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "available_cpus",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "cleanup",
    "cpus_per_process",
    "setup",
    "shard",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (in place; returned for chaining)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(count: int, info: DistInfo | None) -> list[int]:
    """This rank's strided share of ``range(count)`` for evaluation (every item on exactly one rank; the metrics'
    sums are then reduced with :func:`all_reduce_sum`)."""
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    return list(range(rank, count, world))


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, in place. DDP broadcasts them before each
    forward, but every rank's last training forward then updates its own: without this, the ranks would evaluate
    different statistics and the saved model (rank 0's) would not be the one evaluated."""
    if info.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``os.sched_getaffinity``, what ``taskset``, containers
    and batch schedulers restrict), capped by a cgroup v2 CPU quota (``cpu.max``). Not ``os.cpu_count()``, the
    machine's, whose threads a restricted process can only oversubscribe."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(cpus, 1)


def cpus_per_process() -> int:
    """This process's share of :func:`available_cpus` among the processes ``torchrun`` started on this node."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, available_cpus() // max(local_world, 1))
