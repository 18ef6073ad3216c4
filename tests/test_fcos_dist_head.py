"""FCOSDistHead: mmdet's FCOS with GFL's edge-distribution box branch (the LD paper's FCOS)."""
import math

import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS

TINY_CONFIG = CONFIGS / "tiny" / "fcos_dist_tiny.py"
TEACHER_CONFIG = CONFIGS / "coco" / "fcos_dist_r101_fpn_2x_coco_teacher.py"
STUDENT_CONFIG = CONFIGS / "coco" / "fcos_dist_r50_fpn_1x_coco.py"
STRIDES = (8, 16, 32, 64, 128)
# Feature-map sizes of a 64x64 input on P3-P7.
SIZES_64 = ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))


def _registered():
    from mmdet.utils import register_all_modules

    import ldcache.heads  # noqa: F401

    register_all_modules()


def _tiny_head(**changes):
    """The tiny config's head, built alone (FCOS needs no train_cfg), with `changes` applied."""
    from mmdet.registry import MODELS

    _registered()
    cfg = Config.fromfile(str(TINY_CONFIG))
    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.update(test_cfg=cfg.model.test_cfg, **changes)
    torch.manual_seed(0)
    head = MODELS.build(head_cfg)
    head.init_weights()
    return head


def _feats(head, num_imgs=2, sizes=SIZES_64):
    torch.manual_seed(1)
    return tuple(torch.randn(num_imgs, head.in_channels, h, w) for h, w in sizes)


