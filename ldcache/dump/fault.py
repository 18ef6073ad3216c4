"""A deliberate crash at a chosen point of a dump, so that tests can kill it exactly there.

`LDCACHE_KILL_AT=pass1:K` (or `pass2:K`) makes the process SIGKILL itself once K blocks of that
pass are finished: nothing is flushed or cleaned up, as when a node dies.
"""
from __future__ import annotations

import os
import signal


def kill_point(stage: str) -> int | None:
    """How many finished blocks of `stage` the process is to be killed after, if it is to be."""
    wanted, _, count = os.environ.get("LDCACHE_KILL_AT", "").partition(":")
    return int(count) if wanted == stage and count.isdigit() else None


def maybe_kill(stage: str, blocks_finished: int) -> None:
    """SIGKILL this process when `LDCACHE_KILL_AT` names this stage and at most this many finished blocks."""
    point = kill_point(stage)
    if point is not None and blocks_finished >= point:
        os.kill(os.getpid(), signal.SIGKILL)
