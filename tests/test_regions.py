"""Region masks against hand-computed cases, and against a plain reference built on mmdet's
ATSSAssigner and the VLR definitions (the first, straightforward implementation)."""
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mmdet.models.task_modules.assigners import ATSSAssigner
from mmdet.models.task_modules.assigners.atss_assigner import bbox_center_distance
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData
from torchvision.ops import distance_box_iou

from ldcache.domain.region_rule import atss_rule
from ldcache.domain.rows import RegionRowMaker
import ldcache.domain.regions as regions_module
from ldcache.domain.regions import atss_thresholds, compute_regions, vlr_metric, vlr_weight_known
from ldcache.domain.views import View, boxes_in_view, view_geometry
from ldcache.store.format import FLAG_MAIN, FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL, MASK_DTYPE, VLR_METRICS
from ldcache.domain.grid import featmap_sizes

# The reference: mmdet's ATSSAssigner for the main region, every pairwise matrix over all anchors
# for the VLR. bench/regions_bench.py times it against compute_regions.


@dataclass
class ReferenceRegions:
    main: torch.Tensor  # bool [A]
    vlr_ratio: torch.Tensor  # float32 [A, metrics]
    vlr_weight: torch.Tensor  # float32 [A, metrics]: the weight at the gamma it was computed for

    def vlr(self, gamma: float) -> torch.Tensor:
        return self.vlr_ratio >= gamma


# reference_rows' rows: the weight at the rows' gamma in place of its steps.
REFERENCE_ROW_DTYPE = np.dtype([("loc", "<i4"), ("flags", "u1"), ("vlr_ratio", "<f4", (2,)),
                                ("vlr_weight", "<f4", (2,))])


def reference_thresholds(anchors, num_level_anchors, gt_bboxes, topk=9):
    overlaps = bbox_overlaps(anchors, gt_bboxes)
    distances = bbox_center_distance(gt_bboxes, anchors)
    candidates, start = [], 0
    for count in num_level_anchors:
        _, idx = distances[start:start + count].topk(min(topk, count), dim=0, largest=False)
        candidates.append(idx + start)
        start += count
    candidate_overlaps = overlaps[torch.cat(candidates), torch.arange(gt_bboxes.size(0))]
    return candidate_overlaps.mean(0) + candidate_overlaps.std(0)


def reference_metric(anchors, gt_bboxes, metric):
    diou = distance_box_iou(anchors, gt_bboxes)
    if metric == "diou":
        return diou
    assert metric == "official"  # IoF minus the DIoU centre penalty (IoU - DIoU)
    return bbox_overlaps(anchors, gt_bboxes, mode="iof") - (bbox_overlaps(anchors, gt_bboxes) - diou)


def reference_regions(anchors, num_level_anchors, gt_bboxes, gamma=0.25, topk=9) -> ReferenceRegions:
    num_anchors = anchors.size(0)
    zeros = anchors.new_zeros((num_anchors, len(VLR_METRICS)))
    if gt_bboxes.numel() == 0:
        return ReferenceRegions(anchors.new_zeros(num_anchors, dtype=torch.bool), zeros, zeros.clone())
    gt = InstanceData(bboxes=gt_bboxes, labels=gt_bboxes.new_zeros(len(gt_bboxes), dtype=torch.long))
    assigned = ATSSAssigner(topk=topk).assign(InstanceData(priors=anchors), num_level_anchors, gt)
    thr = reference_thresholds(anchors, num_level_anchors, gt_bboxes, topk)
    iou = bbox_overlaps(anchors, gt_bboxes)
    ratios, weights = [], []
    for metric in VLR_METRICS:
        ratio = reference_metric(anchors, gt_bboxes, metric) / thr.clamp(min=1e-12)
        ratio = torch.where(thr > 0, ratio, torch.full_like(ratio, -1.0))
        below = torch.where(ratio < 1, ratio, torch.full_like(ratio, -1.0))
        ratios.append(below.max(dim=1).values.clamp(min=0))
        in_vlr = (ratio >= gamma) & (ratio < 1)
        weights.append(torch.where(in_vlr, iou, torch.full_like(iou, -1.0)).max(dim=1).values.clamp(min=0))
    return ReferenceRegions(assigned.gt_inds > 0, torch.stack(ratios, 1), torch.stack(weights, 1))


