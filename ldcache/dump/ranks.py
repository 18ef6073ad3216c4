"""The processes of a dump under torchrun: who this one is, which blocks are its own, barriers, and
what rank 0 computes once for all.

Barriers and the objects rank 0 shares carry no tensors, so they run on a gloo group (on the CPU):
the default group itself on CPU runs, a gloo group beside NCCL on GPUs (an NCCL barrier needs each
rank's device set and would time out after NCCL's 10 minutes). A rank can wait at a barrier for as
long as rank 0 verifies a whole store or another rank finishes its last block, so the gloo group
waits `LDCACHE_BARRIER_TIMEOUT` seconds (default 6 hours) before it gives up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import BadInputError, LDCacheError

BARRIER_TIMEOUT_ENV = "LDCACHE_BARRIER_TIMEOUT"
DEFAULT_BARRIER_TIMEOUT = timedelta(hours=6)

T = TypeVar("T")


def barrier_timeout() -> timedelta:
    """How long a rank waits at a barrier or for rank 0's objects: `LDCACHE_BARRIER_TIMEOUT` seconds,
    6 hours when unset."""
    text = os.environ.get(BARRIER_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_BARRIER_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise BadInputError(f"{BARRIER_TIMEOUT_ENV} must be a positive number of seconds, not {text!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world` processes (1 without torchrun), and the gloo group that
    its barriers and shared objects go through (None: the default group, or no group at all)."""

    rank: int
    world: int
    group: Any = field(default=None, compare=False)

    @classmethod
    def from_env(cls) -> Ranks:
        """Join torchrun's process group when started by it: NCCL on GPUs, each rank on the device
        of its LOCAL_RANK, with a gloo group beside it; gloo alone otherwise. See the module's
        docstring for the timeout."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            if torch.cuda.is_available():
                # Before any collective: NCCL binds each rank to the current device when it first
                # communicates, and every rank would otherwise take device 0.
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                dist.init_process_group(backend="nccl")
            else:
                dist.init_process_group(backend="gloo", timeout=barrier_timeout())
        if not dist.is_initialized():
            return cls(0, 1)
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=barrier_timeout())
        return cls(dist.get_rank(), dist.get_world_size(), group)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def own(self, num_blocks: int) -> list[int]:
        """This process's blocks: block b belongs to rank b % world, whatever the split across nodes."""
        return list(range(self.rank, num_blocks, self.world))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def from_first(self, compute: Callable[[], T]) -> T:
        """compute() run on rank 0 only, its result sent to every other rank.

        An LDCacheError it raises is raised on every rank, so that all stop with the same message
        instead of the others waiting for a result that never comes."""
        if self.world == 1:
            return compute()
        result, error = None, None
        if self.is_first:
            try:
                result = compute()
            except LDCacheError as err:
                error = err
        sent = [(result, error)]
        dist.broadcast_object_list(sent, src=0, group=self.group)  # rank 0's list stays as it is
        result, error = sent[0]
        if error is not None:
            raise error
        return result

    def describe(self) -> str:
        return "" if self.world == 1 else f"rank {self.rank}/{self.world}, "
