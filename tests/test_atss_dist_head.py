"""ATSSDistHead: mmdet's ATSS with a distribution box branch (ldcache.heads.atss_dist_head)."""
import math

import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS

TINY = CONFIGS / "tiny" / "atss_dist_tiny.py"
STRIDES = (8, 16, 32, 64, 128)
IMG = 64  # the synthetic images are 64x64: feature maps 8, 4, 2, 1, 1
BINS = 17


def _tiny_cfg() -> Config:
    from mmdet.utils import register_all_modules

    import ldcache.heads  # noqa: F401

    register_all_modules()
    return Config.fromfile(str(TINY))


def _head(seed: int = 0):
    """The tiny config's head alone, with its train and test settings."""
    from mmdet.registry import MODELS

    cfg = _tiny_cfg()
    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.update(train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    torch.manual_seed(seed)
    head = MODELS.build(head_cfg)
    head.init_weights()
    return head


def _feats(channels: int = 64, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [math.ceil(IMG / s) for s in STRIDES]
    return [torch.randn(batch, channels, n, n, generator=gen) for n in sizes]


def _meta(scale: float = 1.0) -> dict:
    return dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG), batch_input_shape=(IMG, IMG),
                ori_shape=(round(IMG / scale), round(IMG / scale)), scale_factor=(scale, scale))


def _gt(boxes, labels):
    from mmengine.structures import InstanceData

    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
                        labels=torch.tensor(labels, dtype=torch.long))


# Two 64x64 images with two boxes each.
GTS = [([[4., 6., 36., 40.], [30., 20., 60., 58.]], [0, 2]),
       ([[10., 10., 50., 50.], [0., 32., 20., 62.]], [1, 0])]


def _batch():
    return [_gt(b, l) for b, l in GTS], [_meta(), _meta()]


def _one_hot_logits(bins: list[int]) -> torch.Tensor:
    """4 * BINS logits whose softmax puts (all but ~1e-21 of) the mass of edge e on bin bins[e]."""
    logits = torch.zeros(4, BINS)
    logits[torch.arange(4), torch.tensor(bins)] = 50.0
    return logits.reshape(-1)