def reference_rows(generator, strides, boxes, pad_shape, region="distill", gamma=0.25, topk=9,
                   vlr_metrics=VLR_METRICS) -> list[np.ndarray]:
    """RegionRowMaker.rows, level by level over the reference regions."""
    anchors = generator.grid_priors(featmap_sizes(pad_shape, strides), device="cpu")
    counts = [a.shape[0] for a in anchors]
    regions = reference_regions(torch.cat(anchors), counts, boxes.float(), gamma, topk)
    metric_on = torch.tensor([m in vlr_metrics for m in VLR_METRICS])
    vlr = regions.vlr(gamma) & metric_on
    flags = (regions.main.to(torch.uint8) * FLAG_MAIN
             + vlr[:, VLR_METRICS.index("official")].to(torch.uint8) * FLAG_VLR_OFFICIAL
             + vlr[:, VLR_METRICS.index("diou")].to(torch.uint8) * FLAG_VLR_DIOU)
    keep = flags > 0 if region == "distill" else torch.ones_like(flags, dtype=torch.bool)
    out, start = [], 0
    for count in counts:
        sl = slice(start, start + count)
        loc = torch.nonzero(keep[sl]).squeeze(1)
        rows = np.zeros(loc.numel(), dtype=REFERENCE_ROW_DTYPE)
        rows["loc"] = loc.numpy()
        rows["flags"] = flags[sl][loc].numpy()
        rows["vlr_ratio"] = (regions.vlr_ratio * metric_on)[sl][loc].numpy()
        rows["vlr_weight"] = (regions.vlr_weight * metric_on)[sl][loc].numpy()
        out.append(rows)
        start += count
    return out


def test_vlr_metrics_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    # overlap 100, anchor area 100, union 400; centres (5,5) and (10,10): rho^2 = 50;
    # enclosing box 20x20: c^2 = 800, penalty 0.0625.
    assert vlr_metric(anchor, gt, "official").item() == pytest.approx(1.0 - 0.0625)  # IoF - penalty
    assert vlr_metric(anchor, gt, "diou").item() == pytest.approx(0.25 - 0.0625)  # IoU - penalty


def _single_level_case():
    # Five 10x10 anchors sliding right by 5 px over one GT [0,0,10,10].
    anchors = torch.tensor([[5.0 * i, 0.0, 5.0 * i + 10, 10.0] for i in range(5)])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    return anchors, gt


def test_atss_threshold_and_vlr_by_hand():
    anchors, gt = _single_level_case()
    # IoUs: 1, 50/150, 0, 0, 0. With topk=3 the candidates are the 3 nearest: IoU 1, 1/3, 0.
    ious = np.array([1.0, 1 / 3, 0.0])
    thr = ious.mean() + ious.std(ddof=1)
    assert atss_thresholds(anchors, [5], gt, topk=3).item() == pytest.approx(thr, rel=1e-6)

    regions = compute_regions(anchors, [5], gt, gamma=0.25, topk=3)
    assert regions.main.tolist() == [True, False, False, False, False]
    # Anchor 1: IoF 0.5, IoU 1/3; centres 5 px apart, enclosing 15x10: penalty 25/325.
    penalty = 25 / 325
    official, diou = 0.5 - penalty, 1 / 3 - penalty
    ratio = regions.vlr_ratio[1]
    assert ratio[0].item() == pytest.approx(official / thr, rel=1e-5)
    assert ratio[1].item() == pytest.approx(diou / thr, rel=1e-5)
    expected_vlr = [0.25 <= official / thr < 1, 0.25 <= diou / thr < 1]
    assert regions.vlr(0.25)[1].tolist() == expected_vlr
    weight = regions.weight_at(0.25)[1]
    assert weight.tolist() == pytest.approx([1 / 3 if v else 0.0 for v in expected_vlr], rel=1e-5)
    # Anchor 0 has d >= thr (it is the positive): no VLR; anchors 3, 4 do not touch the GT.
    assert not regions.vlr(0.25)[[0, 3, 4]].any()


def _random_scene(seed: int, boxes: int = 6):
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    gen = torch.Generator().manual_seed(seed)
    anchors = AnchorGenerator(strides=[8, 16, 32], ratios=[1.0], octave_base_scale=8,
                              scales_per_octave=1).grid_priors([(16, 16), (8, 8), (4, 4)], device="cpu")
    counts = [a.shape[0] for a in anchors]
    xy = torch.rand(boxes, 2, generator=gen) * 90
    wh = torch.rand(boxes, 2, generator=gen) * 60 + 8
    return torch.cat(anchors), counts, torch.cat([xy, xy + wh], dim=1)


def test_weights_at_a_raised_gamma_from_a_lower_gamma_store():
    """A store dumped at gamma 0.25 gives, at a raised gamma, the same VLR rows and bit for bit the
    same weights as regions computed at that gamma, also where the best-IoU GT of the row at 0.25
    is no longer VLR for it at the raised gamma."""
    weight_moved = 0
    for seed in range(4):
        anchors, counts, gt = _random_scene(seed)
        stored = compute_regions(anchors, counts, gt, gamma=0.25)
        for gamma in (0.4, 0.6):
            direct = reference_regions(anchors, counts, gt, gamma)
            assert torch.equal(stored.vlr(gamma), direct.vlr(gamma)) and direct.vlr(gamma).any()
            assert torch.equal(stored.weight_at(gamma), direct.vlr_weight)
            weight_moved += int((stored.vlr(gamma) & (stored.weight_at(gamma) != stored.weight_at(0.25))).sum())
    assert weight_moved > 10, weight_moved


