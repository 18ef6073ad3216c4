"""CPU time of pass 1's region computation per image-view, at COCO geometry, on one thread.

Scenes: a 1333x800 view (padded to 800x1344), GFL's anchors (mmdet's AnchorGenerator with
octave_base_scale=8, scales_per_octave=1, ratios [1.0], strides 8..128: 22,400 anchors), and
COCO's box count and size mix (bench/dump_bench.py's generator), seeded.

Timed side by side, one scene after the other, as CPU time of this process:
- the reference (tests/test_regions.py: mmdet's ATSSAssigner and every pairwise matrix over all
  anchors, the first implementation) against ``compute_regions``;
- ``RegionRowMaker.rows`` end to end (anchors, regions, flags, per-level rows) against the reference
  rows. Both views of an image have one pad shape, and a dump sees few, so ``rows`` reuses its
  anchors; the cost of making them again (a pad shape not seen lately) is timed on its own.
It also checks that both give the same regions.

With ``--family``, instead: pass 1's cost per head family (GFL, RetinaNet, FCOS, ATSS, GFLv2), each
student head built from the repository's COCO config (configs/coco/, its own prior generator,
strides and assigner settings) and its ``RegionRowMaker`` made as the dump makes it (the dump's
defaults: region distill, gamma 0.25, both VLR metrics). ``RegionRowMaker.rows`` is timed on the
same scenes, the families interleaved scene by scene (their order rotated from one scene to the
next), one thread, CPU time; the table gives the median ms per image-view, the mean rows, the ratio
to GFL's time and the CPU-hours of pass 1 over COCO's image-views. RetinaNet's time is also split
into its two parts, timed as separate calls of the functions its rule runs: ATSS's band over all
9 anchors per location (``compute_regions``) and mmdet's assigner from the config (MaxIoUAssigner).

    python bench/regions_bench.py               # 200 image-views
    python bench/regions_bench.py --views 50    # quick look
    python bench/regions_bench.py --family --views 300   # docs/families.md; 3-4 minutes
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from dump_bench import COCO_SIZE_MIX  # noqa: E402
from test_regions import reference_regions, reference_rows  # noqa: E402

from ldcache.domain.rows import RegionRowMaker  # noqa: E402
from ldcache.domain.regions import compute_regions  # noqa: E402
from ldcache.domain.views import View, view_geometry  # noqa: E402
from ldcache.domain.grid import featmap_sizes  # noqa: E402

STRIDES = [8, 16, 32, 64, 128]
WIDTH, HEIGHT = 1333, 800
# --family: each family's student config at COCO geometry, and COCO's image-views (train2017's
# 118,287 images, each also flipped: the dump's default views).
FAMILY_CONFIGS = {
    "gfl": "gfl_r50_fpn_1x_coco.py",
    "retina": "retina_dist_r50_fpn_1x_coco.py",
    "fcos": "fcos_dist_r50_fpn_1x_coco.py",
    "atss": "atss_dist_r50_fpn_1x_coco.py",
    "gflv2": "gflv2_dist_r50_fpn_1x_coco.py",
}
COCO_IMAGE_VIEWS = 236_574


def coco_boxes(rng: np.random.Generator) -> torch.Tensor:
    """xyxy GT boxes of one 1333x800 view, with COCO's box count and size mix."""
    shares = np.cumsum([m[0] for m in COCO_SIZE_MIX])
    boxes = []
    for _ in range(max(1, rng.poisson(7.3))):
        _, lo, hi = COCO_SIZE_MIX[min(int(np.searchsorted(shares, rng.random())), len(shares) - 1)]
        side = np.sqrt(rng.uniform(lo * lo, hi * hi))
        aspect = np.exp(rng.normal(0, 0.5))
        w, h = min(side * np.sqrt(aspect), WIDTH - 2), min(side / np.sqrt(aspect), HEIGHT - 2)
        x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
        boxes.append([x, y, x + w, y + h])
    return torch.tensor(boxes, dtype=torch.float32)


