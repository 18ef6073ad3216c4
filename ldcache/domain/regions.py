"""The two distillation regions of LD, computed from anchors and GT boxes alone (no network).

- Main region: ATSS positives, exactly as mmdet's ATSSAssigner selects them.
- Valuable localization region (VLR): over all anchors of all levels, an anchor is VLR for a GT
  when ``gamma * thr_gt <= d(anchor, gt) < thr_gt``. Here ``thr_gt`` is the GT's ATSS threshold
  (mean + std of the IoUs of its top-k-per-level candidates), and ``d`` is one of two metrics:
  ``official``, what the official LD code computes (its iou calculator divides by the anchor's
  area in "diou" mode, so the metric is IoF(anchor) minus the DIoU centre penalty), or ``diou``,
  the paper's true DIoU (torchvision's ``distance_box_iou``). The row weight is the plain IoU of
  the anchor with the best-IoU GT among those it is VLR for.

For re-thresholding without a new dump, each anchor also gets ``ratio`` = the largest ``d / thr``
below 1 over its GTs: the anchor is VLR at any gamma exactly when ``ratio >= gamma``. Its weight
at a gamma is the largest IoU over the GTs with ``gamma <= d / thr < 1``, a step function of
gamma: the steps are the GTs that no GT of a larger ratio beats in IoU. Up to ``VLR_STEPS`` of
them are kept, those of the smallest ratios, so the weight is exact at the dump's gamma always
and at a raised gamma up to the largest kept ratio (every step, unless an anchor is VLR for more
than ``VLR_STEPS`` GTs of rising IoU).

One pass computes the centre distances once, for ATSS and the DIoU penalty, needs IoUs only at
ATSS's candidates, and evaluates the VLR metrics only on anchors that overlap some GT: without an
overlap both metrics are <= 0, so such an anchor's ratio and weight are 0. Each value comes from
the same float32 operations, in the same order, as in mmdet's ``bbox_overlaps`` and
``ATSSAssigner`` and torchvision's ``distance_box_iou``, so the results are bit for bit theirs:
a last-bit difference could move an anchor across ``thr`` or ``gamma * thr``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BadInputError
from ..store.format import VLR_METRICS, VLR_STEPS

# mmdet's bbox_overlaps floor on the union (or on the anchor's area, for IoF).
_OVERLAP_EPS = 1e-6
# torchvision's distance_box_iou floor on the enclosing box's squared diagonal.
_DIOU_EPS = 1e-7
# ATSSAssigner: a candidate's centre must lie this far inside its GT to be positive.
_INSIDE_MARGIN = 0.01


@dataclass
class Regions:
    """Per-anchor region data for one image-view, anchors of all levels concatenated."""

    main: torch.Tensor  # bool [A]: ATSS positive
    vlr_ratio: torch.Tensor  # float32 [A, len(VLR_METRICS)]: largest d/thr below 1 (0 if none)
    step_ratio: torch.Tensor  # float32 [A, len(VLR_METRICS), VLR_STEPS]: d/thr of each weight step (0: none)
    step_weight: torch.Tensor  # float32 [A, len(VLR_METRICS), VLR_STEPS]: IoU of each weight step

    def vlr(self, gamma: float) -> torch.Tensor:
        """bool [A, metrics]: VLR membership at this gamma."""
        return self.vlr_ratio >= gamma

    def weight_at(self, gamma: float) -> torch.Tensor:
        """float32 [A, metrics]: the IoU weight at this gamma (0 where not VLR)."""
        return vlr_weight_at(self.step_ratio, self.step_weight, gamma)


def vlr_weight_at(step_ratio: torch.Tensor, step_weight: torch.Tensor, gamma: float) -> torch.Tensor:
    """The VLR weight [...] at `gamma` from its steps [..., VLR_STEPS]: the largest IoU of a GT
    with ``gamma <= d / thr``."""
    return (step_weight * (step_ratio >= gamma)).amax(-1)


def vlr_weight_known(vlr_ratio: torch.Tensor, step_ratio: torch.Tensor, gamma: float) -> torch.Tensor:
    """bool [...]: False where the row is VLR at `gamma` but the step its weight lies on was not
    kept (the row was VLR for more than VLR_STEPS GTs of rising IoU)."""
    return (vlr_ratio < gamma) | (step_ratio.amax(-1) >= gamma)


_Coords = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _coords(boxes: torch.Tensor) -> _Coords:
    """x1, y1, x2, y2 of [N, 4] boxes, each a contiguous [N] vector."""
    return tuple(c.contiguous() for c in boxes.unbind(1))


def _gt_coords(gt_bboxes: torch.Tensor) -> _Coords:
    """x1, y1, x2, y2 of [G, 4] GT boxes, each [G, 1]: against a box vector [N] they give [G, N]
    matrices, whose reductions over the GTs then run over the outer dimension (fast)."""
    return gt_bboxes[:, :, None].unbind(1)


def _centre_distance_sq(box: _Coords, gt: _Coords) -> torch.Tensor:
    """[G, N] squared centre distance; its sqrt is ATSSAssigner's distance, bit for bit."""
    dx = (box[0] + box[2]) / 2.0 - (gt[0] + gt[2]) / 2.0
    dy = (box[1] + box[3]) / 2.0 - (gt[1] + gt[3]) / 2.0
    return dx * dx + dy * dy


