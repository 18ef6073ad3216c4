"""Pass 1 of the dump, without the teacher: every record's region rows, the store layout, the masks.

Each block's rows are computed once (dask, in parallel) and staged beside the store until the row
counts of all blocks give the layout; then they are written in place.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import zarr

from .. import console
from ..errors import BadInputError, StoreFormatError
from ..store.attrs import StoreAttrs
from ..store.filesystem import store_filesystem
from ..store.format import MASK_DTYPE, STATUS_MASKS
from ..store.layout import block_row_starts, block_rows
from ..store.writer import create_store, write_status
from .fault import kill_point, maybe_kill
from .region_rows import RegionRowMaker
from .scan import ImageEntry
from .views import View, boxes_in_view, view_geometry


def record_rows(maker: RegionRowMaker, entry: ImageEntry, view: View) -> list[np.ndarray]:
    """Per level, the MASK_DTYPE rows of one image-view."""
    geo = view_geometry(entry.width, entry.height, view)
    return maker.rows(boxes_in_view(entry.boxes, geo), geo.pad_shape)


def staging_root(out: str | Path) -> str:
    """Where pass 1 keeps each block's rows between computing them and writing them in place:
    beside the store, on the same filesystem (a dask worker on another machine reaches it too)."""
    return f"{str(out).rstrip('/')}.pass1"


def _stage_block_rows(maker: RegionRowMaker, records: list[tuple[ImageEntry, View]], staging: str,
                      block: int) -> np.ndarray:
    """Compute a block's region rows once, stage them, and return the per-record, per-level counts
    that the layout needs."""
    torch.set_num_threads(1)
    per_record = [record_rows(maker, e, v) for e, v in records]
    rows = np.concatenate([r for levels in per_record for r in levels]) if per_record else np.zeros(0, MASK_DTYPE)
    fs, root = store_filesystem(f"{staging}/block-{block}.npy")
    with fs.open(root, "wb") as f:
        np.save(f, rows)
    if kill_point("pass1") is not None:
        maybe_kill("pass1", len(fs.ls(staging)))
    return np.array([[len(r) for r in levels] for levels in per_record], dtype=np.int64)


def _write_block_masks(staging: str, block: int, store: str, start: int, end: int) -> None:
    fs, root = store_filesystem(f"{staging}/block-{block}.npy")
    with fs.open(root, "rb") as f:
        rows = np.load(f)
    if len(rows) != end - start:
        raise StoreFormatError(f"pass 1: the staged rows of block {block} ({len(rows)}) do not fit its place in "
                               f"the layout ({end - start} rows); delete {store} and dump again")
    if len(rows):
        # Opened here, not passed in: on a dask.distributed cluster this runs in another process.
        masks = zarr.open_group(store, mode="r+")["masks"]
        masks[start:end] = rows.view(np.uint8).reshape(len(rows), MASK_DTYPE.itemsize)


def run_regions_pass(maker: RegionRowMaker, records: list[tuple[ImageEntry, View]], out: str | Path,
                     attrs: StoreAttrs, small_arrays: dict, dask_scheduler: str | None) -> zarr.Group:
    """Pass 1: regions of every block, computed once and staged; then the store layout from their
    row counts, and the staged rows written in place. Returns the new store, status 'masks-written'."""
    import dask

    block_size = attrs.layout.block_size
    blocks = [records[i:i + block_size] for i in range(0, len(records), block_size)]
    staging = staging_root(out)
    fs, staging_path = store_filesystem(staging)
    if fs.exists(staging_path):
        fs.rm(staging_path, recursive=True)  # left by a dump killed in pass 1
    fs.makedirs(staging_path, exist_ok=True)
    with _dask_scheduler(dask_scheduler) as scheduler:
        with console.spinner(f"pass 1/2: regions from annotations ({_describe(scheduler)})"):
            counts = dask.compute(*[dask.delayed(_stage_block_rows)(maker, b, staging, i)
                                    for i, b in enumerate(blocks)], scheduler=scheduler)
        ptr, total = block_row_starts(np.concatenate(counts), block_size, attrs.layout.chunk_rows)
        group = create_store(out, attrs, ptr, total, small_arrays)
        tasks = []
        for b in range(len(blocks)):
            start, end, _ = block_rows(ptr, b, block_size)
            tasks.append(dask.delayed(_write_block_masks)(staging, b, str(out), start, end))
        with console.spinner("pass 1/2: writing region masks"):
            dask.compute(*tasks, scheduler=scheduler)
    fs.rm(staging_path, recursive=True)
    write_status(group, attrs, STATUS_MASKS)
    return group


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
