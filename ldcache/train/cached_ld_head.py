"""CachedLDHead: mmdet's GFLHead plus the four LD terms, with teacher targets from the batch."""
from __future__ import annotations

from mmdet.models.dense_heads import GFLHead
from mmdet.registry import MODELS
from mmdet.utils import reduce_mean

from ..errors import BadInputError
from .cached_ld import CachedLD

# How the box losses (GIoU, DFL) are divided by the sum of their weights: GFLHead floors the sum
# at 1, mmdet's LDHead adds 1e-6 to it instead.
BBOX_NORMS = ("gfl", "ld_head")


@MODELS.register_module()
class CachedLDHead(CachedLD, GFLHead):
    """GFL head trained with Localization Distillation from precomputed teacher targets.

    mmdet's :class:`GFLHead` (QFL, GIoU, DFL) plus the LD terms of :class:`CachedLD` (see there:
    the four terms, their weights and normalisations), at GFL's official divisors (Main LD / 4,
    VLR LD / 16).

    Args:
        use_dfl (bool): Keep GFL's DFL term. Defaults to True.
        bbox_norm (str): ``'gfl'``: the box losses (GIoU and DFL) are divided by the sum of their
            weights (the student's confidence at its positives) floored at 1, as GFLHead does;
            ``'ld_head'``: by that sum plus 1e-6, as mmdet's ``LDHead`` does (larger box losses
            while the sum is below 1, early in training). Defaults to ``'gfl'``.
        **kwargs: :class:`CachedLD`'s LD options and GFLHead's arguments.
    """

    def __init__(self, *args, use_dfl: bool = True, bbox_norm: str = "gfl", **kwargs):
        super().__init__(*args, **kwargs)
        if bbox_norm not in BBOX_NORMS:
            raise BadInputError(f"CachedLDHead: bbox_norm must be one of {BBOX_NORMS}, not {bbox_norm!r}")
        self.use_dfl, self.bbox_norm = use_dfl, bbox_norm

    def _adjust_own_losses(self, losses: dict, levels: list) -> None:
        if not self.use_dfl:
            losses.pop("loss_dfl")
        if self.bbox_norm == "ld_head":
            self._divide_box_losses_as_ld_head(losses, levels)

    @staticmethod
    def _divide_box_losses_as_ld_head(losses: dict, levels: list) -> None:
        """Rescale GFLHead's box losses from its divisor, max(S, 1), to LDHead's, S + 1e-6, with S the
        sum of the box-loss weights averaged over the GPUs: the Main LD weights, which are the same
        (the student's confidence at each of its positives)."""
        weight_sum = reduce_mean(sum(level.ld_weight["loss_ld"].sum() for level in levels)).item()
        scale = max(weight_sum, 1.0) / (weight_sum + 1e-6)
        for name in ("loss_bbox", "loss_dfl"):
            if name in losses:
                losses[name] = [loss * scale for loss in losses[name]]
