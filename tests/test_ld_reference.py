"""The four LD/KD terms against a plain-torch reference written from their definitions.

Nothing here goes through ldcache's region, row or loss code, nor mmdet's assigner or losses: the
anchors, ATSS, the VLR, the KL terms and the normalisations are written out below from
docs/normalization.md and ../shared/design-notes.md section 1. The scene: two images of different
sizes in one batch (so the batch is padded), several GTs, overlapping and nested boxes, a small
box; anchors that are VLR for several GTs and positives that are also VLR. CachedLDHead is fed
from an fp32 store and from the online path, and each term of each level must agree.
"""
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TEACHER_CONFIG, cached_cfg

STRIDES = (8, 16, 32, 64, 128)
BINS = 17
TOPK = 9
# Loss weights and temperatures of the four terms, all different, so that no mix-up goes unseen.
TERMS = {
    "loss_ld": dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
    "loss_ld_vlr": dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.5, T=8),
    "loss_kd": dict(type="KnowledgeDistillationKLDivLoss", loss_weight=10, T=2),
    "loss_kd_vlr": dict(type="KnowledgeDistillationKLDivLoss", loss_weight=3, T=3),
}
# Images (width, height) and GT boxes (x1, y1, x2, y2) in the image's own pixels. The pipeline
# resizes the second one by 1.25 (to fit 320x320), so the batch is 320x288 with 320x256 inside.
SCENE = [
    ((320, 256), [[40, 40, 160, 150], [70, 60, 190, 170], [90, 80, 130, 115], [201, 29, 209, 37],
                  [210, 120, 300, 240], [150, 150, 250, 250]]),
    ((256, 224), [[20, 20, 120, 120], [30, 25, 110, 130], [140, 60, 230, 200], [60, 150, 70, 162]]),
]


# ----------------------------------------------------------------------------- the reference

def anchors_of(pad_h: int, pad_w: int) -> list[torch.Tensor]:
    """Per level, [H_l * W_l, 4] square anchors of side 8 * stride centred on (x * s, y * s)."""
    levels = []
    for s in STRIDES:
        h, w = math.ceil(pad_h / s), math.ceil(pad_w / s)
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")
        cx, cy = (x * s).reshape(-1), (y * s).reshape(-1)
        levels.append(torch.stack([cx - 4 * s, cy - 4 * s, cx + 4 * s, cy + 4 * s], dim=1))
    return levels


