"""Region masks against hand-computed cases."""
import numpy as np
import pytest
import torch

from mmdet.structures.bbox import bbox_overlaps

from ldcache.dump.regions import atss_thresholds, compute_regions, vlr_metric
from ldcache.dump.views import View, boxes_in_view, view_geometry


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
    """A store keeps each row's weight at its own gamma. At a raised gamma, membership from the
    stored ratio is exact; the weight is exact where the best-IoU GT stays VLR, and otherwise
    (the GT dropped out of the row's VLR) the stored weight is the larger IoU of a GT now left out."""
    exact_rows = changed_rows = 0
    for seed in range(4):
        anchors, counts, gt = _random_scene(seed)
        stored = compute_regions(anchors, counts, gt, gamma=0.25)
        iou = bbox_overlaps(anchors, gt)
        for gamma in (0.4, 0.6):
            direct = compute_regions(anchors, counts, gt, gamma=gamma)
            vlr = stored.vlr(gamma)
            assert torch.equal(vlr, direct.vlr(gamma)) and vlr.any()
            same = torch.isclose(stored.vlr_weight, direct.vlr_weight)
            assert same[~vlr].all() or not (direct.vlr_weight[~vlr] > 0).any()
            # Where they differ, the stored weight is an IoU the row has with some GT, and larger.
            differ = vlr & ~same
            assert (stored.vlr_weight[differ] > direct.vlr_weight[differ]).all()
            for a, m in differ.nonzero().tolist():
                assert torch.isclose(iou[a], stored.vlr_weight[a, m]).any()
            exact_rows += int((vlr & same).sum())
            changed_rows += int(differ.sum())
    assert exact_rows > 10 * changed_rows > 0, (exact_rows, changed_rows)


def test_boxes_in_view_resize_clip_flip():
    geo = view_geometry(200, 100, View((400, 300), flip=True))  # scale 2: 400x200
    assert geo.img_shape == (200, 400) and geo.scale_factor == (2.0, 2.0) and geo.pad_shape == (224, 416)
    boxes = boxes_in_view(torch.tensor([[10.0, 10.0, 50.0, 30.0], [190.0, 0.0, 210.0, 20.0]]), geo)
    # resize x2 -> [20,20,100,60] and [380,0,420,40] clipped to [380,0,400,40]; mirror in width 400.
    assert boxes.tolist() == [[300.0, 20.0, 380.0, 60.0], [0.0, 0.0, 20.0, 40.0]]