def _overlap_wh(box: _Coords, gt: _Coords) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height of the intersections (0 where none)."""
    w = (torch.minimum(box[2], gt[2]) - torch.maximum(box[0], gt[0])).clamp(min=0)
    h = (torch.minimum(box[3], gt[3]) - torch.maximum(box[1], gt[1])).clamp(min=0)
    return w, h


def _inter_area_union(box: _Coords, gt: _Coords) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, the box's area and union, as mmdet's bbox_overlaps computes them."""
    w, h = _overlap_wh(box, gt)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter, area, area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter


def _atss(anchors: torch.Tensor, num_level_anchors: list[int], gt_bboxes: torch.Tensor,
          distance: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ATSSAssigner's candidates (long [K, G] anchor indices), per-GT thresholds [G] and which
    candidates are positive (bool [K, G]), from the [G, A] centre distances."""
    candidates, start = [], 0
    for count in num_level_anchors:
        # ATSSAssigner's own topk call, over the same values of each GT in the same order (it
        # takes them from an [A, G] matrix): the same candidates, ties included (tested on the CPU).
        _, idx = distance[:, start:start + count].topk(min(topk, count), dim=1, largest=False)
        candidates.append(idx + start)
        start += count
    # [K, G], as ATSSAssigner lays them out, so that its mean and std sum in the same order.
    candidates = torch.cat(candidates, dim=1).t().contiguous()
    box, gt = anchors[candidates].unbind(-1), gt_bboxes.unbind(-1)
    inter, _, union = _inter_area_union(box, gt)
    iou = inter / union.clamp(min=_OVERLAP_EPS)
    thr = iou.mean(0) + iou.std(0)
    x1, y1, x2, y2 = box
    gx1, gy1, gx2, gy2 = gt
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    inside = torch.stack([cx - gx1, cy - gy1, gx2 - cx, gy2 - cy]).amin(0) > _INSIDE_MARGIN
    return candidates, thr, (iou >= thr) & inside


def _iou_and_vlr_metrics(box: _Coords, gt: _Coords, distance_sq: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet's IoU [G, N] and the VLR metrics [G, len(VLR_METRICS), N] of N boxes, given their
    squared centre distances [G, N]."""
    inter, area, union = _inter_area_union(box, gt)
    iou = inter / union.clamp(min=_OVERLAP_EPS)
    iof = inter / area.clamp(min=_OVERLAP_EPS)
    enclosing_w = (torch.maximum(box[2], gt[2]) - torch.minimum(box[0], gt[0])).clamp(min=0)
    enclosing_h = (torch.maximum(box[3], gt[3]) - torch.minimum(box[1], gt[1])).clamp(min=0)
    penalty = distance_sq / (enclosing_w * enclosing_w + enclosing_h * enclosing_h + _DIOU_EPS)
    # torchvision's DIoU starts from the bare inter / union; mmdet's IoU floors the union.
    diou = inter / union - penalty
    # The official metric written as the reference writes it, IoF minus (IoU - DIoU), for its bits.
    metrics = {"official": iof - (iou - diou), "diou": diou}
    return iou, torch.stack([metrics[m] for m in VLR_METRICS], dim=1)


def atss_thresholds(anchors: torch.Tensor, num_level_anchors: list[int], gt_bboxes: torch.Tensor,
                    topk: int = 9) -> torch.Tensor:
    """Per-GT ATSS IoU threshold (mean + std over the k nearest anchors of each level), as mmdet's
    ATSSAssigner computes it internally."""
    distance = _centre_distance_sq(_coords(anchors), _gt_coords(gt_bboxes)).sqrt()
    return _atss(anchors, num_level_anchors, gt_bboxes, distance, topk)[1]


def vlr_metric(anchors: torch.Tensor, gt_bboxes: torch.Tensor, metric: str) -> torch.Tensor:
    """[A, G] localization quality d(anchor, gt) of the chosen VLR metric."""
    if metric not in VLR_METRICS:
        raise BadInputError(f"unknown VLR metric {metric!r}; choose from {VLR_METRICS}")
    box, gt = _coords(anchors), _gt_coords(gt_bboxes)
    _, metrics = _iou_and_vlr_metrics(box, gt, _centre_distance_sq(box, gt))
    return metrics[:, VLR_METRICS.index(metric)].t()


def compute_regions(anchors: torch.Tensor, num_level_anchors: list[int], gt_bboxes: torch.Tensor,
                    gamma: float = 0.25, topk: int = 9) -> Regions:
    """Main region and VLR data for one image-view. `anchors` [A, 4] xyxy, all levels in order."""
    num_anchors = anchors.size(0)
    main = anchors.new_zeros(num_anchors, dtype=torch.bool)
    vlr_ratio = anchors.new_zeros((num_anchors, len(VLR_METRICS)))
    step_ratio = anchors.new_zeros((num_anchors, len(VLR_METRICS), VLR_STEPS))
    step_weight = torch.zeros_like(step_ratio)
    if gt_bboxes.numel() == 0 or num_anchors == 0:
        return Regions(main, vlr_ratio, step_ratio, step_weight)

    box = _coords(anchors)
    distance_sq = _centre_distance_sq(box, _gt_coords(gt_bboxes))
    candidates, thr, positive = _atss(anchors, num_level_anchors, gt_bboxes, distance_sq.sqrt(), topk)
    main[candidates[positive]] = True

    # A GT whose threshold is not positive has no VLR (gamma*thr <= d < thr is empty).
    has_vlr = thr > 0
    thr = thr[has_vlr]
    if thr.numel() == 0:
        return Regions(main, vlr_ratio, step_ratio, step_weight)
    gt = _gt_coords(gt_bboxes[has_vlr])
    # Only anchors that overlap a GT can have a VLR metric above 0; the others keep ratio 0, weight 0.
    w, h = _overlap_wh(box, gt)
    rows = ((w * h).amax(0) > 0).nonzero().squeeze(1)
    iou, metrics = _iou_and_vlr_metrics(tuple(c.index_select(0, rows) for c in box), gt,
                                        distance_sq.index_select(1, rows)[has_vlr])

    ratio = metrics / thr.clamp(min=1e-12)[:, None, None]  # [G, metrics, R]
    # 0/1 masks made of float ops: on the CPU, bool masks and torch.where cost several times more.
    # sign() is exact, so these are exactly `ratio < 1` and `ratio >= gamma`.
    below_one = (1 - ratio).sign().clamp(min=0)
    from_gamma = (ratio - gamma).sign().add(1).clamp(max=1)
    # A ratio of 1 or more counts as 0 here, which the final clamp to 0 makes harmless.
    vlr_ratio.index_copy_(0, rows, (ratio * below_one).amax(0).clamp(min=0).t())
    ratios, weights = _weight_steps(ratio, iou[:, None] * (below_one * from_gamma))
    step_ratio.index_copy_(0, rows, ratios)
    step_weight.index_copy_(0, rows, weights)
    return Regions(main, vlr_ratio, step_ratio, step_weight)


def _weight_steps(ratio: torch.Tensor, eligible_iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The steps of the VLR weight as a function of gamma, from the GTs' ratios and IoUs [G, M, R]
    (IoU 0 where a GT is not VLR for the anchor at the dump's gamma): (ratio, IoU) [R, M, VLR_STEPS]
    of the GTs whose IoU beats every GT of a larger ratio, those of the smallest ratios first."""
    eligible = eligible_iou > 0
    order = torch.where(eligible, ratio, -1.0).argsort(dim=0, descending=True)
    sorted_ratio, sorted_iou = ratio.gather(0, order), eligible_iou.gather(0, order)
    best_before = torch.cat([torch.zeros_like(sorted_iou[:1]), sorted_iou.cummax(0).values[:-1]])
    on_step = sorted_iou > best_before
    # The steps of smallest ratio are the last ones in the sorted order: take the largest positions.
    position = on_step * torch.arange(1, len(order) + 1, device=order.device)[:, None, None]
    kept, pick = position.topk(min(VLR_STEPS, len(order)), dim=0)
    kept = kept > 0
    ratios = sorted_ratio.gather(0, pick) * kept
    weights = sorted_iou.gather(0, pick) * kept
    pad = VLR_STEPS - len(pick)
    ratios, weights = (torch.nn.functional.pad(t.permute(2, 1, 0), (0, pad)) for t in (ratios, weights))
    return ratios, weights
