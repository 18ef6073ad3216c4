"""Fetching a store's objects and byte ranges: plain reads on local disk, batched requests through
fsspec on object stores; "not found" told apart from an I/O failure.

Only "not found" means an object is missing (and, under a finished block, damaged). Any other
failure (a 503, a timeout after the filesystem's own retries, a reset connection, EIO) is retried
with backoff; what still fails is a StoreIOError that says to retry, never a damage report: a
healthy store must never be repaired because its storage had a bad minute.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence

from fsspec.implementations.local import LocalFileSystem

from ..errors import StoreIOError

MISSING_ERRORS = (FileNotFoundError,)
RETRY_DELAYS = (0.2, 1.0, 4.0)  # seconds before each retry of a failed batch


def io_error(path, err: BaseException, how_often: str = "") -> StoreIOError:
    """The error for an object the storage did not return, for a reason other than its absence."""
    return StoreIOError(
        f"reading {path} failed{' ' + how_often if how_often else ''} ({type(err).__name__}: {str(err)[:200]}). "
        "This is an I/O problem of the storage or the network, not damage to the store: retry when the "
        "storage answers again (nothing was changed)")


def _is_missing(result) -> bool:
    return isinstance(result, MISSING_ERRORS)


class Fetcher:
    """Reads objects and byte ranges under one store root; counts its batched requests.

    A call is one batched request (on object stores fsspec sends its parts concurrently: one round
    trip). `requests` counts the calls, for tests and benchmarks.
    """

    def __init__(self, fs, root: str, retry_delays: Sequence[float] = RETRY_DELAYS):
        self.fs, self.root = fs, root.rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)
        self.retry_delays = tuple(retry_delays)
        self.requests = 0

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def ranges(self, keys: Sequence[str], starts: Sequence[int], ends: Sequence[int | None]) -> list[bytes | None]:
        """Bytes start:end of each object (None: the object does not exist). A negative start
        counts from the object's end (end None)."""
        self.requests += 1
        paths = [self.path(k) for k in keys]
        return self._with_retries(lambda todo: self._ranges(
            [paths[i] for i in todo], [starts[i] for i in todo], [ends[i] for i in todo]), len(paths), paths)

    def objects(self, keys: Sequence[str]) -> list[bytes | None]:
        """Whole objects (None: the object does not exist)."""
        return self.ranges(keys, [0] * len(keys), [None] * len(keys))

    def _with_retries(self, fetch, count: int, paths: list[str]) -> list[bytes | None]:
        results: list = [None] * count
        todo = list(range(count))
        for delay in (*self.retry_delays, None):
            for i, result in zip(todo, fetch(todo)):
                results[i] = result
            todo = [i for i in todo if isinstance(results[i], BaseException) and not _is_missing(results[i])]
            if not todo:
                return [None if isinstance(r, BaseException) else r for r in results]
            if delay is not None:
                time.sleep(delay)
        more = f" (and {len(todo) - 1} more object(s) with it)" if len(todo) > 1 else ""
        raise io_error(paths[todo[0]], results[todo[0]], f"{len(self.retry_delays) + 1} times{more}")

    def _ranges(self, paths: list[str], starts: list[int], ends: list[int | None]) -> list:
        if not self.local:
            if all(s == 0 and e is None for s, e in zip(starts, ends)):
                found = self.fs.cat(paths, on_error="return")
                return [found.get(p, FileNotFoundError(p)) for p in paths]
            return self.fs.cat_ranges(paths, starts, ends, on_error="return")
        return [_read_local(p, s, e) for p, s, e in zip(paths, starts, ends)]


def _read_local(path: str, start: int, end: int | None):
    """Bytes start:end of a local file, or the exception that reading it raised."""
    try:
        with open(path, "rb", buffering=0) as f:
            if start < 0:
                size = os.fstat(f.fileno()).st_size
                start = max(size + start, 0)
            if end is None:
                end = os.fstat(f.fileno()).st_size
            return os.pread(f.fileno(), max(end - start, 0), start)
    except OSError as err:
        return err
