"""Rows of an image-view: the anchors in an LD region (with their region data) and the teacher's
logits there. Used by the dump (pass 1 and 2) and by online LD, so both hold the same rows."""
from __future__ import annotations

import numpy as np
import torch

from ..store.format import FLAG_MAIN, FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL, MASK_DTYPE, VLR_METRICS
from ..store.layout import featmap_sizes
from .regions import compute_regions


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
