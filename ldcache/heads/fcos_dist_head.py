"""FCOSDistHead: mmdet's FCOS head with GFL's edge-distribution box branch (the LD paper's FCOS)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmcv.cnn import Scale
from mmengine.config import ConfigDict
from torch import Tensor

from mmdet.models.dense_heads import FCOSHead
from mmdet.models.dense_heads.fcos_head import INF
from mmdet.models.dense_heads.gfl_head import Integral
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, InstanceList, OptInstanceList, RangeType

from .distribution import EdgeDistributions


@MODELS.register_module()
class FCOSDistHead(EdgeDistributions, FCOSHead):
    """FCOS whose box branch predicts a distribution over each edge's distance, as GFL does.

    Each point (one per location, at ``(i * s + s / 2, j * s + s / 2)``: mmdet's
    ``MlvlPointGenerator`` with offset 0.5) predicts, per edge (left, top, right, bottom),
    ``reg_max + 1`` logits over the distances ``{0, 1, ..., reg_max}`` in units of its level's
    stride; the distance is the softmax expectation (mmdet's :class:`Integral`). The per-level
    :class:`Scale` multiplies these logits before the softmax (a learnable inverse temperature);
    there is no ``exp`` or ReLU. Centerness comes from the regression tower by default.

    Targets are FCOSHead's own (``center_sampling``, ``regress_ranges``, the smallest GT wins);
    the losses are FCOSHead's: sigmoid focal loss over all points divided by the positives
    (averaged over GPUs, at least 1), GIoU weighted by the centerness target and divided by the
    sum of centerness targets (averaged over GPUs), and centerness BCE divided by the positives.
    There is no DFL and no QFL.

    The distance targets are not clamped below ``reg_max``: only a DFL would need bins for them,
    and the GIoU compares boxes. A target beyond ``reg_max`` strides cannot be reached, which
    the regress ranges prevent on P3-P6 (a positive's farthest edge is at most ``hi / s`` = 8
    strides) and image sizes on P7 (1333 px is 10.4 strides of 128).

    Args:
        num_classes (int): Number of categories excluding the background category.
        in_channels (int): Number of channels in the input feature map.
        reg_max (int): The largest distance, in strides, of each edge's distribution, which has
            ``reg_max + 1`` bins. Defaults to 16.
        strides (Sequence[int]): Strides of the points of each level.
            Defaults to (8, 16, 32, 64, 128).
        regress_ranges (Sequence[Tuple[int, int]]): Range of the farthest edge of a level's
            positives, in pixels. Defaults to ((-1, 64), (64, 128), (128, 256), (256, 512),
            (512, 1e8)).
        center_sampling (bool): Whether positives must lie in the GT's centre region (the box
            clipped to ``center_sample_radius`` strides around its centre). Defaults to True.
        center_sample_radius (float): Radius of the centre region, in strides. Defaults to 1.5.
        norm_on_bbox (bool): Must stay False: the distribution is in strides already, and
            FCOSHead's stride-normalised targets would be divided twice.
        centerness_on_reg (bool): Whether centerness is predicted from the regression tower
            (else the classification tower). Defaults to True.
        conv_bias (bool or str): Bias of the tower convs. Defaults to True.
        loss_bbox (:obj:`ConfigDict` or dict): Box loss between decoded boxes. Defaults to GIoU
            with weight 1.0.
        **kwargs: FCOSHead's other arguments (``loss_cls``, ``loss_centerness``, ``norm_cfg``,
            ``feat_channels``, ``stacked_convs``, ...).
    """

    # LD's VLR for FCOS (ldcache/domain/region_rule.py): the non-positive points inside a GT box.
    ld_vlr_rule = 'inside_gt'

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 reg_max: int = 16,
                 strides: Sequence[int] = (8, 16, 32, 64, 128),
                 regress_ranges: RangeType = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)),
                 center_sampling: bool = True,
                 center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = False,
                 centerness_on_reg: bool = True,
                 conv_bias: bool | str = True,
                 loss_bbox: ConfigType = dict(type='GIoULoss', loss_weight=1.0),
                 **kwargs) -> None:
        if norm_on_bbox:
            raise ValueError('FCOSDistHead predicts distances in strides already; norm_on_bbox must be False')
        # _init_layers (run by the parent's __init__) sizes conv_reg from reg_max.
        self.reg_max = reg_max
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            strides=strides,
            regress_ranges=regress_ranges,
            center_sampling=center_sampling,
            center_sample_radius=center_sample_radius,
            norm_on_bbox=norm_on_bbox,
            centerness_on_reg=centerness_on_reg,
            conv_bias=conv_bias,
            loss_bbox=loss_bbox,
            **kwargs)
        self.integral = Integral(self.reg_max)

    def _init_predictor(self) -> None:
        """Initialize the classifier and the distribution regressor (4 * (reg_max + 1) logits)."""
        super()._init_predictor()
        self.conv_reg = nn.Conv2d(self.feat_channels, 4 * (self.reg_max + 1), 3, padding=1)

    def forward_single(self, x: Tensor, scale: Scale, stride: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Forward features of a single scale level.

        Args:
            x (Tensor): FPN feature map of the level, shape (N, in_channels, H, W).
            scale (:obj:`mmcv.cnn.Scale`): The level's learnable scale of the box logits.
            stride (int): The level's stride (unused: the logits are in strides at every level).

        Returns:
            tuple[Tensor, Tensor, Tensor]: class logits (N, num_classes, H, W), edge-distribution
            logits after the scale (N, 4 * (reg_max + 1), H, W), centerness logits (N, 1, H, W).
        """
        cls_score, bbox_pred, cls_feat, reg_feat = super(FCOSHead, self).forward_single(x)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)
        # float, as FCOSHead does: under fp16 training the softmax still gets full-precision logits.
        return cls_score, scale(bbox_pred).float(), centerness

    def _pixel_distances(self, bbox_preds: List[Tensor]) -> List[Tensor]:
        """Per level, the expected distances in pixels, (N, 4, H, W): what FCOSHead's own loss
        and prediction decode from the pixel points."""
        return [
            self.decode_distances(bbox_pred.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            * bbox_pred.new_tensor(stride).repeat(2)[None, :, None, None]
            for bbox_pred, stride in zip(bbox_preds, self.prior_generator.strides)
        ]

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     centernesses: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """Focal, centerness-weighted GIoU and centerness losses of a batch.

        FCOSHead's loss on the expected distances in pixels. The official code decodes both
        boxes in strides (point / s plus the distances, GT / s); GIoU is unchanged when both
        boxes are scaled alike, so this is the same loss up to GIoULoss's eps.

        Args:
            cls_scores (list[Tensor]): Class logits per level, (N, num_classes, H, W).
            bbox_preds (list[Tensor]): Edge-distribution logits per level,
                (N, 4 * (reg_max + 1), H, W).
            centernesses (list[Tensor]): Centerness logits per level, (N, 1, H, W).
            batch_gt_instances (list[:obj:`InstanceData`]): GT ``bboxes`` and ``labels`` per
                image.
            batch_img_metas (list[dict]): Meta information of each image.
            batch_gt_instances_ignore (list[:obj:`InstanceData`], optional): Unused, as in
                FCOSHead.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox`` and ``loss_centerness``.
        """
        return super().loss_by_feat(cls_scores, self._pixel_distances(bbox_preds), centernesses,
                                    batch_gt_instances, batch_img_metas, batch_gt_instances_ignore)

    def predict_by_feat(self,
                        cls_scores: List[Tensor],
                        bbox_preds: List[Tensor],
                        score_factors: Optional[List[Tensor]] = None,
                        batch_img_metas: Optional[List[dict]] = None,
                        cfg: Optional[ConfigDict] = None,
                        rescale: bool = False,
                        with_nms: bool = True) -> InstanceList:
        """Detections of a batch: boxes decoded from the pixel points with the expected
        distances times the stride, scores ``sigmoid(cls) * sigmoid(centerness)`` (FCOSHead's).

        Args:
            cls_scores (list[Tensor]): Class logits per level, (N, num_classes, H, W).
            bbox_preds (list[Tensor]): Edge-distribution logits per level,
                (N, 4 * (reg_max + 1), H, W).
            score_factors (list[Tensor], optional): Centerness logits per level, (N, 1, H, W).
            batch_img_metas (list[dict], optional): Meta information of each image.
            cfg (:obj:`ConfigDict`, optional): Test config; ``self.test_cfg`` when None.
            rescale (bool): Whether to return boxes in the original image's scale.
            with_nms (bool): Whether to apply NMS.

        Returns:
            list[:obj:`InstanceData`]: Per image, ``bboxes`` (k, 4) in image coordinates,
            ``scores`` (k,) and ``labels`` (k,).
        """
        return super().predict_by_feat(cls_scores, self._pixel_distances(bbox_preds), score_factors,
                                       batch_img_metas, cfg, rescale, with_nms)
