"""RetinaNet with GFL's distribution box branch: the RetinaNet of the LD paper's Table 5."""
from typing import List, Tuple

import torch.nn as nn
from torch import Tensor

from mmdet.models.dense_heads.gfl_head import GFLHead, Integral
from mmdet.models.dense_heads.retina_head import RetinaHead
from mmdet.models.utils import images_to_levels, multi_apply
from mmdet.registry import MODELS
from mmdet.structures.bbox import cat_boxes
from mmdet.utils import ConfigType, InstanceList, OptInstanceList

from .distribution import EdgeDistributions


@MODELS.register_module()
class RetinaDistHead(EdgeDistributions, RetinaHead):
    """mmdet's RetinaHead whose box branch predicts an edge distribution per anchor.

    Each of the A anchors of a location (9 with RetinaNet's anchor generator) predicts its own
    4 x (reg_max + 1) logits: a softmax over the bins {0, ..., reg_max} per edge (left, top, right,
    bottom), whose expectation is the distance from the location's anchor centre to that edge in
    units of the level's stride. All anchors of a location share that centre; an anchor's size and
    aspect ratio matter only to the assigner. The towers are RetinaHead's (no norm, no Scale on the
    logits, no centerness).

    Training: MaxIoUAssigner and PseudoSampler (train_cfg), sigmoid Focal Loss over all anchors,
    and GIoU between the decoded boxes of the positives and their GT boxes, both in stride units;
    both are divided by AnchorHead's avg_factor, the positives of the batch on this GPU (each image
    counted as at least 1), not averaged over GPUs. The regression targets are always the GT boxes
    (AnchorHead's ``reg_decoded_bbox=True``). No QFL, no DFL.

    Args:
        num_classes (int): Number of categories excluding the background category.
        in_channels (int): Number of channels in the input feature map.
        reg_max (int): The largest bin of the distributions: an edge lies at most reg_max strides
            from the anchor centre. Defaults to 16.
        bbox_coder (:obj:`ConfigDict` or dict): Turns a centre and four distances into a box.
            Defaults to DistancePointBBoxCoder.
        loss_cls (:obj:`ConfigDict` or dict): Classification loss. Defaults to sigmoid Focal Loss
            (gamma 2, alpha 0.25, weight 1).
        loss_bbox (:obj:`ConfigDict` or dict): Loss between decoded and GT boxes. Defaults to
            GIoULoss with weight 2.
        **kwargs: RetinaHead's and AnchorHead's other arguments (stacked_convs, feat_channels,
            anchor_generator, train_cfg, test_cfg, init_cfg, ...).

    Example:
        >>> import torch
        >>> self = RetinaDistHead(3, 8, feat_channels=8, stacked_convs=1)
        >>> cls_score, bbox_pred = self.forward_single(torch.rand(1, 8, 5, 5))
        >>> assert cls_score.shape == (1, 9 * 3, 5, 5)
        >>> assert bbox_pred.shape == (1, 9 * 4 * 17, 5, 5)
    """

    # LD's VLR for RetinaNet (ldcache/domain/region_rule.py): the band, without MaxIoU's positives.
    ld_vlr_rule = 'band_without_main'

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 reg_max: int = 16,
                 bbox_coder: ConfigType = dict(type='DistancePointBBoxCoder'),
                 loss_cls: ConfigType = dict(
                     type='FocalLoss',
                     use_sigmoid=True,
                     gamma=2.0,
                     alpha=0.25,
                     loss_weight=1.0),
                 loss_bbox: ConfigType = dict(type='GIoULoss', loss_weight=2.0),
                 **kwargs) -> None:
        # Set before RetinaHead's __init__, whose _init_layers sizes the box conv with it.
        self.reg_max = reg_max
        super().__init__(
            num_classes,
            in_channels,
            bbox_coder=bbox_coder,
            reg_decoded_bbox=True,
            loss_cls=loss_cls,
            loss_bbox=loss_bbox,
            **kwargs)
        self.integral = Integral(reg_max)

    def _init_layers(self) -> None:
        """Initialize layers of the head: RetinaHead's, with a box conv of
        num_base_priors * 4 * (reg_max + 1) outputs."""
        super()._init_layers()
        # RetinaHead sizes retina_reg by the coder's encode_size (4 distances per anchor).
        self.retina_reg = nn.Conv2d(
            self.retina_reg.in_channels,
            self.num_base_priors * 4 * (self.reg_max + 1),
            3,
            padding=1)

    # GFLHead's helpers work per prior and never assume one prior per location: flattening a
    # level's (A * 4 * (reg_max + 1), H, W) map location by location gives grid_priors' order
    # (location-major, anchor-minor), so each anchor decodes its own block from its centre.
    anchor_center = GFLHead.anchor_center
    _predict_by_feat_single = GFLHead._predict_by_feat_single

    def loss_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor,
                            anchors: Tensor, labels: Tensor,
                            label_weights: Tensor, bbox_targets: Tensor,
                            bbox_weights: Tensor, stride: Tuple[int, int],
                            avg_factor: int) -> Tuple[Tensor, Tensor]:
        """Calculate the losses of a single scale level.

        Args:
            cls_score (Tensor): Class logits, shape (N, A * num_classes, H, W).
            bbox_pred (Tensor): Distribution logits, shape (N, A * 4 * (reg_max + 1), H, W).
            anchors (Tensor): Anchors of the level, shape (N, H * W * A, 4), in pixels.
            labels (Tensor): Label of each anchor (num_classes: background), shape (N, H * W * A).
            label_weights (Tensor): Classification weight of each anchor, shape (N, H * W * A).
            bbox_targets (Tensor): GT box of each anchor in pixels (0 where negative), shape
                (N, H * W * A, 4).
            bbox_weights (Tensor): Box loss weight of each anchor (1 at the positives, else 0),
                shape (N, H * W * A, 4).
            stride (tuple[int, int]): Stride of the level.
            avg_factor (int): Divisor of both losses: the number of positives.

        Returns:
            tuple[Tensor, Tensor]: The Focal loss and the GIoU loss of the level.
        """
        labels = labels.reshape(-1)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
        loss_cls = self.loss_cls(
            cls_score, labels, label_weights.reshape(-1), avg_factor=avg_factor)

        # Only the positives have a box term: decode just them. With none, the empty selection still
        # links the (zero) loss to the box branch, so that every parameter gets a gradient.
        pos_inds = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        pos_bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(
            -1, 4 * (self.reg_max + 1))[pos_inds]
        pos_centers = self.anchor_center(anchors.reshape(-1, 4)[pos_inds]) / stride[0]
        pos_decoded = self.bbox_coder.decode(
            pos_centers, self.decode_distances(pos_bbox_pred))
        loss_bbox = self.loss_bbox(
            pos_decoded,
            bbox_targets.reshape(-1, 4)[pos_inds] / stride[0],
            bbox_weights.reshape(-1, 4)[pos_inds],
            avg_factor=avg_factor)
        return loss_cls, loss_bbox

    def loss_by_feat(
            self,
            cls_scores: List[Tensor],
            bbox_preds: List[Tensor],
            batch_gt_instances: InstanceList,
            batch_img_metas: List[dict],
            batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """Calculate the losses from the head's outputs: AnchorHead's, with each level's stride
        passed on, since the distances are in stride units.

        Args:
            cls_scores (list[Tensor]): Class logits of each level, shape (N, A * num_classes, H, W).
            bbox_preds (list[Tensor]): Distribution logits of each level, shape
                (N, A * 4 * (reg_max + 1), H, W).
            batch_gt_instances (list[:obj:`InstanceData`]): GT of each image, with ``bboxes`` and
                ``labels``.
            batch_img_metas (list[dict]): Meta information of each image.
            batch_gt_instances_ignore (list[:obj:`InstanceData`], optional): Instances to ignore.
                Defaults to None.

        Returns:
            dict[str, list[Tensor]]: ``loss_cls`` and ``loss_bbox``, one entry per level.
        """
        featmap_sizes = [featmap.size()[-2:] for featmap in cls_scores]
        anchor_list, valid_flag_list = self.get_anchors(
            featmap_sizes, batch_img_metas, device=cls_scores[0].device)
        (labels_list, label_weights_list, bbox_targets_list, bbox_weights_list,
         avg_factor) = self.get_targets(
             anchor_list,
             valid_flag_list,
             batch_gt_instances,
             batch_img_metas,
             batch_gt_instances_ignore=batch_gt_instances_ignore)
        num_level_anchors = [anchors.size(0) for anchors in anchor_list[0]]
        level_anchors = images_to_levels(
            [cat_boxes(anchors) for anchors in anchor_list], num_level_anchors)

        losses_cls, losses_bbox = multi_apply(
            self.loss_by_feat_single,
            cls_scores,
            bbox_preds,
            level_anchors,
            labels_list,
            label_weights_list,
            bbox_targets_list,
            bbox_weights_list,
            self.prior_generator.strides,
            avg_factor=avg_factor)
        return dict(loss_cls=losses_cls, loss_bbox=losses_bbox)
