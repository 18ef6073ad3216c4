"""GFLv2Head: GFL with the distribution-guided quality predictor (DGQP); the joint score
sigmoid(logits) * Q is recomputed from the two outputs in the loss and at test time."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import InstanceData

from conftest import CONFIGS

TINY = CONFIGS / "tiny" / "gflv2_dist_tiny.py"
C, BINS = 3, 17  # classes, reg_max + 1
IMG = 64  # the synthetic images are IMG x IMG
FEAT_SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # FPN levels of a 64 x 64 image, strides 8..128
STRIDES = [8, 16, 32, 64, 128]


@pytest.fixture(scope="module")
def cfg():
    from mmdet.utils import register_all_modules

    register_all_modules()
    return Config.fromfile(str(TINY))


@pytest.fixture
def head(cfg):
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.update(train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    head = MODELS.build(head_cfg)
    head.init_weights()
    return head


def _features(batch: int = 2, channels: int = 64):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, channels, h, w, generator=generator) for h, w in FEAT_SIZES]


def _metas(batch: int = 2, scale: float = 1.0) -> list[dict]:
    return [dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG), batch_input_shape=(IMG, IMG),
                 scale_factor=(scale, scale)) for _ in range(batch)]


def _gt(*boxes_and_labels) -> InstanceData:
    return InstanceData(bboxes=torch.tensor([b for b, _ in boxes_and_labels], dtype=torch.float32),
                        labels=torch.tensor([label for _, label in boxes_and_labels], dtype=torch.long))


def _two_images_two_boxes() -> list[InstanceData]:
    return [_gt(([6., 10., 30., 40.], 0), ([34., 20., 60., 50.], 2)),
            _gt(([12., 4., 52., 28.], 1), ([20., 30., 44., 62.], 0))]


def _one_bin_logits(bins, shape=()) -> torch.Tensor:
    """Logits [*shape, 4 * BINS] with (numerically) all of edge e's mass on bin bins[e]."""
    logits = torch.zeros(*shape, 4, BINS)
    for edge, k in enumerate(bins):
        logits[..., edge, k] = 50.0  # exp(-50) * 16 is below float32's resolution at 1
    return logits.reshape(*shape, 4 * BINS)


def _total(losses: dict) -> torch.Tensor:
    return sum(sum(terms) for terms in losses.values())


# ------------------------------------------------------------------ construction and forward

def test_the_tiny_config_builds_a_gfl_detector_with_the_gflv2_head(cfg):
    from mmdet.models.detectors import GFL
    from mmdet.registry import MODELS

    from ldcache.heads.gflv2_head import GFLv2Head

    model = MODELS.build(cfg.model)
    model.init_weights()
    head = model.bbox_head
    assert isinstance(model, GFL) and isinstance(head, GFLv2Head)
    assert (head.reg_max, head.reg_topk, head.add_mean, head.num_classes) == (16, 4, True, C)
    assert head.loss_cls.activated and type(head.assigner).__name__ == "ATSSAssigner"
    assert head.assigner.topk == 9
    hidden, _, last, _ = head.reg_conf
    assert (hidden.in_channels, hidden.out_channels, last.out_channels) == (20, 64, 1)
    assert hidden.kernel_size == last.kernel_size == (1, 1)
    # GFLv2's init for the DGQP: normal std 0.01, bias 0.
    for conv in (hidden, last):
        assert torch.all(conv.bias == 0)
    assert 0.008 < hidden.weight.std().item() < 0.012
    assert last.weight.abs().max().item() < 0.06


def test_a_config_whose_qfl_expects_logits_is_refused(cfg):
    from mmdet.registry import MODELS

    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.loss_cls = dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0)
    with pytest.raises(ValueError, match="activated=True"):
        MODELS.build(head_cfg)


def test_forward_returns_the_raw_class_logits_and_the_scaled_box_logits(head):
    feats = _features()
    outs = head(feats)
    assert len(outs) == 2
    cls_scores, bbox_preds = outs
    for (h, w), cls, box in zip(FEAT_SIZES, cls_scores, bbox_preds):
        assert cls.shape == (2, C, h, w) and box.shape == (2, 4 * BINS, h, w)
    # Raw logits, not probabilities: the classifier's bias prior (0.01) makes them negative.
    assert (cls_scores[0] < 0).all()
    # The box logits are taken after the level's Scale.
    with torch.no_grad():
        head.scales[0].scale.fill_(2.0)
        assert torch.allclose(head(feats)[1][0], 2 * bbox_preds[0], atol=1e-6)


# ------------------------------------------------------------------ decoding and the DGQP

