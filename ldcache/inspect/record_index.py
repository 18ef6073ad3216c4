"""Per image-view figures of a whole store, for the viewer's image list (`ldcache inspect --serve`)
to sort by: how many Main and VLR rows each record holds, and its flattest Main row's mean edge
entropy (the row that `inspect` picks as the most ambiguous location).

Row counts per record alone are in the row pointers, but which rows are Main or VLR and their
entropies are in the stored chunks: this reads every row once, like `inspect --stats`. One dask
task per block reads the block's rows a few chunks at a time and takes each row's record from the
block's own row pointers. Time is linear in the rows; memory holds a few slices per thread and
three numbers per record, never the store. Chunks are read as records are, so a damaged or lost
chunk is an error naming its block, never zeros."""
from __future__ import annotations

import threading
from typing import Callable, NamedTuple

import dask
import numpy as np

from ..store.format import FLAG_MAIN, FLAGS_VLR
from ..store.reader import StoreReader
from ..store.statistics import row_mean_edge_entropy
from ..store.tables import kept_arrays
from .stats import SLICE_CHUNKS, block_slices, slice_records

class RecordIndex(NamedTuple):
    """Per record (image-view) of a store: what the viewer's image list sorts by."""
    main_rows: np.ndarray  # int64 [N]: rows with the Main flag (FLAG_MAIN)
    vlr_rows: np.ndarray  # int64 [N]: rows with a VLR flag (FLAG_VLR_OFFICIAL or FLAG_VLR_DIOU)
    # float64 [N]: the largest mean edge entropy (nats, temperature 1) of a Main row; NaN without one
    max_main_entropy: np.ndarray


def block_records(read_rows: Callable, block_ptr: np.ndarray, bins: int, slice_rows: int) -> RecordIndex:
    """The RecordIndex of one block's records, given only the block's row pointers [records, L+1],
    its rows read `slice_rows` at a time (slices start on the block's chunk boundaries)."""
    records = len(block_ptr)
    main_rows, vlr_rows = np.zeros(records, np.int64), np.zeros(records, np.int64)
    max_entropy = np.full(records, np.nan)
    for start, end, masks, values in block_slices(read_rows, block_ptr, slice_rows):
        record, flags = slice_records(block_ptr, start, end), masks["flags"]
        main = (flags & FLAG_MAIN) > 0
        main_rows += np.bincount(record[main], minlength=records)
        vlr_rows += np.bincount(record[(flags & FLAGS_VLR) > 0], minlength=records)
        # fmax ignores NaN: a record's first Main row replaces it. Entropy of the Main rows only,
        # computed as `inspect --stats` does (the mean of the 4 edges' edge_entropy).
        np.fmax.at(max_entropy, record[main], row_mean_edge_entropy(values[main], bins))
    return RecordIndex(main_rows, vlr_rows, max_entropy)


def record_index(reader: StoreReader, progress: Callable[[int, int], None] | None = None,
                 slice_chunks: int = SLICE_CHUNKS) -> RecordIndex:
    """The RecordIndex of every record of the store, read block by block on dask's threads scheduler.

    Args:
        reader (StoreReader): an open store.
        progress (Callable[[int, int], None], optional): called with (done blocks, all blocks):
            (0, total) first, then once as each block finishes (from the worker threads, one call
            at a time, counts increasing), the last call being (total, total).
        slice_chunks (int): chunks of rows a block task reads at once.

    Returns:
        RecordIndex: [N] arrays in record order.
    """
    num_blocks = reader.blocks.num_blocks
    slice_rows = slice_chunks * reader.attrs.layout.chunk_rows
    bins = reader.codec.bins
    lock, done = threading.Lock(), [0]

    def finished() -> None:
        with lock:  # serialised, so that the counts reach `progress` in order
            done[0] += 1
            if progress is not None:
                progress(done[0], num_blocks)

    def block_task(block_ptr: np.ndarray) -> RecordIndex:
        part = block_records(reader.read_rows, block_ptr, bins, slice_rows)
        finished()
        return part

    if progress is not None:
        progress(0, num_blocks)
    # Each task gets a copy of its own rows of `ptr` (a few hundred numbers, not the store's).
    tasks = [dask.delayed(block_task)(reader.ptr[r.start:r.stop].copy())
             for r in map(reader.blocks.records, range(num_blocks))]
    parts = dask.compute(*tasks, scheduler="threads")
    if not parts:
        return RecordIndex(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return RecordIndex(*(np.concatenate(column) for column in zip(*parts)))


def kept_record_index(reader: StoreReader, progress: Callable[[int, int], None] | None = None) -> RecordIndex:
    """record_index, built once per machine and store completion and kept beside the store's tables
    ($LDCACHE_TABLES): a viewer started again on a COCO store skips its pass over ~410M rows."""
    def compute() -> dict[str, np.ndarray]:
        return record_index(reader, progress)._asdict()

    index = RecordIndex(**kept_arrays(str(reader.path), reader.attrs, "record_index", RecordIndex._fields, compute))
    if progress is not None:
        progress(reader.blocks.num_blocks, reader.blocks.num_blocks)
    return index
