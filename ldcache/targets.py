"""LD targets of one image-view: which rows (region data) and the teacher's logits there.

The same structure comes from the store (cached LD) and from a live teacher (online LD), so both
modes run through one loss code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .regions import VLR_METRICS, compute_regions
from .store import FLAG_MAIN, FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL, MASK_DTYPE
from .views import featmap_sizes


@dataclass
class LevelRows:
    """One level of one image-view: the stored locations and their data."""

    loc: np.ndarray  # int32 [R]: y * W_l + x on the per-image grid
    flags: np.ndarray  # uint8 [R]
    vlr_ratio: np.ndarray  # float32 [R, 2]
    vlr_weight: np.ndarray  # float16 [R, 2]
    reg: np.ndarray  # [R, 4, reg_max + 1] edge-distribution logits
    cls: np.ndarray  # [R, num_classes] class logits


@dataclass
class LDTargets:
    """All levels of one image-view, rows concatenated level after level."""

    level_ptr: np.ndarray  # int64 [L + 1]: level l owns rows level_ptr[l]:level_ptr[l+1]
    grid: np.ndarray  # int64 [L, 2]: per-image grid (H_l, W_l) of each level
    masks: np.ndarray  # MASK_DTYPE [R]
    values: np.ndarray  # [R, 4 * bins + C]: edge logits (edge-major), then class logits
    num_classes: int

    @property
    def bins(self) -> int:
        return (self.values.shape[1] - self.num_classes) // 4

    def level(self, index: int) -> LevelRows:
        lo, hi = int(self.level_ptr[index]), int(self.level_ptr[index + 1])
        m, v = self.masks[lo:hi], self.values[lo:hi]
        split = 4 * self.bins
        return LevelRows(m["loc"], m["flags"], m["vlr_ratio"], m["vlr_weight"],
                         v[:, :split].reshape(-1, 4, self.bins), v[:, split:])

    def levels(self) -> list[LevelRows]:
        return [self.level(i) for i in range(len(self.level_ptr) - 1)]


class RegionRowMaker:
    """Rows to store for an image-view: region data of every kept anchor, level by level.

    Uses the teacher head's own anchor generator (mmdet's), on the per-image grid of valid
    anchors, as mmdet's ATSS assignment sees it.
    """

    def __init__(self, prior_generator, strides: list[int], region: str = "distill",
                 gamma: float = 0.25, topk: int = 9, vlr_metrics: tuple[str, ...] = VLR_METRICS):
        self.generator = prior_generator
        self.strides = strides
        self.region, self.gamma, self.topk = region, gamma, topk
        # A metric left out gets no flag, ratio or weight: its VLR is simply not in the store.
        self.metric_on = torch.tensor([m in vlr_metrics for m in VLR_METRICS])

    def rows(self, boxes: torch.Tensor, pad_shape: tuple[int, int]) -> list[np.ndarray]:
        """Per level, the MASK_DTYPE rows for GT `boxes` (xyxy, in view coordinates)."""
        sizes = featmap_sizes(pad_shape, self.strides)
        anchors = self.generator.grid_priors(sizes, device="cpu")
        counts = [a.shape[0] for a in anchors]
        regions = compute_regions(torch.cat(anchors), counts, boxes.cpu().float(),
                                  gamma=self.gamma, topk=self.topk)
        vlr = regions.vlr(self.gamma) & self.metric_on
        vlr_ratio = regions.vlr_ratio * self.metric_on
        vlr_weight = regions.vlr_weight * self.metric_on
        flags = (regions.main.to(torch.uint8) * FLAG_MAIN
                 + vlr[:, VLR_METRICS.index("official")].to(torch.uint8) * FLAG_VLR_OFFICIAL
                 + vlr[:, VLR_METRICS.index("diou")].to(torch.uint8) * FLAG_VLR_DIOU)
        keep = flags > 0 if self.region == "distill" else torch.ones_like(flags, dtype=torch.bool)
        out, start = [], 0
        for count in counts:
            sl = slice(start, start + count)
            loc = torch.nonzero(keep[sl]).squeeze(1)
            rows = np.zeros(loc.numel(), dtype=MASK_DTYPE)
            rows["loc"] = loc.numpy()
            rows["flags"] = flags[sl][loc].numpy()
            rows["vlr_ratio"] = vlr_ratio[sl][loc].numpy()
            rows["vlr_weight"] = vlr_weight[sl][loc].numpy()
            out.append(rows)
            start += count
        return out


def gather_logits(cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor], index: int,
                  level_rows: list[np.ndarray], grid: list[tuple[int, int]]) -> torch.Tensor:
    """Image `index` of a batch output, at its rows' locations: [R, 4*(reg_max+1) + C], float32.

    The batch maps may be larger than the image's own grid (batch padding); locations refer to
    the image's grid, whose top-left corner they share.
    """
    parts = []
    for cls, reg, rows, (h, w) in zip(cls_scores, bbox_preds, level_rows, grid):
        loc = torch.from_numpy(rows["loc"].astype(np.int64)).to(cls.device)
        reg_rows = reg[index, :, :h, :w].reshape(reg.shape[1], -1)[:, loc]
        cls_rows = cls[index, :, :h, :w].reshape(cls.shape[1], -1)[:, loc]
        parts.append(torch.cat([reg_rows, cls_rows]).t())
    return torch.cat(parts).float()


def targets_from_rows(level_rows: list[np.ndarray], values: np.ndarray, grid, num_classes: int) -> LDTargets:
    counts = [len(r) for r in level_rows]
    return LDTargets(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                     np.asarray(grid, dtype=np.int64).reshape(-1, 2),
                     np.concatenate(level_rows) if level_rows else np.zeros(0, MASK_DTYPE),
                     values, num_classes)
