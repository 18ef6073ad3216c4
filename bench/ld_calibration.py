"""Loss weights for CachedLDHead's normalize='weight_sum' that give the official LD strength on COCO
at 2 images per GPU.

'official' divides the Main LD sum by 4 and the VLR LD sum by 16; 'weight_sum' divides them by
4 x the sum of their row weights (S_w, S_v). The two are equal, for a batch of two COCO images,
when

    weight_main = 0.25 * S_w          (S_w = Main rows x the student's mean confidence there)
    weight_vlr  = 0.25 * S_v / 4      (official: sum / 16; weight_sum: sum / (4 * S_v))

S_v is geometry alone (the VLR rows' IoU weights at gamma 0.25): this script measures it, and the
Main rows, on pairs of COCO-geometry images (1333x800, COCO's box count and size mix, sizes scaled
by 800/480 from COCO's original pixels). S_w also needs the student's mean confidence at its
positives: pass it with --confidence (CachedLDHead logs it as ld_main_weight_mean).

    python bench/ld_calibration.py --pairs 200 --confidence 0.35
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_bench import coco_geometry_boxes  # noqa: E402

from ldcache.domain.regions import compute_regions  # noqa: E402

# COCO images are mostly 640x480; mmdet's 1333x800 resize scales them by 800/480.
COCO_RESIZE = 800 / 480
OFFICIAL_WEIGHT = 0.25
STRIDES = [8, 16, 32, 64, 128]


def pair_sums(rng: np.random.Generator, maker, metric: int) -> tuple[int, float]:
    """(Main rows, sum of VLR weights) over two COCO-geometry images."""
    main_rows, vlr_weight = 0, 0.0
    for _ in range(2):
        xywh = coco_geometry_boxes(rng, scale=COCO_RESIZE)
        boxes = torch.tensor(np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dtype=torch.float32)
        anchors, counts = maker.anchors((800, 1344))
        regions = compute_regions(anchors, list(counts), boxes, gamma=maker.gamma, topk=maker.rule.topk)
        main_rows += int(regions.main.sum())
        vlr_weight += float(regions.weight_at(maker.gamma)[:, metric].sum())
    return main_rows, vlr_weight


def coco_sums(pairs: int = 200, metric: str = "official", seed: int = 0) -> dict:
    """Mean Main rows and mean VLR weight sum S_v per pair of COCO-geometry images (gamma 0.25)."""
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    from ldcache.domain.rows import RegionRowMaker
    from ldcache.store.format import VLR_METRICS

    generator = AnchorGenerator(strides=STRIDES, ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    maker = RegionRowMaker(generator, STRIDES, gamma=0.25)
    rng = np.random.default_rng(seed)
    sums = [pair_sums(rng, maker, VLR_METRICS.index(metric)) for _ in range(pairs)]
    return {"pairs": pairs, "main_rows": statistics.mean(m for m, _ in sums),
            "main_rows_median": statistics.median(m for m, _ in sums),
            "vlr_weight_sum": statistics.mean(v for _, v in sums),
            "vlr_weight_sum_median": statistics.median(v for _, v in sums)}


def weight_sum_weights(confidence: float, sums: dict | None = None) -> dict:
    """The loss weights of 'weight_sum' that give the official strength at these sums."""
    sums = sums or coco_sums()
    return {"loss_ld": round(OFFICIAL_WEIGHT * sums["main_rows"] * confidence, 2),
            "loss_ld_vlr": round(OFFICIAL_WEIGHT * sums["vlr_weight_sum"] / 4, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--confidence", type=float, required=True,
                        help="mean student confidence at its positives (ld_main_weight_mean in the training log)")
    parser.add_argument("--metric", default="official", choices=["official", "diou"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sums = coco_sums(args.pairs, args.metric, args.seed)
    weights = weight_sum_weights(args.confidence, sums)
    print(f"{args.pairs} pairs of COCO-geometry images, VLR metric {args.metric}, gamma 0.25")
    print(f"Main rows per pair: mean {sums['main_rows']:.1f}, median {sums['main_rows_median']:.1f}")
    print(f"S_v (VLR weight sum) per pair: mean {sums['vlr_weight_sum']:.2f}, median {sums['vlr_weight_sum_median']:.2f}")
    print(f"S_w = Main rows x confidence {args.confidence}: {sums['main_rows'] * args.confidence:.2f}")
    print(f"weight_sum loss weights: loss_ld {weights['loss_ld']}, loss_ld_vlr {weights['loss_ld_vlr']}")


if __name__ == "__main__":
    main()
