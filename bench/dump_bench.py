"""Benchmark of `ldcache dump-teacher`: the four figures issue 4 asks for, measured in one run.

1. overhead: dump wall time / the teacher's forward passes alone over the same image-views.
2. size: bytes per image-view at COCO geometry (1333x800, about 7 boxes per image with COCO's
   size mix, 80 classes), for the default dump and the size options (value codec, VLR metrics,
   class logits on Main rows only, Main rows only), against dense fp16.
3. fidelity: LD's KL at T=10 between the stored values and the exact fp32 teacher outputs.
4. reading: CPU time to read and decode one complete record, per variant, in a fresh process.

By default it uses a randomly initialised teacher with COCO's 80 classes (no pretrained weights can
be had here), so absolute speeds are not the point: the ratios are, all measured side by side in
this run. Random logits are not a trained teacher's, and how well logits compress depends on them:
`--checkpoint` runs a trained teacher instead (its config's own classes label the synthetic boxes),
and each variant then also reports the bytes an 80-class head would add at most (its extra class
logits stored raw, without compression).

    python bench/dump_bench.py                          # tiny teacher, 16 COCO-geometry images
    python bench/dump_bench.py --teacher configs/coco/gfl_r101_fpn_ms-2x_coco_teacher.py --images 8
    python bench/dump_bench.py --variants default     # overhead, fidelity and read of the default only
    python bench/dump_bench.py --checkpoint work_dirs/experiment/teacher/epoch_12.pth   # trained shapes teacher
    python bench/dump_bench.py --family all --images 4   # figure 2 only, per head family (below)

`--family` (gfl, retina, fcos, atss, gflv2, or all) measures the size figure alone, per head family:
each family's COCO teacher config (configs/coco/*_r101_*teacher.py), randomly initialised with 80
classes, at COCO geometry, its rows per image-view split into Main and VLR, and its bytes per
image-view for each size variant against dense fp16 (raw, not dumped) and against GFL. The bytes
depend on the head's outputs (priors per location, bins, classes) and on the region rows, not on
the backbone: by default the R101 backbone is replaced by a ResNet-18 (`--family-backbone-depth`,
the FPN's in_channels to match) so that all five families run in minutes on a CPU; the FPN and the
head keep the config's widths. The teacher runs once per family: its outputs for an image-view are
kept in memory and reused by the dumps of the other variants (the same weights give the same
outputs). Dense fp16 is computed, locations x priors per location x values x 2 bytes (the dump's
own summary counts locations only). The overhead, fidelity and reading figures are not measured in
this mode.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
COCO_CLASSES = tuple(f"class{i}" for i in range(80))
# name -> DumpOptions fields; "default" is what `ldcache dump-teacher` does without options.
VARIANTS = {
    "default": {},
    "q8": {"dtype": "q8"},
    "q8_main_cls": {"dtype": "q8", "vlr_class_logits": False},
    "q8_main_cls_official": {"dtype": "q8", "vlr_class_logits": False, "vlr_metrics": ("official",)},
    "q8_main_cls_diou": {"dtype": "q8", "vlr_class_logits": False, "vlr_metrics": ("diou",)},
    "main": {"region": "main"},
    "q8_main": {"dtype": "q8", "region": "main"},
    "dense": {"region": "dense"},
}

# --family: each family's COCO teacher, and the variants measured for it by default (dense is not
# dumped: its raw fp16 size is computed, "vs dense fp16").
FAMILIES = {
    "gfl": "configs/coco/gfl_r101_fpn_ms-2x_coco_teacher.py",
    "retina": "configs/coco/retina_dist_r101_fpn_2x_coco_teacher.py",
    "fcos": "configs/coco/fcos_dist_r101_fpn_2x_coco_teacher.py",
    "atss": "configs/coco/atss_dist_r101_fpn_2x_coco_teacher.py",
    "gflv2": "configs/coco/gflv2_dist_r101_fpn_2x_coco_teacher.py",
}
FAMILY_VARIANTS = ("default", "q8", "q8_main_cls", "q8_main_cls_official", "q8_main_cls_diou")
RESNET_STAGE_CHANNELS = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512],
                         50: [256, 512, 1024, 2048], 101: [256, 512, 1024, 2048]}

# COCO train2017: about 7.3 boxes per image; 41% small (< 32^2), 34% medium, 24% large (> 96^2).
COCO_SIZE_MIX = ((0.41, 8, 32), (0.34, 32, 96), (0.25, 96, 400))


def coco_geometry_boxes(rng: np.random.Generator, width: int = 1333, height: int = 800,
                        scale: float = 1.0) -> np.ndarray:
    """Boxes [N, 4] (x, y, w, h) of one image drawn from COCO's box count and size statistics, the
    sizes multiplied by `scale` (COCO's size classes are in original pixels)."""
    boxes = []
    for _ in range(max(1, rng.poisson(7.3))):
        share = rng.random()
        _, lo, hi = next(m for m, c in zip(COCO_SIZE_MIX, np.cumsum([m[0] for m in COCO_SIZE_MIX])) if share <= c)
        side = np.sqrt(rng.uniform(lo * lo, hi * hi)) * scale
        aspect = np.exp(rng.normal(0, 0.5))
        w, h = min(side * np.sqrt(aspect), width - 2), min(side / np.sqrt(aspect), height - 2)
        boxes.append([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])
    return np.array(boxes)


def make_coco_geometry_set(root: Path, num_images: int, classes: tuple[str, ...] = COCO_CLASSES,
                           seed: int = 0) -> tuple[Path, Path]:
    """Synthetic 1333x800 images with boxes drawn from COCO's box count and size statistics."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = 1333, 800
        canvas = rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 8)
        for x, y, w, h in coco_geometry_boxes(rng, width, height):
            cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)),
                          tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, len(classes) + 1)), "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
        name = f"{image_id:06d}.jpg"
        cv2.imwrite(str(root / "images" / name), canvas)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    ann = root / "instances.json"
    categories = [{"id": i, "name": n} for i, n in enumerate(classes, 1)]
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann, root / "images"


def random_teacher_checkpoint(config: Path, out: Path, classes: tuple[str, ...],
                              cfg_options: dict | None = None) -> Path:
    """A random-weight teacher of this architecture for `classes`: its checkpoint and config
    (`cfg_options` merged into it and written with it)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.model.bbox_head.num_classes = len(classes)
    cfg.model.backbone.init_cfg = None
    cfg.train_dataloader.dataset.metainfo = dict(classes=classes)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save({"state_dict": model.state_dict()}, out)
    cfg.dump(str(out.with_suffix(".py")))
    return out.with_suffix(".py")


def forward_only_seconds(model, items, batch_size: int) -> float:
    """The teacher's forward passes over the same image-views, loading included, nothing written."""
    from ldcache.dump.teacher_pass import ViewDataset, _collate
    from ldcache.domain.teacher import teacher_outputs

    loader = torch.utils.data.DataLoader(ViewDataset(items), batch_size=batch_size, num_workers=2,
                                         collate_fn=_collate)
    start = time.perf_counter()
    for _, batch in loader:
        teacher_outputs(model, batch)
    return time.perf_counter() - start


def kl_fidelity(model, reader, items, temperature: float = 10.0) -> float:
    """Mean |KL(p_stored || p_exact) | per edge, nats, with p = softmax(logits / T) over the bins."""
    from ldcache.dump.teacher_pass import ViewDataset, _collate
    from ldcache.domain.teacher import teacher_outputs

    errors = []
    for record, entry, view in items:
        _, batch = _collate([ViewDataset([(record, entry, view)])[0]])
        _, bbox_preds = teacher_outputs(model, batch)
        for level, reg in zip(reader.read_record(record).levels(), bbox_preds):
            w = reg.shape[-1]
            exact = reg[0][:, level.loc // w, level.loc % w].t().reshape(-1, 17).double()
            stored = torch.from_numpy(level.reg.astype(np.float64)).reshape(-1, 17)
            log_p_exact = torch.log_softmax(exact / temperature, -1)
            log_p_stored = torch.log_softmax(stored / temperature, -1)
            kl = (log_p_exact.exp() * (log_p_exact - log_p_stored)).sum(-1)
            errors.append(kl.abs())
    return float(torch.cat(errors).mean())


def in_fresh_process(fn, *args):
    """fn(*args) in a new interpreter. The teacher's forward passes leave OpenMP threads spinning
    on the CPU for a while, and their CPU time would be counted as this process's reading time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def read_seconds_per_record(path: Path, repeats: int = 5) -> float:
    """CPU seconds (this process, all its threads) to read and decode one complete record.

    CPU time, not wall time: the target is per core, and this machine is shared."""
    from ldcache.store.reader import StoreReader

    reader = StoreReader(path)
    reader.read_record(0)  # warm the caches of the first open
    start = time.process_time()
    for _ in range(repeats):
        for r in range(reader.num_records):
            reader.read_record(r)
    return (time.process_time() - start) / (repeats * reader.num_records)


def extra_class_bytes(path: Path, num_classes: int) -> float:
    """Per image-view, the bytes that the class logits of a `num_classes` head would add at most to
    this store: the missing classes of every row that stores class logits, raw fp16 (or fp32)."""
    from ldcache.store.format import FLAG_MAIN, MASK_DTYPE
    from ldcache.store.reader import StoreReader

    reader = StoreReader(path)
    if reader.attrs.values.vlr_class_logits:
        rows = int((reader.ptr[:, -1] - reader.ptr[:, 0]).sum())
    else:
        flags = np.ascontiguousarray(reader.group["masks"][:]).view(MASK_DTYPE)["flags"].reshape(-1)
        rows = int(((flags & FLAG_MAIN) > 0).sum())
    itemsize = 4 if reader.codec.name == "fp32" else 2
    return rows * (num_classes - reader.num_classes) * itemsize / reader.num_records


@contextlib.contextmanager
def teacher_outputs_reused():
    """Within it, the dumps' teacher pass runs the teacher once per image-view (image, flip, input
    shape) and returns the kept outputs to the later dumps of the same image-view: the variants of
    one family differ in what they store, not in the teacher's outputs, and a COCO-geometry forward
    pass takes seconds on a CPU. The loading, gathering, encoding and writing all run as usual."""
    import ldcache.dump.teacher_pass as teacher_pass

    original, kept = teacher_pass.teacher_outputs, {}

    def outputs(model, batch):
        key = tuple((s.img_path, bool(s.metainfo.get("flip", False)), tuple(s.img_shape))
                    for s in batch["data_samples"])
        if key not in kept:
            kept[key] = original(model, batch)
        return kept[key]

    teacher_pass.teacher_outputs = outputs
    try:
        yield
    finally:
        teacher_pass.teacher_outputs = original


def region_rows(path: Path) -> dict:
    """A store's rows per image-view: Main, and VLR rows outside Main (by either stored metric,
    and by each)."""
    from ldcache.store.format import FLAG_MAIN, FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL, MASK_DTYPE
    from ldcache.store.reader import StoreReader

    reader = StoreReader(path)
    flags = np.ascontiguousarray(reader.group["masks"][:]).view(MASK_DTYPE)["flags"].reshape(-1)
    not_main, n = (flags & FLAG_MAIN) == 0, reader.num_records
    return {"main": round(int((~not_main).sum()) / n, 1),
            "vlr": round(int((not_main & ((flags & (FLAG_VLR_OFFICIAL | FLAG_VLR_DIOU)) > 0)).sum()) / n, 1),
            "vlr_official": round(int((not_main & ((flags & FLAG_VLR_OFFICIAL) > 0)).sum()) / n, 1),
            "vlr_diou": round(int((not_main & ((flags & FLAG_VLR_DIOU) > 0)).sum()) / n, 1)}


def dense_fp16_bytes(path: Path) -> int:
    """Raw fp16 bytes of every prior's outputs over a store's image-views: locations x priors per
    location x values. (The dump's summary counts locations only, so it leaves out all priors but
    one of a head with several per location, such as RetinaNet's 9.)"""
    from ldcache.domain.grid import featmap_sizes
    from ldcache.store.reader import StoreReader

    reader = StoreReader(path)
    head = reader.attrs.head
    locations = sum(int(np.prod(size)) for pad in reader.group["pad_shape"][:]
                    for size in featmap_sizes(tuple(pad), head.strides))
    return locations * head.num_base_priors * reader.attrs.value_codec().num_values * 2


def array_bytes(path: Path, image_views: int) -> dict:
    """A local store's bytes per image-view in its mask rows, its logit rows and all the rest."""
    sizes = {child.name: sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
             for child in Path(path).iterdir() if child.is_dir()}
    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    masks, logits = sizes.get("masks", 0), sizes.get("logits", 0)
    return {"masks": round(masks / image_views), "logits": round(logits / image_views),
            "rest": round((total - masks - logits) / image_views)}


def family_sizes(family: str, work: Path, ann: Path, img_dir: Path, views, variants: dict,
                 backbone_depth: int) -> dict:
    """The size figure for one head family: a random-weight teacher of its COCO config (80
    classes; the backbone a ResNet of `backbone_depth`), dumped once per variant."""
    from ldcache.dump.run import DumpOptions, run_dump
    from ldcache.store.reader import StoreReader

    started = time.perf_counter()
    options = None
    if backbone_depth != 101:
        options = {"model.backbone.depth": backbone_depth,
                   "model.neck.in_channels": RESNET_STAGE_CHANNELS[backbone_depth]}
    family_work = work / family
    family_work.mkdir(parents=True, exist_ok=True)
    checkpoint = family_work / "teacher.pth"
    config = random_teacher_checkpoint(REPO / FAMILIES[family], checkpoint, COCO_CLASSES, options)
    results = {}
    with teacher_outputs_reused():
        for name, fields in variants.items():
            out = family_work / f"store-{name}"
            opts = DumpOptions(config, checkpoint, ann, img_dir, out, views, workers=2, block_size=8, **fields)
            summary = run_dump(opts).to_dict()
            image_views = summary["image_views"]
            dense = dense_fp16_bytes(out) / image_views
            results[name] = {"rows_per_image_view": round(sum(summary["rows_per_level"]) / image_views, 1),
                             "bytes_per_image_view": round(summary["bytes_per_image_view"]),
                             "vs_dense_fp16": round(dense / summary["bytes_per_image_view"], 1),
                             "dump_summary_vs_dense_fp16": round(summary["compression_vs_dense_fp16"], 1),
                             "bytes_per_image_view_by_array": array_bytes(out, image_views)}
            if name == "default":
                rows, priors = region_rows(out), StoreReader(out).attrs.head.num_base_priors
            shutil.rmtree(out, ignore_errors=True)  # measured: the next family's stores need the room
    checkpoint.unlink()
    return {"config": FAMILIES[family],
            "backbone": f"ResNet-{backbone_depth}" + ("" if backbone_depth == 101 else " (the config's R101 replaced)"),
            "priors_per_location": priors, "rows_per_image_view_default": rows,
            "dense_fp16_raw_bytes_per_image_view": round(dense),
            "variants": results, "seconds": round(time.perf_counter() - started, 1)}


def family_table(families: dict) -> str:
    """The families' sizes as a markdown table: KB per image-view (1 KB = 1000 bytes), and in
    brackets the ratio to GFL's store of the same variant."""
    names = list(next(iter(families.values()))["variants"])
    gfl = families.get("gfl")
    head = ["family", "priors / location", "rows per image-view, Main / VLR",
            *[f"`{n}` KB" for n in names], "dense fp16 raw, KB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for family, f in families.items():
        cells = [family, str(f["priors_per_location"]),
                 f"{f['rows_per_image_view_default']['main']:,.0f} / {f['rows_per_image_view_default']['vlr']:,.0f}"]
        for n in names:
            size = f["variants"][n]["bytes_per_image_view"]
            ratio = f" ({size / gfl['variants'][n]['bytes_per_image_view']:.2f}x)" if gfl and family != "gfl" else ""
            cells.append(f"{size / 1e3:,.1f}{ratio}")
        cells.append(f"{f['dense_fp16_raw_bytes_per_image_view'] / 1e3:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_families(args, work: Path) -> None:
    """--family: the size figure alone, per head family."""
    from ldcache.domain.views import parse_views

    families = list(FAMILIES) if "all" in args.family else [f for f in FAMILIES if f in args.family]
    names = args.variants or FAMILY_VARIANTS
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "default" or name in names}
    ann, img_dir = make_coco_geometry_set(work / "data", args.images, COCO_CLASSES)
    views = parse_views([tuple(int(v) for v in args.scale.split("x"))], flip=True)
    started = time.perf_counter()
    results = {family: family_sizes(family, work, ann, img_dir, views, variants, args.family_backbone_depth)
               for family in families}
    print(json.dumps({
        "mode": "size per head family", "weights": "random", "classes": len(COCO_CLASSES),
        "images": args.images, "image_views": args.images * len(views), "input": args.scale,
        "note": ("random-weight logits compress differently from a trained teacher's (noise of a small "
                 "range, not peaked, smooth edge distributions); rows do not depend on the weights. "
                 f"Backbone ResNet-{args.family_backbone_depth} for every family (bytes depend on the head's "
                 "outputs and the regions, not on the backbone). Each family's teacher ran once per "
                 "image-view, its outputs reused by every variant's dump."),
        "seconds": round(time.perf_counter() - started, 1),
        "families": results,
    }, indent=2))
    print()
    print(family_table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=REPO / "configs/tiny/gfl_r34_tiny_teacher.py")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained checkpoint of --teacher (default: random weights, 80 classes)")
    parser.add_argument("--images", type=int, default=None, help="synthetic images (default 16; 4 with --family)")
    parser.add_argument("--scale", default="1333x800")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="dump options to measure (default: all; with --family: " + " ".join(FAMILY_VARIANTS) + "); "
                             "'default' is always measured (the overhead uses it)")
    parser.add_argument("--family", nargs="+", choices=[*FAMILIES, "all"], default=None,
                        help="measure the size figure alone for these head families' COCO teachers "
                             "(random weights, 80 classes), instead of --teacher's four figures")
    parser.add_argument("--family-backbone-depth", type=int, choices=sorted(RESNET_STAGE_CHANNELS), default=18,
                        help="with --family: the ResNet depth put in place of the configs' R101 (the "
                             "bytes do not depend on it; 101 keeps the configs' own)")
    args = parser.parse_args()
    if args.images is None:
        args.images = 4 if args.family else 16
    if args.family:
        if args.checkpoint:
            parser.error("--checkpoint applies to --teacher, not to --family (random weights)")
        work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        main_families(args, work)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        return
    args.variants = args.variants or list(VARIANTS)
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "default" or name in args.variants}

    from ldcache.domain.ld_config import load_config
    from ldcache.domain.teacher import build_teacher
    from ldcache.store.reader import StoreReader
    from ldcache.domain.views import parse_views
    from ldcache.dump.run import DumpOptions, run_dump
    from ldcache.dump.scan import scan_dataset

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        config, checkpoint = args.teacher, args.checkpoint
        classes = tuple(load_config(config).train_dataloader.dataset.metainfo.classes)
    else:
        checkpoint, classes = work / "teacher.pth", COCO_CLASSES
        config = random_teacher_checkpoint(args.teacher, checkpoint, classes)
    ann, img_dir = make_coco_geometry_set(work / "data", args.images, classes)
    scale = tuple(int(v) for v in args.scale.split("x"))
    views = parse_views([scale], flip=True)

    results = {}
    for name, fields in variants.items():
        out = work / f"store-{name}"
        opts = DumpOptions(config, checkpoint, ann, img_dir, out, views, workers=2, block_size=8, **fields)
        start = time.perf_counter()
        summary = run_dump(opts)
        results[name] = {"wall": time.perf_counter() - start, **summary.to_dict()}

    model = build_teacher(load_config(config), checkpoint, "cpu")
    scan = scan_dataset(ann, img_dir, classes)
    reader = StoreReader(work / "store-default")
    items = [(reader.record_index(e.image_id, v), e, view)
             for e in scan.images for v, view in enumerate(views)]
    forward = forward_only_seconds(model, items, batch_size=1)
    default = results["default"]
    sizes = {name: {"bytes_per_image_view": round(r["bytes_per_image_view"]),
                    "vs_dense_fp16": round(r["compression_vs_dense_fp16"], 1),
                    "rows_per_image_view": round(sum(r["rows_per_level"]) / r["image_views"]),
                    "read_cpu_ms_per_record": round(
                        in_fresh_process(read_seconds_per_record, work / f"store-{name}") * 1e3, 3)}
             for name, r in results.items()}
    if len(classes) < len(COCO_CLASSES):
        for name, size in sizes.items():
            size["bytes_per_image_view_at_80_classes_at_most"] = round(
                size["bytes_per_image_view"] + extra_class_bytes(work / f"store-{name}", len(COCO_CLASSES)))
    print(json.dumps({
        "teacher": str(args.teacher.relative_to(REPO)),
        "weights": str(args.checkpoint) if args.checkpoint else "random", "image_views": default["image_views"],
        "input": args.scale, "classes": len(classes),
        "overhead_dump_over_forward": round(default["wall"] / forward, 3),
        "dump_seconds": round(default["wall"], 2), "forward_only_seconds": round(forward, 2),
        "dense_fp16_raw_bytes_per_image_view": round(default["dense_fp16_bytes"] / default["image_views"]),
        "rows_per_level": default["rows_per_level"],
        "kl_T10_error_nats_per_edge": {name: kl_fidelity(model, StoreReader(work / f"store-{name}"), items[:4])
                                       for name in ("default", "q8") if name in results},
        "variants": sizes,
    }, indent=2))


if __name__ == "__main__":
    main()