def test_rows_with_more_steps_than_kept_are_exact_up_to_their_last_kept_step(monkeypatch):
    """With 2 steps kept, rows whose weight has 3 or 4 steps lose those of the largest ratios. Their
    weight stays exact at the store's gamma and wherever vlr_weight_known says so; elsewhere
    (the rows the head refuses) it is not."""
    monkeypatch.setattr(regions_module, "VLR_STEPS", 2)
    known_rows = unknown_rows = 0
    for seed in range(4):
        anchors, counts, gt = _random_scene(seed, boxes=10)
        stored = compute_regions(anchors, counts, gt, gamma=0.25)
        assert stored.step_ratio.shape[-1] == 2
        for gamma in (0.25, 0.4, 0.5, 0.6, 0.8):
            known = vlr_weight_known(stored.vlr_ratio, stored.step_ratio, gamma)
            direct = reference_regions(anchors, counts, gt, gamma).vlr_weight
            assert torch.equal(stored.weight_at(gamma)[known], direct[known])
            assert known.all() or gamma > 0.25
            known_rows += int((known & stored.vlr(gamma)).sum())
            unknown_rows += int((~known).sum())
            # Every row flagged unknown lost a step: its true weight is not what the kept steps give.
            assert (stored.weight_at(gamma)[~known] != direct[~known]).all()
    assert known_rows > 10 * unknown_rows > 0, (known_rows, unknown_rows)


def test_boxes_in_view_resize_clip_flip():
    geo = view_geometry(200, 100, View((400, 300), flip=True))  # scale 2: 400x200
    assert geo.img_shape == (200, 400) and geo.scale_factor == (2.0, 2.0) and geo.pad_shape == (224, 416)
    boxes = boxes_in_view(torch.tensor([[10.0, 10.0, 50.0, 30.0], [190.0, 0.0, 210.0, 20.0]]), geo)
    # resize x2 -> [20,20,100,60] and [380,0,420,40] clipped to [380,0,400,40]; mirror in width 400.
    assert boxes.tolist() == [[300.0, 20.0, 380.0, 60.0], [0.0, 0.0, 20.0, 40.0]]


