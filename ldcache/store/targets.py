"""LD targets of one image-view: which rows (region data) and the teacher's logits there.

The same structure comes from the store (cached LD) and from a live teacher (online LD), so both
modes run through one loss code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import MASK_DTYPE


@dataclass
class LevelRows:
    """One level of one image-view: the stored locations and their data."""

    loc: np.ndarray  # int32 [R]: y * W_l + x on the per-image grid
    prior: np.ndarray  # uint8 [R]: which of the location's priors
    flags: np.ndarray  # uint8 [R]
    vlr_ratio: np.ndarray  # float32 [R, 2]
    vlr_step_ratio: np.ndarray  # float32 [R, 2, VLR_STEPS]
    vlr_step_weight: np.ndarray  # float32 [R, 2, VLR_STEPS]
    reg: np.ndarray  # [R, 4, reg_max + 1] edge-distribution logits
    cls: np.ndarray  # [R, num_classes] class logits


@dataclass
class LDTargets:
    """All levels of one image-view, rows concatenated level after level."""

    level_ptr: np.ndarray  # int64 [L + 1]: level l owns rows level_ptr[l]:level_ptr[l+1]
    grid: np.ndarray  # int64 [L, 2]: per-image grid (H_l, W_l) of each level
    masks: np.ndarray  # MASK_DTYPE [R]
    values: np.ndarray  # [R, 4 * bins + C]: edge logits (edge-major), then class logits (a tensor online)
    num_classes: int

    @property
    def bins(self) -> int:
        return (self.values.shape[1] - self.num_classes) // 4

    def level(self, index: int) -> LevelRows:
        lo, hi = int(self.level_ptr[index]), int(self.level_ptr[index + 1])
        m, v = self.masks[lo:hi], self.values[lo:hi]
        split = 4 * self.bins
        return LevelRows(m["loc"], m["prior"], m["flags"], m["vlr_ratio"], m["vlr_step_ratio"], m["vlr_step_weight"],
                         v[:, :split].reshape(-1, 4, self.bins), v[:, split:])

    def levels(self) -> list[LevelRows]:
        return [self.level(i) for i in range(len(self.level_ptr) - 1)]


def targets_from_rows(level_rows: list[np.ndarray], values: np.ndarray, grid, num_classes: int) -> LDTargets:
    """LDTargets from per-level MASK_DTYPE rows and their values [R, 4 * bins + C], rows in level order."""
    counts = [len(r) for r in level_rows]
    return LDTargets(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                     np.asarray(grid, dtype=np.int64).reshape(-1, 2),
                     np.concatenate(level_rows) if level_rows else np.zeros(0, MASK_DTYPE),
                     values, num_classes)
