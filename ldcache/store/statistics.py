"""Dataset-wide statistics of a store's rows: edge entropy and row counts per level and region.

The dump sums them block by block as it writes (`block_stats`) and keeps the total in the
store's attributes, so a summary reads no logits. `ldcache inspect --stats` computes the same
sums again from the stored chunks.
"""
from __future__ import annotations

import numpy as np

from .format import REGION_FLAGS

ENTROPY_BINS = 40
STATS_CHUNK_ROWS = 2048  # rows whose entropies are computed at a time (see row_mean_edge_entropy)


def edge_entropy(reg_logits: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Entropy (nats) of softmax(logits / tau) of each edge: [..., bins] -> [...], float32.

    H = log(sum e^z) - sum(e^z z) / sum e^z with z shifted by its max: one exp per bin and one log
    per edge (the dump computes it for every row it writes)."""
    z = reg_logits.astype(np.float32)
    if tau != 1:  # dividing by 1 changes no value
        z /= np.float32(tau)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=-1)
    return np.log(total) - np.multiply(e, z, out=z).sum(axis=-1) / total


def entropy_bin_edges(bins: int) -> np.ndarray:
    """Edges of the entropy histogram: 0 to the largest entropy of `bins` bins, log(bins)."""
    return np.linspace(0.0, np.log(bins), ENTROPY_BINS + 1)


def stats_width() -> int:
    """Columns of one level's partial sums: the histogram, entropy sum and rows, region rows."""
    return ENTROPY_BINS + 2 + len(REGION_FLAGS)


def row_levels(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Level of each absolute row index, or -1 for the padding rows between blocks."""
    num_levels = ptr.shape[1] - 1
    starts, ends = ptr[:, :-1].ravel(), ptr[:, 1:].ravel()
    k = np.searchsorted(starts, rows, side="right") - 1
    inside = (k >= 0) & (rows < ends[np.clip(k, 0, None)])
    return np.where(inside, k % num_levels, -1)


def partial_statistics(flags: np.ndarray, values: np.ndarray, levels: np.ndarray, num_levels: int,
                       bins: int) -> np.ndarray:
    """[L, stats_width()] sums over some rows: flags [R], decoded values [R, 4 * bins + C] and the
    level of each row [R] (-1: not a row). Partial sums of disjoint rows add up."""
    edges = entropy_bin_edges(bins)
    entropy = row_mean_edge_entropy(values, bins)
    out = np.zeros((num_levels, stats_width()))
    for level in range(num_levels):
        sel = levels == level
        out[level, :ENTROPY_BINS] = np.histogram(entropy[sel], bins=edges)[0]
        out[level, ENTROPY_BINS:ENTROPY_BINS + 2] = entropy[sel].sum(), sel.sum()
        out[level, ENTROPY_BINS + 2:] = [(flags[sel] & bit > 0).sum() for bit in REGION_FLAGS.values()]
    return out


def row_mean_edge_entropy(values: np.ndarray, bins: int) -> np.ndarray:
    """[R] float64: the mean entropy of each row's 4 edges, from decoded values [R, 4 * bins + C].

    A few thousand rows at a time, so that the temporaries stay in the CPU's cache: a whole block
    at once (100k rows and more) took twice as long per row (measured)."""
    entropy = np.empty(len(values))
    for start in range(0, len(values), STATS_CHUNK_ROWS):
        part = values[start:start + STATS_CHUNK_ROWS, :4 * bins].reshape(-1, 4, bins)
        entropy[start:start + len(part)] = edge_entropy(part).mean(axis=1, dtype=np.float64)
    return entropy


def rows_statistics(flags: np.ndarray, values: np.ndarray, ptr: np.ndarray, start: int, bins: int) -> np.ndarray:
    """Partial sums of the consecutive rows from row `start`: their flags [R], decoded values and
    the store's row pointers, which give each row's level."""
    levels = row_levels(ptr, np.arange(start, start + len(flags)))
    return partial_statistics(flags, values, levels, ptr.shape[1] - 1, bins)


def statistics_from_sums(total: np.ndarray, bins: int) -> dict:
    """The statistics of a whole store from its summed partials [L, stats_width()]."""
    hist = total[:, :ENTROPY_BINS]
    sums = total[:, ENTROPY_BINS:ENTROPY_BINS + 2]
    regions = total[:, ENTROPY_BINS + 2:]
    return {
        "entropy_bin_edges": entropy_bin_edges(bins).tolist(),
        "entropy_histogram": hist.astype(int).tolist(),
        "mean_edge_entropy": [float(s / n) if n else None for s, n in sums],
        "rows_per_level": sums[:, 1].astype(int).tolist(),
        "rows_per_level_and_region": {name: regions[:, i].astype(int).tolist()
                                      for i, name in enumerate(REGION_FLAGS)},
    }
