"""Evaluate a checkpoint on a config's test set, as mmdet's tools/test.py does."""
from __future__ import annotations

from pathlib import Path

from ..domain.ld_config import is_ld_config
from ..errors import BadInputError
from .mmdet_ld import as_plain_student
from .runner import install, runner_from_config

AP_KEYS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75")


def evaluate_checkpoint(config: str | Path, checkpoint: str | Path, work_dir: str | Path | None = None,
                        cfg_options: dict | None = None) -> dict:
    """COCO metrics ({bbox_mAP, bbox_mAP_50, ...}) of `checkpoint` on the config's test_dataloader
    with its test_evaluator. An LD config is evaluated as its student alone (no teacher built)."""
    if not Path(checkpoint).is_file():
        raise BadInputError(f"checkpoint {checkpoint} does not exist")

    def prepare(cfg) -> None:
        if is_ld_config(cfg):
            as_plain_student(cfg)
        cfg.load_from = str(checkpoint)

    install()  # the checkpoint goes through ldcache's trust check whatever the config's runner
    runner = runner_from_config(config, work_dir, cfg_options, prepare=prepare)
    return coco_ap(runner.test())


def coco_ap(metrics: dict) -> dict:
    """{bbox_mAP, bbox_mAP_50, ...} from an mmengine evaluation's {'coco/bbox_mAP': ...}; all 0 when
    mmdet's CocoMetric returned nothing (no box passed the score threshold: that is 0 AP)."""
    metrics = {k.split("/")[-1]: float(v) for k, v in metrics.items() if k.startswith("coco/")}
    return metrics or {key: 0.0 for key in AP_KEYS}
