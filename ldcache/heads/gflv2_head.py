"""GFLv2's head (Generalized Focal Loss V2, the LDv2 teacher and student family) on mmdet 3's GFLHead:
GFL plus the distribution-guided quality predictor (DGQP), which rates each location's box by the
shape of its four edge distributions and multiplies that rating into the class probabilities."""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.dense_heads import GFLHead
from mmdet.models.utils import filter_scores_and_topk
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import ConfigType, InstanceList, OptInstanceList
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from .distribution import EdgeDistributions


@MODELS.register_module()
class GFLv2Head(EdgeDistributions, GFLHead):
    """GFLHead with GFLv2's distribution-guided quality predictor (DGQP).

    Per location and edge, the softmax of the edge's ``reg_max + 1`` box logits (after the level's
    Scale) gives a distribution; its ``reg_topk`` largest probabilities, sorted descending, and
    (with ``add_mean``) their mean are the DGQP's input: ``4 * (reg_topk + add_mean)`` channels,
    edge-major (left, top, right, bottom), within an edge the top-k values then the mean. Two 1x1
    convs (to ``reg_channels``, ReLU, to 1) and a sigmoid give the quality Q [N, 1, H, W]. The joint
    score is ``sigmoid(class logits) * Q``; nothing is detached, so the classification loss (QFL on
    the joint probability) also trains the distributions through their top-k statistics.

    ``forward`` is GFLHead's: it returns the raw class logits and the box logits, from which the
    joint score is recomputed where it is needed (``loss_by_feat``, ``predict_by_feat``). Q depends
    on the box logits alone, so these two outputs hold everything a teacher has to offer (LDv2's
    class KD compares raw logits).

    Losses, as GFLv2: QFL on the joint probability (mmdet's ``QualityFocalLoss`` with
    ``activated=True``), target IoU(decoded prediction, GT) at the positives and 0 elsewhere; GIoU
    and DFL weighted by the positive's largest joint score (detached; it is a probability already,
    so no sigmoid) and divided by the sum of those weights averaged over GPUs, as GFLHead does. At
    test time the joint score is the detection score.

    Args:
        num_classes (int): Number of categories excluding the background category.
        in_channels (int): Number of channels of the input feature maps.
        loss_cls (:obj:`ConfigDict` or dict): The classification loss. It receives probabilities,
            so it must be a ``QualityFocalLoss`` with ``activated=True``.
        reg_topk (int): How many of each edge's largest bin probabilities the DGQP reads.
            Defaults to 4.
        reg_channels (int): Hidden channels of the DGQP. Defaults to 64.
        add_mean (bool): Whether the mean of each edge's top-k probabilities is a DGQP input too.
            Defaults to True.
        **kwargs: GFLHead's arguments (stacked_convs, feat_channels, anchor_generator, reg_max,
            loss_dfl, loss_bbox, train_cfg, test_cfg, init_cfg, ...). GFLHead's default init_cfg
            (normal std 0.01 on every Conv2d, bias 0) initialises the DGQP's convs as GFLv2 does.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 *,
                 loss_cls: ConfigType = dict(
                     type='QualityFocalLoss',
                     use_sigmoid=True,
                     activated=True,
                     beta=2.0,
                     loss_weight=1.0),
                 reg_topk: int = 4,
                 reg_channels: int = 64,
                 add_mean: bool = True,
                 **kwargs) -> None:
        # _init_layers, called by the parent's constructor, sizes the DGQP from these.
        self.reg_topk = reg_topk
        self.reg_channels = reg_channels
        self.add_mean = add_mean
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            loss_cls=loss_cls,
            **kwargs)
        if not getattr(self.loss_cls, 'activated', False):
            raise ValueError(
                'GFLv2Head feeds probabilities (sigmoid(logits) * quality) to '
                'its classification loss: loss_cls needs activated=True, got '
                f'{loss_cls}')
        if not 1 <= reg_topk <= self.reg_max + 1:
            raise ValueError(f'reg_topk must be in [1, reg_max + 1 = '
                             f'{self.reg_max + 1}], got {reg_topk}')

    def _init_layers(self) -> None:
        """Initialize GFLHead's layers and the DGQP."""
        super()._init_layers()
        stats_per_edge = self.reg_topk + int(self.add_mean)
        # Named and laid out like the official GFocalHead's DGQP (reg_conf.0 and reg_conf.2 hold
        # the convs) so that state dicts of GFLv2 checkpoints line up with this head's.
        self.reg_conf = nn.Sequential(
            nn.Conv2d(4 * stats_per_edge, self.reg_channels, 1),
            nn.ReLU(inplace=True), nn.Conv2d(self.reg_channels, 1, 1),
            nn.Sigmoid())

    def quality_input(self, bbox_pred: Tensor) -> Tensor:
        """The DGQP's input: statistics of each edge's distribution.

        Args:
            bbox_pred (Tensor): Box logits of one level, shape (N, 4 * (reg_max + 1), H, W).

        Returns:
            Tensor: Shape (N, 4 * (reg_topk + add_mean), H, W), edge-major; per edge its
            ``reg_topk`` largest probabilities in descending order, then (with ``add_mean``)
            their mean.
        """
        n, _, h, w = bbox_pred.shape
        probs = F.softmax(
            bbox_pred.reshape(n, 4, self.reg_max + 1, h, w), dim=2)
        stats = probs.topk(self.reg_topk, dim=2).values
        if self.add_mean:
            stats = torch.cat([stats, stats.mean(dim=2, keepdim=True)], dim=2)
        # The channel count spelled out: with no location (n = 0) a -1 could be any size.
        return stats.reshape(n, 4 * stats.shape[2], h, w)

    def quality(self, bbox_pred: Tensor) -> Tensor:
        """The DGQP's quality Q of each location's box.

        Args:
            bbox_pred (Tensor): Box logits of one level, shape (N, 4 * (reg_max + 1), H, W).

        Returns:
            Tensor: Q in (0, 1), shape (N, 1, H, W).
        """
        return self.reg_conf(self.quality_input(bbox_pred))

    def joint_score(self, cls_score: Tensor, bbox_pred: Tensor) -> Tensor:
        """GFLv2's classification-quality joint score.

        Args:
            cls_score (Tensor): Raw class logits of one level, shape (N, C, H, W).
            bbox_pred (Tensor): Box logits of the same level, shape (N, 4 * (reg_max + 1), H, W).

        Returns:
            Tensor: ``sigmoid(cls_score) * Q``, probabilities of shape (N, C, H, W).
        """
        return cls_score.sigmoid() * self.quality(bbox_pred)

    def loss_by_feat(
            self,
            cls_scores: List[Tensor],
            bbox_preds: List[Tensor],
            batch_gt_instances: InstanceList,
            batch_img_metas: List[dict],
            batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """Compute QFL, GIoU and DFL from the head's outputs.

        Args:
            cls_scores (list[Tensor]): Raw class logits per level, shape (N, C, H, W).
            bbox_preds (list[Tensor]): Box logits per level, shape (N, 4 * (reg_max + 1), H, W).
            batch_gt_instances (list[:obj:`InstanceData`]): Ground truth per image, with
                ``bboxes`` and ``labels``.
            batch_img_metas (list[dict]): Meta information per image.
            batch_gt_instances_ignore (list[:obj:`InstanceData`], optional): Ignored boxes per
                image. Defaults to None.

        Returns:
            dict[str, list[Tensor]]: ``loss_cls``, ``loss_bbox`` and ``loss_dfl``, one entry per
            level.
        """
        # GFLHead's targets, assignment and normalisation apply unchanged to the joint scores.
        joint_scores = [
            self.joint_score(cls_score, bbox_pred)
            for cls_score, bbox_pred in zip(cls_scores, bbox_preds)
        ]
        return super().loss_by_feat(joint_scores, bbox_preds,
                                    batch_gt_instances, batch_img_metas,
                                    batch_gt_instances_ignore)

    def loss_by_feat_single(self, anchors: Tensor, cls_score: Tensor,
                            bbox_pred: Tensor, labels: Tensor,
                            label_weights: Tensor, bbox_targets: Tensor,
                            stride: Tuple[int], avg_factor: int) -> tuple:
        """Losses of one level; GFLHead's, on the joint probability instead of logits.

        Args:
            anchors (Tensor): Anchors, shape (N, num_anchors, 4).
            cls_score (Tensor): Joint scores (probabilities), shape (N, C, H, W).
            bbox_pred (Tensor): Box logits, shape (N, 4 * (reg_max + 1), H, W).
            labels (Tensor): Anchor labels, shape (N, num_anchors); ``num_classes`` is background.
            label_weights (Tensor): Anchor label weights, shape (N, num_anchors).
            bbox_targets (Tensor): Assigned GT boxes in pixels, shape (N, num_anchors, 4).
            stride (tuple[int]): The level's stride (w, h).
            avg_factor (float): Number of positives (averaged over GPUs), QFL's divisor.

        Returns:
            tuple[Tensor]: QFL, GIoU (summed, not yet normalised), DFL (summed, not yet
            normalised) and the sum of the positives' weights, which ``loss_by_feat`` divides
            GIoU and DFL by.
        """
        assert stride[0] == stride[1], 'h stride is not equal to w stride!'
        num_bins = self.reg_max + 1
        anchors = anchors.reshape(-1, 4)
        joint = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * num_bins)
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)

        pos_inds = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        iou_targets = label_weights.new_zeros(labels.shape)
        if len(pos_inds) > 0:
            # Training works in units of the level's stride.
            pos_centers = self.anchor_center(anchors[pos_inds]) / stride[0]
            pos_bbox_pred = bbox_pred[pos_inds]
            pos_decoded = self.bbox_coder.decode(
                pos_centers, self.decode_distances(pos_bbox_pred))
            pos_targets = bbox_targets[pos_inds] / stride[0]
            iou_targets[pos_inds] = bbox_overlaps(
                pos_decoded.detach(), pos_targets, is_aligned=True)
            # The joint score is a probability already: unlike GFLHead, no sigmoid here.
            weight_targets = joint.detach()[pos_inds].max(dim=1).values
            loss_bbox = self.loss_bbox(
                pos_decoded,
                pos_targets,
                weight=weight_targets,
                avg_factor=1.0)
            target_corners = self.bbox_coder.encode(
                pos_centers, pos_targets, self.reg_max).reshape(-1)
            loss_dfl = self.loss_dfl(
                pos_bbox_pred.reshape(-1, num_bins),
                target_corners,
                weight=weight_targets[:, None].expand(-1, 4).reshape(-1),
                avg_factor=4.0)
        else:
            loss_bbox = bbox_pred.sum() * 0
            loss_dfl = bbox_pred.sum() * 0
            weight_targets = bbox_pred.new_tensor(0)

        loss_cls = self.loss_cls(
            joint, (labels, iou_targets),
            weight=label_weights,
            avg_factor=avg_factor)
        return loss_cls, loss_bbox, loss_dfl, weight_targets.sum()

    def _predict_by_feat_single(self,
                                cls_score_list: List[Tensor],
                                bbox_pred_list: List[Tensor],
                                score_factor_list: List[Tensor],
                                mlvl_priors: List[Tensor],
                                img_meta: dict,
                                cfg: Optional[ConfigDict] = None,
                                rescale: bool = False,
                                with_nms: bool = True) -> InstanceData:
        """Boxes of one image, scored by the joint score, decoded as GFLHead does.

        Args:
            cls_score_list (list[Tensor]): Raw class logits per level, shape (C, H, W).
            bbox_pred_list (list[Tensor]): Box logits per level, shape (4 * (reg_max + 1), H, W).
            score_factor_list (list[Tensor]): Unused (GFLv2 has no separate score factor).
            mlvl_priors (list[Tensor]): Anchors per level, shape (H * W, 4).
            img_meta (dict): Meta information of the image.
            cfg (:obj:`ConfigDict`, optional): Test config; ``test_cfg`` when None.
            rescale (bool): Whether to map the boxes back to the original image.
                Defaults to False.
            with_nms (bool): Whether to apply NMS. Defaults to True.

        Returns:
            :obj:`InstanceData`: ``bboxes`` (num_dets, 4) in pixels, ``scores`` (num_dets,)
            (joint probabilities) and ``labels`` (num_dets,).
        """
        cfg = self.test_cfg if cfg is None else cfg
        nms_pre = cfg.get('nms_pre', -1)
        mlvl_bboxes, mlvl_scores, mlvl_labels = [], [], []
        for cls_score, bbox_pred, stride, priors in zip(
                cls_score_list, bbox_pred_list, self.prior_generator.strides,
                mlvl_priors):
            assert stride[0] == stride[1]
            # The score threshold and nms_pre rank by the joint score, as GFLv2 does.
            scores = self.joint_score(cls_score[None], bbox_pred[None])[0]
            scores = scores.permute(1, 2, 0).reshape(-1, self.cls_out_channels)
            distances = self.decode_distances(bbox_pred.permute(1, 2, 0)).reshape(-1, 4) * stride[0]
            scores, labels, _, kept = filter_scores_and_topk(
                scores, cfg.score_thr, nms_pre,
                dict(distances=distances, priors=priors))
            mlvl_bboxes.append(
                self.bbox_coder.decode(
                    self.anchor_center(kept['priors']),
                    kept['distances'],
                    max_shape=img_meta['img_shape']))
            mlvl_scores.append(scores)
            mlvl_labels.append(labels)

        results = InstanceData(
            bboxes=torch.cat(mlvl_bboxes),
            scores=torch.cat(mlvl_scores),
            labels=torch.cat(mlvl_labels))
        return self._bbox_post_process(
            results=results,
            cfg=cfg,
            rescale=rescale,
            with_nms=with_nms,
            img_meta=img_meta)
