"""The main job on the embedded default: shapes dataset, tiny teacher, COCO evaluation.

Later stages (dump, cached-LD students) join this pipeline as they land.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ldcache.shapes_dataset import ShapesSpec, ensure_shapes_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEACHER_CONFIG = CONFIGS / "tiny" / "gfl_r34_tiny_teacher.py"
console = Console()


def use_shapes_dataset(root: Path) -> Path:
    """Build the dataset if needed and point the shapes configs at it (they read LDCACHE_DATA_ROOT)."""
    root = ensure_shapes_dataset(ShapesSpec(), root)
    os.environ["LDCACHE_DATA_ROOT"] = str(root.resolve()) + "/"
    return root


def train_and_test(config: Path, work_dir: Path, cfg_options: dict | None = None) -> dict:
    """Train a detector with mmengine's Runner, then evaluate it on the val split; returns metrics."""
    from ldcache.runner import runner_from_config

    runner = runner_from_config(config, work_dir, cfg_options)
    runner.train()
    return runner.test()


def run_demo(work_dir: Path, data_root: Path, teacher_epochs: int | None = None,
             fresh: bool = False) -> dict:
    if fresh and work_dir.exists():
        shutil.rmtree(work_dir)
    start = time.perf_counter()
    console.rule("[bold]1/2 dataset")
    root = use_shapes_dataset(data_root)
    console.print(f"shapes dataset ready at {root}")

    console.rule("[bold]2/2 tiny teacher")
    options = {"train_cfg.max_epochs": teacher_epochs} if teacher_epochs else None
    metrics = train_and_test(TEACHER_CONFIG, work_dir / "teacher", options)

    table = Table(title=f"ldcache demo ({time.perf_counter() - start:.0f} s)")
    for column in ("model", "AP", "AP50", "AP75"):
        table.add_column(column)
    table.add_row("teacher (GFL R34 tiny)", *(f"{metrics.get(f'coco/{k}', float('nan')):.3f}"
                                             for k in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75")))
    console.print(table)
    return metrics
