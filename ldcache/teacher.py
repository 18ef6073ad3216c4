"""Build an mmdet GFL-family teacher from its config and checkpoint, and run its head."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from mmengine.config import Config

from . import checkpoint_trust  # noqa: F401  (routes mmengine's loading through the safe loader)
from .errors import LDCacheError


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_config(path: str | Path) -> Config:
    if not Path(path).is_file():
        raise LDCacheError(f"config file {path} does not exist")
    return Config.fromfile(str(path))


def build_teacher(cfg: Config, checkpoint: str | Path, device: str) -> torch.nn.Module:
    """The teacher in eval mode with its weights; a checkpoint that does not fit is a user error."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import load_checkpoint

    register_all_modules()
    if not Path(checkpoint).is_file():
        raise LDCacheError(f"teacher checkpoint {checkpoint} does not exist")
    model_cfg = cfg.model.copy()
    model_cfg.get("backbone", {}).pop("init_cfg", None)  # weights come from the checkpoint
    model = MODELS.build(model_cfg)
    head = getattr(model, "bbox_head", None)
    if head is None or not hasattr(head, "reg_max") or not hasattr(head, "prior_generator"):
        raise LDCacheError(f"the teacher ({type(model).__name__}) has no GFL-style head with reg_max "
                           "edge distributions and an anchor generator; LD needs one (GFLHead, LDHead)")
    try:
        load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True, logger="silent")
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise LDCacheError(f"teacher checkpoint {checkpoint} does not fit config {cfg.filename}: "
                           f"{' '.join(first[:3])[:400]}") from None
    return model.to(device).eval()


def head_geometry(head: torch.nn.Module) -> dict:
    """What a student head must share with the teacher for cached targets to line up."""
    gen = head.prior_generator
    return {
        "num_classes": int(head.num_classes),
        "reg_max": int(head.reg_max),
        "strides": [int(s[0]) for s in gen.strides],
        "octave_base_scale": float(gen.octave_base_scale),
        "scales_per_octave": int(gen.scales_per_octave),
        "ratios": [float(r) for r in gen.ratios],
        "center_offset": float(gen.center_offset),
        "num_base_priors": int(gen.num_base_priors[0]),
    }


@torch.no_grad()
def teacher_outputs(model: torch.nn.Module, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-level (cls_score [B, C, H, W], bbox_pred [B, 4*(reg_max+1), H, W]) for a collated batch."""
    data = model.data_preprocessor(batch, False)
    feats = model.extract_feat(data["inputs"])
    cls_scores, bbox_preds = model.bbox_head(feats)
    return list(cls_scores), list(bbox_preds)
