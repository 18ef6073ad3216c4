"""CachedLD: the four LD terms of a dense head with edge distributions, from teacher targets in the
batch. Mixed into a family's head: CachedLDHead (GFL), CachedLDATSSHead, CachedLDGFLv2Head,
CachedLDRetinaHead and CachedLDFCOSHead."""
from __future__ import annotations

from dataclasses import dataclass
from inspect import signature

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.utils import reduce_mean
from mmengine.dist import get_dist_info

from ..errors import BadInputError, StoreMismatchError
from ..domain.regions import vlr_weight_at, vlr_weight_known
from ..store.format import VLR_METRICS, VLR_STEPS

NORMALIZE_MODES = ("official", "per_image", "weight_sum")
KD_REDUCTIONS = ("official", "class_sum")
# The LD terms (edge distributions); the two others are KD terms (class logits).
LD_TERMS = ("loss_ld", "loss_ld_vlr")
# The official recipe's images per GPU: 'per_image' equals 'official' there.
OFFICIAL_IMAGES_PER_GPU = 2
# The class count the official KD weight was tuned on (COCO): 'class_sum' equals 'official' there.
KD_REFERENCE_CLASSES = 80
EDGES = 4


class CachedLD:
    """Localization Distillation from precomputed teacher targets, mixed into a dense head with
    edge distributions (``reg_max``, ``prior_generator``) whose ``get_targets`` returns mmdet's
    ATSS-style tuple (anchors, labels, label weights, ...; a family with another tuple overrides
    ``_labels_and_weights``). Its ``loss_by_feat`` adds the LD terms to the head's own losses.

    The teacher's logits come in each sample's metainfo as ``ld_targets`` (an
    :class:`~ldcache.store.targets.LDTargets`): from a store through the ``LoadLDTargets``
    transform (cached LD), or from a live teacher through ``OnlineLDGFL`` (online LD). No teacher
    runs here. Every term is computed per FPN level with mmdet's ``KnowledgeDistillationKLDivLoss``
    (``KL(softmax(t / T) || softmax(s / T))`` averaged over the bins or classes, times T^2):

    - Main LD: the 4 edge distributions at the student's ATSS positives, each edge weighted by
      the student's own max class score ``w`` (as the official code does).
    - VLR LD: edge distributions at the VLR rows (``vlr_gamma * thr <= d < thr`` for
      ``vlr_metric``), each weighted by its IoU weight ``v`` (IoU with the best-IoU GT the
      location is VLR for at ``vlr_gamma``).
    - Main KD / VLR KD: class logits (softmax over the C classes) at the same rows, weighted by
      the label weights, divided by the level's row count on this GPU (as the official code does).

    With ``KL_e`` the KL of edge e of a row, ``B`` the images on this GPU, sums over the rows of
    this GPU's batch on one level, and ``S_w``, ``S_v`` the sums of ``w`` and ``v`` over all
    levels and images, averaged over the GPUs and floored at 1 (as GFL divides its DFL):

    ================  ============================================  ======================================
    ``normalize``     Main LD                                       VLR LD
    ================  ============================================  ======================================
    ``'official'``    ``weight * sum(w * KL_e) / 4``                ``weight * sum(v * KL_e) / V``
    ``'per_image'``   ``weight * sum(w * KL_e) / (4 * B / 2)``      ``weight * sum(v * KL_e) / (V * B / 2)``
    ``'weight_sum'``  ``weight * sum(w * KL_e) / (4 * S_w)``        ``weight * sum(v * KL_e) / (4 * S_v)``
    ================  ============================================  ======================================

    ``V`` is the family's official VLR divisor (``official_ld_avg``): 16 for GFL, 4 for the
    others. With ``ld_joint_edges`` (RetinaNet), a row's four edges are one softmax over their
    4 x bins logits, ``KL_e`` is that row's one KL, and ``'weight_sum'`` divides by ``S_w``
    (``S_v``) without the 4.
    ``'official'`` grows with the images per GPU and the objects per image (the official code's
    known fault). ``'per_image'`` equals it at 2 images per GPU (the paper's setting) and keeps
    the LD strength per image at any other count of images per GPU or of GPUs. ``'weight_sum'``
    is a weighted mean KL per edge, independent of the objects per image too; its loss weights
    are calibrated in ``docs/normalization.md``: on COCO geometry at 2 images per GPU, the
    official strength needs about 22.9 for VLR LD and 32.7 x the student's mean confidence at its
    positives for Main LD (4.96 at a confidence of 0.15).

    Args:
        loss_ld (dict, optional): Main LD loss config. Defaults to weight 0.25, T=10. ``None``
            switches the term off (likewise for the three others).
        loss_ld_vlr (dict, optional): VLR LD loss config. Defaults to weight 0.25, T=10.
        loss_kd (dict, optional): Main KD loss config. Defaults to weight 10, T=2.
        loss_kd_vlr (dict, optional): VLR KD loss config. Defaults to None (off, as in the
            paper's best setting).
        vlr_gamma (float): VLR lower bound: a row is VLR when ``gamma * thr <= d < thr``. Any
            value at or above the store's gamma (rows and weights are then exactly those of an
            online computation at this gamma). Defaults to 0.25.
        vlr_metric (str): ``'official'`` (IoF minus the DIoU penalty, as the official code
            computes it) or ``'diou'`` (the paper's DIoU). Defaults to ``'official'``.
        normalize (str): How the LD terms are normalised: ``'official'``, ``'per_image'`` or
            ``'weight_sum'`` (table above). Defaults to ``'official'``.
        kd_reduction (str): ``'official'``: KD averaged over the C classes, so one weight is
            80/C times stronger on C classes than on COCO; ``'class_sum'``: KD summed over the
            classes and divided by 80, equal to ``'official'`` on 80 classes and of the same
            strength per location at any class count. Defaults to ``'official'``.
        **kwargs: The head's own arguments.
    """

    # The official code's Main and VLR LD divisors, whatever the number of rows.
    official_ld_avg = {"loss_ld": 4.0, "loss_ld_vlr": 16.0}
    # One softmax over the 4 x bins logits of a row (the official RetinaNet's LD), not one per edge.
    ld_joint_edges = False

    def __init__(self, *args,
                 loss_ld: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
                 loss_ld_vlr: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
                 loss_kd: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=10, T=2),
                 loss_kd_vlr: dict | None = None,
                 vlr_gamma: float = 0.25,
                 vlr_metric: str = "official",
                 normalize: str = "official",
                 kd_reduction: str = "official",
                 **kwargs):
        super().__init__(*args, **kwargs)
        for name, value, choices in (("vlr_metric", vlr_metric, VLR_METRICS),
                                     ("normalize", normalize, NORMALIZE_MODES),
                                     ("kd_reduction", kd_reduction, KD_REDUCTIONS)):
            if value not in choices:
                raise BadInputError(f"{type(self).__name__}: {name} must be one of {choices}, not {value!r}")
        if self.num_classes == 1 and (loss_kd or loss_kd_vlr):
            raise BadInputError(
                f"{type(self).__name__}: KD compares softmax distributions over the classes, and over one class "
                "they are both 1: the loss would be 0 at every step. Set loss_kd=None and loss_kd_vlr=None "
                "for a one-class dataset")
        self.ld_losses = {name: MODELS.build(cfg) if cfg else None for name, cfg in (
            ("loss_ld", loss_ld), ("loss_ld_vlr", loss_ld_vlr), ("loss_kd", loss_kd),
            ("loss_kd_vlr", loss_kd_vlr))}
        self.vlr_gamma, self.vlr_metric = vlr_gamma, vlr_metric
        self.normalize, self.kd_reduction = normalize, kd_reduction
        self._targets = None
        self._rows_missing: list[torch.Tensor] = []
        self._pending_counts: list[_PendingCounts] = []

    def loss_by_feat(self, *args, **kwargs) -> dict:
        """The head's own losses, then the LD terms (whatever the family's outputs: its
        ``loss_by_feat`` arguments are bound by name to find the image metas)."""
        losses = super().loss_by_feat(*args, **kwargs)
        return self.with_ld_terms(losses, signature(super().loss_by_feat).bind(*args, **kwargs).arguments)

    def with_ld_terms(self, losses: dict, inputs: dict) -> dict:
        """`losses` with the LD terms of this step, from the head's ``loss_by_feat`` arguments
        (`inputs`, by name: cls_scores, bbox_preds, batch_img_metas, ...)."""
        metas = inputs["batch_img_metas"]
        levels, rows = self.ld_levels(inputs["cls_scores"], inputs["bbox_preds"], metas)
        self._adjust_own_losses(losses, levels)
        return self.add_ld_terms(losses, levels, rows, len(metas))

    def _adjust_own_losses(self, losses: dict, levels: list) -> None:
        """Change the head's own losses in place, given this step's LD rows (none by default)."""

    def get_targets(self, *args, **kwargs):
        # Keep the ATSS assignment of this step for the LD terms: computing it once saves a
        # second assignment per step.
        self._targets = super().get_targets(*args, **kwargs)
        return self._targets

    def ld_levels(self, cls_scores: list, bbox_preds: list, batch_img_metas: list) -> tuple[list, _BatchRows]:
        """Each level's student and teacher rows for the LD terms, after the head's own losses
        (whose get_targets kept this step's assignment), and the batch's rows."""
        labels_list, label_weights_list = self._labels_and_weights(self._targets)
        self._targets = None
        rows = self._batch_rows([self._targets_of(meta) for meta in batch_img_metas],
                                [tuple(c.shape[-2:]) for c in cls_scores], cls_scores[0].device)
        levels = [self._level_rows(level, cls_scores[level], bbox_preds[level], labels_list[level],
                                   label_weights_list[level], rows)
                  for level in range(len(cls_scores))]
        return levels, rows

    def add_ld_terms(self, losses: dict, levels: list, rows: _BatchRows, num_images: int) -> dict:
        """`losses` with the LD terms that are on, each a list over the levels, and the logged mean
        Main LD weight; the rows are checked against the student's positives."""
        divisors = self._ld_divisors(levels, num_images)
        for name, loss in self.ld_losses.items():
            if loss is not None:
                losses[name] = [self._term(name, level, divisors.get(name)) for level in levels]
        # Logged, not a loss: the mean Main LD weight (the student's confidence at its positives),
        # the figure that calibrates 'weight_sum' (docs/normalization.md).
        losses["ld_main_weight_mean"] = (sum(level.ld_weight["loss_ld"].sum() for level in levels)
                                         / sum(level.main.sum() for level in levels).clamp(min=1))
        unknown = rows.weight_unknown_at(self.vlr_gamma) if self.ld_losses["loss_ld_vlr"] else rows.ratio[:0]
        self._check_rows(unknown)
        return losses

    @staticmethod
    def _labels_and_weights(targets: tuple) -> tuple[list, list]:
        """Per level, the labels and label weights in the head's ``get_targets`` result (ATSS's
        tuple: anchors, labels, label weights, ...; a family with another tuple overrides this)."""
        _, labels_list, label_weights_list, *_ = targets
        return labels_list, label_weights_list

    @staticmethod
    def _targets_of(meta: dict):
        if "ld_targets" not in meta:
            raise BadInputError("a sample reached a cached-LD head without ld_targets: add "
                                "dict(type='LoadLDTargets', store=...) after PackDetInputs in the train "
                                "pipeline, or train online with OnlineLDGFL")
        return meta["ld_targets"]

    def _level_rows(self, level: int, cls_score, bbox_pred, labels, label_weights, rows: _BatchRows) -> _LevelRows:
        """Student and teacher logits at the teacher rows of one level, with each region's weights.

        Every term runs over all teacher rows of the level, with the rows outside its region
        weighted 0, so that no step waits for the GPU to count a region's rows."""
        bins = self.reg_max + 1
        lo, hi = rows.level_bounds[level]
        index, values = rows.index[lo:hi], rows.values[lo:hi]
        labels, label_weights = labels.reshape(-1), label_weights.reshape(-1)
        positive = (labels >= 0) & (labels < self.num_classes)
        positive_row = positive[index].float()
        # A positive of the student without a teacher row means a store that does not fit. It is
        # counted on the device and checked once the count has arrived (see _check_rows).
        self._rows_missing.append(positive.sum() - positive_row.sum())
        vlr_row = (rows.ratio[lo:hi] >= self.vlr_gamma).float()
        student_cls = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)[index]
        student_reg = bbox_pred.permute(0, 2, 3, 1).reshape(-1, EDGES * bins)[index]
        # Main LD weighs each edge by the student's own confidence, VLR LD by the row's IoU weight.
        confidence = self._confidence(student_cls.detach(), student_reg.detach())
        return _LevelRows(
            student_cls=student_cls,
            student_reg=student_reg.reshape(-1, bins),
            teacher_reg=values[:, :EDGES * bins].reshape(-1, bins), teacher_cls=values[:, EDGES * bins:],
            main=positive_row, vlr=vlr_row,
            ld_weight={"loss_ld": positive_row * confidence,
                       "loss_ld_vlr": vlr_row * self._vlr_weight(rows.weight_at(self.vlr_gamma)[lo:hi], confidence)},
            label_weight=label_weights[index],
            empty=hi == lo, zero=bbox_pred.sum() * 0)

    @staticmethod
    def _vlr_weight(stored: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """float32 [R]: the VLR LD weight of the rows, from the store's weight at this gamma (the
        IoU weight) and the student's confidence (a family weighting by it overrides this)."""
        return stored

    def _confidence(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor) -> torch.Tensor:
        """float32 [R]: the student's confidence at its rows, the Main LD weight: its largest class
        score (sigmoid of its class logits [R, C]; a family with a quality branch overrides this)."""
        return cls_rows.sigmoid().max(dim=1).values

    def _ld_divisors(self, levels: list[_LevelRows], num_images: int) -> dict:
        """The divisor of each LD term (class docstring's table): a number or a device tensor."""
        if self.normalize == "official":
            return dict(self.official_ld_avg)
        if self.normalize == "per_image":
            return {name: avg * num_images / OFFICIAL_IMAGES_PER_GPU for name, avg in self.official_ld_avg.items()}
        divisors = {}
        for name in LD_TERMS:
            total = sum(level.ld_weight[name].sum() for level in levels)
            divisors[name] = self._kl_per_row * reduce_mean(total).clamp(min=1)
        return divisors

    @property
    def _kl_per_row(self) -> int:
        """How many KL terms a row's edge logits make: one per edge, or one with ``ld_joint_edges``."""
        return 1 if self.ld_joint_edges else EDGES

    def _term(self, name: str, level: _LevelRows, ld_divisor) -> torch.Tensor:
        """One LD or KD term on one level."""
        if level.empty:
            return level.zero
        loss = self.ld_losses[name]
        if name in LD_TERMS:
            per_row = self._kl_per_row
            weight = level.ld_weight[name][:, None].expand(-1, per_row).reshape(-1)
            # Rows of the KL: one edge's bins, or the four edges' bins under one softmax.
            width = level.student_reg.shape[1] * EDGES // per_row
            return loss(level.student_reg.reshape(-1, width), level.teacher_reg.reshape(-1, width), weight=weight,
                        avg_factor=ld_divisor)
        member = level.main if name == "loss_kd" else level.vlr
        term = loss(level.student_cls, level.teacher_cls, weight=member * level.label_weight,
                    avg_factor=member.sum())
        if self.kd_reduction == "class_sum":
            term = term * (self.cls_out_channels / KD_REFERENCE_CLASSES)
        return term

    def _check_rows(self, unknown_weights: torch.Tensor) -> None:
        """Refuse a store whose rows miss positives of the student, or whose VLR weights at this
        gamma were not kept. On a GPU the counts are copied to the host without waiting, and
        reported at a later step once they have arrived, or by `report_pending_row_checks`."""
        counts = torch.stack([torch.stack(self._rows_missing).sum().float(), unknown_weights.sum().float()])
        self._rows_missing = []
        self._pending_counts.append(_counts_to_host(counts))
        self._report_counts(wait=False)

    def report_pending_row_checks(self) -> None:
        """Wait for the row counts still on their way from the GPU and report them.

        The steps at the end of an epoch have no later step to report their counts:
        LDCacheCheckHook calls this after every epoch, on every rank."""
        self._report_counts(wait=True)

    def _report_counts(self, wait: bool) -> None:
        """Refuse the store for the first step whose counts are not 0, among those that have
        arrived (all of them, waiting for those on their way, when `wait`)."""
        while self._pending_counts and (wait or self._pending_counts[0].arrived()):
            missing, unknown = self._pending_counts.pop(0).values()
            if missing > 0:
                raise StoreMismatchError(
                    f"{_on_this_rank()}{missing} ATSS positive location(s) of the student had no cached teacher "
                    "row. The store's regions do not match this student's assignment (anchors, topk or GT boxes "
                    "differ), or the store was dumped with --region distill for another dataset; re-dump for this "
                    "config")
            if unknown > 0:
                raise StoreMismatchError(
                    f"{_on_this_rank()}{unknown} VLR row(s) at vlr_gamma={self.vlr_gamma} are VLR for more than "
                    f"{VLR_STEPS} GTs of rising IoU, and their weight at this gamma was not kept in the store. Dump "
                    f"with --gamma {self.vlr_gamma} for this gamma")

    def _batch_rows(self, targets: list, grids: list[tuple[int, int]], device) -> _BatchRows:
        """The teacher rows of the whole batch, level after level, moved to `device` at once: flat
        index into each level's (B, H, W) grid, values, and the VLR ratio and weight steps of the
        configured metric."""
        metric = VLR_METRICS.index(self.vlr_metric)
        priors = self.prior_generator.num_base_priors[0]
        index, values, ratio, step_ratio, step_weight, bounds = [], [], [], [], [], []
        for level, (height, width) in enumerate(grids):
            first = sum(len(i) for i in index)
            for i, t in enumerate(targets):
                lo, hi = int(t.level_ptr[level]), int(t.level_ptr[level + 1])
                masks = t.masks[lo:hi]
                grid_w = int(t.grid[level][1])
                loc = masks["loc"].astype(np.int64)
                # The student's rows are its maps' (image, y, x, prior), flattened.
                index.append((i * height * width + (loc // grid_w) * width + loc % grid_w) * priors + masks["prior"])
                values.append(t.values[lo:hi])
                ratio.append(masks["vlr_ratio"][:, metric])
                step_ratio.append(masks["vlr_step_ratio"][:, metric])
                step_weight.append(masks["vlr_step_weight"][:, metric])
            bounds.append((first, sum(len(i) for i in index)))
        return _BatchRows(*(_to_device(parts, dtype, device) for parts, dtype in (
            (index, np.int64), (values, np.float32), (ratio, np.float32), (step_ratio, np.float32),
            (step_weight, np.float32))), bounds)


@dataclass
class _BatchRows:
    """A batch's teacher rows on the device, level-major: level l owns rows level_bounds[l]."""

    index: torch.Tensor  # int64 [R]: flat index into the level's (B, H, W, priors) grid
    values: torch.Tensor  # float32 [R, 4 * bins + C]
    ratio: torch.Tensor  # float32 [R]: VLR at gamma when ratio >= gamma
    step_ratio: torch.Tensor  # float32 [R, VLR_STEPS]
    step_weight: torch.Tensor  # float32 [R, VLR_STEPS]
    level_bounds: list[tuple[int, int]]

    def weight_at(self, gamma: float) -> torch.Tensor:
        """float32 [R]: each row's VLR weight at `gamma`."""
        return vlr_weight_at(self.step_ratio, self.step_weight, gamma)

    def weight_unknown_at(self, gamma: float) -> torch.Tensor:
        """bool [R]: VLR rows at `gamma` whose weight lies on a step the store did not keep."""
        return ~vlr_weight_known(self.ratio, self.step_ratio, gamma)


@dataclass
class _LevelRows:
    """One level's rows: the student's and teacher's logits there and each region's weights."""

    student_cls: torch.Tensor  # [R, C]
    student_reg: torch.Tensor  # [R * 4, bins]
    teacher_reg: torch.Tensor  # [R * 4, bins]
    teacher_cls: torch.Tensor  # [R, C]
    main: torch.Tensor  # float32 [R]: 1 at the student's ATSS positives
    vlr: torch.Tensor  # float32 [R]: 1 at VLR rows
    ld_weight: dict  # {"loss_ld", "loss_ld_vlr"}: float32 [R] row weights, 0 outside the region
    label_weight: torch.Tensor  # float32 [R]
    empty: bool
    zero: torch.Tensor  # a 0 that keeps the graph


@dataclass
class _PendingCounts:
    """A step's row counts on their way to the host: `host` holds them once `copied` (None when
    they were on the host already) has completed."""

    host: torch.Tensor  # float32 [2]: positives without a teacher row, VLR rows of unknown weight
    copied: torch.cuda.Event | None

    def arrived(self) -> bool:
        return self.copied is None or self.copied.query()

    def values(self) -> tuple[int, int]:
        """The counts, waiting for the copy when it has not completed."""
        if self.copied is not None:
            self.copied.synchronize()
        missing, unknown = (int(c) for c in self.host)
        return missing, unknown


def _counts_to_host(counts: torch.Tensor) -> _PendingCounts:
    """Start copying the counts to the host, without waiting for the GPU."""
    if counts.device.type != "cuda":
        return _PendingCounts(counts, None)
    host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
    host.copy_(counts, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return _PendingCounts(host, copied)


def _on_this_rank() -> str:
    """'rank R of N: ' in a distributed run (each rank reports its own counts), else ''."""
    rank, world_size = get_dist_info()
    return f"rank {rank} of {world_size}: " if world_size > 1 else ""


def _to_device(parts: list, dtype, device) -> torch.Tensor:
    """One tensor on `device` from host arrays (one copy, from pinned memory on a GPU, so that it
    does not wait for the GPU) or from tensors a live teacher made there."""
    if parts and isinstance(parts[0], torch.Tensor):
        return torch.cat(parts).to(device=device, dtype=getattr(torch, np.dtype(dtype).name))
    host = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts), dtype=dtype))
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
