"""Build an mmdet GFL-family teacher from its config and checkpoint, and run its head."""
from __future__ import annotations

from pathlib import Path

import torch
from mmengine.config import Config

from .. import checkpoint_trust
from ..errors import BadInputError
from .head import uncacheable_reason

def default_scale(cfg: Config) -> tuple[int, int]:
    """The Resize scale of the config's test pipeline (where the student is evaluated)."""
    pipeline = cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline", [])
    for step in pipeline:
        if step.get("type") == "Resize" and "scale" in step:
            return tuple(step["scale"])
    raise BadInputError(f"{cfg.filename} has no Resize(scale=...) in its test pipeline; give --scale")


def build_teacher(cfg: Config, checkpoint: str | Path, device: str) -> torch.nn.Module:
    """The teacher in eval mode with its weights; a checkpoint that does not fit is a user error."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import load_checkpoint

    register_all_modules()
    checkpoint_trust.install()  # the teacher's checkpoint goes through the safe loader
    if not Path(checkpoint).is_file():
        raise BadInputError(f"teacher checkpoint {checkpoint} does not exist")
    model_cfg = cfg.model.copy()
    model_cfg.get("backbone", {}).pop("init_cfg", None)  # weights come from the checkpoint
    model = MODELS.build(model_cfg)
    head = getattr(model, "bbox_head", None)
    reason = "it has no bbox_head" if head is None else uncacheable_reason(head)
    if reason:
        raise BadInputError(f"the teacher ({type(model).__name__}) cannot be dumped: {reason}")
    try:
        load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True, logger="silent")
    except RuntimeError as err:  # strict loading: missing or unexpected keys, shapes that differ
        first = str(err).strip().splitlines()
        raise BadInputError(f"teacher checkpoint {checkpoint} does not fit config {cfg.filename}: "
                            f"{' '.join(first[:3])[:400]}") from None
    return model.to(device).eval()


@torch.no_grad()
def teacher_outputs(model: torch.nn.Module, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-level (cls_score [B, C, H, W], bbox_pred [B, 4*(reg_max+1), H, W]) for a collated batch:
    the head's first two outputs (a head's further outputs, such as ATSS's centerness, are not
    distilled)."""
    data = model.data_preprocessor(batch, False)
    outputs = model.bbox_head(model.extract_feat(data["inputs"]))
    return list(outputs[0]), list(outputs[1])
