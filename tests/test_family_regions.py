"""Region rules of the RetinaNet and FCOS families (family_regions, RegionRowMaker, gather_logits with
several priors per location, region_rule of the tiny configs' heads) against a plain-torch reference
written from the official LD code's rules (HikariTJU/LD):

- RetinaNet: Main = MaxIoUAssigner's positives (IoU >= 0.5, plus low-quality matching of every
  anchor at a GT's max IoU); VLR = ATSS's band at topk 9, positives excluded.
- FCOS: Main = centre sampling (radius 1.5 strides) within the level's regress range; VLR = every
  other point strictly inside a GT box, at ratio 1 and weight 1.

The reference uses no assigner, no FCOSHead and no ldcache helper. The band's threshold and metrics
come from test_regions' reference (mmdet's bbox_overlaps and torchvision's DIoU, no assigner), so
that they are those values bit for bit; everything else is torch arithmetic here.
"""
import math

import numpy as np
import pytest
import torch
from mmdet.models.task_modules.prior_generators import AnchorGenerator, MlvlPointGenerator

from test_regions import reference_metric, reference_thresholds

from ldcache.domain.family_regions import family_regions
from ldcache.domain.region_rule import RegionRule, atss_rule, region_rule
from ldcache.domain.rows import RegionRowMaker, gather_logits
from ldcache.store.format import MASK_DTYPE

STRIDES = [8, 16, 32, 64, 128]
METRICS = ("official", "diou")  # the order of Regions.vlr_ratio's columns
MAIN, VLR_OFFICIAL, VLR_DIOU = 1, 2, 4  # the row flags' bits
GAMMA = 0.25

RETINA_RULE = RegionRule(main=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                   ignore_iof_thr=-1),
                         vlr="band_without_main", topk=9)
REGRESS_RANGES = [[-1, 64], [64, 128], [128, 256], [256, 512], [512, 1e8]]
FCOS_RULE = RegionRule(main=dict(type="FCOSCenterSampling", center_sampling=True, center_sample_radius=1.5,
                                 regress_ranges=REGRESS_RANGES),
                       vlr="inside_gt", topk=9)


def retina_generator() -> AnchorGenerator:
    """RetinaNet's anchors: 9 per location (3 scales x 3 ratios)."""
    return AnchorGenerator(octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0], strides=STRIDES)


def fcos_generator() -> MlvlPointGenerator:
    """FCOS's points, at (x * s + s / 2, y * s + s / 2)."""
    return MlvlPointGenerator(STRIDES, offset=0.5)


def grid_sizes(pad_shape) -> list[tuple[int, int]]:
    """(H, W) of each level's grid of valid locations: ceil(pad / stride)."""
    return [(math.ceil(pad_shape[0] / s), math.ceil(pad_shape[1] / s)) for s in STRIDES]


def grid_priors(generator, pad_shape) -> tuple[torch.Tensor, list[int]]:
    """All priors of the image's grid, levels concatenated, and their count per level."""
    per_level = generator.grid_priors(grid_sizes(pad_shape), device="cpu")
    return torch.cat(per_level), [len(p) for p in per_level]


# ---------------------------------------------------------------------------------------------
# The reference


