"""RetinaDistHead: RetinaNet with a distribution box branch, 9 anchors per location, each with its
own 4 x 17 logits decoded from the location's common anchor centre."""
import math

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.structures import InstanceData

from conftest import CONFIGS

TINY = CONFIGS / "tiny" / "retina_dist_tiny.py"
A, C, BINS = 9, 3, 17  # anchors per location, classes, reg_max + 1
IMG = 64  # the synthetic images are IMG x IMG
FEAT_SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # FPN levels of a 64 x 64 image, strides 8..128
STRIDES = [8, 16, 32, 64, 128]


@pytest.fixture(scope="module")
def cfg():
    from mmdet.utils import register_all_modules

    register_all_modules()
    return Config.fromfile(str(TINY))


def _head(cfg):
    from mmdet.registry import MODELS

    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.update(train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    head = MODELS.build(head_cfg)
    head.init_weights()
    return head


@pytest.fixture
def head(cfg):
    torch.manual_seed(0)
    return _head(cfg)


def _features(batch: int = 2, channels: int = 64):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, channels, h, w, generator=generator) for h, w in FEAT_SIZES]


def _metas(batch: int = 2, scale: float = 1.0) -> list[dict]:
    return [dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG), batch_input_shape=(IMG, IMG),
                 scale_factor=(scale, scale)) for _ in range(batch)]


def _gt(*boxes_and_labels) -> InstanceData:
    boxes = [b for b, _ in boxes_and_labels]
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        labels=torch.tensor([label for _, label in boxes_and_labels], dtype=torch.long))


def _two_images_two_boxes() -> list[InstanceData]:
    return [_gt(([6., 10., 30., 40.], 0), ([34., 20., 60., 50.], 2)),
            _gt(([12., 4., 52., 28.], 1), ([20., 30., 44., 62.], 0))]


def _block(pred: torch.Tensor, anchor: int) -> torch.Tensor:
    """The channels of one anchor: [N, 4 * BINS, H, W]."""
    return pred[:, anchor * 4 * BINS:(anchor + 1) * 4 * BINS]


def _logits_for(distances: torch.Tensor) -> torch.Tensor:
    """[K, 4 * BINS] logits whose integral is exactly `distances` [K, 4] (stride units, in [0, 16]):
    the mass split between the two bins around each distance, -inf elsewhere."""
    low = distances.floor().clamp(max=BINS - 2)
    frac = distances - low
    probs = torch.zeros(*distances.shape, BINS)
    probs.scatter_(-1, low.long()[..., None], (1 - frac)[..., None])
    probs.scatter_add_(-1, low.long()[..., None] + 1, frac[..., None])
    return probs.log().reshape(-1, 4 * BINS)


# ------------------------------------------------------------------ construction and forward


def test_the_tiny_config_builds_a_retinanet_with_the_family_s_head(cfg):
    from mmcv.cnn import Scale
    from mmdet.models.detectors import RetinaNet
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    head = model.bbox_head
    assert isinstance(model, RetinaNet) and type(head).__name__ == "RetinaDistHead"
    assert head.reg_max == 16 and head.num_classes == C and head.num_base_priors == A
    assert head.integral.project.tolist() == list(range(BINS))
    assert head.prior_generator.strides == [(s, s) for s in STRIDES]
    assert head.retina_cls.out_channels == A * C and head.retina_reg.out_channels == A * 4 * BINS
    # RetinaHead's towers: plain conv + ReLU, no norm; no Scale on the logits, no centerness.
    assert all(conv.norm_cfg is None and conv.with_activation for conv in [*head.cls_convs, *head.reg_convs])
    assert not any(isinstance(m, Scale) for m in head.modules())
    assert type(head.loss_cls).__name__ == "FocalLoss" and (head.loss_cls.gamma, head.loss_cls.alpha) == (2.0, 0.25)
    assert type(head.loss_bbox).__name__ == "GIoULoss" and head.loss_bbox.loss_weight == 2.0
    assigner = head.assigner
    assert type(assigner).__name__ == "MaxIoUAssigner"
    assert (assigner.pos_iou_thr, assigner.neg_iou_thr, assigner.min_pos_iou, assigner.ignore_iof_thr) == (
        0.5, 0.4, 0, -1)
    assert type(head.sampler).__name__ == "PseudoSampler" and head.reg_decoded_bbox
    assert head.test_cfg.nms.iou_threshold == 0.6