def test_decode_of_a_known_distribution(head):
    logits = _one_bin_logits([0, 3, 16, 7], shape=(2, 5))
    assert torch.allclose(head.decode_distances(logits), torch.tensor([0., 3., 16., 7.]).expand(2, 5, 4),
                          atol=1e-6)
    # Mass split between two bins gives the fraction in between.
    probs = torch.zeros(4, BINS)
    probs[:, 2], probs[:, 3] = 0.75, 0.25
    assert torch.allclose(head.decode_distances(probs.clamp(min=1e-30).log().reshape(1, -1)),
                          torch.full((1, 4), 2.25))


def test_quality_input_is_each_edge_s_top4_descending_then_their_mean(head):
    generator = torch.Generator().manual_seed(3)
    probs = torch.rand(1, 4, BINS, 1, 2, generator=generator) + 0.01
    probs /= probs.sum(dim=2, keepdim=True)
    stats = head.quality_input(probs.log().reshape(1, 4 * BINS, 1, 2))
    assert stats.shape == (1, 20, 1, 2)
    for x in range(2):
        for edge in range(4):
            top = sorted(probs[0, edge, :, 0, x].tolist(), reverse=True)[:4]
            expected = torch.tensor(top + [sum(top) / 4])
            assert torch.allclose(stats[0, 5 * edge:5 * edge + 5, 0, x], expected, atol=1e-6)
    # A one-bin distribution: (1, 0, 0, 0, 1/4) for each edge.
    one_bin = _one_bin_logits([4, 0, 9, 16], shape=(1,)).reshape(1, 4 * BINS, 1, 1)
    assert torch.allclose(head.quality_input(one_bin).flatten(),
                          torch.tensor([1., 0., 0., 0., 0.25]).repeat(4), atol=1e-6)


def test_quality_is_a_probability_and_the_joint_score_is_sigmoid_times_quality(head):
    generator = torch.Generator().manual_seed(4)
    cls = 10 * torch.randn(2, C, 4, 4, generator=generator)
    box = 10 * torch.randn(2, 4 * BINS, 4, 4, generator=generator)
    with torch.no_grad():  # a larger DGQP output so that Q spreads over (0, 1)
        head.reg_conf[2].weight.normal_(0, 3.0, generator=generator)
    q = head.quality(box)
    assert q.shape == (2, 1, 4, 4)
    assert ((q > 0) & (q < 1)).all() and q.std() > 0.01
    assert torch.equal(head.joint_score(cls, box), cls.sigmoid() * q)


def test_quality_is_one_half_when_the_dgqp_s_last_conv_is_zero(head):
    with torch.no_grad():
        head.reg_conf[2].weight.zero_()
        head.reg_conf[2].bias.zero_()
    box = 5 * torch.randn(2, 4 * BINS, 3, 3)
    assert torch.equal(head.quality(box), torch.full((2, 1, 3, 3), 0.5))


# ------------------------------------------------------------------ losses

def test_loss_is_finite_with_every_term_and_falls_with_training(head):
    # GIoU and DFL are divided by the sum of the positives' joint scores floored at 1 (GFLHead's
    # normaliser): from the default class prior 0.01 that sum is far below 1, and the box terms grow
    # at first as the scores rise. A prior of 0.5 starts the run where the normaliser is active.
    torch.nn.init.zeros_(head.gfl_cls.bias)
    feats, gts, metas = _features(), _two_images_two_boxes(), _metas()
    losses = head.loss_by_feat(*head(feats), gts, metas)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    for terms in losses.values():
        assert len(terms) == len(STRIDES) and all(torch.isfinite(t) for t in terms)
        assert sum(terms) > 0
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    start = _total(losses).item()
    for _ in range(5):
        optimizer.zero_grad()
        loss = _total(head.loss_by_feat(*head(feats), gts, metas))
        loss.backward()
        optimizer.step()
    assert _total(head.loss_by_feat(*head(feats), gts, metas)).item() < 0.9 * start


