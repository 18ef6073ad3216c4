"""`inspect --stats`: the store's statistics recomputed from every stored chunk (dask threads, one
chunk at a time, never all in memory), plus the distribution of rows per image-view. Chunks are
read as records are, so a damaged or lost chunk is an error naming its block, never zeros."""
from __future__ import annotations

import dask
import numpy as np

from ..store.reader import StoreReader
from ..store.statistics import rows_statistics, statistics_from_sums, stats_width


def _range_stats(reader: StoreReader, start: int, end: int) -> np.ndarray:
    masks, values = reader.read_rows(start, end)
    return rows_statistics(masks["flags"], values, reader.ptr, start, reader.codec.bins)


def store_statistics(reader: StoreReader) -> dict:
    """Entropy (mean and histogram) and rows per level and region over the whole store, and the
    histogram of rows per image-view of each level."""
    num_levels = reader.ptr.shape[1] - 1
    parts = [dask.delayed(_range_stats)(reader, start, end) for start, end in reader.row_ranges()]
    # Each part is a few hundred numbers: the memory a pass needs is the chunks being read.
    total = dask.delayed(sum)(parts, np.zeros((num_levels, stats_width()))) if parts else None
    with dask.config.set(scheduler="threads"):
        total = total.compute() if total is not None else np.zeros((num_levels, stats_width()))
    per_record = reader.ptr[:, 1:] - reader.ptr[:, :-1]
    return {**statistics_from_sums(total, reader.codec.bins),
            "region_size_histogram": [_histogram(per_record[:, level]) for level in range(num_levels)]}


def _histogram(values: np.ndarray, bins: int = 20) -> dict:
    """Rows per image-view at one level, as counts over `bins` equal bins."""
    counts, edges = np.histogram(values, bins=bins, range=(0, max(int(values.max(initial=0)), 1)))
    return {"counts": counts.tolist(), "edges": edges.tolist()}
