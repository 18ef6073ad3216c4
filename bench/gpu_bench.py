"""ldcache on one GPU at COCO geometry, everything in one run (a few minutes) and one table.

- the teacher's forward passes alone, with the dump's own loader, batch size and precision;
- `dump-teacher` end to end (pass 1 included) for the fp16 defaults and the q8 store official LD
  needs: image-views/s and its wall time over the forward passes alone (targets: >= 120/s, <= 1.25x);
- the same images dumped on the CPU: masks identical, logits close (LD's KL at T=10);
- training steps of GFL R18 and R50 students at 2 and 8 images per GPU, fp32 and bf16 AMP: plain,
  cached LD and online LD, with the ratios cached/plain (target <= 1.05) and online/cached;
- evaluation on CUDA: a student's test_step on CUDA tensors (mmcv's NMS has no CUDA op here).

The teacher is mmdet's GFL R101 FPN with random weights (no pretrained weights can be had on the
lent machines); the images are synthetic 1333x800 with COCO's box count and size mix, 80 classes.

    python bench/gpu_bench.py [--images 64] [--workers 8] [--out gpu_bench.json]
    python bench/gpu_bench.py --smoke --device cpu     # a tiny run of every step, to check the script
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from dump_bench import COCO_CLASSES, make_coco_geometry_set, random_teacher_checkpoint  # noqa: E402

DUMPS = {"fp16 defaults": {}, "q8 official LD": {"dtype": "q8", "vlr_class_logits": False,
                                                 "vlr_metrics": ("official",)}}
STUDENTS = {"R18": "configs/coco/ld_r18-gfl-r101_fpn_1x_coco_cached.py",
            "R50": "configs/coco/ld_r50-gfl-r101_fpn_1x_coco_cached.py"}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_alone(model, records, batch_size: int, workers: int, device: str) -> float:
    """Seconds of the teacher's forward passes over these (record, entry, view) items, loading included."""
    from ldcache.domain.teacher import teacher_outputs
    from ldcache.dump.teacher_pass import ViewDataset, _collate

    loader = torch.utils.data.DataLoader(ViewDataset(records), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate)
    start = time.perf_counter()
    for _, batch in loader:
        teacher_outputs(model, batch)
    _sync(device)
    return time.perf_counter() - start


def dump(work: Path, name: str, teacher: tuple[Path, Path], ann: Path, img_dir: Path, device: str, workers: int,
         **options) -> tuple[Path, float]:
    from ldcache.dump.run import DumpOptions, run_dump
    from ldcache.domain.views import parse_views

    out = work / f"{name.replace(' ', '_')}-{device.replace(':', '')}.zarr"
    start = time.perf_counter()
    run_dump(DumpOptions(teacher[0], teacher[1], ann, img_dir, out, parse_views([(1333, 800)], flip=True),
                         device=device, workers=workers, **options))
    return out, time.perf_counter() - start


def stores_agree(gpu_store: Path, cpu_store: Path, records: int) -> dict:
    """Masks equal, and the largest logit difference and mean LD KL at T=10 between two stores."""
    from ldcache.store.reader import StoreReader

    a, b = StoreReader(gpu_store), StoreReader(cpu_store)
    same_masks, diff, kl = True, 0.0, []
    for record in range(records):
        ta, tb = a.read_record(record), b.read_record(record)
        same_masks &= bool(np.array_equal(ta.masks, tb.masks))
        diff = max(diff, float(np.abs(ta.values.astype(np.float32) - tb.values.astype(np.float32)).max(initial=0)))
        for la, lb in zip(ta.levels(), tb.levels()):
            p = torch.log_softmax(torch.from_numpy(lb.reg.astype(np.float64)) / 10, -1)
            q = torch.log_softmax(torch.from_numpy(la.reg.astype(np.float64)) / 10, -1)
            kl.append((p.exp() * (p - q)).sum(-1).reshape(-1))
    return {"masks_identical": same_masks, "logits_max_abs_diff": diff,
            "kl_t10_mean": float(torch.cat(kl).mean()) if kl else 0.0}


