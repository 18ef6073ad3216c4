"""ATSSDistHead: mmdet's ATSSHead whose box branch predicts GFL's edge distributions (the LD paper's
ATSS teacher and student, its Table 5)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.dense_heads import ATSSHead
from mmdet.models.dense_heads.gfl_head import Integral
from mmdet.models.utils import filter_scores_and_topk, multi_apply
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from mmdet.utils import ConfigType, InstanceList, OptInstanceList, reduce_mean

from .distribution import EdgeDistributions


@MODELS.register_module()
class ATSSDistHead(EdgeDistributions, ATSSHead):
    """ATSS head with a general-distribution box branch, without DFL or QFL.

    Everything but the box branch is mmdet's :class:`ATSSHead`: GroupNorm towers, one square anchor
    per location (``octave_base_scale=8``, ``scales_per_octave=1``, ``ratios=[1.0]``), ATSS
    assignment, the centerness branch on the reg tower and its target, sigmoid Focal Loss divided by
    the positives averaged over the GPUs. The box conv predicts, per anchor, ``4 * (reg_max + 1)``
    logits: one distribution over ``{0, 1, ..., reg_max}`` for each edge (left, top, right,
    bottom), whose softmax expectation (:class:`Integral`) is the distance from the anchor's centre
    to that edge in units of the level's stride. The level's :class:`Scale` multiplies these logits
    (so it acts as an inverse temperature of the distributions, not as a factor on the distances).

    Losses: Focal Loss on the class logits; GIoU between the decoded box and the GT box, both in
    stride units, weighted by the centerness target and divided by its sum (averaged over the
    GPUs, floored at 1); BCE on the centerness logits divided by the positives. At test time a box
    is the anchor's centre plus ``stride * integral(logits)`` and its score is
    ``sigmoid(cls) * sigmoid(centerness)``, as for mmdet's ATSS.

    ``forward`` returns ``(cls_scores, bbox_preds, centernesses)``, per level:

    - cls_scores: [N, A * C, H, W] raw class logits.
    - bbox_preds: [N, A * 4 * (reg_max + 1), H, W] distribution logits after the Scale; for
      A anchors per location, anchor-major blocks of 4 * (reg_max + 1) channels, each block
      edge-major (left, top, right, bottom).
    - centernesses: [N, A, H, W] centerness logits.

    Args:
        num_classes (int): Number of categories excluding the background category.
        in_channels (int): Number of channels in the input feature map.
        reg_max (int): Largest distance of the distributions, in strides: the box branch predicts
            ``reg_max + 1`` bins per edge. Defaults to 16.
        bbox_coder (:obj:`ConfigDict` or dict): Turns an anchor centre and 4 distances into a box;
            must be ``DistancePointBBoxCoder`` (the distances are those of the distributions).
            Defaults to ``dict(type='DistancePointBBoxCoder')``.
        **kwargs: The arguments of :class:`ATSSHead` (``stacked_convs``, ``norm_cfg``,
            ``anchor_generator``, ``loss_cls``, ``loss_bbox``, ``loss_centerness``, ...).
            ``reg_decoded_bbox`` must stay True (its default): the box targets are the GT boxes.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 reg_max: int = 16,
                 bbox_coder: ConfigType = dict(type='DistancePointBBoxCoder'),
                 **kwargs) -> None:
        # Set before ATSSHead.__init__, which calls _init_layers, which sizes the box conv with it.
        self.reg_max = reg_max
        super().__init__(num_classes=num_classes, in_channels=in_channels, bbox_coder=bbox_coder, **kwargs)
        assert self.reg_decoded_bbox, 'the box loss compares decoded boxes with the GT boxes'
        self.integral = Integral(self.reg_max)

    def _init_layers(self) -> None:
        """Initialize layers of the head: ATSSHead's, with a box conv of ``4 * (reg_max + 1)`` logits
        per anchor instead of 4 deltas."""
        super()._init_layers()
        self.atss_reg = nn.Conv2d(
            self.feat_channels,
            self.num_base_priors * 4 * (self.reg_max + 1),
            self.pred_kernel_size,
            padding=self.pred_kernel_size // 2)

    def loss_by_feat_single(self, anchors: Tensor, cls_score: Tensor, bbox_pred: Tensor,
                            centerness: Tensor, labels: Tensor, label_weights: Tensor,
                            bbox_targets: Tensor, stride: Tuple[int, int],
                            avg_factor: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Calculate the loss of a single scale level.

        Args:
            anchors (Tensor): Anchors of the level, shape (N, num_anchors, 4), ``xyxy`` pixels.
            cls_score (Tensor): Class logits, shape (N, A * num_classes, H, W).
            bbox_pred (Tensor): Distribution logits, shape (N, A * 4 * (reg_max + 1), H, W).
            centerness (Tensor): Centerness logits, shape (N, A, H, W).
            labels (Tensor): Labels of the anchors, shape (N, num_anchors); background is
                ``num_classes``.
            label_weights (Tensor): Label weights of the anchors, shape (N, num_anchors).
            bbox_targets (Tensor): GT boxes of the anchors (``xyxy`` pixels; zeros at negatives),
                shape (N, num_anchors, 4).
            stride (tuple[int, int]): Stride of the level (w, h).
            avg_factor (float): Positives over the batch, averaged over the GPUs, at least 1.

        Returns:
            tuple[Tensor]: Focal loss, GIoU loss (a sum over the positives weighted by the
            centerness targets, divided by their total in :meth:`loss_by_feat`), centerness loss,
            and the sum of the level's centerness targets.
        """
        assert stride[0] == stride[1], 'the distances are in units of a square stride'
        anchors = anchors.reshape(-1, 4)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels).contiguous()
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (self.reg_max + 1))
        centerness = centerness.permute(0, 2, 3, 1).reshape(-1)
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)

        loss_cls = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg_factor)

        pos_inds = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        if len(pos_inds) == 0:
            # Zero losses that still reach the parameters, so that every GPU has the same graph.
            return loss_cls, bbox_pred.sum() * 0, centerness.sum() * 0, bbox_targets.new_tensor(0.)

        pos_anchors = anchors[pos_inds]
        pos_bbox_targets = bbox_targets[pos_inds]
        centerness_targets = self.centerness_target(pos_anchors, pos_bbox_targets)
        # The distributions count strides, so the box is decoded and compared in stride units.
        pos_centers = bbox_xyxy_to_cxcywh(pos_anchors)[:, :2] / stride[0]
        pos_decoded = self.bbox_coder.decode(pos_centers, self.decode_distances(bbox_pred[pos_inds]))
        loss_bbox = self.loss_bbox(
            pos_decoded, pos_bbox_targets / stride[0], weight=centerness_targets, avg_factor=1.0)
        loss_centerness = self.loss_centerness(
            centerness[pos_inds], centerness_targets, avg_factor=avg_factor)
        return loss_cls, loss_bbox, loss_centerness, centerness_targets.sum()

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     centernesses: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """Calculate the losses from the head's outputs.

        Args:
            cls_scores (list[Tensor]): Class logits per level, (N, A * num_classes, H, W).
            bbox_preds (list[Tensor]): Distribution logits per level,
                (N, A * 4 * (reg_max + 1), H, W).
            centernesses (list[Tensor]): Centerness logits per level, (N, A, H, W).
            batch_gt_instances (list[:obj:`InstanceData`]): GT of each image, with ``bboxes``
                and ``labels``.
            batch_img_metas (list[dict]): Meta information of each image.
            batch_gt_instances_ignore (list[:obj:`InstanceData`], optional): Boxes to ignore.

        Returns:
            dict[str, list[Tensor]]: ``loss_cls``, ``loss_bbox`` and ``loss_centerness``, one
            entry per level.
        """
        featmap_sizes = [featmap.size()[-2:] for featmap in bbox_preds]
        assert len(featmap_sizes) == self.prior_generator.num_levels
        device = cls_scores[0].device
        anchor_list, valid_flag_list = self.get_anchors(featmap_sizes, batch_img_metas, device=device)
        (anchor_list, labels_list, label_weights_list, bbox_targets_list, _,
         num_pos) = self.get_targets(anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
                                     batch_gt_instances_ignore=batch_gt_instances_ignore)
        # Floored at 1 so that a batch without objects keeps a finite classification loss.
        avg_factor = max(reduce_mean(torch.tensor(num_pos, dtype=torch.float, device=device)).item(), 1.0)

        losses_cls, losses_bbox, losses_centerness, centerness_sums = multi_apply(
            self.loss_by_feat_single, anchor_list, cls_scores, bbox_preds, centernesses, labels_list,
            label_weights_list, bbox_targets_list, self.prior_generator.strides, avg_factor=avg_factor)

        bbox_avg_factor = reduce_mean(sum(centerness_sums)).clamp_(min=1).item()
        losses_bbox = [loss / bbox_avg_factor for loss in losses_bbox]
        return dict(loss_cls=losses_cls, loss_bbox=losses_bbox, loss_centerness=losses_centerness)

    def _predict_by_feat_single(self,
                                cls_score_list: List[Tensor],
                                bbox_pred_list: List[Tensor],
                                score_factor_list: List[Tensor],
                                mlvl_priors: List[Tensor],
                                img_meta: dict,
                                cfg: Optional[ConfigDict],
                                rescale: bool = False,
                                with_nms: bool = True) -> InstanceData:
        """Detections of one image from the head's outputs for it.

        Args:
            cls_score_list (list[Tensor]): Class logits per level, (A * num_classes, H, W).
            bbox_pred_list (list[Tensor]): Distribution logits per level,
                (A * 4 * (reg_max + 1), H, W).
            score_factor_list (list[Tensor]): Centerness logits per level, (A, H, W).
            mlvl_priors (list[Tensor]): Anchors per level, (H * W * A, 4), ``xyxy`` pixels.
            img_meta (dict): Meta information of the image.
            cfg (:obj:`ConfigDict`, optional): Test configuration; ``test_cfg`` when None.
            rescale (bool): Return boxes in the original image's coordinates. Defaults to False.
            with_nms (bool): Apply NMS. Defaults to True.

        Returns:
            :obj:`InstanceData`: ``bboxes`` (n, 4) ``xyxy``, ``scores`` (n,) =
            ``sigmoid(cls) * sigmoid(centerness)``, ``labels`` (n,).
        """
        assert score_factor_list[0] is not None, 'ATSS scores need the centerness logits'
        cfg = self.test_cfg if cfg is None else cfg
        nms_pre = cfg.get('nms_pre', -1)
        bins = 4 * (self.reg_max + 1)
        mlvl_bboxes, mlvl_scores, mlvl_labels, mlvl_centerness = [], [], [], []
        for cls_score, bbox_pred, centerness, stride, priors in zip(
                cls_score_list, bbox_pred_list, score_factor_list, self.prior_generator.strides, mlvl_priors):
            assert cls_score.size()[-2:] == bbox_pred.size()[-2:]
            assert stride[0] == stride[1], 'the distances are in units of a square stride'
            scores = cls_score.permute(1, 2, 0).reshape(-1, self.cls_out_channels).sigmoid()
            centerness = centerness.permute(1, 2, 0).reshape(-1).sigmoid()
            distances = self.decode_distances(bbox_pred.permute(1, 2, 0).reshape(-1, bins)) * stride[0]
            # As mmdet's ATSSHead: threshold and top-k on the class score; centerness multiplies in
            # _bbox_post_process.
            scores, labels, keep, kept = filter_scores_and_topk(
                scores, cfg.get('score_thr', 0), nms_pre, dict(distances=distances, priors=priors))
            centers = bbox_xyxy_to_cxcywh(kept['priors'])[:, :2]
            mlvl_bboxes.append(
                self.bbox_coder.decode(centers, kept['distances'], max_shape=img_meta['img_shape']))
            mlvl_scores.append(scores)
            mlvl_labels.append(labels)
            mlvl_centerness.append(centerness[keep])

        results = InstanceData(
            bboxes=torch.cat(mlvl_bboxes),
            scores=torch.cat(mlvl_scores),
            labels=torch.cat(mlvl_labels),
            score_factors=torch.cat(mlvl_centerness))
        return self._bbox_post_process(
            results=results, cfg=cfg, rescale=rescale, with_nms=with_nms, img_meta=img_meta)