def test_forward_gives_per_level_logits_with_a_block_per_anchor(head):
    outs = head(_features())
    assert len(outs) == 2
    cls_scores, bbox_preds = outs
    assert [tuple(c.shape) for c in cls_scores] == [(2, A * C, h, w) for h, w in FEAT_SIZES]
    assert [tuple(b.shape) for b in bbox_preds] == [(2, A * 4 * BINS, h, w) for h, w in FEAT_SIZES]


# ------------------------------------------------------------------ decoding


def test_decode_of_a_known_distribution(head):
    logits = torch.full((3, 4, BINS), float("-inf"))
    for edge, k in enumerate([0, 3, 16, 7]):  # all the mass on bin k: distance k strides
        logits[0, edge, k] = 0.0
    logits[1] = 0.0  # uniform: the mean bin
    logits[2, :, 2] = logits[2, :, 5] = 0.0  # two equal bins: their midpoint
    distances = head.decode_distances(logits.reshape(3, 4 * BINS))
    assert distances.tolist() == [[0., 3., 16., 7.], [8.] * 4, [3.5] * 4]


def test_the_nine_anchors_of_a_location_share_its_centre_in_mmdet_s_anchor_order(head):
    """mmdet's AnchorGenerator: centres at (x * s, y * s) (center_offset 0), the A anchors of a location
    consecutive, ratio-major: anchor a has ratio (h / w) ratios[a // 3] and scale 4 * 2 ** ((a % 3) / 3)."""
    priors = head.prior_generator.grid_priors(FEAT_SIZES, device="cpu")
    for (h, w), stride, level in zip(FEAT_SIZES, STRIDES, priors):
        level = level.reshape(h, w, A, 4)
        centres = (level[..., :2] + level[..., 2:]) / 2
        ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
        assert torch.allclose(centres, torch.stack([xs, ys], -1)[:, :, None].float().expand(-1, -1, A, -1), atol=1e-4)
        sizes = level[0, 0, :, 2:] - level[0, 0, :, :2]
        for a in range(A):
            ratio, scale = [0.5, 1.0, 2.0][a // 3], 4 * 2 ** ((a % 3) / 3)
            assert sizes[a, 1] / sizes[a, 0] == pytest.approx(ratio, rel=1e-4)
            assert math.sqrt(sizes[a, 0] * sizes[a, 1]) == pytest.approx(stride * scale, rel=1e-4)


def test_predict_decodes_each_anchor_s_own_block_from_the_pixel_anchor_centre(head):
    """Every anchor gets its own distribution (bin k_a, distinct per anchor and edge) and its own class
    logit; predict_by_feat must pair each anchor's score with integral * stride around the pixel
    centre, clipped to the image and divided by the scale factor (rescale)."""
    ks = torch.tensor([[1 + (a + 2 * e) % 9 for e in range(4)] for a in range(A)], dtype=torch.float32)
    logit_of_anchor = torch.linspace(-3.0, 1.0, A)
    cls_scores, bbox_preds, expected = [], [], []
    for (h, w), stride in zip(FEAT_SIZES, STRIDES):
        cls = torch.full((1, A, C, h, w), -30.0)
        cls[:, :, 0] = logit_of_anchor[None, :, None, None]
        cls_scores.append(cls.reshape(1, A * C, h, w))
        block = _logits_for(ks).reshape(A * 4 * BINS)  # prior-major blocks of 4 x 17
        bbox_preds.append(block[None, :, None, None].expand(1, -1, h, w).clone())
        for y in range(h):
            for x in range(w):
                centre = torch.tensor([x * stride, y * stride] * 2, dtype=torch.float32)
                boxes = (centre + ks * torch.tensor([-1., -1., 1., 1.]) * stride).clamp(0, IMG) / 2
                expected.append(torch.cat([logit_of_anchor.sigmoid()[:, None], boxes], 1))
    test_cfg = ConfigDict(nms_pre=100000, score_thr=0.01, min_bbox_size=-1)
    result, = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=_metas(1, scale=2.0), cfg=test_cfg,
                                   rescale=True, with_nms=False)
    assert (result.labels == 0).all()
    got = torch.cat([result.scores[:, None], result.bboxes], 1)
    expected = torch.cat(expected)
    assert got.shape == expected.shape == (sum(h * w for h, w in FEAT_SIZES) * A, 5)

    def rows(t):
        return sorted(map(tuple, t.round(decimals=4).tolist()))

    assert rows(got) == rows(expected)


