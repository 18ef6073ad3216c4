"""The regions of one image-view under a head family's rules (ldcache/domain/region_rule.py)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from ..store.format import VLR_METRICS, VLR_STEPS
from .region_rule import RegionRule
from .regions import Regions, compute_regions


def family_regions(rule: RegionRule, priors: torch.Tensor, num_level_priors: list[int], gt_bboxes: torch.Tensor,
                   gamma: float, strides: list[int]) -> Regions:
    """Main region and VLR data of one image-view under `rule`.

    Args:
        rule (RegionRule): The family's rules.
        priors (Tensor): All priors of the image's grid, levels in order, location-major and
            prior-minor: anchors [A, 4] (xyxy), or points [A, 2] for ``inside_gt``.
        num_level_priors (list[int]): Priors per level.
        gt_bboxes (Tensor): GT boxes [G, 4], xyxy, in the view's coordinates.
        gamma (float): The VLR band's lower bound, as a fraction of the threshold.
        strides (list[int]): The levels' strides (FCOS's centre region is in strides).

    Returns:
        Regions: per prior, Main membership and the VLR ratio and weight steps.
    """
    if rule.vlr == "inside_gt":
        return _point_regions(rule.main, priors, num_level_priors, gt_bboxes, strides)
    regions = compute_regions(priors, num_level_priors, gt_bboxes, gamma=gamma, topk=rule.topk)
    if rule.main["type"] != "ATSSAssigner":
        regions.main = _assigner_positives(rule.main, priors, gt_bboxes)
    if rule.vlr == "band_without_main":
        for data in (regions.vlr_ratio, regions.step_ratio, regions.step_weight):
            data[regions.main] = 0
    return regions


def _assigner_positives(assigner: dict, anchors: torch.Tensor, gt_bboxes: torch.Tensor) -> torch.Tensor:
    """bool [A]: the anchors an mmdet assigner (built from its config) makes positive."""
    from mmdet.registry import TASK_UTILS
    from mmengine.structures import InstanceData

    if gt_bboxes.numel() == 0:
        return anchors.new_zeros(len(anchors), dtype=torch.bool)
    result = TASK_UTILS.build(assigner).assign(
        InstanceData(priors=anchors),
        InstanceData(bboxes=gt_bboxes, labels=gt_bboxes.new_zeros(len(gt_bboxes), dtype=torch.long)))
    return result.gt_inds > 0


def _point_regions(main: dict, points: torch.Tensor, num_level_points: list[int], gt_bboxes: torch.Tensor,
                   strides: list[int]) -> Regions:
    """FCOS's regions: Main by FCOSHead's own target rule, VLR the non-positive points strictly
    inside a GT box (ratio 1 and one weight step of 1 for every stored metric)."""
    from mmdet.models.dense_heads import FCOSHead
    from mmengine.structures import InstanceData

    count = len(points)
    vlr_ratio = points.new_zeros((count, len(VLR_METRICS)))
    step_ratio = points.new_zeros((count, len(VLR_METRICS), VLR_STEPS))
    step_weight = torch.zeros_like(step_ratio)
    if gt_bboxes.numel() == 0:
        return Regions(points.new_zeros(count, dtype=torch.bool), vlr_ratio, step_ratio, step_weight)
    # FCOSHead's rule, run on the attributes it reads, so that Main is the student's positives bit for bit.
    rule = SimpleNamespace(num_classes=1, center_sampling=main["center_sampling"],
                           center_sample_radius=main["center_sample_radius"], strides=strides, norm_on_bbox=False)
    ranges = torch.cat([points.new_tensor(r)[None].expand(n, 2)
                        for r, n in zip(main["regress_ranges"], num_level_points)])
    gt = InstanceData(bboxes=gt_bboxes, labels=gt_bboxes.new_zeros(len(gt_bboxes), dtype=torch.long))
    labels, _ = FCOSHead._get_targets_single(rule, gt, points, ranges, num_level_points)
    main_region = labels == 0
    x, y = points[:, 0, None], points[:, 1, None]
    inside = torch.stack([x - gt_bboxes[:, 0], y - gt_bboxes[:, 1], gt_bboxes[:, 2] - x,
                          gt_bboxes[:, 3] - y]).amin(0) > 0
    vlr = inside.any(1) & ~main_region
    vlr_ratio[vlr] = 1.0
    step_ratio[vlr, :, 0] = 1.0
    step_weight[vlr, :, 0] = 1.0
    return Regions(main_region, vlr_ratio, step_ratio, step_weight)