def _samples(boxes_per_image, labels_per_image, shape=(64, 64)):
    """DetDataSamples of images of `shape` holding these GT boxes (x1, y1, x2, y2) and labels."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for boxes, labels in zip(boxes_per_image, labels_per_image):
        sample = DetDataSample(metainfo=dict(img_shape=shape, pad_shape=shape, batch_input_shape=shape,
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                           labels=torch.tensor(labels, dtype=torch.long))
        samples.append(sample)
    return samples


def _batch():
    """Two 64x64 images with two boxes each."""
    return _samples([[[4, 6, 30, 28], [20, 16, 60, 56]], [[10, 10, 40, 50], [36, 4, 62, 30]]], [[0, 2], [1, 0]])


def _one_hot_logits(bins, reg_max=16, peak=50.0):
    """Distribution logits (4 * (reg_max + 1),) with (almost) all mass on bin bins[e] of edge e."""
    logits = torch.zeros(4, reg_max + 1)
    logits[torch.arange(4), torch.tensor(bins)] = peak
    return logits.reshape(-1)


def test_the_head_builds_from_the_tiny_config_as_fcos_with_the_interface():
    from mmdet.models.dense_heads.gfl_head import Integral
    from mmdet.models.detectors import FCOS
    from mmdet.models.task_modules.prior_generators import MlvlPointGenerator
    from mmdet.registry import MODELS

    from ldcache.heads.fcos_dist_head import FCOSDistHead

    _registered()
    cfg = Config.fromfile(str(TINY_CONFIG))
    assert "ldcache.heads" in cfg.custom_imports.imports and cfg.model.train_cfg is None
    model = MODELS.build(cfg.model)
    head = model.bbox_head
    assert isinstance(model, FCOS) and type(head) is FCOSDistHead
    assert (head.reg_max, head.num_classes) == (16, 3) and isinstance(head.integral, Integral)
    assert isinstance(head.prior_generator, MlvlPointGenerator) and head.prior_generator.offset == 0.5
    assert head.prior_generator.strides == [(s, s) for s in STRIDES]
    assert head.conv_reg.out_channels == 4 * 17 and head.conv_cls.out_channels == 3
    assert head.center_sampling and head.center_sample_radius == 1.5 and not head.norm_on_bbox
    assert head.regress_ranges == ((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8))
    assert all(type(conv.gn).__name__ == "GroupNorm" for conv in [*head.cls_convs, *head.reg_convs])
    assert type(head.loss_bbox).__name__ == "GIoULoss" and head.loss_bbox.loss_weight == 1.0


def test_norm_on_bbox_is_refused():
    with pytest.raises(ValueError, match="norm_on_bbox"):
        _tiny_head(norm_on_bbox=True)


def test_forward_shapes_scale_on_the_logits_and_centerness_from_the_reg_tower():
    head = _tiny_head()
    feats = _feats(head)
    cls_scores, bbox_preds, centernesses = head(feats)
    assert [tuple(c.shape) for c in cls_scores] == [(2, 3, h, w) for h, w in SIZES_64]
    assert [tuple(b.shape) for b in bbox_preds] == [(2, 68, h, w) for h, w in SIZES_64]
    assert [tuple(c.shape) for c in centernesses] == [(2, 1, h, w) for h, w in SIZES_64]
    with torch.no_grad():
        # The Scale multiplies the logits themselves: no exp, no ReLU after it.
        head.scales[1].scale.fill_(2.5)
        assert torch.allclose(head(feats)[1][1], 2.5 * bbox_preds[1], atol=1e-6)
        # Centerness ignores the classification tower.
        head.cls_convs[0].conv.weight.add_(1.0)
        assert torch.equal(head(feats)[2][0], centernesses[0])


def test_all_mass_on_bin_k_decodes_to_k_strides_from_the_half_stride_point():
    head = _tiny_head()
    bbox_pred = _one_hot_logits([0, 3, 7, 16]).reshape(1, 68, 1, 1).repeat(2, 1, 3, 2)
    distances = head.decode_distances(bbox_pred.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert distances.shape == (2, 4, 3, 2)
    assert torch.allclose(distances, torch.tensor([0.0, 3, 7, 16]).reshape(1, 4, 1, 1).expand(2, 4, 3, 2),
                          atol=1e-5)
    # Points sit at (i * s + s / 2, j * s + s / 2), as mmdet's FCOS places them.
    points = head.prior_generator.single_level_grid_priors((2, 3), level_idx=1, device="cpu")
    assert points.tolist() == [[8.0, 8.0], [24.0, 8.0], [40.0, 8.0], [8.0, 24.0], [24.0, 24.0], [40.0, 24.0]]


def test_predict_by_feat_decodes_a_known_distribution_to_image_coordinates():
    head = _tiny_head()
    cls_scores = [torch.full((1, 3, h, w), -20.0) for h, w in SIZES_64]
    bbox_preds = [torch.zeros(1, 68, h, w) for h, w in SIZES_64]
    centernesses = [torch.full((1, 1, h, w), 3.0) for h, w in SIZES_64]
    # P3 (stride 8), column 2, row 3: the point (20, 28); edges 1, 2, 3, 4 strides.
    cls_scores[0][0, 1, 3, 2] = 4.0
    bbox_preds[0][0, :, 3, 2] = _one_hot_logits([1, 2, 3, 4])
    # P4 (stride 16), column 1, row 2: the point (24, 40); 1 stride on every edge.
    cls_scores[1][0, 2, 2, 1] = 2.0
    bbox_preds[1][0, :, 2, 1] = _one_hot_logits([1, 1, 1, 1])
    meta = dict(img_shape=(64, 64), scale_factor=(2.0, 2.0))
    result = head.predict_by_feat(cls_scores, bbox_preds, centernesses, batch_img_metas=[meta])[0]
    expected = torch.tensor([[20 - 8, 28 - 16, 20 + 24, 28 + 32], [24 - 16, 40 - 16, 24 + 16, 40 + 16]],
                            dtype=torch.float32)
    assert torch.allclose(result.bboxes, expected, atol=1e-3)
    assert result.labels.tolist() == [1, 2]
    # FCOS's test score: sigmoid(class logit) * sigmoid(centerness logit).
    assert torch.allclose(result.scores, torch.tensor([4.0, 2.0]).sigmoid() * torch.tensor(3.0).sigmoid())
    rescaled = head.predict_by_feat(cls_scores, bbox_preds, centernesses, batch_img_metas=[meta], rescale=True)[0]
    assert torch.allclose(rescaled.bboxes, expected / 2, atol=1e-3)
    # A distance past the image is clipped to it: 16 strides left of x = 20.
    bbox_preds[0][0, :, 3, 2] = _one_hot_logits([16, 2, 3, 4])
    clipped = head.predict_by_feat(cls_scores, bbox_preds, centernesses, batch_img_metas=[meta])[0]
    assert clipped.bboxes[0, 0].item() == 0.0


def test_loss_on_a_synthetic_batch_is_finite_and_a_few_steps_reduce_it():
    head = _tiny_head()
    feats, batch = _feats(head), _batch()
    losses = head.loss(feats, batch)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    totals = []
    for _ in range(6):
        total = sum(head.loss(feats, batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.9 * totals[0], totals


def test_images_without_boxes_give_zero_box_losses_and_still_backpropagate():
    head = _tiny_head()
    losses = head.loss(_feats(head), _samples([[], []], [[], []]))
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()


def test_losses_equal_the_official_stride_unit_formulation():
    """Focal / #pos, GIoU between boxes in strides weighted by the centerness target / its sum,
    centerness BCE / #pos: what the official FCOSGFLHead computes, against the head's losses."""
    import torch.nn.functional as F
    from mmdet.models.losses import GIoULoss
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    from mmdet.structures.bbox import distance2bbox

    head = _tiny_head()
    cls_scores, bbox_preds, centernesses = head(_feats(head))
    gts = [s.gt_instances for s in _batch()]
    losses = head.loss_by_feat(cls_scores, bbox_preds, centernesses, gts, [s.metainfo for s in _batch()])

    points = head.prior_generator.grid_priors(SIZES_64, device="cpu")
    labels, targets = head.get_targets(points, gts)
    flat = lambda maps, width: torch.cat([m.permute(0, 2, 3, 1).reshape(-1, width) for m in maps])  # noqa: E731
    labels, targets = torch.cat(labels), torch.cat(targets)
    strides = torch.cat([torch.full((2 * len(p), 1), float(s)) for p, s in zip(points, STRIDES)])
    stride_points = torch.cat([p.repeat(2, 1) for p in points]) / strides
    pos = labels < head.num_classes
    num_pos = pos.sum().float()
    assert num_pos > 0

    one_hot = F.one_hot(labels, head.num_classes + 1)[:, :-1].float()
    loss_cls = py_sigmoid_focal_loss(flat(cls_scores, 3), one_hot, None, 2.0, 0.25, "sum") / num_pos
    ctr_target = head.centerness_target(targets[pos])
    pred_boxes = distance2bbox(stride_points[pos], head.integral(flat(bbox_preds, 68)[pos]))
    gt_boxes = distance2bbox(stride_points[pos], targets[pos] / strides[pos])
    loss_bbox = GIoULoss(loss_weight=1.0)(pred_boxes, gt_boxes, weight=ctr_target, avg_factor=ctr_target.sum())
    loss_ctr = F.binary_cross_entropy_with_logits(flat(centernesses, 1)[pos, 0], ctr_target,
                                                  reduction="sum") / num_pos
    assert torch.allclose(losses["loss_cls"], loss_cls, rtol=1e-5)
    assert torch.allclose(losses["loss_bbox"], loss_bbox, rtol=1e-5)
    assert torch.allclose(losses["loss_centerness"], loss_ctr, rtol=1e-5)