def pair_geometry(a: torch.Tensor, g: torch.Tensor) -> dict:
    """[A, G] IoU, IoF (over the anchor), centre distance and DIoU penalty of anchors and GTs."""
    a, g = a[:, None, :], g[None, :, :]
    iw = (torch.minimum(a[..., 2], g[..., 2]) - torch.maximum(a[..., 0], g[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], g[..., 3]) - torch.maximum(a[..., 1], g[..., 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    dx = (a[..., 0] + a[..., 2]) / 2 - (g[..., 0] + g[..., 2]) / 2
    dy = (a[..., 1] + a[..., 3]) / 2 - (g[..., 1] + g[..., 3]) / 2
    cw = torch.maximum(a[..., 2], g[..., 2]) - torch.minimum(a[..., 0], g[..., 0])
    ch = torch.maximum(a[..., 3], g[..., 3]) - torch.minimum(a[..., 1], g[..., 1])
    iou = inter / (area_a + area_g - inter)
    return {"iou": iou, "iof": inter / area_a, "distance": (dx * dx + dy * dy).sqrt(),
            "penalty": (dx * dx + dy * dy) / (cw * cw + ch * ch + 1e-7)}


def reference_regions(pad_h: int, pad_w: int, gts: torch.Tensor, gamma: float, metric: str) -> list[dict]:
    """Per level: 'main' bool [A_l] (ATSS positives) and 'vlr_weight' [A_l] (0 outside the VLR)."""
    levels = anchors_of(pad_h, pad_w)
    anchors = torch.cat(levels)
    geo = pair_geometry(anchors, gts)
    # ATSS: per level the k nearest anchors by centre distance are the candidates of a GT; its
    # threshold is the mean + std of their IoUs; a candidate is positive at IoU >= threshold
    # with its centre inside the GT.
    candidates, start = [], 0
    for level in levels:
        k = min(TOPK, len(level))
        candidates.append(geo["distance"][start:start + len(level)].topk(k, dim=0, largest=False).indices + start)
        start += len(level)
    candidates = torch.cat(candidates)  # [K, G]
    cand_iou = geo["iou"].gather(0, candidates)
    thr = cand_iou.mean(0) + cand_iou.std(0)
    cx, cy = ((anchors[:, 0] + anchors[:, 2]) / 2)[candidates], ((anchors[:, 1] + anchors[:, 3]) / 2)[candidates]
    inside = torch.stack([cx - gts[:, 0], cy - gts[:, 1], gts[:, 2] - cx, gts[:, 3] - cy]).amin(0) > 0.01
    main = torch.zeros(len(anchors), dtype=torch.bool)
    main[candidates[(cand_iou >= thr) & inside]] = True
    # VLR: gamma * thr <= d < thr for some GT; the weight is the largest IoU among those GTs.
    d = (geo["iof"] if metric == "official" else geo["iou"]) - geo["penalty"]
    vlr = (d >= gamma * thr) & (d < thr) & (thr > 0)
    weight = torch.where(vlr, geo["iou"], torch.zeros_like(d)).amax(1)
    sizes = [len(level) for level in levels]
    return [{"main": m, "vlr_weight": w, "vlr_gts": n}
            for m, w, n in zip(main.split(sizes), weight.split(sizes), vlr.sum(1).split(sizes))]


def kl(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """Per row: KL(softmax(teacher / T) || softmax(student / T)) averaged over the last dim, times T^2,
    in float64 (float32 loses up to 1e-4 of a small KL to cancellation)."""
    student, teacher = student.double(), teacher.double()
    p = F.softmax(teacher / T, dim=-1)
    return (p * (F.log_softmax(teacher / T, dim=-1) - F.log_softmax(student / T, dim=-1))).mean(-1) * T * T


def reference_terms(student: tuple, teachers: list[tuple], regions: list[list[dict]], grids: list[list],
                    normalize: str, kd_reduction: str) -> dict:
    """{term: [per level]} of a batch: student (cls, reg) batch maps, per image the teacher's (cls,
    reg) maps of its own grid, regions and grid sizes."""
    cls_s, reg_s = student
    num_images, num_classes = len(teachers), cls_s[0].shape[1]
    sums = {name: [0.0] * len(STRIDES) for name in TERMS}
    counts = {"main": [0] * len(STRIDES), "vlr": [0] * len(STRIDES)}
    weight_sums = {"loss_ld": 0.0, "loss_ld_vlr": 0.0}
    for i in range(num_images):
        for level in range(len(STRIDES)):
            h, w = grids[i][level]
            s_cls = cls_s[level][i, :, :h, :w].reshape(num_classes, -1).t()
            s_reg = reg_s[level][i, :, :h, :w].reshape(4, BINS, -1).permute(2, 0, 1)
            t_cls = teachers[i][0][level][0].reshape(num_classes, -1).t()
            t_reg = teachers[i][1][level][0].reshape(4, BINS, -1).permute(2, 0, 1)
            main, vlr_weight = regions[i][level]["main"], regions[i][level]["vlr_weight"]
            vlr = vlr_weight > 0
            confidence = s_cls.sigmoid().amax(1).double()
            edge_kl = {name: kl(s_reg, t_reg, TERMS[name]["T"]).sum(1) for name in ("loss_ld", "loss_ld_vlr")}
            sums["loss_ld"][level] += float((confidence * edge_kl["loss_ld"])[main].sum())
            sums["loss_ld_vlr"][level] += float((vlr_weight * edge_kl["loss_ld_vlr"])[vlr].sum())
            sums["loss_kd"][level] += float(kl(s_cls, t_cls, TERMS["loss_kd"]["T"])[main].sum())
            sums["loss_kd_vlr"][level] += float(kl(s_cls, t_cls, TERMS["loss_kd_vlr"]["T"])[vlr].sum())
            counts["main"][level] += int(main.sum())
            counts["vlr"][level] += int(vlr.sum())
            weight_sums["loss_ld"] += float(confidence[main].sum())
            weight_sums["loss_ld_vlr"] += float(vlr_weight[vlr].sum())
    official = {"loss_ld": 4.0, "loss_ld_vlr": 16.0}
    divisor = {"official": official,
               "per_image": {k: v * num_images / 2 for k, v in official.items()},
               "weight_sum": {k: 4 * max(1.0, s) for k, s in weight_sums.items()}}[normalize]
    kd_scale = num_classes / 80 if kd_reduction == "class_sum" else 1.0
    terms = {}
    for name in TERMS:
        weight = TERMS[name]["loss_weight"]
        if name in divisor:
            terms[name] = [weight * s / divisor[name] for s in sums[name]]
        else:
            region = "main" if name == "loss_kd" else "vlr"
            terms[name] = [weight * kd_scale * s / c if c else 0.0 for s, c in zip(sums[name], counts[region])]
    return terms


# ----------------------------------------------------------------------------- the scene

@pytest.fixture(scope="module")
def scene(tmp_path_factory, random_teacher):
    """The scene's dataset and its fp32 store, dumped at gamma 0.25 with both VLR metrics."""
    import cv2

    from ldcache.dump.run import DumpOptions, run_dump
    from ldcache.domain.views import parse_views

    root = tmp_path_factory.mktemp("scene")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, ((width, height), boxes) in enumerate(SCENE, start=1):
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), rng.integers(0, 255, (height, width, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": k % 3 + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in enumerate(("star", "eff", "superstar"), start=1)]
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    store = root / "teacher.zarr"
    run_dump(DumpOptions(TEACHER_CONFIG, random_teacher, ann, root / "images", store,
                         parse_views([(320, 320)], flip=False), dtype="fp32", workers=0))
    return root, ann, store


def _models(scene, random_teacher):
    """The cached student (all four terms on), its online twin with the same weights, and the
    scene's two samples."""
    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate

    from ldcache.train.student import student_and_online_twin

    root, ann, store = scene
    cfg = cached_cfg(store, **copy.deepcopy(TERMS))
    cfg.train_dataloader.dataset.update(data_root="", ann_file=str(ann), data_prefix=dict(img=str(root / "images") + "/"))
    torch.manual_seed(3)
    student, online = student_and_online_twin(cfg, TEACHER_CONFIG, random_teacher)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    return student, online, [dataset[0], dataset[1]], pseudo_collate


def _teacher_maps(teacher, inputs: torch.Tensor, grids: list) -> tuple:
    """The teacher's (cls, reg) per-level maps of one image [1, ., H_l, W_l], cut to its grid."""
    with torch.no_grad():
        cls, reg = teacher.bbox_head(teacher.extract_feat(inputs))
    return ([c[:, :, :h, :w] for c, (h, w) in zip(cls, grids)], [r[:, :, :h, :w] for r, (h, w) in zip(reg, grids)])


def _boxes(sample) -> torch.Tensor:
    boxes = sample.gt_instances.bboxes
    return getattr(boxes, "tensor", boxes).float()


def _grid(sample) -> list:
    pad_h, pad_w = sample.pad_shape
    return [(math.ceil(pad_h / s), math.ceil(pad_w / s)) for s in STRIDES]


def _stored_rows_agree(targets, regions: list[dict], metric: str, gamma: float) -> None:
    """The store's rows of one image: Main flags and, at `gamma`, VLR rows and weights."""
    from ldcache.store.format import FLAG_MAIN, VLR_METRICS

    m = VLR_METRICS.index(metric)
    for level, rows in enumerate(targets.levels()):
        main_locs = set(np.flatnonzero(regions[level]["main"].numpy()).tolist())
        assert set(rows.loc[(rows.flags & FLAG_MAIN) > 0].tolist()) == main_locs, level
        weight = regions[level]["vlr_weight"]
        stored_vlr = rows.vlr_ratio[:, m] >= gamma
        assert set(rows.loc[stored_vlr].tolist()) == set(np.flatnonzero(weight.numpy() > 0).tolist()), level
        stored_weight = (rows.vlr_step_weight[:, m] * (rows.vlr_step_ratio[:, m] >= gamma)).max(axis=-1)
        np.testing.assert_allclose(stored_weight[stored_vlr], weight.numpy()[rows.loc[stored_vlr]], rtol=1e-6)


def _assert_terms(got: dict, want: dict, context) -> None:
    """Each term of each level equal up to float32 rounding (the head's KL is float32; a term of a few
    hundred rows moves by more than this with one row more or less, or any wrong factor)."""
    for name in TERMS:
        for level, (g, w) in enumerate(zip(got[name], want[name])):
            assert float(g.detach()) == pytest.approx(w, rel=2e-4, abs=1e-9), (context, name, level)


# Each normalisation with each metric, at the store's gamma and a raised one; KD options alternate.
CASES = [(norm, metric, gamma, "class_sum" if (i % 2) else "official")
         for i, (norm, metric, gamma) in enumerate(
             (n, m, g) for n in ("official", "per_image", "weight_sum") for m in ("official", "diou") for g in (0.25, 0.45))]


def test_terms_equal_the_reference_cached_and_online(scene, random_teacher):
    from ldcache.domain.ld_config import load_config
    from ldcache.domain.teacher import build_teacher

    student, online, items, collate = _models(scene, random_teacher)
    teacher = build_teacher(load_config(TEACHER_CONFIG), random_teacher, "cpu")
    batch = student.data_preprocessor(collate(items), True)
    inputs, samples = batch["inputs"], batch["data_samples"]
    assert inputs.shape[-2:] == (288, 320) and [tuple(s.img_shape) for s in samples] == [(256, 320), (280, 320)]
    grids = [_grid(s) for s in samples]
    gts = [_boxes(s) for s in samples]
    # The cached path's teacher saw each image alone, at its own padding (as the dump ran it); the
    # online teacher sees the padded batch.
    alone = [_teacher_maps(teacher, teacher.data_preprocessor(collate([item]), False)["inputs"], grid)
             for item, grid in zip(items, grids)]
    with torch.no_grad():
        student_maps = student.bbox_head(student.extract_feat(inputs))
        batch_cls, batch_reg = teacher.bbox_head(teacher.extract_feat(inputs))
    in_batch = [([c[i:i + 1, :, :h, :w] for c, (h, w) in zip(batch_cls, grid)],
                 [r[i:i + 1, :, :h, :w] for r, (h, w) in zip(batch_reg, grid)]) for i, grid in enumerate(grids)]
    seen = {"several VLR GTs": 0, "positive and VLR": 0, "small box positives": 0, "weight moved by gamma": 0}
    for normalize, metric, gamma, kd_reduction in CASES:
        regions = [reference_regions(*s.pad_shape, gt, gamma, metric) for s, gt in zip(samples, gts)]
        seen["several VLR GTs"] += sum(int((lv["vlr_gts"] > 1).sum()) for r in regions for lv in r)
        seen["positive and VLR"] += sum(int((lv["main"] & (lv["vlr_weight"] > 0)).sum()) for r in regions for lv in r)
        for model in (student, online):
            model.bbox_head.normalize, model.bbox_head.kd_reduction = normalize, kd_reduction
            model.bbox_head.vlr_metric, model.bbox_head.vlr_gamma = metric, gamma
        online.row_maker.gamma = gamma
        context = (normalize, metric, gamma, kd_reduction)
        cached_samples, online_samples = copy.deepcopy(samples), copy.deepcopy(samples)
        cached = student.loss(inputs, cached_samples)
        live = online.loss(inputs, online_samples)
        for i, sample in enumerate(cached_samples):
            _stored_rows_agree(sample.ld_targets, regions[i], metric, gamma)
            _stored_rows_agree(online_samples[i].ld_targets, regions[i], metric, gamma)
        _assert_terms(cached, reference_terms(student_maps, alone, regions, grids, normalize, kd_reduction), context)
        _assert_terms(live, reference_terms(student_maps, in_batch, regions, grids, normalize, kd_reduction), context)
    for metric in ("official", "diou"):
        for sample, gt in zip(samples, gts):
            low, high = (reference_regions(*sample.pad_shape, gt, g, metric) for g in (0.25, 0.45))
            seen["weight moved by gamma"] += sum(int(((h["vlr_weight"] > 0) & (h["vlr_weight"] != lo["vlr_weight"])).sum())
                                                 for lo, h in zip(low, high))
    small = reference_regions(*samples[0].pad_shape, gts[0][3:4], 0.25, "official")
    seen["small box positives"] = sum(int(lv["main"].sum()) for lv in small)
    assert min(seen.values()) > 0, seen


def test_per_image_on_a_batch_of_one_is_half_the_official_strength(scene, random_teacher):
    """At one image per GPU 'per_image' divides by half the official divisors (2 images per GPU is
    the official setting), and both equal the reference."""
    from ldcache.domain.ld_config import load_config
    from ldcache.domain.teacher import build_teacher

    student, _, items, collate = _models(scene, random_teacher)
    teacher = build_teacher(load_config(TEACHER_CONFIG), random_teacher, "cpu")
    batch = student.data_preprocessor(collate(items[1:]), True)
    inputs, samples = batch["inputs"], batch["data_samples"]
    grids = [_grid(samples[0])]
    with torch.no_grad():
        student_maps = student.bbox_head(student.extract_feat(inputs))
    teachers = [_teacher_maps(teacher, inputs, grids[0])]  # one image: its padding is the batch's
    regions = [reference_regions(*samples[0].pad_shape, _boxes(samples[0]), 0.25, "official")]
    totals = {}
    for normalize in ("official", "per_image"):
        student.bbox_head.normalize = normalize
        got = student.loss(inputs, copy.deepcopy(samples))
        _assert_terms(got, reference_terms(student_maps, teachers, regions, grids, normalize, "official"), normalize)
        totals[normalize] = float((sum(got["loss_ld"]) + sum(got["loss_ld_vlr"])).detach())
    assert totals["per_image"] == pytest.approx(2 * totals["official"], rel=1e-6)
