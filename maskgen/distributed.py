"""Several processes, one run: ``torchrun --nproc_per_node N maskgen train ...`` (DistributedDataParallel).

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them everything here is a no-op, so a
single process behaves exactly as before. Rank 0 alone writes files; every rank trains on its own patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The process's place in a torchrun job (a single process when launched without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)


def setup(d: Dist, device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); True if this call created it."""
    if not d.enabled or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=d.rank, world_size=d.world_size)
    return True


def device_for(d: Dist, device: torch.device) -> torch.device:
    """One GPU per process: rank ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``."""
    if d.enabled and device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


def barrier(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: float, d: Dist) -> float:
    """The mean of a scalar over every rank (the logged loss is the whole job's, not rank 0's)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


def all_agree(ok: bool, d: Dist) -> bool:
    """True only if ``ok`` on every rank, so all ranks stop together when one cannot go on."""
    if not d.enabled:
        return ok
    t = torch.tensor([0 if ok else 1])
    dist.all_reduce(t)
    return int(t.item()) == 0
