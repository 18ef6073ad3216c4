"""Region masks against hand-computed cases."""
import numpy as np
import pytest
import torch

from ldcache.regions import atss_thresholds, compute_regions, vlr_metric
from ldcache.views import View, boxes_in_view, view_geometry


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
    weight = regions.vlr_weight[1]
    assert weight.tolist() == pytest.approx([1 / 3 if v else 0.0 for v in expected_vlr], rel=1e-5)
    # Anchor 0 has d >= thr (it is the positive): no VLR; anchors 3, 4 do not touch the GT.
    assert not regions.vlr(0.25)[[0, 3, 4]].any()


def test_raising_gamma_from_the_stored_ratio_equals_recomputing():
    gen = torch.Generator().manual_seed(0)
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    anchors = AnchorGenerator(strides=[8, 16, 32], ratios=[1.0], octave_base_scale=8,
                              scales_per_octave=1).grid_priors([(16, 16), (8, 8), (4, 4)], device="cpu")
    counts = [a.shape[0] for a in anchors]
    anchors = torch.cat(anchors)
    xy = torch.rand(6, 2, generator=gen) * 90
    wh = torch.rand(6, 2, generator=gen) * 60 + 8
    gt = torch.cat([xy, xy + wh], dim=1)
    stored = compute_regions(anchors, counts, gt, gamma=0.25)
    for gamma in (0.25, 0.4, 0.6):
        direct = compute_regions(anchors, counts, gt, gamma=gamma)
        assert torch.equal(stored.vlr(gamma), direct.vlr(gamma))
        assert stored.vlr(gamma).any()
        # A VLR row is weighted by an IoU, and only VLR rows are weighted.
        assert not (direct.vlr_weight > 0)[~direct.vlr(gamma)].any()
        assert (direct.vlr_weight[direct.vlr(gamma)] > 0).all()


def test_boxes_in_view_resize_clip_flip():
    geo = view_geometry(200, 100, View((400, 300), flip=True))  # scale 2: 400x200
    assert geo.img_shape == (200, 400) and geo.scale_factor == (2.0, 2.0) and geo.pad_shape == (224, 416)
    boxes = boxes_in_view(torch.tensor([[10.0, 10.0, 50.0, 30.0], [190.0, 0.0, 210.0, 20.0]]), geo)
    # resize x2 -> [20,20,100,60] and [380,0,420,40] clipped to [380,0,400,40]; mirror in width 400.
    assert boxes.tolist() == [[300.0, 20.0, 380.0, 60.0], [0.0, 0.0, 20.0, 40.0]]
