"""torch.distributed under torchrun: process group, rank, device, and the few collectives training needs.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the backend is NCCL on GPUs
and gloo on CPUs. Without torchrun everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def setup() -> Dist:
    """Join the process group torchrun describes (once); a plain process gets ``Dist()``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    info = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def all_sum(values: list[float], info: Dist) -> list[float]:
    """Element-wise sum over processes (fp64 so counts and loss sums stay exact)."""
    if info.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(obj, info: Dist) -> list:
    """Every process's ``obj``, in rank order (on every process)."""
    if info.world == 1:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: Dist) -> None:
    if info.world > 1:
        dist.barrier()
