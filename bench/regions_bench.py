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

    python bench/regions_bench.py               # 200 image-views
    python bench/regions_bench.py --views 50    # quick look
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
    args = parser.parse_args()

    torch.set_num_threads(1)  # as pass 1 runs
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
        worst_weight = max(worst_weight, float((new.vlr_weight - ref.vlr_weight).abs().max()))
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


if __name__ == "__main__":
    main()