def test_the_tiny_config_builds_an_atss_detector_whose_losses_all_come_out():
    from mmdet.models.detectors import ATSS
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from torch import nn

    from ldcache.domain.head import is_distribution_head
    from ldcache.heads.atss_dist_head import ATSSDistHead

    cfg = _tiny_cfg()
    assert "ldcache.heads" in cfg.custom_imports.imports
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    head = model.bbox_head
    assert isinstance(model, ATSS) and isinstance(head, ATSSDistHead)
    assert is_distribution_head(head) and head.reg_max == 16 and head.num_classes == 3
    assert head.prior_generator.num_base_priors == [1] * 5
    assert [s[0] for s in head.prior_generator.strides] == list(STRIDES)
    # GroupNorm(32) on 64 channels: 2 channels per group.
    norms = [m for m in head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 4 and all(n.num_groups == 32 and n.num_channels == 64 for n in norms)
    assert type(head.assigner).__name__ == "ATSSAssigner" and head.assigner.topk == 9
    assert type(head.bbox_coder).__name__ == "DistancePointBBoxCoder"

    samples = []
    for gt, meta in zip(*_batch()):
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = gt
        samples.append(sample)
    losses = model.loss(torch.randn(2, 3, IMG, IMG), samples)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
    assert all(len(v) == 5 and all(torch.isfinite(t) for t in v) for v in losses.values())


def test_forward_shapes():
    head = _head()
    cls_scores, bbox_preds, centernesses = head(_feats())
    sizes = [(2, math.ceil(IMG / s), math.ceil(IMG / s)) for s in STRIDES]
    assert [(t.shape[0], *t.shape[2:]) for t in cls_scores] == sizes
    assert [t.shape[1] for t in cls_scores] == [3] * 5
    assert [t.shape[1] for t in bbox_preds] == [4 * BINS] * 5
    assert [t.shape[1] for t in centernesses] == [1] * 5
    assert all(t.shape[2:] == c.shape[2:] for t, c in zip(bbox_preds, cls_scores))


def test_a_distribution_decodes_to_its_expectation_in_strides():
    head = _head()
    logits = torch.stack([_one_hot_logits([0, 5, 16, 9]), torch.zeros(4 * BINS)])
    distances = head.decode_distances(logits)
    assert distances.shape == (2, 4)
    torch.testing.assert_close(distances[0], torch.tensor([0., 5., 16., 9.]))
    torch.testing.assert_close(distances[1], torch.full((4,), 8.0))  # uniform: reg_max / 2
    # Leading dimensions are kept.
    assert head.decode_distances(logits.reshape(1, 2, -1)).shape == (1, 2, 4)


def test_the_scale_multiplies_the_logits_as_an_inverse_temperature():
    head = _head()
    x = _feats(batch=1)[0]
    scale = head.scales[0]
    raw = head.forward_single(x, scale)[1].permute(0, 2, 3, 1).reshape(-1, 4 * BINS)
    with torch.no_grad():
        scale.scale.fill_(3.0)
    tempered = head.forward_single(x, scale)[1].permute(0, 2, 3, 1).reshape(-1, 4 * BINS)
    torch.testing.assert_close(tempered, 3.0 * raw)
    torch.testing.assert_close(head.decode_distances(tempered), head.decode_distances(3.0 * raw))
    assert not torch.allclose(head.decode_distances(tempered), 3.0 * head.decode_distances(raw))
    # At scale 0 every distribution is uniform: the distance is reg_max / 2, not 0 as a factor on
    # the distance would give.
    with torch.no_grad():
        scale.scale.fill_(0.0)
    flat = head.forward_single(x, scale)[1].permute(0, 2, 3, 1).reshape(-1, 4 * BINS)
    torch.testing.assert_close(head.decode_distances(flat), torch.full((flat.shape[0], 4), 8.0))


def test_centerness_target_of_a_known_anchor_and_box():
    head = _head()
    anchors = torch.tensor([[0., 0., 64., 64.], [-16., -16., 16., 16.]])  # centres (32, 32) and (0, 0)
    gts = torch.tensor([[16., 24., 64., 40.], [-10., -5., 10., 15.]])
    # l, t, r, b = 16, 8, 32, 8 -> sqrt(16/32 * 8/8); then 10, 5, 10, 15 -> sqrt(1 * 5/15).
    torch.testing.assert_close(head.centerness_target(anchors, gts),
                               torch.tensor([math.sqrt(0.5), math.sqrt(1 / 3)]))


def test_the_box_loss_is_the_centerness_weighted_mean_giou_in_any_units():
    from mmdet.structures.bbox import bbox_overlaps

    head = _head()
    gts, metas = _batch()
    outs = head(_feats())
    losses = head.loss_by_feat(*outs, gts, metas)

    # The positives of mmdet's ATSS assignment, recomputed through the head's own targets.
    anchors, valid = head.get_anchors([t.shape[-2:] for t in outs[0]], metas, device="cpu")
    anchors, labels, _, targets, _, num_pos = head.get_targets(anchors, valid, gts, metas)
    assert num_pos > 0
    sums = dict(ctr=0.0, weighted=0.0, bce=0.0)
    for level, stride in enumerate(STRIDES):
        pos = labels[level] < head.num_classes
        logits = outs[1][level].permute(0, 2, 3, 1).reshape(2, -1, 4 * BINS)[pos]
        ctr_logits = outs[2][level].permute(0, 2, 3, 1).reshape(2, -1)[pos]
        centres = (anchors[level][pos][:, :2] + anchors[level][pos][:, 2:]) / 2
        d = head.decode_distances(logits) * stride
        boxes = torch.cat([centres - d[:, :2], centres + d[:, 2:]], dim=1)  # pixels
        ctr = head.centerness_target(anchors[level][pos], targets[level][pos])
        giou = bbox_overlaps(boxes, targets[level][pos], mode="giou", is_aligned=True)
        sums["ctr"] += ctr.sum()
        sums["weighted"] += (ctr * (1 - giou)).sum()
        sums["bce"] += torch.nn.functional.binary_cross_entropy_with_logits(
            ctr_logits, ctr, reduction="sum")
    expected_bbox = 2.0 * sums["weighted"] / max(float(sums["ctr"]), 1.0)
    torch.testing.assert_close(sum(losses["loss_bbox"]), expected_bbox, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sum(losses["loss_centerness"]), sums["bce"] / num_pos, rtol=1e-4, atol=1e-5)


def test_the_loss_is_finite_and_a_few_steps_reduce_it():
    head = _head()
    gts, metas = _batch()
    feats = _feats()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    totals = []
    for _ in range(8):
        losses = head.loss_by_feat(*head(feats), gts, metas)
        assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
        terms = {k: sum(v) for k, v in losses.items()}
        assert all(torch.isfinite(t) and t > 0 for t in terms.values()), terms
        total = sum(terms.values())
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert totals[-1] < 0.9 * totals[0], totals


def test_an_image_without_objects_gives_zero_box_losses_and_a_finite_class_loss():
    head = _head()
    losses = head.loss_by_feat(*head(_feats()), [_gt([], []), _gt([], [])], [_meta(), _meta()])
    assert sum(losses["loss_bbox"]) == 0 and sum(losses["loss_centerness"]) == 0
    assert torch.isfinite(sum(losses["loss_cls"])) and sum(losses["loss_cls"]) > 0
    sum(sum(v) for v in losses.values()).backward()  # the zero terms still reach the parameters


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_predict_by_feat_decodes_a_known_distribution_into_an_image_box(scale):
    head = _head().eval()
    sizes = [math.ceil(IMG / s) for s in STRIDES]
    cls_scores = [torch.full((1, 3, n, n), -20.0) for n in sizes]
    bbox_preds = [torch.zeros(1, 4 * BINS, n, n) for n in sizes]
    centernesses = [torch.zeros(1, 1, n, n) for n in sizes]
    row, col = 3, 5  # on P3 (stride 8); mmdet's anchor centre there is (col * 8, row * 8) = (40, 24)
    priors = head.prior_generator.grid_priors([(n, n) for n in sizes], device="cpu")[0]
    torch.testing.assert_close((priors[row * sizes[0] + col, :2] + priors[row * sizes[0] + col, 2:]) / 2,
                               torch.tensor([40., 24.]))
    cls_scores[0][0, 1, row, col] = 5.0
    centernesses[0][0, 0, row, col] = 2.0
    bbox_preds[0][0, :, row, col] = _one_hot_logits([2, 2, 2, 1])  # l, t, r, b in strides
    results = head.predict_by_feat(cls_scores, bbox_preds, centernesses, [_meta(scale)],
                                   rescale=True)[0]
    assert len(results) == 1 and results.labels.tolist() == [1]
    torch.testing.assert_close(results.bboxes, torch.tensor([[24., 8., 56., 32.]]) / scale)
    expected_score = torch.sigmoid(torch.tensor([5.0])) * torch.sigmoid(torch.tensor([2.0]))
    torch.testing.assert_close(results.scores, expected_score)
