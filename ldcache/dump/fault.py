"""A deliberate crash at a chosen point of a dump, so that tests can kill it exactly there.

`LDCACHE_KILL_AT` is ldcache's one test-only switch; a real run leaves it unset. It makes the
process SIGKILL itself, with nothing flushed or cleaned up, as when a node dies:

- `pass1:K` (or `pass2:K`): once K blocks of that pass are finished (pass 1: their rows staged;
  pass 2: their logits written and their done flags set);
- `write:ARRAY:K`: as it opens the K-th chunk it writes of the store's array ARRAY (a file under
  `ARRAY/c/` of a local store), before a byte of that chunk is written. `write:progress/done:3`
  kills a dump whose third block has its logits on disk but not its done flag; `write:masks:2` one
  that is writing pass 1's masks into a laid-out store.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
from pathlib import Path

KILL_AT_ENV = "LDCACHE_KILL_AT"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT
_armed = False


def kill_point(stage: str) -> int | None:
    """How many finished blocks of `stage` the process is to be killed after, if it is to be."""
    wanted, _, count = os.environ.get(KILL_AT_ENV, "").partition(":")
    return int(count) if wanted == stage and count.isdigit() else None


def maybe_kill(stage: str, blocks_finished: int) -> None:
    """SIGKILL this process when `LDCACHE_KILL_AT` names this stage and at most this many finished blocks."""
    point = kill_point(stage)
    if point is not None and blocks_finished >= point:
        os.kill(os.getpid(), signal.SIGKILL)


def arm_write_kill(out: str | Path) -> None:
    """Watch this process's file writes under the store at `out` when `LDCACHE_KILL_AT` is
    `write:ARRAY:K`, and SIGKILL it at the K-th chunk of ARRAY."""
    global _armed
    stage, _, rest = os.environ.get(KILL_AT_ENV, "").partition(":")
    array, _, count = rest.partition(":")
    if _armed or stage != "write" or not array or not count.isdigit():
        return
    folder = os.path.join(os.path.abspath(str(out)), array, "c") + os.sep  # chunks, not the array's zarr.json
    opened = itertools.count(1)  # next() on it is atomic: the writer threads open files too

    def hook(event: str, args: tuple) -> None:
        # An audit hook sees every open of the process, pass 2's writer threads' included, before
        # the file exists: the one place that catches a chosen write whatever code makes it.
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if mode else bool(flags & _WRITE_FLAGS)
        if writes and os.path.abspath(os.fsdecode(path)).startswith(folder) and next(opened) >= int(count):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    _armed = True
