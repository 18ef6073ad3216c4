"""CachedLDGFLv2Head: the GFLv2 head plus the four LD terms, with teacher targets from the batch
(LDv2)."""
from __future__ import annotations

import torch
from mmdet.registry import MODELS

from ..heads.gflv2_head import GFLv2Head
from .cached_ld import CachedLD


@MODELS.register_module()
class CachedLDGFLv2Head(CachedLD, GFLv2Head):
    """:class:`~ldcache.heads.GFLv2Head` (QFL on the joint score, GIoU, DFL) trained with
    Localization Distillation from precomputed teacher targets (:class:`CachedLD`), as LDv2 does.

    The regions and divisors are GFL's (Main LD / 4, VLR LD / 16). The Main LD weight is the
    student's largest joint score, sigmoid(class logit) x the DGQP quality, as the official LDv2
    head weighs it; KD compares the raw class logits of student and teacher (the head's first
    output, before the quality is joined). The official LDv2 config's feature imitation on FPN
    features is not part of it (docs/families.md).

    Args:
        **kwargs: :class:`CachedLD`'s LD options and GFLv2Head's arguments.
    """

    def _confidence(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor) -> torch.Tensor:
        # The DGQP runs on (N, 4 * bins, H, W) maps: the rows become N maps of one location.
        joint = self.joint_score(cls_rows[:, :, None, None], reg_rows[:, :, None, None])
        return joint.flatten(1).max(dim=1).values
