"""Grid geometry of a dense head: the per-level feature-map sizes of one padded image."""
from __future__ import annotations

import math


def featmap_sizes(pad_shape: tuple[int, int], strides) -> list[tuple[int, int]]:
    """Per-level grid (H_l, W_l) of valid anchor locations for one image (mmdet's valid_flags extent)."""
    return [(math.ceil(pad_shape[0] / s), math.ceil(pad_shape[1] / s)) for s in strides]