def _varied_scene(seed: int):
    """A small random image of 3 or 5 levels (the top levels then often have fewer anchors than
    topk) with 0, 1 or several GTs: tiny, small, large and larger than the image, some of them
    shifted copies of others (overlapping GTs); in half the scenes on a 4 px grid, which puts GT
    centres at equal distances from several anchors. Returns (generator, strides, pad shape, GTs)."""
    rng = np.random.default_rng(seed)
    strides = [8, 16, 32] if seed % 2 else [8, 16, 32, 64, 128]
    generator = AnchorGenerator(strides=strides, ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    height, width = (int(v) for v in rng.integers(40, 360, size=2))
    sides = {"tiny": (0.5, 4), "small": (4, 48), "large": (48, 300), "huge": (300, 900)}
    boxes = []
    for _ in range([0, 1, 2, 4, 7, 12][seed % 6]):
        if boxes and rng.random() < 0.3:
            x1, y1, x2, y2 = boxes[rng.integers(len(boxes))]
            shift = rng.uniform(-0.3, 0.3, size=2) * (x2 - x1, y2 - y1)
            boxes.append([x1 + shift[0], y1 + shift[1], x2 + shift[0], y2 + shift[1]])
            continue
        w, h = rng.uniform(*sides[rng.choice(list(sides))], size=2)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if seed % 4 < 2:
        boxes = (boxes / 4).round() * 4
    return generator, strides, (height, width), boxes


def _anchors(generator, strides, pad_shape):
    per_level = generator.grid_priors(featmap_sizes(pad_shape, strides), device="cpu")
    return torch.cat(per_level), [a.shape[0] for a in per_level]


def _assert_same_regions(new, ref: ReferenceRegions, gamma: float, context):
    assert torch.equal(new.main, ref.main), context
    torch.testing.assert_close(new.vlr_ratio, ref.vlr_ratio, rtol=0, atol=0, msg=lambda m: f"{context}: {m}")
    torch.testing.assert_close(new.weight_at(gamma), ref.vlr_weight, rtol=0, atol=0,
                               msg=lambda m: f"{context}: {m}")


def test_compute_regions_matches_the_reference():
    seen = {"few anchors": 0, "main": 0, "vlr": 0}
    for seed in range(60):
        generator, strides, pad_shape, gt = _varied_scene(seed)
        anchors, counts = _anchors(generator, strides, pad_shape)
        for gamma in (0.25, 0.4):
            regions = compute_regions(anchors, counts, gt, gamma)
            _assert_same_regions(regions, reference_regions(anchors, counts, gt, gamma), gamma, (seed, gamma))
        if len(gt):
            torch.testing.assert_close(atss_thresholds(anchors, counts, gt),
                                       reference_thresholds(anchors, counts, gt), rtol=0, atol=1e-6)
            for metric in VLR_METRICS:
                torch.testing.assert_close(vlr_metric(anchors, gt, metric), reference_metric(anchors, gt, metric),
                                           rtol=0, atol=1e-6)
        seen["few anchors"] += min(counts) < 9
        seen["main"] += bool(regions.main.any())
        seen["vlr"] += bool(regions.vlr(0.4).any(dim=0).all())
    assert min(seen.values()) >= 5, seen


def test_atss_ties_as_mmdet():
    """GT centres on a cell corner of the stride-8 level: its nearest anchors come in groups at
    equal distances, the 9 nearest end inside such a group, and the IoUs within a group differ
    (the GTs are not square), so the tie-breaking decides the threshold."""
    generator = AnchorGenerator(strides=[8, 16, 32], ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    anchors, counts = _anchors(generator, [8, 16, 32], (256, 256))
    centres = torch.tensor([[68.0, 68.0], [132.0, 100.0], [100.0, 164.0]])
    for half in [(20.0, 44.0), (60.0, 12.0), (4.0, 4.0), (100.0, 140.0)]:
        gt = torch.cat([centres - torch.tensor(half), centres + torch.tensor(half)], dim=1)
        nearest = bbox_center_distance(gt, anchors[:counts[0]]).sort(dim=0).values
        assert torch.equal(nearest[8], nearest[9])
        _assert_same_regions(compute_regions(anchors, counts, gt), reference_regions(anchors, counts, gt), 0.25, half)
        assert torch.equal(atss_thresholds(anchors, counts, gt), reference_thresholds(anchors, counts, gt))


def test_a_ratio_equal_to_gamma_is_vlr():
    """`gamma * thr <= d` holds at equality: a gamma equal to a stored ratio keeps that anchor."""
    generator, strides, pad_shape, gt = _varied_scene(4)
    anchors, counts = _anchors(generator, strides, pad_shape)
    ratios = compute_regions(anchors, counts, gt).vlr_ratio
    for metric in range(len(VLR_METRICS)):
        anchor = int(ratios[:, metric].argmax())
        gamma = float(ratios[anchor, metric])
        regions = compute_regions(anchors, counts, gt, gamma)
        assert regions.vlr(gamma)[anchor, metric] and regions.weight_at(gamma)[anchor, metric] > 0
        _assert_same_regions(regions, reference_regions(anchors, counts, gt, gamma), gamma, gamma)


@pytest.mark.parametrize("region,metrics", [("distill", VLR_METRICS), ("distill", ("diou",)),
                                            ("dense", ("official",))])
def test_rows_match_the_reference(region, metrics):
    makers = {}
    for seed in (0, 2, 4, 5, 4, 9):  # seed 4 again: its anchors come from the cache
        generator, strides, pad_shape, boxes = _varied_scene(seed)
        if len(strides) not in makers:
            makers[len(strides)] = RegionRowMaker(generator, strides, region, 0.3, atss_rule(9), metrics)
        # dask.distributed pickles the maker to its workers.
        maker = pickle.loads(pickle.dumps(makers[len(strides)])) if seed == 9 else makers[len(strides)]
        got = maker.rows(boxes, pad_shape)
        want = reference_rows(generator, strides, boxes, pad_shape, region, 0.3, 9, metrics)
        assert len(got) == len(want) == len(strides)
        for level, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == MASK_DTYPE and g.shape == w.shape, (seed, level)
            assert np.array_equal(g["loc"], w["loc"]) and np.array_equal(g["flags"], w["flags"]), (seed, level)
            assert np.array_equal(g["vlr_ratio"], w["vlr_ratio"]), (seed, level)
            assert np.array_equal(g["vlr_step_weight"].max(axis=-1), w["vlr_weight"]), (seed, level)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compute_regions_on_cuda_matches_the_reference_there():
    for seed in range(24):
        generator, strides, pad_shape, gt = _varied_scene(seed)
        anchors, counts = _anchors(generator, strides, pad_shape)
        anchors, gt = anchors.cuda(), gt.cuda()
        regions = compute_regions(anchors, counts, gt, 0.4)
        assert regions.main.is_cuda and regions.vlr_ratio.is_cuda
        _assert_same_regions(regions, reference_regions(anchors, counts, gt, 0.4), 0.4, seed)
