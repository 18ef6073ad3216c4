"""Dataset-wide statistics of a store, computed chunk by chunk with dask (never all in memory)."""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from ..store.attrs import StoreAttrs
from ..store.format import MASK_DTYPE, REGION_FLAGS as REGIONS

ENTROPY_BINS = 40


def edge_entropy(reg_logits: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Entropy (nats) of softmax(logits / tau) of each edge: [..., bins] -> [...]."""
    z = reg_logits.astype(np.float64) / tau
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=-1)


def row_levels(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Level of each absolute row index, or -1 for the padding rows between blocks."""
    num_levels = ptr.shape[1] - 1
    starts, ends = ptr[:, :-1].ravel(), ptr[:, 1:].ravel()
    k = np.searchsorted(starts, rows, side="right") - 1
    inside = (k >= 0) & (rows < ends[np.clip(k, 0, None)])
    return np.where(inside, k % num_levels, -1)


def _chunk_stats(masks, logits, block_info=None, *, ptr, codec, num_levels, edges):
    """Per-chunk partial sums: entropy histogram and sum per level, region row counts per level."""
    first = block_info[0]["array-location"][0][0]
    rows = np.arange(first, first + len(masks))
    levels = row_levels(ptr, rows)
    flags = np.ascontiguousarray(masks).view(MASK_DTYPE).reshape(-1)["flags"]
    bins = codec.bins
    values = codec.decode(logits)
    entropy = edge_entropy(values[:, :4 * bins].reshape(len(values), 4, bins)).mean(axis=1)
    hist = np.zeros((num_levels, len(edges) - 1))
    sums = np.zeros((num_levels, 2))
    regions = np.zeros((num_levels, len(REGIONS)))
    for level in range(num_levels):
        sel = levels == level
        hist[level] = np.histogram(entropy[sel], bins=edges)[0]
        sums[level] = entropy[sel].sum(), sel.sum()
        regions[level] = [(flags[sel] & bit > 0).sum() for bit in REGIONS.values()]
    return np.concatenate([hist, sums, regions], axis=1)[None]


def store_statistics(group, attrs: StoreAttrs) -> dict:
    """Entropy (mean and histogram) per level and rows per level and region, over the whole store."""
    ptr = group["ptr"][:]
    num_levels = ptr.shape[1] - 1
    codec = attrs.value_codec()
    edges = np.linspace(0.0, np.log(codec.bins), ENTROPY_BINS + 1)
    masks = da.from_zarr(group["masks"])
    logits = da.from_zarr(group["logits"])
    masks = masks.rechunk((logits.chunks[0], masks.shape[1]))
    width = ENTROPY_BINS + 2 + len(REGIONS)
    parts = da.map_blocks(_chunk_stats, masks, logits, ptr=ptr, codec=codec, num_levels=num_levels, edges=edges,
                          dtype=np.float64, chunks=((1,) * masks.numblocks[0], (num_levels,), (width,)),
                          new_axis=2)
    total = parts.sum(axis=0)
    with dask.config.set(scheduler="threads"):
        total = total.compute()
    hist, sums, regions = total[:, :ENTROPY_BINS], total[:, ENTROPY_BINS:ENTROPY_BINS + 2], total[:, -len(REGIONS):]
    per_record = ptr[:, 1:] - ptr[:, :-1]
    return {
        "entropy_bin_edges": edges.tolist(),
        "entropy_histogram": hist.astype(int).tolist(),
        "mean_edge_entropy": [float(s / n) if n else None for s, n in sums],
        "rows_per_level": sums[:, 1].astype(int).tolist(),
        "rows_per_level_and_region": {name: regions[:, i].astype(int).tolist() for i, name in enumerate(REGIONS)},
        "region_size_histogram": [_histogram(per_record[:, level]) for level in range(num_levels)],
    }


def _histogram(values: np.ndarray, bins: int = 20) -> dict:
    """Rows per image-view at one level, as counts over `bins` equal bins."""
    counts, edges = np.histogram(values, bins=bins, range=(0, max(int(values.max(initial=0)), 1)))
    return {"counts": counts.tolist(), "edges": edges.tolist()}