def plain_iou(boxes: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
    """[A, G] IoU = intersection / union, in mmdet's bbox_overlaps order of operations."""
    area_box = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_gt = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    lt = torch.maximum(boxes[:, None, :2], gts[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], gts[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_box[:, None] + area_gt[None] - inter)


def maxiou_positives(anchors, gts, pos_iou_thr=0.5, min_pos_iou=0.0) -> torch.Tensor:
    """bool [A], official RetinaNet Main (MaxIoUAssigner, match_low_quality, gt_max_assign_all):
    an anchor whose max IoU over the GTs is >= pos_iou_thr, or whose IoU with some GT equals that
    GT's max IoU over all anchors (when that max is >= min_pos_iou)."""
    if len(gts) == 0:
        return torch.zeros(len(anchors), dtype=torch.bool)
    iou = plain_iou(anchors, gts)
    by_iou = iou.max(dim=1).values >= pos_iou_thr
    gt_max = iou.max(dim=0).values
    low_quality = (iou == gt_max[None]) & (gt_max >= min_pos_iou)[None]
    return by_iou | low_quality.any(dim=1)


def band(anchors, counts, gts, gamma, topk=9) -> tuple[torch.Tensor, torch.Tensor]:
    """The official VLR band: for each GT, thr = mean + std of the IoUs of its topk nearest anchors
    per level; an anchor is VLR for a GT when gamma * thr <= d < thr. Returns per anchor and metric
    ([A, 2] each) the largest d / thr below 1 (0 if none: the anchor is VLR at gamma exactly when
    it is >= gamma) and the IoU with the best-IoU GT among those it is VLR for (0 if none)."""
    ratios = torch.zeros(len(anchors), len(METRICS))
    weights = torch.zeros_like(ratios)
    if len(gts) == 0:
        return ratios, weights
    thr = reference_thresholds(anchors, counts, gts, topk)
    iou = plain_iou(anchors, gts)
    for m, metric in enumerate(METRICS):
        ratio = reference_metric(anchors, gts, metric) / thr
        ratio = torch.where(thr > 0, ratio, torch.full_like(ratio, -1.0))  # thr <= 0: an empty band
        ratios[:, m] = torch.where(ratio < 1, ratio, torch.full_like(ratio, -1.0)).max(dim=1).values.clamp(min=0)
        in_band = (ratio >= gamma) & (ratio < 1)
        weights[:, m] = torch.where(in_band, iou, torch.zeros_like(iou)).max(dim=1).values
    return ratios, weights


def retina_reference(anchors, counts, gts, gamma=GAMMA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official RetinaNet LD regions: (Main [A], VLR ratio [A, 2], VLR weight [A, 2]); the band
    without the positives."""
    main = maxiou_positives(anchors, gts)
    ratios, weights = band(anchors, counts, gts, gamma)
    ratios[main] = 0
    weights[main] = 0
    return main, ratios, weights


def inside(points, boxes) -> torch.Tensor:
    """bool [P, G]: the point lies strictly inside the box (min of l, t, r, b > 0)."""
    x, y = points[:, 0, None], points[:, 1, None]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y])
    return ltrb.amin(0) > 0


def fcos_positives(points, counts, gts, radius=1.5, ranges=REGRESS_RANGES) -> torch.Tensor:
    """bool [P], official FCOS Main: a point is positive for a GT when it lies strictly inside the
    GT's centre region (half-size radius * stride around the GT centre, clipped to the GT) and the
    largest of its distances to the GT's edges lies in its level's regress range [lo, hi]; it is
    Main when it is positive for some GT (the smallest-area one is its target, whichever it is)."""
    if len(gts) == 0:
        return torch.zeros(len(points), dtype=torch.bool)
    level = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    half = (torch.tensor(STRIDES, dtype=torch.float32) * radius)[level][:, None]  # [P, 1]
    lo = torch.tensor([r[0] for r in ranges], dtype=torch.float32)[level][:, None]
    hi = torch.tensor([r[1] for r in ranges], dtype=torch.float32)[level][:, None]
    cx, cy = (gts[:, 0] + gts[:, 2]) / 2, (gts[:, 1] + gts[:, 3]) / 2
    centre = torch.stack([torch.maximum(cx - half, gts[:, 0]), torch.maximum(cy - half, gts[:, 1]),
                          torch.minimum(cx + half, gts[:, 2]), torch.minimum(cy + half, gts[:, 3])], dim=-1)
    x, y = points[:, 0, None], points[:, 1, None]
    in_centre = torch.stack([x - centre[..., 0], y - centre[..., 1], centre[..., 2] - x,
                             centre[..., 3] - y]).amin(0) > 0
    reach = torch.stack([x - gts[:, 0], y - gts[:, 1], gts[:, 2] - x, gts[:, 3] - y]).amax(0)
    in_range = (reach >= lo) & (reach <= hi)
    return (in_centre & in_range).any(dim=1)


def fcos_reference(points, counts, gts) -> tuple[torch.Tensor, torch.Tensor]:
    """Official FCOS LD regions: (Main [P], VLR [P]): VLR = inside some GT box and not Main."""
    main = fcos_positives(points, counts, gts)
    if len(gts) == 0:
        return main, torch.zeros_like(main)
    return main, inside(points, gts).any(dim=1) & ~main


def reference_flags(main, vlr_ratio, gamma=GAMMA) -> np.ndarray:
    """uint8 [A] row flags: Main bit 1, VLR official bit 2, VLR diou bit 4."""
    vlr = vlr_ratio >= gamma
    return (main.long() * MAIN + vlr[:, 0].long() * VLR_OFFICIAL + vlr[:, 1].long() * VLR_DIOU).to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# Scenes


def box(cx, cy, w, h) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def retina_scene(seed: int) -> tuple[tuple[int, int], torch.Tensor, int]:
    """(pad shape, GTs, index of the tiny GT): GTs of about 24, 60 and 140 px, a shifted copy of one
    (overlapping GTs) and a tiny 6x5 GT that no RetinaNet anchor (32 px and up) overlaps at IoU 0.4."""
    rng = np.random.default_rng(seed)
    pad_shape = [(192, 256), (224, 160), (256, 256)][seed % 3]
    height, width = pad_shape
    boxes = []
    for side in (24, 60, 140):
        w, h = side * rng.uniform(0.6, 1.4, size=2)
        boxes.append(box(rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2), w, h))
    x1, y1, x2, y2 = boxes[1]
    dx, dy = rng.uniform(-0.3, 0.3, size=2) * (x2 - x1, y2 - y1)
    boxes.append([x1 + dx, y1 + dy, x2 + dx, y2 + dy])
    boxes.append(box(rng.uniform(10, width - 10), rng.uniform(10, height - 10), 6, 5))
    gts = torch.tensor(boxes, dtype=torch.float32)
    gts[:, 0::2] = gts[:, 0::2].clamp(0, width)
    gts[:, 1::2] = gts[:, 1::2].clamp(0, height)
    return pad_shape, gts, len(boxes) - 1


FCOS_PAD = (448, 576)


def fcos_scene(seed: int) -> torch.Tensor:
    """GTs on a 448x576 image: one per regress range (largest edge distance about 20 to 290 px, so
    that Main falls on the four lowest levels), a GT inside another (overlap), and GTs touching the
    image's borders."""
    rng = np.random.default_rng(100 + seed)
    height, width = FCOS_PAD
    boxes = []
    for side in (40, 100, 200, 380, 560):
        w, h = min(side * rng.uniform(0.7, 1.2), width), min(side * rng.uniform(0.7, 1.2), height)
        boxes.append(box(rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2), w, h))
    x1, y1, x2, y2 = boxes[2]
    boxes.append([x1 + 0.2 * (x2 - x1), y1 + 0.3 * (y2 - y1), x2 - 0.1 * (x2 - x1), y2 - 0.25 * (y2 - y1)])
    boxes.append([0.0, rng.uniform(0, 100), rng.uniform(20, 60), rng.uniform(150, 250)])  # left edge
    boxes.append([rng.uniform(450, 530), rng.uniform(330, 410), float(width), float(height)])  # corner
    return torch.tensor(boxes, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# RetinaNet


def test_retina_regions_match_the_official_rules():
    """Main = MaxIoU positives exactly; no Main anchor has VLR data; the VLR = the band without them."""
    seen = dict(main=0, low_quality_only=0, vlr=0, band_removed=0)
    for seed in range(4):
        pad_shape, gts, tiny = retina_scene(seed)
        anchors, counts = grid_priors(retina_generator(), pad_shape)
        got = family_regions(RETINA_RULE, anchors, counts, gts, GAMMA, STRIDES)
        main, ratios, weights = retina_reference(anchors, counts, gts)

        assert torch.equal(got.main, main), seed
        torch.testing.assert_close(got.vlr_ratio, ratios, rtol=0, atol=0, msg=lambda m: f"{seed}: {m}")
        torch.testing.assert_close(got.weight_at(GAMMA), weights, rtol=0, atol=0, msg=lambda m: f"{seed}: {m}")
        # No Main anchor keeps any VLR data, at any gamma.
        assert not got.vlr_ratio[got.main].any() and not got.step_ratio[got.main].any()
        assert not got.step_weight[got.main].any()
        assert not (got.vlr(0.01) & got.main[:, None]).any()

        # The tiny GT: no anchor reaches IoU 0.4 with it, yet its best anchors are Main (low-quality
        # matching, every anchor at its max IoU).
        iou = plain_iou(anchors, gts)
        best = iou[:, tiny] == iou[:, tiny].max()
        assert iou[:, tiny].max() < 0.4
        assert got.main[best].all()
        seen["low_quality_only"] += int((best & (iou.max(dim=1).values < 0.5)).sum())
        seen["main"] += int(main.sum())
        seen["vlr"] += int((ratios >= GAMMA).any(dim=1).sum())
        band_ratios, _ = band(anchors, counts, gts, GAMMA)
        seen["band_removed"] += int(((band_ratios >= GAMMA).any(dim=1) & main).sum())
    # Every rule was exercised: positives, low-quality-only positives, VLR, band anchors removed.
    assert min(seen.values()) > 0, seen


def test_retina_regions_without_gt_are_empty():
    anchors, counts = grid_priors(retina_generator(), (128, 160))
    got = family_regions(RETINA_RULE, anchors, counts, torch.zeros((0, 4)), GAMMA, STRIDES)
    assert got.main.shape == (len(anchors),) and not got.main.any()
    assert got.vlr_ratio.shape == (len(anchors), 2) and not got.vlr_ratio.any()
    assert not got.weight_at(GAMMA).any()


def test_retina_rows_hold_each_anchor_of_a_location_as_its_own_row():
    """RegionRowMaker's rows under RetinaNet's rule: loc * 9 + prior gives back the anchor index in
    the level, the rows are the anchors the reference flags, with its flags and ratios; several
    anchors of one location are distinct rows."""
    maker = RegionRowMaker(retina_generator(), STRIDES, "distill", GAMMA, RETINA_RULE)
    shared_locations = 0
    for seed in range(3):
        pad_shape, gts, _ = retina_scene(seed)
        anchors, counts = grid_priors(retina_generator(), pad_shape)
        main, ratios, _ = retina_reference(anchors, counts, gts)
        flags = reference_flags(main, ratios)
        levels = maker.rows(gts, pad_shape)
        assert len(levels) == len(STRIDES)
        start = 0
        for level, (rows, count) in enumerate(zip(levels, counts)):
            want = np.flatnonzero(flags[start:start + count])
            assert rows.dtype == MASK_DTYPE
            assert ((rows["prior"] >= 0) & (rows["prior"] < 9)).all(), (seed, level)
            anchor = rows["loc"].astype(np.int64) * 9 + rows["prior"]
            assert np.array_equal(anchor, want), (seed, level)
            assert np.array_equal(rows["flags"], flags[start:start + count][want]), (seed, level)
            assert np.array_equal(rows["vlr_ratio"], ratios[start:start + count].numpy()[want]), (seed, level)
            # Main and VLR never share a row under this rule.
            assert not ((rows["flags"] & MAIN > 0) & (rows["flags"] & (VLR_OFFICIAL | VLR_DIOU) > 0)).any()
            pairs = set(zip(rows["loc"].tolist(), rows["prior"].tolist()))
            assert len(pairs) == len(rows), (seed, level)
            locs, per_loc = np.unique(rows["loc"], return_counts=True)
            shared_locations += int((per_loc > 1).sum())
            start += count
    assert shared_locations > 0


# ---------------------------------------------------------------------------------------------
# FCOS


@pytest.mark.parametrize("seed", range(4))
def test_fcos_regions_match_the_official_rules(seed):
    gts = fcos_scene(seed)
    points, counts = grid_priors(fcos_generator(), FCOS_PAD)
    got = family_regions(FCOS_RULE, points, counts, gts, GAMMA, STRIDES)
    main, vlr = fcos_reference(points, counts, gts)

    assert torch.equal(got.main, main)
    # VLR: ratio 1 for both metrics, weight 1 at any gamma in (0, 1]; 0 everywhere else.
    assert torch.equal(got.vlr_ratio, vlr[:, None].float().expand(-1, 2))
    for gamma in (0.01, GAMMA, 0.7, 1.0):
        assert torch.equal(got.vlr(gamma), vlr[:, None].expand(-1, 2)), gamma
        assert torch.equal(got.weight_at(gamma), vlr[:, None].float().expand(-1, 2)), gamma
    # Coverage: Main on the four lowest levels, and some VLR points.
    level_starts = np.cumsum([0, *counts])
    main_levels = {int(np.searchsorted(level_starts, i, side="right")) - 1 for i in torch.nonzero(main).flatten()}
    assert {0, 1, 2, 3} <= main_levels, main_levels
    assert vlr.sum() > 10


def test_fcos_main_on_p7_for_a_coco_sized_object():
    """The top regress range (512 px and up) on a COCO-sized image (800 x 1333, padded): an object
    whose edges lie over 512 px from points near its centre is Main on P7 only there."""
    gts = torch.tensor([box(700, 420, 1240, 760), box(300, 300, 120, 90)], dtype=torch.float32)
    pad_shape = (800, 1344)
    points, counts = grid_priors(fcos_generator(), pad_shape)
    got = family_regions(FCOS_RULE, points, counts, gts, GAMMA, STRIDES)
    main, vlr = fcos_reference(points, counts, gts)
    assert torch.equal(got.main, main) and torch.equal(got.vlr(GAMMA), vlr[:, None].expand(-1, 2))
    p7 = slice(sum(counts[:4]), sum(counts))
    assert got.main[p7].any(), "the large object is Main on P7"


def test_fcos_regions_without_gt_are_empty():
    points, counts = grid_priors(fcos_generator(), FCOS_PAD)
    got = family_regions(FCOS_RULE, points, counts, torch.zeros((0, 4)), GAMMA, STRIDES)
    assert got.main.shape == (len(points),) and not got.main.any()
    assert not got.vlr_ratio.any() and not got.weight_at(0.5).any()


def test_fcos_rows_have_prior_zero_and_the_reference_flags():
    maker = RegionRowMaker(fcos_generator(), STRIDES, "distill", GAMMA, FCOS_RULE)
    for seed in range(2):
        gts = fcos_scene(seed)
        points, counts = grid_priors(fcos_generator(), FCOS_PAD)
        main, vlr = fcos_reference(points, counts, gts)
        flags = (main.long() * MAIN + vlr.long() * (VLR_OFFICIAL | VLR_DIOU)).to(torch.uint8).numpy()
        start = 0
        for level, (rows, count) in enumerate(zip(maker.rows(gts, FCOS_PAD), counts)):
            want = np.flatnonzero(flags[start:start + count])
            assert (rows["prior"] == 0).all(), level
            assert np.array_equal(rows["loc"], want), (seed, level)
            assert np.array_equal(rows["flags"], flags[start:start + count][want]), (seed, level)
            start += count


# ---------------------------------------------------------------------------------------------
# gather_logits with 9 priors per location


def reference_gather(cls_scores, bbox_preds, index, level_rows, grid, priors) -> torch.Tensor:
    """mmdet's per-anchor layout: a level's map, cut to the image's grid, permuted to
    (B, H, W, priors * K) and reshaped to (B, H * W * priors, K): anchor loc * priors + prior."""
    parts = []
    for cls, reg, rows, (h, w) in zip(cls_scores, bbox_preds, level_rows, grid):
        anchor = torch.from_numpy(rows["loc"].astype(np.int64) * priors + rows["prior"].astype(np.int64))
        reg = reg[:, :, :h, :w].permute(0, 2, 3, 1).reshape(reg.shape[0], -1, reg.shape[1] // priors)
        cls = cls[:, :, :h, :w].permute(0, 2, 3, 1).reshape(cls.shape[0], -1, cls.shape[1] // priors)
        parts.append(torch.cat([reg[index, anchor], cls[index, anchor]], dim=1))
    return torch.cat(parts).float()


def test_gather_logits_takes_each_rows_own_prior_with_and_without_batch_padding():
    rng = np.random.default_rng(7)
    priors, classes, batch = 9, 3, 2
    grid = [(6, 7), (3, 4), (2, 2), (1, 1)]
    level_rows = []
    for level, (h, w) in enumerate(grid):
        count = 0 if level == 3 else int(rng.integers(priors, h * w * priors // 2))  # one level without rows
        anchor = np.sort(rng.choice(h * w * priors, count, replace=False))
        rows = np.zeros(count, MASK_DTYPE)
        rows["loc"], rows["prior"] = np.divmod(anchor, priors)
        level_rows.append(rows)
    assert any(len(np.unique(r["loc"])) < len(r) for r in level_rows)  # locations with several rows
    torch.manual_seed(0)
    for pad in (0, 2):  # batch padding: maps wider and taller than the image's grid
        cls_scores = [torch.randn(batch, priors * classes, h + pad, w + pad) for h, w in grid]
        bbox_preds = [torch.randn(batch, priors * 68, h + pad, w + pad) for h, w in grid]
        for index in range(batch):
            got = gather_logits(cls_scores, bbox_preds, index, level_rows, grid, priors)
            want = reference_gather(cls_scores, bbox_preds, index, level_rows, grid, priors)
            assert got.shape == (sum(map(len, level_rows)), 68 + classes)
            assert torch.equal(got, want), (pad, index)


# ---------------------------------------------------------------------------------------------
# region_rule of the tiny configs' heads


def config_head(name: str):
    """The bbox_head of configs/tiny/NAME.py, built with the model's train_cfg and test_cfg."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import ldcache.heads  # noqa: F401

    from conftest import CONFIGS

    register_all_modules()
    model = Config.fromfile(str(CONFIGS / "tiny" / f"{name}.py")).model
    head = model.bbox_head.copy()
    head.update(train_cfg=model.get("train_cfg"), test_cfg=model.get("test_cfg"))
    return MODELS.build(head)


@pytest.mark.parametrize("config,expected", [("retina_dist_tiny", RETINA_RULE), ("fcos_dist_tiny", FCOS_RULE),
                                             ("atss_dist_tiny", RegionRule(dict(type="ATSSAssigner", topk=9),
                                                                           "band", 9))])
def test_region_rule_of_the_tiny_heads(config, expected):
    rule = region_rule(config_head(config))
    assert rule == expected
    assert rule.vlr == {"retina_dist_tiny": "band_without_main", "fcos_dist_tiny": "inside_gt",
                        "atss_dist_tiny": "band"}[config]
    if config == "atss_dist_tiny":
        assert rule == atss_rule(9)
