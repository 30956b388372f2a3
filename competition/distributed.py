"""Data-parallel training under torchrun: the process group, who writes, and predictions gathered by row.

    torchrun --nproc_per_node 2 -m competition.experiment exp012      # one machine, 2 GPUs (or 2 CPU processes)
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m competition.experiment exp012

torch.distributed directly (no extra layer): every rank trains each fold on its DistributedSampler shard
with DistributedDataParallel averaging gradients; predictions are sharded and gathered with their row
indices, so the padding the sampler adds is dropped and every row is predicted once; only rank 0 writes
files (checkpoints, logs, OOF, test, leaderboard), the others wait at barriers. Without torchrun
(WORLD_SIZE unset) everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size, local rank (GPU index on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's value of a picklable object, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Dist()


def setup(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo for CPU); else SINGLE."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def rank_device(d: Dist, device: str) -> str:
    """The device this rank trains on: its own GPU (cuda:LOCAL_RANK) under torchrun, else as configured."""
    if d.enabled and device != "cpu" and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return device


def gather_rows(d: Dist, n: int, index: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Full-length arrays from every rank's (row index, values) shard; padded duplicates land on their own row."""
    if not d.enabled:
        return values
    shards = [None] * d.world
    dist.all_gather_object(shards, (index, values))
    out = {k: np.full(n, np.nan) for k in values}
    for idx, vals in shards:
        for k, v in vals.items():
            out[k][idx] = v
    return out


def gather_errors(d: Dist, errors: dict[int, str]) -> dict[int, str]:
    """Every rank's row -> decode-error entries, merged on every rank."""
    shards = [None] * d.world
    dist.all_gather_object(shards, errors)
    return {k: v for shard in shards for k, v in shard.items()}


def shutdown(d: Dist) -> None:
    """Leave the process group at the end of a run."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
