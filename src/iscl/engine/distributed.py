"""Data-parallel training on PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

``torchrun --nproc-per-node N -m iscl train ...`` (and multi-node with ``--nnodes``/``--rdzv-*``) sets
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`init_from_env` then starts the process group with NCCL
on GPUs and gloo on CPUs. Each ISCL sub-step's objective is wrapped in its own DDP (one forward per
step, ``broadcast_buffers=False``: BIN has no buffers), every rank draws a disjoint shard of each
domain's patch stream, and rank 0 alone writes logs and checkpoints.

BIN's batch statistics are **per rank**: with batch B per rank and N ranks the global batch is N·B,
but each BIN layer normalizes by the statistics of its rank's B patches, exactly as the official
MirroredStrategy code did (its BIN uses ``tf.nn.moments`` on the per-replica batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_from_env", "info", "shutdown", "all_true", "broadcast_int"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "cpu") -> tuple[DistInfo, str]:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Returns the rank information and the device this rank should use (``cuda`` becomes
    ``cuda:LOCAL_RANK``). A single process returns ``DistInfo()`` and ``device`` unchanged.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info(), device


def info() -> DistInfo:
    """Rank information of the current process group (``DistInfo()`` when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_true(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not info().enabled:
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) == 0


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (e.g. the T a time budget fixed)."""
    if not info().enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
