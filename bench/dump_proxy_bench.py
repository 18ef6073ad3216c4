"""The dump's own CPU cost, without a GPU: `dump-teacher` with a stand-in teacher that costs nothing.

The stand-in returns fixed random logits of the teacher head's shapes (made once per input shape),
so what is measured is everything the dump does besides the teacher: the annotation scan, pass 1
(regions, layout, masks), image decoding in the loader, gathering the rows, encoding, compressing
and writing them, and the statistics. It reports the CPU time (the dump's process and its loader
workers) and the wall time per image-view at COCO geometry (1333x800 images, COCO's box count and
size mix, 80 classes, identity and flipped view), for the fp16 defaults and for the q8 store
official LD needs (`--dtype q8 --no-vlr-class-logits --vlr-metric official`). What a COCO dump
pays per image-view is the marginal cost: each figure is the difference between a dump of
`--images` B and one of A images, divided by the image-views between them, so that start-up
(imports, building the teacher, worker processes) is left out.

With `--baseline PATH` (a checkout of another ldcache version, e.g. `git worktree add ../base
deb94bd`) it measures that version too, in turns with this one, on the same images: the ratio of
the two is the figure to read. Absolute times drift on a shared machine; the ratio much less.

With `--stages` it also times each stage of the dump alone, in one thread, on the same images
(image decoding and the loader's pipeline, region rows, gathering, encoding, statistics,
compression), for each version: where the per-image-view time goes, and what is left outside
the stages (threads, loader workers' transfers, pass 1's staging, writing files).

    python bench/dump_proxy_bench.py [--images 16 64] [--rounds 2] [--baseline ../base] [--stages]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
VARIANTS = {
    "fp16 defaults": {},
    "q8 official LD": {"dtype": "q8", "vlr_class_logits": False, "vlr_metrics": ("official",)},
}
# The stages `--stages` times that add up to the dump's own work; its other rows are details of these.
DUMP_STAGES = ("loader pipeline (read, decode, resize, flip, pack)", "region rows (RegionRowMaker.rows, pass 1)",
               "gather_logits", "encode (ValueCodec.encode)", "decode for the statistics",
               "statistics (rows_statistics)", "compress + checksum (zarr, in memory)")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _dump_api():
    """(DumpOptions, run_dump, parse_views, the stand-in teacher), for this layout of ldcache or the
    one before it (a single `pipelines/dump.py`); every loaded module that calls `teacher_outputs`
    then calls the stand-in, whichever module of the dump's that is."""
    try:
        from ldcache.dump.run import DumpOptions, run_dump
        from ldcache.domain.views import parse_views
    except ImportError:
        from ldcache.views import parse_views
        from pipelines.dump import DumpOptions, run_dump
    stand_in = _stand_in_teacher()
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("ldcache", "pipelines") and hasattr(module, "teacher_outputs"):
            module.teacher_outputs = stand_in
    return DumpOptions, run_dump, parse_views, stand_in


