"""The row the viewer's image page shows, and what its location panel says about it.

The same choices as `ldcache inspect --image`: a clicked point is the nearest prior point of the
level (`report.locate`), else the level's most ambiguous row (`report.most_ambiguous`); the panel
is the CLI's location report plus the VLR weight at the page's gamma and the GT box the edges are
compared with."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...store.reader import StoreReader
from ...store.targets import LDTargets
from ..plots import GtMatch, match_gt, teacher_box, view_gt_boxes
from ..report import RowKey, locate, location_report, most_ambiguous


class Focus(NamedTuple):
    """The shown row, its location report at the page's tau, and its boxes."""

    key: RowKey
    report: dict
    teacher_box: np.ndarray  # [4] xyxy: the row's edge expectations at tau 1, as the head decodes them
    match: GtMatch | None  # the view's GT box of highest IoU with the teacher's box


def focus_row(targets: LDTargets, reader: StoreReader, record: int, level: int, at: tuple[float, float] | None,
              anchor: int | None) -> RowKey:
    """The row at the clicked point `at` (view pixels) of `level`, or the level's most ambiguous
    row without one; of `anchor` when given. A point with no stored row is a BadInputError."""
    if at is None:
        return most_ambiguous(targets, level, anchor)
    return locate(reader, record, targets, at, level, grid=False, anchor=anchor)


def focus(reader: StoreReader, record: int, targets: LDTargets, key: RowKey, tau: float) -> Focus:
    """The location panel's data for the row `key`."""
    report = location_report(reader, record, targets, key, tau)
    point = tuple(report["image_xy"])
    predicted = teacher_box(targets, key, point, report["stride"])
    return Focus(key, report, predicted, match_gt(view_gt_boxes(reader, record), predicted, point, report["stride"]))


def vlr_at_gamma(report: dict, gamma: float) -> dict[str, dict] | None:
    """Per stored VLR metric at `gamma` (at or above the store's): whether the row is VLR and its
    weight (the largest IoU among the GTs whose d / thr reaches gamma; None where that GT was not
    among the steps the store keeps). None for a VLR rule without a metric (inside_gt)."""
    if report["vlr_ratio"] is None:
        return None
    out = {}
    for metric, ratio in report["vlr_ratio"].items():
        steps = [w for r, w in report["vlr_weight_steps"][metric] if r >= gamma]
        out[metric] = {"vlr": ratio >= gamma, "weight": max(steps) if steps else (None if ratio >= gamma else 0.0)}
    return out
