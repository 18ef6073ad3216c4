"""The processes of a dump under torchrun: who this one is, which blocks are its own, and barriers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world` processes (1 without torchrun)."""

    rank: int
    world: int

    @classmethod
    def from_env(cls) -> Ranks:
        """Join torchrun's process group when started by it (NCCL on GPUs, gloo otherwise)."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls(0, 1)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def own(self, num_blocks: int) -> list[int]:
        """This process's blocks: block b belongs to rank b % world, whatever the split across nodes."""
        return list(range(self.rank, num_blocks, self.world))

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def describe(self) -> str:
        return "" if self.world == 1 else f"rank {self.rank}/{self.world}, "