def _stand_in_teacher():
    """teacher_outputs with fixed random logits per padded batch shape: the teacher, its input
    normalisation included, costs (almost) nothing."""
    import torch

    made = {}

    def outputs(model, batch):
        outputs.calls += 1
        shapes = [sample.img_shape for sample in batch["data_samples"]]
        key = (len(shapes), *(-(-max(s[i] for s in shapes) // 32) * 32 for i in (0, 1)))
        if key not in made:
            head = model.bbox_head
            gen = torch.Generator().manual_seed(0)
            sizes = [(-(-key[1] // s), -(-key[2] // s)) for s in (int(s[0]) for s in head.prior_generator.strides)]
            made[key] = ([torch.randn(key[0], head.num_classes, h, w, generator=gen) * 2 - 6 for h, w in sizes],
                         [torch.randn(key[0], 4 * (head.reg_max + 1), h, w, generator=gen) * 3 for h, w in sizes])
        return made[key]

    outputs.calls = 0
    return outputs


def write_teacher(work: Path) -> None:
    """work/teacher.py and work/teacher.pth: a random-weight tiny GFL with COCO's 80 classes."""
    from mmengine.config import Config

    from dump_bench import COCO_CLASSES, random_teacher_checkpoint

    config = random_teacher_checkpoint(REPO / "configs/tiny/gfl_r18_tiny.py", work / "teacher.pth", COCO_CLASSES)
    # A teacher needs no ldcache components, and a baseline may not have today's module names.
    cfg = Config.fromfile(str(config), import_custom_modules=False)
    for key in ("custom_imports", "runner_type"):
        cfg.pop(key, None)
    cfg.dump(str(work / "teacher.py"))


def write_subsets(ann: Path, counts) -> None:
    """instances-{count}.json beside the annotation file `ann`: its first `count` images, their boxes."""
    coco = json.loads(ann.read_text())
    for count in counts:
        subset = dict(coco, images=coco["images"][:count])
        kept = {im["id"] for im in subset["images"]}
        subset["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
        (ann.parent / f"instances-{count}.json").write_text(json.dumps(subset))


def measure(work: Path, images: int, variant: str, out: Path) -> dict:
    """One dump of the first `images` images in this process (the child side of `run_child`)."""
    import torch

    torch.set_num_threads(1)  # the dump's own threads: the stand-in teacher needs none
    DumpOptions, run_dump, parse_views, stand_in = _dump_api()
    opts = DumpOptions(work / "teacher.py", work / "teacher.pth", work / f"data/instances-{images}.json",
                       work / "data/images", out, parse_views([(1333, 800)], flip=True), workers=2, **VARIANTS[variant])
    cpu, wall = _cpu_seconds(), time.perf_counter()
    summary = run_dump(opts)
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    if not stand_in.calls:
        raise SystemExit("the dump never called the stand-in teacher: it ran the real one, and its time would "
                         "count as the dump's own; patch the module that now calls teacher_outputs")
    summary = summary if isinstance(summary, dict) else summary.to_dict()
    return {"cpu_s": cpu, "wall_s": wall, "bytes_per_view": summary["bytes_per_image_view"],
            "image_views": summary["image_views"],
            "rows_per_view": sum(summary["rows_per_level"]) / summary["image_views"]}


def _timed(totals: dict, stage: str, fn, *args):
    """fn(*args), its CPU time (all of this process's threads: zarr compresses in a pool) added to
    totals[stage]."""
    start = time.process_time()
    result = fn(*args)
    totals[stage] = totals.get(stage, 0.0) + time.process_time() - start
    return result


def _coco_sized_jpeg(work: Path) -> Path:
    """A 640x480 JPEG, COCO's most common image size (the synthetic set's are 1333x800 already)."""
    import cv2
    import numpy as np

    path = work / "data/coco-sized.jpg"
    if not path.is_file():
        rng = np.random.default_rng(0)
        cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8), (0, 0), 8))
    return path


def _image_stages(totals: dict, work: Path, dataset, records: list) -> None:
    """The loader's side: JPEG decoding alone, the whole pipeline, and a COCO-sized image's decode
    and resize to the view's scale (what a real COCO dump decodes)."""
    import mmcv

    coco_bytes = _coco_sized_jpeg(work).read_bytes()
    for i, (entry, view) in enumerate(records):
        data = Path(entry.path).read_bytes()
        _timed(totals, "JPEG decode alone (1333x800)", mmcv.imfrombytes, data)
        _timed(totals, "COCO-sized JPEG (640x480): decode + resize to 1067x800",
               lambda: mmcv.imrescale(mmcv.imfrombytes(coco_bytes), view.scale))
        _timed(totals, "loader pipeline (read, decode, resize, flip, pack)", dataset.__getitem__, i)


def _block_stages(totals: dict, per_record: list, values, codec, variant: str, store: Path) -> None:
    """The writer's side, on all records as one block (`values`: their gathered logits): encoding,
    decoding for the statistics, the statistics, and compressing the rows with the store's own
    codecs (zarr, in memory)."""
    import numpy as np
    import zarr

    from ldcache.store.format import FLAG_MAIN
    from ldcache.store.statistics import rows_statistics

    masks = np.concatenate([level for levels in per_record for level in levels])
    num_levels = len(per_record[0])
    # The rows lie record by record, level by level: record r's row pointers are bounds[r*L : r*L + L + 1].
    bounds = np.concatenate([[0], np.cumsum([len(level) for levels in per_record for level in levels])])
    ptr = np.lib.stride_tricks.sliding_window_view(bounds, num_levels + 1)[::num_levels]
    if not VARIANTS[variant].get("vlr_class_logits", True):
        values[(masks["flags"] & FLAG_MAIN) == 0, 4 * codec.bins:] = 0
    stored = _timed(totals, "encode (ValueCodec.encode)", codec.encode, values)
    decoded = _timed(totals, "decode for the statistics", codec.decode, stored)
    _timed(totals, "statistics (rows_statistics)", rows_statistics, masks["flags"], decoded, ptr, 0, codec.bins)
    group = zarr.open_group(str(store), mode="r")
    for name, rows in (("logits", stored), ("masks", masks.view(np.uint8).reshape(len(masks), -1))):
        target = _empty_like(group[name], len(rows))
        _timed(totals, "compress + checksum (zarr, in memory)", target.__setitem__, slice(0, len(rows)), rows)


def _empty_like(source, rows: int):
    """An in-memory array with `source`'s codecs, chunks and shards, at least `rows` long."""
    import zarr

    return zarr.create_array(zarr.storage.MemoryStore(), shape=(max(rows, source.shape[0]), *source.shape[1:]),
                             dtype=source.dtype, chunks=source.chunks, shards=source.shards, filters=source.filters,
                             compressors=source.compressors, serializer=source.serializer,
                             fill_value=source.fill_value, config={"write_empty_chunks": True})


def measure_stages(work: Path, images: int, variant: str, store: Path) -> dict:
    """CPU ms per image-view of each stage of the dump, each timed alone in this one thread, on the
    first `images` images (the child side of `run_child`). `store` is a dump of those images with
    the same options, whose arrays' codecs the compression stage copies."""
    import numpy as np
    import torch

    from ldcache.domain.grid import featmap_sizes
    from ldcache.domain.regions import compute_regions
    from ldcache.domain.rows import RegionRowMaker, gather_logits
    from ldcache.domain.ld_config import load_config, train_classes
    from ldcache.domain.region_rule import region_rule
    from ldcache.domain.teacher import build_teacher
    from ldcache.domain.views import boxes_in_view, parse_views, view_geometry
    from ldcache.dump.scan import scan_dataset
    from ldcache.dump.teacher_pass import ViewDataset, _collate
    from ldcache.store.codec import ValueCodec

    torch.set_num_threads(1)
    cfg = load_config(work / "teacher.py")
    model = build_teacher(cfg, work / "teacher.pth", "cpu")
    head, fields = model.bbox_head, VARIANTS[variant]
    strides = [int(s[0]) for s in head.prior_generator.strides]
    scan = scan_dataset(work / f"data/instances-{images}.json", work / "data/images", train_classes(cfg))
    records = [(e, v) for e in scan.images for v in parse_views([(1333, 800)], flip=True)]
    rule = region_rule(head)
    maker = RegionRowMaker(head.prior_generator, strides, "distill", 0.25, rule,
                           tuple(fields.get("vlr_metrics", ("official", "diou"))))
    codec = ValueCodec(fields.get("dtype", "fp16"), head.reg_max + 1, head.num_classes)
    dataset, teacher = ViewDataset([(i, e, v) for i, (e, v) in enumerate(records)]), _stand_in_teacher()
    totals = {}
    _image_stages(totals, work, dataset, records)
    per_record, values = [], []
    for i, (entry, view) in enumerate(records):
        geo = view_geometry(entry.width, entry.height, view)
        boxes = boxes_in_view(entry.boxes, geo)
        anchors, counts = maker.anchors(geo.pad_shape)
        _timed(totals, "compute_regions (inside region rows)", compute_regions, anchors, list(counts), boxes.float(),
               0.25, rule.topk)
        levels = _timed(totals, "region rows (RegionRowMaker.rows, pass 1)", maker.rows, boxes, geo.pad_shape)
        cls_scores, bbox_preds = teacher(model, _collate([dataset[i]])[1])
        grid = featmap_sizes(tuple(geo.pad_shape), strides)
        values.append(_timed(totals, "gather_logits", lambda: gather_logits(cls_scores, bbox_preds, 0, levels, grid)
                             .cpu().numpy()))
        per_record.append(levels)
    _block_stages(totals, per_record, np.concatenate(values), codec, variant, store)
    return {stage: 1000 * seconds / len(records) for stage, seconds in totals.items()}


def run_child(code_root: Path, work: Path, images: int, variant: str, out: Path, mode: str = "--child") -> dict:
    """`measure` (or with mode "--child-stages", `measure_stages`) in a fresh interpreter that
    imports ldcache from `code_root`."""
    if mode == "--child":  # a store left by an earlier run in the same --workdir would be refused
        for path in (out, Path(f"{out}.pass1")):
            shutil.rmtree(path, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": f"{code_root}{os.pathsep}{BENCH}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__, mode, str(work), str(images), variant, str(out)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the dump under {code_root} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs=2, default=(16, 64), metavar=("A", "B"),
                        help="the two dataset sizes whose difference gives the marginal cost")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, default=None, help="checkout of the ldcache version to compare with")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage alone, per version, on the smaller set's images")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-stages", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.child_stages:
        work, images, variant, out = args.child or args.child_stages
        measure_child = measure if args.child else measure_stages
        print(json.dumps(measure_child(Path(work), int(images), variant, Path(out))))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-proxy-"))
    small, large = sorted(args.images)
    if not (work / f"data/instances-{large}.json").is_file():
        from dump_bench import make_coco_geometry_set

        ann, _ = make_coco_geometry_set(work / "data", large)
        write_subsets(ann, (small, large))
        write_teacher(work)
    versions = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    runs = {(v, k): [] for v in versions for k in VARIANTS}
    stage_runs = {(v, k): [] for v in versions for k in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            for version, root in versions.items():
                stores = [work / f"store-{version}-{round_}-{count}-{variant.replace(' ', '_')}.zarr"
                          for count in (small, large)]
                pair = [run_child(root, work, count, variant, out) for count, out in zip((small, large), stores)]
                if args.stages:  # in turns with the dumps too, so that the machine's load hits all alike
                    stage_runs[version, variant].append(
                        run_child(root, work, small, variant, stores[0], "--child-stages"))
                views = pair[1]["image_views"] - pair[0]["image_views"]
                runs[version, variant].append({
                    "cpu_ms": 1000 * (pair[1]["cpu_s"] - pair[0]["cpu_s"]) / views,
                    "wall_ms": 1000 * (pair[1]["wall_s"] - pair[0]["wall_s"]) / views,
                    "bytes": pair[1]["bytes_per_view"], "cpu_ms_whole": 1000 * pair[1]["cpu_s"] / pair[1]["image_views"]})
    rows = []
    for variant in VARIANTS:
        row = {"variant": variant}
        for version in versions:
            done = runs[version, variant]
            row[f"{version}: CPU ms per image-view"] = round(statistics.median(r["cpu_ms"] for r in done), 1)
            row[f"{version}: wall ms"] = round(statistics.median(r["wall_ms"] for r in done), 1)
            row[f"{version}: CPU ms, whole run"] = round(statistics.median(r["cpu_ms_whole"] for r in done), 1)
            row[f"{version}: KB per image-view"] = round(done[0]["bytes"] / 1000, 1)
        if args.baseline:
            row["CPU this / baseline"] = round(row["this: CPU ms per image-view"]
                                               / row["baseline: CPU ms per image-view"], 3)
        rows.append(row)
    stages = {variant: {version: {name: statistics.median(run[name] for run in stage_runs[version, variant])
                                  for name in stage_runs[version, variant][0]}
                        for version in versions} for variant in VARIANTS} if args.stages else {}
    print(json.dumps({"images": [small, large], "rounds": args.rounds, "rows": rows, "stages": stages}, indent=2))
    print_table(rows)
    for row in rows:
        if row["variant"] in stages:
            print(f"\n{row['variant']}: CPU ms per image-view, each stage alone in one thread ({small} images, "
                  f"median of {args.rounds})")
            print_table(stage_rows(stages[row["variant"]], row))


def stage_rows(stages: dict, dump_row: dict) -> list[dict]:
    """Table rows of `--stages`: each stage per version, their sum, the dump's marginal CPU time
    and what lies outside the stages; with a baseline, this / baseline."""
    versions = list(stages)
    names = [*DUMP_STAGES, *(n for n in stages[versions[0]] if n not in DUMP_STAGES)]
    totals = {v: sum(stages[v].get(n, 0.0) for n in DUMP_STAGES) for v in versions}
    dump = {v: dump_row[f"{v}: CPU ms per image-view"] for v in versions}
    table = [{"stage": n, **{v: stages[v].get(n) for v in versions}} for n in names]
    table += [{"stage": "sum of the stages", **totals}, {"stage": "whole dump (marginal, above)", **dump},
              {"stage": "outside the stages", **{v: dump[v] - totals[v] for v in versions}}]
    for row in table:
        for v in versions:
            row[v] = None if row[v] is None else round(row[v], 2)
        if "baseline" in versions:
            ratio = row["this"] and row["baseline"] and round(row["this"] / row["baseline"], 2)
            row["this / baseline"] = ratio or None
    return table


def print_table(rows: list[dict]) -> None:
    """A markdown table of dicts with the same keys."""
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")


if __name__ == "__main__":
    main()
