"""The two distillation regions of LD, computed from anchors and GT boxes alone (no network).

- Main region: ATSS positives, from mmdet's own ATSSAssigner.
- Valuable localization region (VLR): over all anchors of all levels, an anchor is VLR for a GT
  when ``gamma * thr_gt <= d(anchor, gt) < thr_gt``. Here ``thr_gt`` is the GT's ATSS threshold
  (mean + std of the IoUs of its top-k-per-level candidates), and ``d`` is one of two metrics:
  ``official``, what the official LD code computes (its iou calculator divides by the anchor's
  area in "diou" mode, so the metric is IoF(anchor) minus the DIoU centre penalty), or ``diou``,
  the paper's true DIoU. The row weight is the plain IoU of the anchor with the best-IoU GT among
  those it is VLR for.

For re-thresholding without a new dump, each anchor also gets ``ratio`` = the largest ``d / thr``
below 1 over its GTs. The anchor is VLR at any gamma exactly when ``ratio >= gamma``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from mmdet.models.task_modules.assigners import ATSSAssigner
from mmdet.models.task_modules.assigners.atss_assigner import bbox_center_distance
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData
from torchvision.ops import distance_box_iou

from ..errors import BadInputError
from ..store.format import VLR_METRICS


@dataclass
class Regions:
    """Per-anchor region data for one image-view, anchors of all levels concatenated."""

    main: torch.Tensor  # bool [A]: ATSS positive
    vlr_ratio: torch.Tensor  # float32 [A, len(VLR_METRICS)]: largest d/thr below 1 (0 if none)
    vlr_weight: torch.Tensor  # float32 [A, len(VLR_METRICS)]: IoU with the chosen GT (0 if not VLR)

    def vlr(self, gamma: float) -> torch.Tensor:
        """bool [A, metrics]: VLR membership at this gamma."""
        return self.vlr_ratio >= gamma


def atss_thresholds(anchors: torch.Tensor, num_level_anchors: list[int], gt_bboxes: torch.Tensor,
                    topk: int = 9) -> torch.Tensor:
    """Per-GT ATSS IoU threshold (mean + std over the k nearest anchors of each level), as mmdet's
    ATSSAssigner computes it internally."""
    overlaps = bbox_overlaps(anchors, gt_bboxes)
    distances = bbox_center_distance(gt_bboxes, anchors)
    candidates, start = [], 0
    for count in num_level_anchors:
        k = min(topk, count)
        _, idx = distances[start:start + count].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start += count
    candidates = torch.cat(candidates, dim=0)
    candidate_overlaps = overlaps[candidates, torch.arange(gt_bboxes.size(0))]
    return candidate_overlaps.mean(0) + candidate_overlaps.std(0)


def vlr_metric(anchors: torch.Tensor, gt_bboxes: torch.Tensor, metric: str) -> torch.Tensor:
    """[A, G] localization quality d(anchor, gt) of the chosen VLR metric."""
    diou = distance_box_iou(anchors, gt_bboxes)
    if metric == "diou":
        return diou
    if metric == "official":
        # IoF minus the DIoU centre penalty; the penalty is IoU - DIoU.
        iof = bbox_overlaps(anchors, gt_bboxes, mode="iof")
        return iof - (bbox_overlaps(anchors, gt_bboxes) - diou)
    raise BadInputError(f"unknown VLR metric {metric!r}; choose from {VLR_METRICS}")


def compute_regions(anchors: torch.Tensor, num_level_anchors: list[int], gt_bboxes: torch.Tensor,
                    gamma: float = 0.25, topk: int = 9) -> Regions:
    """Main region and VLR data for one image-view. `anchors` [A, 4] xyxy, all levels in order."""
    num_anchors = anchors.size(0)
    zeros = anchors.new_zeros((num_anchors, len(VLR_METRICS)))
    if gt_bboxes.numel() == 0:
        return Regions(anchors.new_zeros(num_anchors, dtype=torch.bool), zeros, zeros.clone())
    gt = InstanceData(bboxes=gt_bboxes, labels=gt_bboxes.new_zeros(len(gt_bboxes), dtype=torch.long))
    assigned = ATSSAssigner(topk=topk).assign(InstanceData(priors=anchors), num_level_anchors, gt)
    main = assigned.gt_inds > 0

    thr = atss_thresholds(anchors, num_level_anchors, gt_bboxes, topk)
    iou = bbox_overlaps(anchors, gt_bboxes)
    ratios, weights = [], []
    for metric in VLR_METRICS:
        # A GT whose threshold is not positive has no VLR (gamma*thr <= d < thr is empty).
        ratio = vlr_metric(anchors, gt_bboxes, metric) / thr.clamp(min=1e-12)
        ratio = torch.where(thr > 0, ratio, torch.full_like(ratio, -1.0))
        below = torch.where(ratio < 1, ratio, torch.full_like(ratio, -1.0))
        best_ratio = below.max(dim=1).values.clamp(min=0)
        in_vlr = (ratio >= gamma) & (ratio < 1)
        weight = torch.where(in_vlr, iou, torch.full_like(iou, -1.0)).max(dim=1).values.clamp(min=0)
        ratios.append(best_ratio)
        weights.append(weight)
    return Regions(main, torch.stack(ratios, 1), torch.stack(weights, 1))