def test_predict_with_nms_returns_the_box_of_the_confident_anchor_in_image_coordinates(head):
    """One confident anchor (level 1, location (1, 2), anchor 5), all mass on bins (1, 2, 3, 1): its
    box is (32 - 16, 16 - 32, 32 + 48, 16 + 16), clipped to the 64 x 64 image."""
    cls_scores = [torch.full((1, A * C, h, w), -30.0) for h, w in FEAT_SIZES]
    bbox_preds = [torch.zeros(1, A * 4 * BINS, h, w) for h, w in FEAT_SIZES]
    cls_scores[1][0, 5 * C + 2, 1, 2] = 5.0
    _block(bbox_preds[1], 5)[0, :, 1, 2] = _logits_for(torch.tensor([[1., 2., 3., 1.]]))[0]
    result, = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=_metas(1), rescale=False)
    assert result.labels.tolist() == [2]
    assert result.scores.tolist() == pytest.approx([torch.tensor(5.0).sigmoid().item()])
    assert result.bboxes.tolist()[0] == pytest.approx([16., 0., 64., 32.], abs=1e-4) and len(result) == 1


# ------------------------------------------------------------------ losses


def _loss(head, feats, gts, metas=None):
    return head.loss_by_feat(*head(feats), gts, metas or _metas(len(gts)))