def test_a_point_s_target_distances_and_centerness_are_the_hand_computed_ones():
    head = _tiny_head()
    gt = _samples([[[10, 6, 50, 40]]], [[2]])[0].gt_instances
    points = head.prior_generator.grid_priors(SIZES_64, device="cpu")
    labels, targets = head.get_targets(points, [gt])
    # P3, column 3, row 2: the point (28, 20). l = 18, t = 14, r = 22, b = 20 pixels.
    index = 2 * 8 + 3
    assert points[0][index].tolist() == [28.0, 20.0]
    assert targets[0][index].tolist() == [18.0, 14.0, 22.0, 20.0] and labels[0][index].item() == 2
    expected_centerness = math.sqrt(min(18, 22) / max(18, 22) * min(14, 20) / max(14, 20))
    assert head.centerness_target(targets[0][index:index + 1]).item() == pytest.approx(expected_centerness)
    # (12, 36) is inside the box but outside its centre region (x >= 30 - 1.5 * 8 = 18): background.
    assert points[0][4 * 8 + 1].tolist() == [12.0, 36.0] and labels[0][4 * 8 + 1].item() == 3
    # The farthest edge is at most 40 px away: P3's range, so no positive on the other levels.
    assert all((level_labels == 3).all() for level_labels in labels[1:])