def test_one_level_s_losses_by_hand(head):
    """QFL on the joint probability (no further sigmoid), target the IoU of the detached decoded box;
    GIoU and DFL weighted by the positive's largest joint score, again without a sigmoid."""
    anchors = head.prior_generator.single_level_grid_priors((3, 3), 0, device="cpu")[None]  # centres (8j, 8i)
    labels = torch.full((1, 9), C)
    labels[0, 4] = 1  # the location of centre (8, 8)
    label_weights = torch.ones(1, 9)
    targets = torch.zeros(1, 9, 4)
    targets[0, 4] = torch.tensor([0., 0., 24., 20.])
    joint = torch.full((1, C, 3, 3), 0.1)
    joint[0, 0, 1, 1], joint[0, 1, 1, 1] = 0.2, 0.3
    box = _one_bin_logits([1, 1, 1, 1], shape=(1, 3, 3)).permute(0, 3, 1, 2)  # [0, 0, 16, 16] at (8, 8)
    loss_cls, loss_bbox, loss_dfl, weight = head.loss_by_feat_single(
        anchors, joint, box, labels, label_weights, targets, (8, 8), avg_factor=2.0)

    iou = 256 / 480  # [0, 0, 16, 16] inside [0, 0, 24, 20]: the GIoU equals the IoU
    assert weight.item() == pytest.approx(0.3)
    assert loss_bbox.item() == pytest.approx(2.0 * 0.3 * (1 - iou), rel=1e-5)
    # DFL targets (1, 1, 2, 1.5) strides against one-bin predictions at bin 1, weight 0.3, over 4 edges.
    dfl_per_edge = [0.0, 0.0, 50.0, 0.5 * 0.0 + 0.5 * 50.0]  # CE is 0 at bin 1, 50 elsewhere
    assert loss_dfl.item() == pytest.approx(0.25 * 0.3 * sum(dfl_per_edge) / 4, rel=1e-4)
    p = joint.permute(0, 2, 3, 1).reshape(-1, C)
    expected = (F.binary_cross_entropy(p, torch.zeros_like(p), reduction="none") * p ** 2).sum()
    pos = torch.tensor(0.3)
    expected += (F.binary_cross_entropy(pos, torch.tensor(iou)) * (iou - pos) ** 2
                 - F.binary_cross_entropy(pos, torch.tensor(0.)) * pos ** 2)
    assert loss_cls.item() == pytest.approx(expected.item() / 2.0, rel=1e-5)


def test_the_qfl_gradient_reaches_the_box_logits_through_the_quality(head):
    gts, metas = _two_images_two_boxes(), _metas()

    def box_grad_of_qfl():
        cls_scores, bbox_preds = (
            [t.detach().requires_grad_() for t in outs] for outs in head(_features()))
        sum(head.loss_by_feat(cls_scores, bbox_preds, gts, metas)["loss_cls"]).backward()
        return [b.grad for b in bbox_preds]

    assert all(g is not None and g.abs().sum() > 0 for g in box_grad_of_qfl())
    # With a constant Q the IoU target (detached) is the QFL's only other use of the box logits.
    with torch.no_grad():
        head.reg_conf[2].weight.zero_()
    assert all(g is None or not g.any() for g in box_grad_of_qfl())


# ------------------------------------------------------------------ prediction

def test_predict_scores_by_the_joint_score_and_decodes_a_known_distribution_in_pixels(head):
    cls_scores = [torch.full((2, C, h, w), -20.0) for h, w in FEAT_SIZES]
    bbox_preds = [_one_bin_logits([2, 1, 3, 2], shape=(2, h, w)).permute(0, 3, 1, 2) for h, w in FEAT_SIZES]
    cls_scores[0][:, 1, 3, 4] = 10.0  # stride 8, row 3, column 4: anchor centre (32, 24)
    metas = _metas()
    metas[1]["scale_factor"] = (2.0, 2.0)
    results = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=metas, rescale=True)

    q = head.quality(bbox_preds[0])[0, 0, 3, 4]
    box = torch.tensor([[32. - 16, 24. - 8, 32. + 24, 24. + 16]])
    for result, scale in zip(results, (1.0, 2.0)):
        assert result.labels.tolist() == [1]
        assert torch.allclose(result.bboxes, box / scale)
        assert result.scores.item() == pytest.approx((torch.sigmoid(torch.tensor(10.0)) * q).item())


def test_predicted_boxes_are_clipped_to_the_image(head):
    cls_scores = [torch.full((1, C, h, w), -20.0) for h, w in FEAT_SIZES]
    bbox_preds = [_one_bin_logits([16, 16, 16, 16], shape=(1, h, w)).permute(0, 3, 1, 2)
                  for h, w in FEAT_SIZES]
    cls_scores[1][0, 2, 1, 1] = 10.0  # stride 16, anchor centre (16, 16)
    result = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=_metas(1))[0]
    assert result.labels.tolist() == [2]
    assert torch.equal(result.bboxes, torch.tensor([[0., 0., IMG, IMG]]))


def test_mmdet_s_gfl_detector_trains_and_predicts_with_the_head(cfg):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    samples = []
    for gt, meta in zip(_two_images_two_boxes(), _metas()):
        sample = DetDataSample(metainfo=dict(meta, ori_shape=(IMG, IMG)))
        sample.gt_instances = gt
        samples.append(sample)
    inputs = torch.randn(2, 3, IMG, IMG)
    losses = model.loss(inputs, samples)
    assert {"loss_cls", "loss_bbox", "loss_dfl"} <= set(losses)
    assert torch.isfinite(_total({k: v for k, v in losses.items() if k.startswith("loss")}))
    model.eval()
    with torch.no_grad():
        results = model.predict(inputs, samples)
    for result in results:
        boxes = result.pred_instances.bboxes
        assert boxes.shape[1] == 4 and (boxes >= 0).all() and (boxes <= IMG).all()
        assert ((result.pred_instances.scores > 0) & (result.pred_instances.scores < 1)).all()
