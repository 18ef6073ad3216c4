"""Rows of an image-view: the anchors in an LD region (with their region data) and the teacher's
logits there. Used by the dump (pass 1 and 2) and by online LD, so both hold the same rows."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..store.format import FLAG_MAIN, MASK_DTYPE, REGION_FLAGS, VLR_METRICS
from .grid import featmap_sizes
from .family_regions import family_regions
from .region_rule import RegionRule, atss_rule


def stored_vlr_metrics(region: str, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The VLR metrics whose rows and data a store of this region mode holds, in VLR_METRICS order:
    none for 'main', which keeps the Main rows only."""
    return () if region == "main" else tuple(m for m in VLR_METRICS if m in requested)


# A dump sees few distinct pad shapes, and both views of an image share one. At module level
# (lru_cache is thread-safe), not on the maker: dask's local threads share one maker, and
# dask.distributed pickles it to its workers.
@lru_cache(maxsize=16)
def _grid_anchors(generator, sizes: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
    per_level = generator.grid_priors(list(sizes), device="cpu")
    return torch.cat(per_level), tuple(a.shape[0] for a in per_level)


class RegionRowMaker:
    """Rows to store for an image-view: region data of every kept prior, level by level.

    Uses the teacher head's own prior generator (mmdet's), on the per-image grid of valid
    priors, as the student's assignment sees it (made once for the last few pad shapes), and the
    family's region rules (ATSS's band by default). A row is one prior: its location and, with
    several priors per location (RetinaNet's anchors), its index there.
    """

    def __init__(self, prior_generator, strides: list[int], region: str = "distill",
                 gamma: float = 0.25, rule: RegionRule | None = None,
                 vlr_metrics: tuple[str, ...] = VLR_METRICS):
        self.generator = prior_generator
        self.strides = strides
        self.region, self.gamma = region, gamma
        self.rule = rule or atss_rule()
        self.priors_per_location = int(prior_generator.num_base_priors[0])
        # A metric left out gets no flag, ratio or weight: its VLR is simply not in the store.
        vlr_metrics = stored_vlr_metrics(region, vlr_metrics)
        self.metric_on = np.array([m in vlr_metrics for m in VLR_METRICS])
        self.metric_flags = np.array([REGION_FLAGS[f"vlr_{m}"] * (m in vlr_metrics) for m in VLR_METRICS], np.uint8)

    def anchors(self, pad_shape: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """All priors of an image of this pad shape, levels concatenated (not to be modified:
        they are shared): anchors [A, 4], or points [A, 2]; and their count per level."""
        return _grid_anchors(self.generator, tuple(featmap_sizes(pad_shape, self.strides)))

    def rows(self, boxes: torch.Tensor, pad_shape: tuple[int, int]) -> list[np.ndarray]:
        """Per level, the MASK_DTYPE rows for GT `boxes` (xyxy, in view coordinates)."""
        anchors, counts = self.anchors(pad_shape)
        regions = family_regions(self.rule, anchors, list(counts), boxes.cpu().float(), self.gamma, self.strides)
        vlr = regions.vlr_ratio.numpy() >= self.gamma
        # The VLR bits as a product with each metric's bit (0 for a metric left out), and the main bit.
        flags = vlr.view(np.uint8) @ self.metric_flags | regions.main.numpy().view(np.uint8) * np.uint8(FLAG_MAIN)
        keep = np.arange(len(flags)) if self.region == "dense" else np.flatnonzero(flags)
        # One table for all levels, cut at the level boundaries: few numpy calls per image-view.
        table = np.zeros(len(keep), dtype=MASK_DTYPE)
        table["flags"] = flags[keep]
        table["vlr_ratio"] = regions.vlr_ratio.numpy()[keep] * self.metric_on
        table["vlr_step_ratio"] = regions.step_ratio.numpy()[keep] * self.metric_on[:, None]
        table["vlr_step_weight"] = regions.step_weight.numpy()[keep] * self.metric_on[:, None]
        level_starts = np.cumsum([0, *counts])
        cuts = np.searchsorted(keep, level_starts)
        in_level = keep - np.repeat(level_starts[:-1], np.diff(cuts))
        table["loc"], table["prior"] = np.divmod(in_level, self.priors_per_location)
        return np.split(table, cuts[1:-1])


def gather_logits(cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor], index: int,
                  level_rows: list[np.ndarray], grid: list[tuple[int, int]], priors: int = 1) -> torch.Tensor:
    """Image `index` of a batch output, at its rows' priors: [R, 4*(reg_max+1) + C], float32.

    The batch maps may be larger than the image's own grid (batch padding); locations refer to
    the image's grid, whose top-left corner they share. With `priors` priors per location, a
    level's maps hold a block of channels per prior, prior after prior (mmdet's layout), and a
    row takes its own prior's block.
    """
    num_reg, num_cls = bbox_preds[0].shape[1] // priors, cls_scores[0].shape[1] // priors
    locs = [_map_locations(rows["loc"], width, reg.shape[-1]) for rows, (_, width), reg in
            zip(level_rows, grid, bbox_preds)]
    out = bbox_preds[0].new_empty((sum(map(len, locs)), num_reg + num_cls), dtype=torch.float32)
    start = 0
    # Each level's channels at its rows, written straight into the output's columns: half the
    # time of concatenating transposed gathers (measured at COCO geometry, 2,000 rows).
    for cls, reg, loc, rows in zip(cls_scores, bbox_preds, locs, level_rows):
        loc = torch.from_numpy(loc).to(reg.device)
        end = start + len(loc)
        if priors == 1:
            out[start:end, :num_reg] = reg[index].flatten(1).index_select(1, loc).t()
            out[start:end, num_reg:] = cls[index].flatten(1).index_select(1, loc).t()
        else:
            prior = torch.from_numpy(rows["prior"].astype(np.int64)).to(reg.device)
            out[start:end, :num_reg] = reg[index].reshape(priors, num_reg, -1)[prior, :, loc]
            out[start:end, num_reg:] = cls[index].reshape(priors, num_cls, -1)[prior, :, loc]
        start = end
    return out


def _map_locations(loc: np.ndarray, width: int, map_width: int) -> np.ndarray:
    """int64 indices of a level's locations on the image's grid (`width` wide) into its flattened
    batch map (`map_width` wide): the same unless batch padding widened the map, then moved to
    the map's rows, so that the map is never cut to the grid and copied."""
    loc = loc.astype(np.int64)
    if width != map_width:
        loc = loc // width * map_width + loc % width
    return loc
