"""CachedLDFCOSHead: the FCOS distribution head plus the four LD terms, with teacher targets from
the batch (the LD paper's FCOS student, its Table 5)."""
from __future__ import annotations

import torch
from mmdet.registry import MODELS

from ..heads.fcos_dist_head import FCOSDistHead
from .cached_ld import CachedLD


@MODELS.register_module()
class CachedLDFCOSHead(CachedLD, FCOSDistHead):
    """:class:`~ldcache.heads.FCOSDistHead` (Focal, centerness-weighted GIoU, centerness) trained
    with Localization Distillation from precomputed teacher targets (:class:`CachedLD`).

    Its regions are FCOS's (FCOSDistHead's ``ld_vlr_rule``): Main = the centre-sampled positives;
    VLR = the points strictly inside a GT box that are not positive, weighted by the student's
    detached max class score (no VLR metric, no IoU weight; ``vlr_gamma`` does not change it).
    The defaults are the official FCOS student's (docs/families.md): Main LD weight 0.25, T 10,
    divided by 4; VLR LD 0.25 of Main LD's weight (0.0625), T 10, divided by 4; Main KD weight
    10, T 2 (FCOS has no label weights: every row counts 1).

    Args:
        loss_ld_vlr (dict, optional): VLR LD loss config. Defaults to weight 0.0625, T=10.
        **kwargs: :class:`CachedLD`'s LD options and FCOSDistHead's arguments.
    """

    official_ld_avg = {"loss_ld": 4.0, "loss_ld_vlr": 4.0}

    def __init__(self, *args,
                 loss_ld_vlr: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.0625, T=10),
                 **kwargs):
        super().__init__(*args, loss_ld_vlr=loss_ld_vlr, **kwargs)

    @staticmethod
    def _labels_and_weights(targets: tuple) -> tuple[list, list]:
        # FCOSHead's tuple: per level, labels and box targets of all images; no label weights.
        labels_list, _ = targets
        return labels_list, [torch.ones_like(labels, dtype=torch.float32) for labels in labels_list]

    @staticmethod
    def _vlr_weight(stored: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        return stored * confidence