def student_cfg(config: str, mode: str, store: Path, teacher: tuple[Path, Path], ann: Path, img_dir: Path,
                batch: int, amp: bool):
    from mmengine.config import Config

    from ldcache.train.student import use_cache, use_online_teacher

    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.init_cfg = None  # no download; weights do not change a step's time
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root="", ann_file=str(ann), data_prefix=dict(img=str(img_dir) + "/"),
                   metainfo=dict(classes=COCO_CLASSES), filter_cfg=dict(filter_empty_gt=False))
    cfg.train_dataloader.update(batch_size=batch, num_workers=4, persistent_workers=False)
    if amp:
        cfg.optim_wrapper = dict(type="AmpOptimWrapper", dtype="bfloat16", optimizer=cfg.optim_wrapper.optimizer)
    if mode == "plain":
        cfg.model.bbox_head = {k: v for k, v in cfg.model.bbox_head.items() if k != "type"}
        cfg.model.bbox_head["type"] = "GFLHead"
        dataset.pipeline = [s for s in dataset.pipeline if s["type"] != "LoadLDTargets"]
    elif mode == "cached":
        use_cache(cfg, str(store))
    else:
        use_online_teacher(cfg, *teacher)
    return cfg


def step_seconds(cfg, device: str, steps: int, warmup: int) -> float:
    """Median seconds of a training step (data loading included)."""
    import itertools

    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = itertools.cycle(Runner.build_dataloader(cfg.train_dataloader, seed=0))
    times = []
    for i in range(warmup + steps):
        data = next(loader)
        _sync(device)
        start = time.perf_counter()
        model.train_step(data, optim)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluates_on_device(config: str, ann: Path, img_dir: Path, device: str) -> str:
    """'ok (N boxes)' when a student's test_step runs on `device`, else the error."""
    from mmdet.registry import DATASETS, MODELS
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.init_cfg = None
    dataset_cfg = cfg.test_dataloader.dataset
    dataset_cfg.update(data_root="", ann_file=str(ann), data_prefix=dict(img=str(img_dir) + "/"),
                       metainfo=dict(classes=COCO_CLASSES), test_mode=True)
    dataset = DATASETS.build(dataset_cfg)
    model = MODELS.build(cfg.model).to(device).eval()
    try:
        with torch.no_grad():
            results = model.test_step(pseudo_collate([dataset[0], dataset[1]]))
    except Exception as err:  # the figure is whether it runs, and the reason if not
        return f"fails: {str(err).splitlines()[0][:120]}"
    return f"ok ({sum(len(r.pred_instances.bboxes) for r in results)} boxes)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8, help="loader workers of the dump and forward passes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny teacher, 4 images, R18 at batch 2 in fp32 only")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()

    from mmdet.utils import register_all_modules

    import ldcache.train
    from ldcache.dump.scan import scan_dataset
    from ldcache.domain.ld_config import load_config
    from ldcache.domain.teacher import build_teacher
    from ldcache.domain.views import parse_views

    register_all_modules()
    ldcache.train.install()  # NMS of CUDA tensors without mmcv's CUDA ops: no runner builds this model
    started = time.perf_counter()
    images = 4 if args.smoke else args.images
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-gpu-"))
    ann, img_dir = make_coco_geometry_set(work / "data", images)
    teacher_arch = "configs/tiny/gfl_r18_tiny.py" if args.smoke else "configs/coco/gfl_r101_fpn_ms-2x_coco_teacher.py"
    teacher_cfg = random_teacher_checkpoint(REPO / teacher_arch, work / "teacher.pth", COCO_CLASSES)
    teacher = (teacher_cfg, work / "teacher.pth")
    figures: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                     "torch": torch.__version__, "images": images, "image_views": 2 * images}

    model = build_teacher(load_config(teacher_cfg), teacher[1], args.device)
    scan = scan_dataset(ann, img_dir, COCO_CLASSES)
    items = [(r, e, v) for r, (e, v) in enumerate((e, v) for e in scan.images
                                                  for v in parse_views([(1333, 800)], flip=True))]
    forward_alone(model, items[:4], 1, 0, args.device)  # warm-up: cuDNN autotuning, lazy init
    forward = forward_alone(model, items, 1, args.workers, args.device)
    figures["forward_alone_views_per_s"] = len(items) / forward
    for name, options in DUMPS.items():
        store, seconds = dump(work, name, teacher, ann, img_dir, args.device, args.workers, **options)
        figures[f"dump {name}"] = {"views_per_s": len(items) / seconds, "over_forward_alone": seconds / forward,
                                   "store": str(store)}
    del model
    if args.device != "cpu":
        subset = work / "subset.json"
        coco = json.loads(ann.read_text())
        coco["images"] = coco["images"][:2]
        subset.write_text(json.dumps(coco))
        cpu_store, _ = dump(work, "agreement", teacher, subset, img_dir, "cpu", 2)
        gpu_store, _ = dump(work, "agreement", teacher, subset, img_dir, args.device, 2)
        figures["gpu_vs_cpu_store"] = stores_agree(gpu_store, cpu_store, 4)

    store = Path(figures["dump fp16 defaults"]["store"])
    students = {"R18": STUDENTS["R18"]} if args.smoke else STUDENTS
    batches, precisions = ((2,), (False,)) if args.smoke else ((2, 8), (False, True))
    steps, warmup = (2, 1) if args.smoke else (args.steps, 3)
    for student, config in students.items():
        for batch in batches:
            for amp in precisions:
                times = {mode: step_seconds(student_cfg(config, mode, store, teacher, ann, img_dir, batch, amp),
                                            args.device, steps, warmup) for mode in ("plain", "cached", "online")}
                key = f"train {student} batch {batch} {'bf16 AMP' if amp else 'fp32'}"
                figures[key] = {**{f"{m}_ms": 1000 * t for m, t in times.items()},
                                "cached_over_plain": times["cached"] / times["plain"],
                                "online_over_cached": times["online"] / times["cached"]}
    figures["evaluation on device"] = evaluates_on_device("configs/coco/gfl_r18_fpn_1x_coco.py", ann, img_dir,
                                                          args.device)
    figures["bench_seconds"] = time.perf_counter() - started
    print_table(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def print_table(figures: dict) -> None:
    rows = [("device", figures["device"], ""), ("teacher forward alone, batch 1",
                                                f"{figures['forward_alone_views_per_s']:.1f} image-views/s", "")]
    for name in DUMPS:
        d = figures[f"dump {name}"]
        rows.append((f"dump, {name}", f"{d['views_per_s']:.1f} image-views/s; {d['over_forward_alone']:.2f}x the "
                                      "forward passes alone", ">= 120/s, <= 1.25x"))
    if "gpu_vs_cpu_store" in figures:
        g = figures["gpu_vs_cpu_store"]
        rows.append(("GPU vs CPU store", f"masks identical: {g['masks_identical']}; logits max diff "
                                         f"{g['logits_max_abs_diff']:.2g}; KL T=10 {g['kl_t10_mean']:.2g}", ""))
    for key, value in figures.items():
        if key.startswith("train "):
            rows.append((key, f"plain {value['plain_ms']:.1f} / cached {value['cached_ms']:.1f} / online "
                              f"{value['online_ms']:.1f} ms: cached/plain {value['cached_over_plain']:.3f}, "
                              f"online/cached {value['online_over_cached']:.2f}", "cached/plain <= 1.05"))
    rows.append(("student test_step on the device", figures["evaluation on device"], "runs"))
    rows.append(("this benchmark's wall time", f"{figures['bench_seconds']:.0f} s", "<= 300 s"))
    print("| figure | measured | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