def test_loss_is_finite_with_every_term_and_falls_with_training(head):
    feats, gts = _features(), _two_images_two_boxes()
    losses = _loss(head, feats, gts)
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert all(len(losses[k]) == len(STRIDES) for k in losses)
    assert all(torch.isfinite(t) for k in losses for t in losses[k])
    first = {k: sum(v).item() for k, v in losses.items()}
    assert first["loss_cls"] > 0 and first["loss_bbox"] > 0
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(10):
        total = sum(sum(v) for v in _loss(head, feats, gts).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    last = {k: sum(v).item() for k, v in _loss(head, feats, gts).items()}
    assert last["loss_cls"] < first["loss_cls"] and last["loss_bbox"] < first["loss_bbox"]


def test_losses_are_focal_and_giou_over_the_positives_of_this_gpu(head):
    """avg_factor is AnchorHead's: the positives of the batch (each image at least 1), no GPU mean.
    The GIoU term, recomputed here in pixels (GIoU does not depend on the unit), weighs 2."""
    from mmdet.structures.bbox import bbox_overlaps

    feats, gts, metas = _features(), _two_images_two_boxes(), _metas()
    cls_scores, bbox_preds = head(feats)
    losses = head.loss_by_feat(cls_scores, bbox_preds, gts, metas)
    anchors, valid = head.get_anchors(FEAT_SIZES, metas, device="cpu")
    labels, label_weights, targets, _, avg_factor = head.get_targets(anchors, valid, gts, metas)
    positives = [((lab >= 0) & (lab < C)) for lab in labels]
    per_image = torch.stack([p.sum(1) for p in positives]).sum(0)
    assert avg_factor == per_image.clamp(min=1).sum().item() and per_image.min() > 0

    all_cls = torch.cat([c.permute(0, 2, 3, 1).reshape(2, -1, C) for c in cls_scores], 1).reshape(-1, C)
    focal_sum = head.loss_cls(all_cls, torch.cat(labels, 1).reshape(-1), torch.cat(label_weights, 1).reshape(-1),
                              reduction_override="sum")
    assert sum(losses["loss_cls"]).item() == pytest.approx(focal_sum.item() / avg_factor, rel=1e-5)

    giou_sum = 0.0
    for pred, level_anchors, level_targets, pos, stride in zip(bbox_preds, anchors[0], targets, positives, STRIDES):
        logits = pred.permute(0, 2, 3, 1).reshape(2, -1, 4 * BINS)[pos]
        centre = ((level_anchors[:, :2] + level_anchors[:, 2:]) / 2).expand(2, -1, -1)[pos]
        d = head.decode_distances(logits) * stride
        boxes = torch.cat([centre - d[:, :2], centre + d[:, 2:]], 1)
        giou_sum += (1 - bbox_overlaps(boxes, level_targets[pos], mode="giou", is_aligned=True)).sum().item()
    assert sum(losses["loss_bbox"]).item() == pytest.approx(2.0 * giou_sum / avg_factor, rel=1e-4)


def _one_anchor_gt():
    """A GT equal to anchor 6 (ratio 2, smallest scale) of level 0 at location (y 4, x 4), centre (32, 32)."""
    w, h = 32 / math.sqrt(2), 32 * math.sqrt(2)
    return _gt(([32 - w / 2, 32 - h / 2, 32 + w / 2, 32 + h / 2], 1))


def test_a_positive_anchor_s_box_term_reads_its_own_block_only(head):
    """The GIoU gradient lands exactly in the channel blocks of the positive anchors (anchor index as
    mmdet's grid_priors orders them), anchor 6 at the GT's location among them."""
    gts, metas = [_one_anchor_gt()], _metas(1)
    cls_scores, bbox_preds = head(_features(1))
    bbox_preds = [b.detach().requires_grad_() for b in bbox_preds]
    loss_bbox = sum(head.loss_by_feat(cls_scores, bbox_preds, gts, metas)["loss_bbox"])
    loss_bbox.backward()
    anchors, valid = head.get_anchors(FEAT_SIZES, metas, device="cpu")
    labels = head.get_targets(anchors, valid, gts, metas)[0]
    for pred, level_labels, (h, w) in zip(bbox_preds, labels, FEAT_SIZES):
        positive = ((level_labels < C).reshape(h, w, A)).permute(2, 0, 1)  # [A, H, W]
        touched = pred.grad[0].reshape(A, 4 * BINS, h, w).abs().sum(1) > 0
        assert torch.equal(touched, positive)
    at_gt = (labels[0] < C).reshape(8, 8, A)[4, 4]
    assert at_gt[6] and not at_gt.all()


def test_a_positive_anchor_s_giou_uses_its_own_block(head):
    """Positives whose blocks decode to their GT give a zero GIoU loss even though every other anchor
    of their location predicts a point; moving the blocks by one anchor breaks it."""
    gts, metas = [_one_anchor_gt()], _metas(1)
    cls_scores = [c.detach() for c in head(_features(1))[0]]
    anchors, valid = head.get_anchors(FEAT_SIZES, metas, device="cpu")
    labels, _, targets = head.get_targets(anchors, valid, gts, metas)[:3]
    bbox_preds = []
    for level_anchors, level_labels, level_targets, (h, w), stride in zip(
            anchors[0], labels, targets, FEAT_SIZES, STRIDES):
        logits = _logits_for(torch.zeros(h * w * A, 4))  # a point at the centre
        pos = level_labels[0] < C
        centre = (level_anchors[pos, :2] + level_anchors[pos, 2:]) / 2
        gt = level_targets[0, pos]
        distances = torch.cat([centre - gt[:, :2], gt[:, 2:] - centre], 1) / stride
        assert ((distances >= 0) & (distances <= 16)).all()
        logits[pos] = _logits_for(distances)
        bbox_preds.append(logits.reshape(1, h, w, A * 4 * BINS).permute(0, 3, 1, 2))
    assert sum(sum(lab[0] < C) for lab in labels) >= 2
    exact = sum(head.loss_by_feat(cls_scores, bbox_preds, gts, metas)["loss_bbox"])
    assert exact.item() == pytest.approx(0.0, abs=1e-5)
    shifted = [torch.roll(b.reshape(1, A, 4 * BINS, *b.shape[-2:]), 1, dims=1).reshape(b.shape) for b in bbox_preds]
    assert sum(head.loss_by_feat(cls_scores, shifted, gts, metas)["loss_bbox"]).item() > 0.1


def test_an_image_without_boxes_gives_a_zero_box_loss_that_still_reaches_the_box_branch(head):
    losses = _loss(head, _features(1), [_gt()], _metas(1))
    assert sum(losses["loss_bbox"]).item() == 0.0 and torch.isfinite(sum(losses["loss_cls"]))
    sum(sum(v) for v in losses.values()).backward()
    assert head.retina_reg.weight.grad is not None


# ------------------------------------------------------------------ the detector


def test_mmdet_s_retinanet_detector_trains_and_predicts_with_the_head(cfg):
    """SingleStageDetector.loss and .predict from the tiny config on a 2-image batch of 64 x 64."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    samples = []
    for gt in _two_images_two_boxes():
        sample = DetDataSample(metainfo=dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG), ori_shape=(IMG, IMG),
                                             batch_input_shape=(IMG, IMG), scale_factor=(1.0, 1.0)))
        sample.gt_instances = gt
        samples.append(sample)
    inputs = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    losses = model.loss(inputs, samples)
    assert set(losses) == {"loss_cls", "loss_bbox"} and all(torch.isfinite(t) for v in losses.values() for t in v)
    model.eval()
    model.bbox_head.test_cfg.score_thr = 0.0
    with torch.no_grad():
        results = model.predict(inputs, samples)
    for result in results:
        boxes = result.pred_instances.bboxes
        assert 0 < len(boxes) <= 100
        assert (boxes >= 0).all() and (boxes <= IMG).all()
