"""The store's disk: whether pass 2 can fit before it starts, and a full disk as an error that says
how to go on instead of a traceback.

What pass 2 still writes is known once pass 1 has laid the store out: the logits rows of the blocks
not done. Their size before compression is an upper bound (Blosc never grows a chunk by more than a
few bytes). How much compression saves depends on the teacher: a random-weight teacher's fp16
logits on the shapes data took 78% of it; a trained teacher's, and q8 codes, take less, by an
amount not measured here. So pass 2 is refused only on a disk with less free space than
MIN_COMPRESSED_FRACTION of the bound, which clearly cannot hold it, and a disk with less than the
bound gets a warning.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import zarr
from fsspec.implementations.local import LocalFileSystem

from .. import console
from ..errors import DiskFullError
from ..store.attrs import StoreAttrs
from ..store.filesystem import store_filesystem
from ..store.format import PROGRESS
from ..store.layout import BlockMap

# Far below the 78% measured (see the module's docstring): refusing a dump that would have fitted
# costs more than meeting a full disk, which --resume recovers from.
MIN_COMPRESSED_FRACTION = 0.1
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def pass_two_bytes(group: zarr.Group, attrs: StoreAttrs) -> int:
    """An upper bound of the bytes pass 2 still writes: the logits rows of the blocks not done,
    uncompressed, in whole chunks (a block's last chunk is written whole)."""
    blocks, done = BlockMap.of_store(group["ptr"][:], attrs), group[f"{PROGRESS}/done"][:]
    chunk_rows = attrs.layout.chunk_rows
    rows = sum(len(blocks.chunks(b)) * chunk_rows for b in range(blocks.num_blocks) if not done[b])
    codec = attrs.value_codec()
    return rows * codec.width * codec.storage_dtype.itemsize


def free_bytes(out: str | Path) -> int | None:
    """Free space on the disk of a local store (None on object stores, whose room is not measured)."""
    fs, _ = store_filesystem(out)
    if not isinstance(fs, LocalFileSystem):
        return None
    folder = Path(os.path.abspath(str(out)))
    while not folder.exists():  # the store may not exist yet: its nearest existing parent is on that disk
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_room_for_pass_two(out: str | Path, group: zarr.Group, attrs: StoreAttrs, resume_command: str) -> None:
    """Refuse to start pass 2 on a local disk that clearly cannot hold its logits; say so when it may not."""
    free = free_bytes(out)
    if free is None:
        return
    bound = pass_two_bytes(group, attrs)
    if free < bound * MIN_COMPRESSED_FRACTION:
        raise DiskFullError(f"{out}: pass 2 writes up to {_size(bound)} of logits (before compression) and the "
                            f"disk has {_size(free)} free, clearly too little; free space, then run {resume_command}")
    if free < bound:
        console.note(f"{out}: pass 2 writes up to {_size(bound)} before compression and the disk has {_size(free)} "
                     "free; if it fills up, free space and run the command again with --resume")


@contextmanager
def disk_full_as_error(out: str | Path, needed: Callable[[], int | None], resume_command: str) -> Iterator[None]:
    """Turn a full disk (ENOSPC, or a quota, EDQUOT) met inside the block into a DiskFullError that
    names the path, the space the rest of the dump needs (`needed()`, bytes, or None before pass 1
    has counted the rows) and the command that goes on from where the dump stopped."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        where = err.filename or out
        need = needed()
        rest = (f"the rest of the dump needs up to {_size(need)} for the teacher's logits (before compression)"
                if need is not None else "pass 2's size is known once pass 1 has counted the rows")
        raise DiskFullError(f"{where}: the disk is full ({os.strerror(err.errno)}); {rest}; free space, then run "
                            f"{resume_command} to go on from where the dump stopped") from None


def _size(num_bytes: float) -> str:
    """'12.3 GiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} bytes" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"
