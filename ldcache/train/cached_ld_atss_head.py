"""CachedLDATSSHead: the ATSS distribution head plus the four LD terms, with teacher targets from
the batch (the LD paper's ATSS student, its Table 5)."""
from __future__ import annotations

from mmdet.registry import MODELS

from ..heads.atss_dist_head import ATSSDistHead
from .cached_ld import CachedLD


@MODELS.register_module()
class CachedLDATSSHead(CachedLD, ATSSDistHead):
    """:class:`~ldcache.heads.ATSSDistHead` (Focal, centerness-weighted GIoU, centerness) trained
    with Localization Distillation from precomputed teacher targets (:class:`CachedLD`).

    Its regions are GFL's: one anchor per location, Main = the ATSS positives, VLR with IoU
    weights and the positives kept, so a store of a GFL or an ATSS teacher of the same geometry
    serves it. The defaults are the official ATSS student's (docs/families.md): Main LD weight
    0.25, T 10, divided by 4; VLR LD 0.15 of Main LD's weight (0.0375), T 10, divided by 4 (GFL
    divides its VLR LD by 16); Main KD weight 10, T 2.

    Args:
        loss_ld_vlr (dict, optional): VLR LD loss config. Defaults to weight 0.0375, T=10.
        **kwargs: :class:`CachedLD`'s LD options and ATSSDistHead's arguments.
    """

    official_ld_avg = {"loss_ld": 4.0, "loss_ld_vlr": 4.0}

    def __init__(self, *args,
                 loss_ld_vlr: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.0375, T=10),
                 **kwargs):
        super().__init__(*args, loss_ld_vlr=loss_ld_vlr, **kwargs)
