"""`inspect --stats`: the store's statistics recomputed from every stored chunk, plus the
distribution of rows per image-view.

One dask task per block reads the block's rows a few chunks at a time and takes each row's level
from the block's own row pointers; a tree of bounded fan-in adds the per-block sums. Time is linear
in the rows and memory holds a few slices and partial sums, never the store. Chunks are read as
records are, so a damaged or lost chunk is an error naming its block, never zeros."""
from __future__ import annotations

from typing import Callable, Iterator

import dask
import numpy as np
from dask.delayed import Delayed

from ..store.reader import StoreReader
from ..store.statistics import partial_statistics, statistics_from_sums, stats_width

SLICE_CHUNKS = 4  # chunks of rows a block task holds at once: its memory whatever the block's size
SPLIT_EVERY = 16  # partial sums added by one task of the reduction tree
RowSlice = tuple[int, int, np.ndarray, np.ndarray]  # start, end, masks [end - start], values [end - start, width]


def slice_ranges(block_ptr: np.ndarray, start: int, end: int) -> np.ndarray:
    """The (record, level) range of each row start:end (absolute row indexes, inside one block) as
    the index record * L + level, record counted from the block's first, given the block's row
    pointers [records, L+1]: each range clipped to the slice, repeated in order. Records of a
    block follow each other without gaps (checked when the store is opened), so the clipped ranges
    tile the slice; the cost is the block's records, not the store's."""
    starts, ends = block_ptr[:, :-1].ravel(), block_ptr[:, 1:].ravel()
    counts = np.clip(np.minimum(ends, end) - np.maximum(starts, start), 0, None)
    return np.repeat(np.arange(starts.size), counts)


def slice_levels(block_ptr: np.ndarray, start: int, end: int) -> np.ndarray:
    """Level of each row start:end (inside one block) from the block's row pointers (slice_ranges)."""
    return slice_ranges(block_ptr, start, end) % (block_ptr.shape[1] - 1)


def slice_records(block_ptr: np.ndarray, start: int, end: int) -> np.ndarray:
    """Record of each row start:end (inside one block), counted from the block's first record."""
    return slice_ranges(block_ptr, start, end) // (block_ptr.shape[1] - 1)


def block_slices(read_rows: Callable, block_ptr: np.ndarray, slice_rows: int) -> Iterator[RowSlice]:
    """(start, end, masks, values) of one block's rows read `slice_rows` at a time, given only the
    block's row pointers [records, L+1] (slices start on the block's chunk boundaries)."""
    first, last = int(block_ptr[0, 0]), int(block_ptr[-1, -1])
    for start in range(first, last, slice_rows):
        end = min(start + slice_rows, last)
        yield start, end, *read_rows(start, end)


def block_sums(read_rows: Callable, block_ptr: np.ndarray, bins: int, slice_rows: int) -> np.ndarray:
    """[L, stats_width()] sums over one block's rows (`block_slices`)."""
    num_levels = block_ptr.shape[1] - 1
    out = np.zeros((num_levels, stats_width()))
    for start, end, masks, values in block_slices(read_rows, block_ptr, slice_rows):
        out += partial_statistics(masks["flags"], values, slice_levels(block_ptr, start, end), num_levels, bins)
    return out


def _add(parts: list[np.ndarray]) -> np.ndarray:
    return np.sum(parts, axis=0)


def tree_sum(parts: list[Delayed], zero: np.ndarray, split_every: int = SPLIT_EVERY) -> Delayed:
    """The sum of delayed arrays through a tree of adds taking at most `split_every` each, so that
    no task waits on every part and finished parts are freed as they are added."""
    level = parts or [dask.delayed(zero)]
    while len(level) > 1:
        level = [dask.delayed(_add)(level[i:i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]


def statistics_graph(reader: StoreReader, slice_chunks: int = SLICE_CHUNKS,
                     split_every: int = SPLIT_EVERY) -> Delayed:
    """The delayed [L, stats_width()] sums of the whole store: one task per block, which gets a
    copy of its own rows of `ptr` (a few hundred numbers, not the store's), then the add tree."""
    num_levels = reader.ptr.shape[1] - 1
    slice_rows = slice_chunks * reader.attrs.layout.chunk_rows
    parts = []
    for block in range(reader.blocks.num_blocks):
        records = reader.blocks.records(block)
        block_ptr = reader.ptr[records.start:records.stop].copy()
        parts.append(dask.delayed(block_sums)(reader.read_rows, block_ptr, reader.codec.bins, slice_rows))
    return tree_sum(parts, np.zeros((num_levels, stats_width())), split_every)


def store_statistics(reader: StoreReader) -> dict:
    """Entropy (mean and histogram) and rows per level and region over the whole store, and the
    histogram of rows per image-view of each level."""
    num_levels = reader.ptr.shape[1] - 1
    with dask.config.set(scheduler="threads"):
        total = statistics_graph(reader).compute()
    per_record = reader.ptr[:, 1:] - reader.ptr[:, :-1]
    return {**statistics_from_sums(total, reader.codec.bins),
            "region_size_histogram": [counts_histogram(per_record[:, level]) for level in range(num_levels)]}


def counts_histogram(values: np.ndarray, bins: int = 20) -> dict:
    """Rows per image-view at one level, as counts over `bins` equal bins."""
    counts, edges = np.histogram(values, bins=bins, range=(0, max(int(values.max(initial=0)), 1)))
    return {"counts": counts.tolist(), "edges": edges.tolist()}