def test_the_centre_sampling_positives_are_mmdet_fcos_head_s():
    from mmdet.models.dense_heads import FCOSHead

    head = _tiny_head()
    reference = FCOSHead(num_classes=3, in_channels=64, strides=STRIDES, center_sampling=True,
                         center_sample_radius=1.5, norm_on_bbox=False)
    sizes = ((40, 40), (20, 20), (10, 10), (5, 5), (3, 3))  # a 320x320 input
    points = head.prior_generator.grid_priors(sizes, device="cpu")
    reference_points = reference.prior_generator.grid_priors(sizes, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(points, reference_points))
    images = _samples([[[0, 0, 300, 250], [40, 60, 120, 100], [100, 100, 110, 108], [150, 20, 310, 190]],
                       [[5, 200, 70, 318]]], [[0, 1, 2, 0], [1]], shape=(320, 320))
    gts = [s.gt_instances for s in images]
    labels, targets = head.get_targets(points, gts)
    reference_labels, reference_targets = reference.get_targets(points, gts)
    for level in range(len(sizes)):
        assert torch.equal(labels[level], reference_labels[level])
        assert torch.equal(targets[level], reference_targets[level])
    positive_levels = {level for level, level_labels in enumerate(labels) if (level_labels < 3).any()}
    assert len(positive_levels) >= 3


def test_the_coco_configs_are_the_official_fcos_recipes():
    _registered()
    teacher, student = Config.fromfile(str(TEACHER_CONFIG)), Config.fromfile(str(STUDENT_CONFIG))
    for cfg in (teacher, student):
        head = cfg.model.bbox_head
        assert cfg.model.type == "FCOS" and head.type == "FCOSDistHead" and head.num_classes == 80
        assert head.center_sampling and head.centerness_on_reg and not head.norm_on_bbox and head.reg_max == 16
        assert head.loss_bbox == dict(type="GIoULoss", loss_weight=1.0)
        assert "ldcache.heads" in cfg.custom_imports.imports and cfg.runner_type == "LDCacheRunner"
        assert cfg.optim_wrapper.clip_grad is None and cfg.model.test_cfg.nms.iou_threshold == 0.6
    assert teacher.model.backbone.depth == 101 and student.model.backbone.depth == 50
    assert (teacher.train_cfg.max_epochs, teacher.param_scheduler[1].milestones) == (24, [16, 22])
    assert (student.train_cfg.max_epochs, student.param_scheduler[1].milestones) == (12, [8, 11])
    scales = [step.scales for step in teacher.train_dataloader.dataset.pipeline if "scales" in step]
    assert scales == [[(1333, 640), (1333, 800)]]
    # The official teacher was trained on detectron's caffe mean, the student on detectron2's.
    assert teacher.model.data_preprocessor.mean == [102.9801, 115.9465, 122.7717]
    assert student.model.data_preprocessor.mean == [103.53, 116.28, 123.675]
