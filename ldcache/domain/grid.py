"""Grid geometry of a dense head: the per-level feature-map sizes of one padded image."""
from __future__ import annotations

import math

import numpy as np


def featmap_sizes(pad_shape: tuple[int, int], strides) -> list[tuple[int, int]]:
    """Per-level grid (H_l, W_l) of valid anchor locations for one image (mmdet's valid_flags extent)."""
    return [(math.ceil(pad_shape[0] / s), math.ceil(pad_shape[1] / s)) for s in strides]


def prior_points(cells, stride: int, offset: float) -> np.ndarray:
    """Image pixels (float64) of grid cells' prior points: mmdet's prior generators put a cell's
    prior at (cell + center_offset) * stride, along x and along y alike."""
    return (np.asarray(cells, dtype=np.float64) + offset) * stride