def cpu_ms(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return (time.process_time() - start) * 1e3, out


def main() -> None:
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", action="store_true",
                        help="time RegionRowMaker.rows per head family (configs/coco) instead")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as pass 1 runs
    if args.family:
        family_table(args.views, args.seed)
        return
    generator = AnchorGenerator(strides=STRIDES, ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    pad_shape = view_geometry(WIDTH, HEIGHT, View((1333, 800), flip=False)).pad_shape
    maker = RegionRowMaker(generator, STRIDES)
    per_level = generator.grid_priors(featmap_sizes(pad_shape, STRIDES), device="cpu")
    anchors, counts = torch.cat(per_level), [a.shape[0] for a in per_level]
    rng = np.random.default_rng(args.seed)
    scenes = [coco_boxes(rng) for _ in range(args.views)]

    times: dict[str, list[float]] = {k: [] for k in ("reference", "new", "reference rows", "new rows", "anchors")}
    worst_ratio = worst_weight = 0.0
    for boxes in [scenes[0]] + scenes:  # the first one again as a warm-up, not counted
        t_ref, ref = cpu_ms(reference_regions, anchors, counts, boxes)
        t_new, new = cpu_ms(compute_regions, anchors, counts, boxes)
        t_ref_rows, ref_rows = cpu_ms(reference_rows, generator, STRIDES, boxes, pad_shape)
        t_new_rows, new_rows = cpu_ms(maker.rows, boxes, pad_shape)
        t_anchors, _ = cpu_ms(lambda: torch.cat(generator.grid_priors(featmap_sizes(pad_shape, STRIDES), device="cpu")))
        if not torch.equal(new.main, ref.main) or any(
                not np.array_equal(a[f], b[f]) for a, b in zip(new_rows, ref_rows) for f in ("loc", "flags")):
            raise SystemExit("compute_regions and the reference disagree on the main region or the rows")
        worst_ratio = max(worst_ratio, float((new.vlr_ratio - ref.vlr_ratio).abs().max()))
        # Regions keeps the weight per step; the reference, at its gamma (0.25, compute_regions' default too).
        worst_weight = max(worst_weight, float((new.weight_at(0.25) - ref.vlr_weight).abs().max()))
        for key, t in zip(times, (t_ref, t_new, t_ref_rows, t_new_rows, t_anchors)):
            times[key].append(t)
    median = {k: statistics.median(v[1:]) for k, v in times.items()}

    print(f"{args.views} image-views, pad {pad_shape[0]}x{pad_shape[1]}, {anchors.shape[0]} anchors, "
          f"{statistics.mean(len(b) for b in scenes):.1f} GT boxes on average, torch {torch.__version__}, "
          f"1 thread")
    print(f"{'':32} {'median CPU ms/view':>18} {'speed-up':>9}")
    print(f"{'reference regions':32} {median['reference']:18.2f}")
    print(f"{'compute_regions':32} {median['new']:18.2f} {median['reference'] / median['new']:8.1f}x")
    print(f"{'reference rows':32} {median['reference rows']:18.2f}")
    print(f"{'RegionRowMaker.rows':32} {median['new rows']:18.2f} "
          f"{median['reference rows'] / median['new rows']:8.1f}x")
    print(f"{'  + anchors of a new pad shape':32} {median['anchors']:18.2f}")
    print(f"same main region and rows; largest difference: vlr_ratio {worst_ratio:.1e}, "
          f"vlr_weight {worst_weight:.1e}")


def family_makers() -> dict[str, RegionRowMaker]:
    """Each family's RegionRowMaker, as the dump makes it for that head (ldcache/dump/run.py)."""
    import mmengine

    import ldcache.heads  # noqa: F401  (registers ldcache's heads in mmdet)
    from ldcache.domain.head import build_config_head
    from ldcache.domain.region_rule import region_rule
    from ldcache.store.attrs import HeadGeometry

    makers = {}
    for family, name in FAMILY_CONFIGS.items():
        head = build_config_head(mmengine.Config.fromfile(str(REPO / "configs/coco" / name)))
        makers[family] = RegionRowMaker(head.prior_generator, list(HeadGeometry.of_head(head).strides),
                                        rule=region_rule(head))
    return makers


def retina_parts(maker: RegionRowMaker, boxes: torch.Tensor, pad_shape) -> tuple[float, float]:
    """CPU ms of RetinaNet's two parts, as family_regions runs them: the band over all anchors
    (compute_regions, which also runs ATSS's Main, then overwritten) and mmdet's assigner."""
    from mmdet.registry import TASK_UTILS
    from mmengine.structures import InstanceData

    anchors, counts = maker.anchors(pad_shape)
    t_band, _ = cpu_ms(compute_regions, anchors, list(counts), boxes, maker.gamma, maker.rule.topk)
    t_assign, _ = cpu_ms(lambda: TASK_UTILS.build(maker.rule.main).assign(
        InstanceData(priors=anchors),
        InstanceData(bboxes=boxes, labels=boxes.new_zeros(len(boxes), dtype=torch.long))))
    return t_band, t_assign


def family_table(views: int, seed: int) -> None:
    """Median CPU ms of RegionRowMaker.rows per image-view for each family, side by side."""
    started = time.monotonic()
    makers = family_makers()
    pad_shape = view_geometry(WIDTH, HEIGHT, View((1333, 800), flip=False)).pad_shape
    rng = np.random.default_rng(seed)
    scenes = [coco_boxes(rng) for _ in range(views)]
    names = list(makers)
    times: dict[str, list[float]] = {k: [] for k in [*names, "retina band", "retina assigner"]}
    rows: dict[str, list[int]] = {k: [] for k in names}
    for i, boxes in enumerate([scenes[0]] + scenes):  # the first one again as a warm-up, not counted
        for family in names[i % len(names):] + names[:i % len(names)]:
            t, level_rows = cpu_ms(makers[family].rows, boxes, pad_shape)
            times[family].append(t)
            rows[family].append(sum(len(r) for r in level_rows))
        for key, t in zip(("retina band", "retina assigner"), retina_parts(makers["retina"], boxes, pad_shape)):
            times[key].append(t)
    median = {k: statistics.median(v[1:]) for k, v in times.items()}

    print(f"{views} image-views (COCO-mix scenes, seed {seed}), pad {pad_shape[0]}x{pad_shape[1]}, "
          f"{statistics.mean(len(b) for b in scenes):.1f} GT boxes on average, torch {torch.__version__}, "
          f"1 thread, CPU time, families interleaved scene by scene")
    print(f"{'family':8} {'config':32} {'priors':>7} {'median ms/view':>14} {'rows/view':>9} "
          f"{'x GFL':>6} {'CPU-h at COCO':>13}")
    for family in names:
        priors = int(makers[family].anchors(pad_shape)[0].shape[0])
        hours = median[family] * COCO_IMAGE_VIEWS / 3.6e6
        print(f"{family:8} {FAMILY_CONFIGS[family]:32} {priors:7d} {median[family]:14.1f} "
              f"{statistics.mean(rows[family][1:]):9.0f} {median[family] / median['gfl']:6.1f} {hours:13.1f}")
    print(f"retina's parts, timed apart: the band over all anchors (compute_regions) {median['retina band']:.1f} ms, "
          f"mmdet's {makers['retina'].rule.main['type']} {median['retina assigner']:.1f} ms")
    print(f"CPU-hours: median ms x {COCO_IMAGE_VIEWS:,} image-views (COCO train2017, each view also flipped); "
          f"the run took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
