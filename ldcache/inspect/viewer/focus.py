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
from ..plots import GtMatch, match_gt, teacher_box
from ..report import RowKey, locate, location_report, most_ambiguous


class Focus(NamedTuple):
    """The shown row, its location report at the page's tau, and its boxes."""

    key: RowKey
    report: dict
    teacher_box: np.ndarray  # [4] xyxy: the row's edge expectations at tau 1, as the head decodes them
    match: GtMatch | None  # the view's GT box of highest IoU with the teacher's box


def focus_row(targets: LDTargets, reader: StoreReader, record: int, level: int, at: tuple[float, float] | None,
              anchor: int | None) -> RowKey:
    """The row the image page shows.

    Args:
        targets (LDTargets), reader (StoreReader), record (int): the record and its rows.
        level (int): the page's level (0 = P3).
        at (tuple[float, float] | None): the clicked point in the view's pixels, or None.
        anchor (int | None): the anchor asked for, or None for the most ambiguous.

    Returns:
        RowKey: the row at the nearest prior point of `at` (`report.locate`), or the level's most
        ambiguous row without a point; a point with no stored row is a BadInputError.
    """
    if at is None:
        return most_ambiguous(targets, level, anchor)
    return locate(reader, record, targets, at, level, grid=False, anchor=anchor)


def focus(reader: StoreReader, record: int, targets: LDTargets, key: RowKey, tau: float, boxes: np.ndarray) -> Focus:
    """The location panel's data for the row `key`.

    Args:
        reader (StoreReader), record (int), targets (LDTargets): the record and its rows.
        key (RowKey): the shown row.
        tau (float): temperature of the shown distributions.
        boxes (np.ndarray): [G, 4] xyxy GT boxes of the record's view (`view_gt_boxes`).

    Returns:
        Focus: the row's location report, the teacher's box and the GT box its edges are compared with.
    """
    report = location_report(reader, record, targets, key, tau)
    point = tuple(report["image_xy"])
    predicted = teacher_box(targets, key, point, report["stride"])
    return Focus(key, report, predicted, match_gt(boxes, predicted, point, report["stride"]))


def vlr_at_gamma(report: dict, gamma: float, metrics: list[str]) -> dict[str, dict] | None:
    """Per VLR metric the store keeps (`metrics`) at `gamma` (at or above the store's): whether the row is VLR and its
    weight (the largest IoU among the GTs whose d / thr reaches gamma; None where that GT was not
    among the steps the store keeps). None for a VLR rule without a metric (inside_gt)."""
    if report["vlr_ratio"] is None:
        return None
    out = {}
    for metric in metrics:
        ratio = report["vlr_ratio"][metric]
        steps = [w for r, w in report["vlr_weight_steps"][metric] if r >= gamma]
        out[metric] = {"vlr": ratio >= gamma, "weight": max(steps) if steps else (None if ratio >= gamma else 0.0)}
    return out
