"""What a student's head must share with the teacher's for cached rows to line up, and where a
student config sets each part of it."""
from __future__ import annotations

import dataclasses

from mmengine.config import Config

from ..errors import BadInputError
from ..store.attrs import HeadGeometry

# Where a student config sets each field of the head geometry a store is made for.
GEOMETRY_SETTINGS = {
    "num_classes": "model.bbox_head.num_classes",
    "reg_max": "model.bbox_head.reg_max",
    "strides": "model.bbox_head.anchor_generator.strides",
    "octave_base_scale": "model.bbox_head.anchor_generator.octave_base_scale",
    "scales_per_octave": "model.bbox_head.anchor_generator.scales_per_octave",
    "ratios": "model.bbox_head.anchor_generator.ratios",
    "center_offset": "model.bbox_head.anchor_generator.center_offset",
    "num_base_priors": "model.bbox_head.anchor_generator (ratios x scales_per_octave)",
    "allowed_border": "model.train_cfg.allowed_border",
    "priors": "model.bbox_head.type (an anchor head or a point head)",
}


def head_mismatch(reference: HeadGeometry, student: HeadGeometry, name: str = "store") -> str | None:
    """Each field of the head geometry that differs between `reference` (called `name`: the store,
    the teacher) and the student, with the student setting that decides it; None when they agree."""
    ref, own = dataclasses.asdict(reference), dataclasses.asdict(student)
    different = [f"{k}: {name} {ref[k]} vs student {own[k]}, set by {GEOMETRY_SETTINGS[k]}"
                 for k in ref if ref[k] != own[k]]
    return "; ".join(different) or None


def is_distribution_head(head) -> bool:
    """Whether an mmdet head predicts GFL's edge distributions from a prior generator (GFLHead,
    LDHead, ldcache's RetinaDistHead, FCOSDistHead, ATSSDistHead, GFLv2Head and their
    subclasses): the heads whose outputs a store can hold."""
    return hasattr(head, "reg_max") and hasattr(head, "prior_generator") and hasattr(head, "integral")


def uncacheable_reason(head) -> str | None:
    """Why a store cannot hold this head's outputs, or None when it can (a head with edge
    distributions)."""
    if not is_distribution_head(head):
        return (f"{type(head).__name__} predicts no edge distributions (GFL's reg_max bins): LD distils those, "
                "so a store holds the outputs of distribution heads (GFLHead, LDHead, RetinaDistHead, "
                "FCOSDistHead, ATSSDistHead, GFLv2Head: docs/families.md)")
    return None


def build_config_head(cfg: Config):
    """The student's head a config trains, built alone (no backbone), with its train and test
    settings; a head that cannot be trained from a store is refused with the reason."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    head_cfg = cfg.model.bbox_head.copy()
    head_cfg.update(train_cfg=cfg.model.get("train_cfg"), test_cfg=cfg.model.get("test_cfg"))
    try:
        head = MODELS.build(head_cfg)
    except (KeyError, TypeError, ValueError, AssertionError) as err:  # a head type or argument mmdet refuses
        raise BadInputError(f"cannot build the student's head {head_cfg.get('type')} "
                            f"(model.bbox_head): {str(err).splitlines()[0][:300]}") from None
    reason = uncacheable_reason(head)
    if reason:
        raise BadInputError(f"the student's head cannot be trained from a store: {reason}")
    return head


def vlr_terms(ld_losses: dict) -> list[str]:
    """The VLR terms a student head distils (``loss_ld_vlr``, ``loss_kd_vlr``), from its
    ``ld_losses`` (a cached-LD head's; mmdet's LDHead has none): they need the store's VLR rows."""
    return [term for term in ("loss_ld_vlr", "loss_kd_vlr") if ld_losses.get(term) is not None]
