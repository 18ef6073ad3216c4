"""`inspect --stats`: the store's statistics recomputed from every stored chunk with dask, chunk by
chunk (never all in memory), plus the distribution of rows per image-view."""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from ..errors import StoreCorruptError
from ..store.attrs import StoreAttrs
from ..store.statistics import mask_flags, partial_statistics, row_levels, statistics_from_sums, stats_width


def _chunk_stats(masks, logits, block_info=None, *, ptr, codec, num_levels):
    first = block_info[0]["array-location"][0][0]
    levels = row_levels(ptr, np.arange(first, first + len(masks)))
    return partial_statistics(mask_flags(masks), codec.decode(logits), levels, num_levels, codec.bins)[None]


def store_statistics(group, attrs: StoreAttrs) -> dict:
    """Entropy (mean and histogram) and rows per level and region over the whole store, and the
    histogram of rows per image-view of each level."""
    ptr = group["ptr"][:]
    num_levels = ptr.shape[1] - 1
    codec = attrs.value_codec()
    masks = da.from_zarr(group["masks"])
    logits = da.from_zarr(group["logits"])
    masks = masks.rechunk((logits.chunks[0], masks.shape[1]))
    parts = da.map_blocks(_chunk_stats, masks, logits, ptr=ptr, codec=codec, num_levels=num_levels,
                          dtype=np.float64, chunks=((1,) * masks.numblocks[0], (num_levels,), (stats_width(),)),
                          new_axis=2)
    with dask.config.set(scheduler="threads"):
        try:
            total = parts.sum(axis=0).compute()
        except ValueError as err:  # zarr's crc32c codec: "Stored and computed checksum do not match"
            if "checksum" not in str(err):
                raise
            raise StoreCorruptError(f"a chunk of masks or logits fails its checksum ({err}); "
                                    "`ldcache verify STORE` names it and its block") from None
    per_record = ptr[:, 1:] - ptr[:, :-1]
    return {**statistics_from_sums(total, codec.bins),
            "region_size_histogram": [_histogram(per_record[:, level]) for level in range(num_levels)]}


def _histogram(values: np.ndarray, bins: int = 20) -> dict:
    """Rows per image-view at one level, as counts over `bins` equal bins."""
    counts, edges = np.histogram(values, bins=bins, range=(0, max(int(values.max(initial=0)), 1)))
    return {"counts": counts.tolist(), "edges": edges.tolist()}
