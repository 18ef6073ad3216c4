"""Pass 1 of the dump, without the teacher: every record's region rows, the store layout, the masks.

Each block's rows are computed once (dask, in parallel) and staged beside the store until the row
counts of all blocks give the layout; then they are written in place.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import zarr

from .. import console
from ..errors import BadInputError, StoreCorruptError, StoreFormatError
from ..store.attrs import StoreAttrs
from ..store.filesystem import store_filesystem
from ..store.format import MASK_DTYPE, STATUS_MASKS
from ..store.layout import BlockMap, block_row_starts
from ..store.writer import create_store, write_masks, write_status
from .fault import kill_point, maybe_kill
from .ranks import Ranks
from ..domain.rows import RegionRowMaker
from .scan import ImageEntry
from ..domain.views import View, boxes_in_view, view_geometry


def record_rows(maker: RegionRowMaker, entry: ImageEntry, view: View) -> list[np.ndarray]:
    """Per level, the MASK_DTYPE rows of one image-view."""
    geo = view_geometry(entry.width, entry.height, view)
    return maker.rows(boxes_in_view(entry.boxes, geo), geo.pad_shape)


def block_mask_rows(maker: RegionRowMaker, records: list, blocks: BlockMap, block: int) -> np.ndarray:
    """A block's MASK_DTYPE rows computed again from the annotations, as pass 1 wrote them."""
    start, end = blocks.rows(block)
    per_record = [rows for r in blocks.records(block) for rows in record_rows(maker, *records[r])]
    rows = np.concatenate(per_record) if per_record else np.zeros(0, MASK_DTYPE)
    if len(rows) != end - start:
        raise StoreCorruptError(f"block {block}'s regions give {len(rows)} rows, its place in the store's layout "
                                f"holds {end - start}; delete the store and dump it again")
    return rows


def staging_root(out: str | Path) -> str:
    """Where pass 1 keeps each block's rows between computing them and writing them in place:
    beside the store, on the same filesystem (a dask worker on another machine reaches it too)."""
    return f"{str(out).rstrip('/')}.pass1"


def _staged_file(staging: str, block: int, what: str) -> tuple:
    return store_filesystem(f"{staging}/block-{block}.{what}.npy")


def _stage_block_rows(maker: RegionRowMaker, records: list[tuple[ImageEntry, View]], staging: str,
                      block: int) -> None:
    """Compute a block's region rows once and stage them with their per-record, per-level counts
    (the layout needs the counts of every block; the rows are written once it is known)."""
    torch.set_num_threads(1)
    per_record = [record_rows(maker, e, v) for e, v in records]
    rows = np.concatenate([r for levels in per_record for r in levels]) if per_record else np.zeros(0, MASK_DTYPE)
    counts = np.array([[len(r) for r in levels] for levels in per_record], dtype=np.int64)
    for what, array in (("rows", rows), ("counts", counts)):
        fs, path = _staged_file(staging, block, what)
        with fs.open(path, "wb") as f:
            np.save(f, array)
    if kill_point("pass1") is not None:
        fs, root = store_filesystem(staging)
        maybe_kill("pass1", len(fs.glob(f"{root}/*.counts.npy")))


def _load_staged(staging: str, block: int, what: str) -> np.ndarray:
    fs, path = _staged_file(staging, block, what)
    with fs.open(path, "rb") as f:
        return np.load(f)


def _write_block_masks(staging: str, block: int, store: str, start: int, end: int) -> None:
    rows = _load_staged(staging, block, "rows")
    if len(rows) != end - start:
        raise StoreFormatError(f"pass 1: the staged rows of block {block} ({len(rows)}) do not fit its place in "
                               f"the layout ({end - start} rows); delete {store} and dump again")
    if len(rows):
        # Opened here, not passed in: on a dask.distributed cluster this runs in another process.
        write_masks(zarr.open_group(store, mode="r+"), start, rows)


def run_regions_pass(maker: RegionRowMaker, records: list[tuple[ImageEntry, View]], out: str | Path,
                     attrs: StoreAttrs, small_arrays: dict, dask_scheduler: str | None, ranks: Ranks) -> None:
    """Pass 1: every process computes the regions of its own blocks once and stages them; the first
    lays the store out from all blocks' row counts; each writes its own blocks' masks in place.
    The store is left with status 'masks-written'. No process waits at a barrier for more than
    its share of blocks takes the slowest one."""
    import dask

    block_size = attrs.layout.block_size
    blocks = [records[i:i + block_size] for i in range(0, len(records), block_size)]
    mine = ranks.own(len(blocks))
    staging = staging_root(out)
    fs, path = store_filesystem(staging)
    if ranks.is_first:
        if fs.exists(path):
            fs.rm(path, recursive=True)  # left by a dump killed in pass 1
        fs.makedirs(path, exist_ok=True)
    ranks.barrier()
    with _dask_scheduler(dask_scheduler) as scheduler:
        with console.spinner(f"pass 1/2: regions of {len(mine)} of {len(blocks)} blocks from annotations "
                             f"({ranks.describe()}{_describe(scheduler)})"):
            dask.compute(*[dask.delayed(_stage_block_rows)(maker, blocks[b], staging, b) for b in mine],
                         scheduler=scheduler)
        ranks.barrier()
        if ranks.is_first:
            counts = np.concatenate([_load_staged(staging, b, "counts") for b in range(len(blocks))])
            ptr, total, shard_rows = block_row_starts(counts, block_size, attrs.layout.chunk_rows)
            layout = dataclasses.replace(attrs.layout, shard_rows=shard_rows)
            create_store(out, dataclasses.replace(attrs, layout=layout), ptr, total, small_arrays)
        ranks.barrier()
        group = zarr.open_group(str(out), mode="r")
        blocks = BlockMap.of_store(group["ptr"][:], StoreAttrs.from_dict(dict(group.attrs)))
        tasks = [dask.delayed(_write_block_masks)(staging, b, str(out), *blocks.rows(b)) for b in mine]
        with console.spinner(f"pass 1/2: writing region masks ({ranks.describe()}{len(mine)} blocks)"):
            dask.compute(*tasks, scheduler=scheduler)
    ranks.barrier()
    if ranks.is_first:
        fs.rm(path, recursive=True)
        group = zarr.open_group(str(out), mode="r+")
        write_status(group, StoreAttrs.from_dict(dict(group.attrs)), STATUS_MASKS)


@contextmanager
def _dask_scheduler(address: str | None):
    """The dask.distributed cluster at `address` when one is given, else local threads."""
    if not address:
        yield "threads"
        return
    from distributed import Client

    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise BadInputError(f"cannot reach the dask scheduler at {address} ({err}); start one "
                            "(`dask scheduler` and `dask worker`) or leave out --dask-scheduler") from None
    with client:
        yield client


def _describe(scheduler) -> str:
    if scheduler == "threads":
        return "local threads"
    return f"dask cluster {scheduler.scheduler.address}, {len(scheduler.scheduler_info()['workers'])} workers"
