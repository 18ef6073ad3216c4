"""CachedLDRetinaHead: the RetinaNet distribution head plus the four LD terms, with teacher targets
from the batch (the LD paper's RetinaNet student, its Table 5)."""
from __future__ import annotations

from mmdet.registry import MODELS

from ..heads.retina_dist_head import RetinaDistHead
from .cached_ld import CachedLD


@MODELS.register_module()
class CachedLDRetinaHead(CachedLD, RetinaDistHead):
    """:class:`~ldcache.heads.RetinaDistHead` (Focal, GIoU) trained with Localization Distillation
    from precomputed teacher targets (:class:`CachedLD`), a row per anchor.

    Its regions are RetinaNet's (RetinaDistHead's ``ld_vlr_rule``): Main = MaxIoUAssigner's
    positives; VLR = the band over all anchors at ATSS's threshold of the 9 nearest anchors per
    level, the positives excluded, with IoU weights. The defaults are the official RetinaNet
    student's (docs/families.md): Main LD weight 5, T 10, one softmax over the 68 logits of an
    anchor's four edges (``ld_joint_edges``), weighted by the student's max score, divided by 4;
    VLR LD 0.03 of that weight (0.15), T 10, divided by 4; Main KD weight 10 at T 8.

    Args:
        loss_ld (dict, optional): Main LD loss config. Defaults to weight 5, T=10.
        loss_ld_vlr (dict, optional): VLR LD loss config. Defaults to weight 0.15, T=10.
        loss_kd (dict, optional): Main KD loss config. Defaults to weight 10, T=8.
        **kwargs: :class:`CachedLD`'s LD options and RetinaDistHead's arguments.
    """

    ld_joint_edges = True
    official_ld_avg = {"loss_ld": 4.0, "loss_ld_vlr": 4.0}

    def __init__(self, *args,
                 loss_ld: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=5.0, T=10),
                 loss_ld_vlr: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.15, T=10),
                 loss_kd: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=10, T=8),
                 **kwargs):
        super().__init__(*args, loss_ld=loss_ld, loss_ld_vlr=loss_ld_vlr, loss_kd=loss_kd, **kwargs)

    @staticmethod
    def _labels_and_weights(targets: tuple) -> tuple[list, list]:
        # AnchorHead's tuple: labels, label weights, box targets, box weights, avg_factor.
        labels_list, label_weights_list, *_ = targets
        return labels_list, label_weights_list
