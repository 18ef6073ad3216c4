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

    python bench/dump_proxy_bench.py [--images 16 64] [--rounds 2] [--baseline ../base]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _dump_api():
    """(DumpOptions, run_dump, parse_views, the module whose teacher_outputs the dump calls), for
    this layout of ldcache or the one before it (a single `pipelines/dump.py`)."""
    try:
        import ldcache.dump.teacher_pass as teacher_module
        from ldcache.dump.run import DumpOptions, run_dump
        from ldcache.domain.views import parse_views
    except ImportError:
        import pipelines.dump as teacher_module
        from ldcache.views import parse_views
        from pipelines.dump import DumpOptions, run_dump
    return DumpOptions, run_dump, parse_views, teacher_module


def _stand_in_teacher():
    """teacher_outputs with fixed random logits per padded batch shape: the teacher, its input
    normalisation included, costs (almost) nothing."""
    import torch

    made = {}

    def outputs(model, batch):
        shapes = [sample.img_shape for sample in batch["data_samples"]]
        key = (len(shapes), *(-(-max(s[i] for s in shapes) // 32) * 32 for i in (0, 1)))
        if key not in made:
            head = model.bbox_head
            gen = torch.Generator().manual_seed(0)
            sizes = [(-(-key[1] // s), -(-key[2] // s)) for s in (int(s[0]) for s in head.prior_generator.strides)]
            made[key] = ([torch.randn(key[0], head.num_classes, h, w, generator=gen) * 2 - 6 for h, w in sizes],
                         [torch.randn(key[0], 4 * (head.reg_max + 1), h, w, generator=gen) * 3 for h, w in sizes])
        return made[key]

    return outputs


def measure(work: Path, images: int, variant: str, out: Path) -> dict:
    """One dump of the first `images` images in this process (the child side of `run_child`)."""
    import torch

    torch.set_num_threads(1)  # the dump's own threads: the stand-in teacher needs none
    DumpOptions, run_dump, parse_views, teacher_module = _dump_api()
    teacher_module.teacher_outputs = _stand_in_teacher()
    opts = DumpOptions(work / "teacher.py", work / "teacher.pth", work / f"data/instances-{images}.json", work / "data/images",
                       out, parse_views([(1333, 800)], flip=True), workers=2, **VARIANTS[variant])
    cpu, wall = _cpu_seconds(), time.perf_counter()
    summary = run_dump(opts)
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    summary = summary if isinstance(summary, dict) else summary.to_dict()
    return {"cpu_s": cpu, "wall_s": wall, "bytes_per_view": summary["bytes_per_image_view"],
            "image_views": summary["image_views"]}


def run_child(code_root: Path, work: Path, images: int, variant: str, out: Path) -> dict:
    """`measure` in a fresh interpreter that imports ldcache from `code_root`."""
    env = {**os.environ, "PYTHONPATH": f"{code_root}{os.pathsep}{BENCH}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__, "--child", str(work), str(images), variant, str(out)],
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
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work, images, variant, out = args.child
        print(json.dumps(measure(Path(work), int(images), variant, Path(out))))
        return

    sys.path.insert(0, str(REPO))
    from dump_bench import COCO_CLASSES, make_coco_geometry_set, random_teacher_checkpoint

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-proxy-"))
    small, large = sorted(args.images)
    if not (work / f"data/instances-{large}.json").is_file():
        ann, _ = make_coco_geometry_set(work / "data", large)
        coco = json.loads(ann.read_text())
        for count in (small, large):
            subset = dict(coco, images=coco["images"][:count])
            kept = {im["id"] for im in subset["images"]}
            subset["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
            (work / f"data/instances-{count}.json").write_text(json.dumps(subset))
        from mmengine.config import Config

        config = random_teacher_checkpoint(REPO / "configs/tiny/gfl_r18_tiny.py", work / "teacher.pth", COCO_CLASSES)
        # A teacher needs no ldcache components, and a baseline may not have today's module names.
        cfg = Config.fromfile(str(config), import_custom_modules=False)
        for key in ("custom_imports", "runner_type"):
            cfg.pop(key, None)
        cfg.dump(str(work / "teacher.py"))
    versions = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    runs = {(v, k): [] for v in versions for k in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            for version, root in versions.items():
                pair = [run_child(root, work, count, variant,
                                  work / f"store-{version}-{round_}-{count}-{variant.replace(' ', '_')}.zarr")
                        for count in (small, large)]
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
    print(json.dumps({"images": [small, large], "rounds": args.rounds, "rows": rows}, indent=2))
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
