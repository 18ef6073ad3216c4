"""Benchmark of `ldcache train-student`: step time and peak memory of plain, cached-LD and
online-LD training of a GFL R18 student (full width: 256-channel FPN, 4-conv head) with a
GFL R101 teacher, on the shapes dataset at 320 px, CPU.

Each mode runs in its own process (peak RSS is per process). The modes take turns over several
rounds, so machine drift hits all of them alike. Step time is the median wall time of a
training step, data loading included (num_workers=0, so it is not hidden). The teacher has
random weights, since no pretrained weights can be had here; that changes no timing.

    python bench/train_bench.py [--steps 12] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
MODES = ("plain", "cached", "online")
R18_FULL_WIDTH = dict(
    backbone=dict(depth=18),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=256),
    bbox_head=dict(in_channels=256, feat_channels=256, stacked_convs=4))


def student_config(mode: str, store: Path, teacher: tuple[Path, Path]):
    from mmengine.config import Config

    from ldcache.train.student import use_cache, use_online_teacher

    cfg = Config.fromfile(str(REPO / "configs/tiny/ld_r18_tiny_cached.py"))
    cfg.merge_from_dict({"model": R18_FULL_WIDTH, "train_dataloader.batch_size": 2,
                         "train_dataloader.num_workers": 0})
    if mode == "plain":
        cfg.model.bbox_head = {k: v for k, v in cfg.model.bbox_head.items()
                               if k not in ("loss_ld", "loss_ld_vlr", "loss_kd", "loss_kd_vlr", "vlr_gamma",
                                            "vlr_metric", "normalize", "kd_reduction")}
        cfg.model.bbox_head["type"] = "GFLHead"
        pipeline = cfg.train_dataloader.dataset.pipeline
        pipeline[:] = [s for s in pipeline if s["type"] != "LoadLDTargets"]
    elif mode == "cached":
        use_cache(cfg, str(store))
    else:
        use_online_teacher(cfg, *teacher)
    return cfg


def measure(mode: str, store: Path, teacher: tuple[Path, Path], steps: int, warmup: int) -> dict:
    """One mode in this process: median step seconds and peak RSS."""
    import itertools

    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    import ldcache.train  # noqa: F401

    register_all_modules()
    torch.manual_seed(0)
    cfg = student_config(mode, store, teacher)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = itertools.cycle(Runner.build_dataloader(cfg.train_dataloader, seed=0))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        model.train_step(next(loader), optim)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    teacher_params = sum(p.numel() for p in model.__dict__["teacher"].parameters()) if mode == "online" else 0
    return {"mode": mode, "step_s": statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "teacher_params": teacher_params}


def prepare(work: Path) -> tuple[Path, tuple[Path, Path]]:
    """Shapes dataset, a random R101 teacher for 3 classes, and its store."""
    from dump_bench import random_teacher_checkpoint

    from ldcache.demo.shapes import CLASSES, ShapesSpec, ensure_shapes_dataset
    from ldcache.domain.views import parse_views
    from ldcache.dump.run import DumpOptions, run_dump

    root = ensure_shapes_dataset(ShapesSpec())
    ckpt = work / "teacher_r101.pth"
    teacher_cfg = random_teacher_checkpoint(REPO / "configs/coco/gfl_r101_fpn_ms-2x_coco_teacher.py", ckpt, CLASSES)
    store = work / "store"
    if not store.exists():
        run_dump(DumpOptions(teacher_cfg, ckpt, root / "annotations/instances_train.json", root / "images/train",
                             store, parse_views([(320, 320)], flip=True), workers=0))
    return root, store, (teacher_cfg, ckpt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.store, tuple(args.teacher), args.steps, args.warmup)))
        return

    import os

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root, store, teacher = prepare(work)
    env = {**os.environ, "LDCACHE_DATA_ROOT": str(root) + "/"}
    results = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--store", str(store), "--teacher",
                                  *map(str, teacher), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                 env=env, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    step = {m: statistics.median(r["step_s"] for r in results[m]) for m in MODES}
    rss = {m: max(r["peak_rss_mb"] for r in results[m]) for m in MODES}
    print(json.dumps({
        "student": "GFL R18 (256-ch FPN, 4-conv head)", "teacher": "GFL R101 (random weights)",
        "input": "shapes 320x320 / 320x256, batch 2, CPU", "steps_per_round": args.steps, "rounds": args.rounds,
        "step_seconds": {m: round(v, 3) for m, v in step.items()},
        "cached_over_plain": round(step["cached"] / step["plain"], 3),
        "online_over_cached": round(step["online"] / step["cached"], 3),
        "peak_rss_mb": {m: round(v) for m, v in rss.items()},
        "teacher_params_in_process": {m: results[m][0]["teacher_params"] for m in MODES},
    }, indent=2))


if __name__ == "__main__":
    main()
