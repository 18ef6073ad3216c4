"""CachedLDHead: mmdet's GFLHead plus the four LD terms, with teacher targets from the batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mmdet.models.dense_heads import GFLHead
from mmdet.registry import MODELS

from ..errors import BadInputError, StoreMismatchError
from ..store.format import VLR_METRICS

NORMALIZE_MODES = ("official", "per_location")
# Main and VLR LD divisors of the official code, whatever the number of rows.
OFFICIAL_LD_AVG = {"loss_ld": 4.0, "loss_ld_vlr": 16.0}


@MODELS.register_module()
class CachedLDHead(GFLHead):
    """GFL head trained with Localization Distillation from precomputed teacher targets.

    The teacher's logits come in each sample's metainfo as ``ld_targets`` (an
    :class:`~ldcache.store.targets.LDTargets`): from a store through the ``LoadLDTargets``
    transform (cached LD), or from a live teacher through ``OnlineLDGFL`` (online LD). No teacher
    runs here. Every term is computed per FPN level with mmdet's ``KnowledgeDistillationKLDivLoss``
    (KL at temperature T, mean over the bins or classes, times T^2):

    - Main LD: edge distributions at the student's ATSS positives, each edge weighted by the
      student's own max class score (as the official code does).
    - VLR LD: edge distributions at the VLR rows (``vlr_ratio >= vlr_gamma`` for ``vlr_metric``),
      weighted by the row's stored IoU weight.
    - Main KD / VLR KD: class logits (softmax over the classes) at the same rows, weighted by the
      label weights, averaged over the level's rows.

    Args:
        loss_ld (dict, optional): Main LD loss config. Defaults to weight 0.25, T=10. ``None``
            switches the term off (likewise for the three others).
        loss_ld_vlr (dict, optional): VLR LD loss config. Defaults to weight 0.25, T=10.
        loss_kd (dict, optional): Main KD loss config. Defaults to weight 10, T=2.
        loss_kd_vlr (dict, optional): VLR KD loss config. Defaults to None (off, as in the
            paper's best setting).
        vlr_gamma (float): VLR lower bound: a row is VLR when ``gamma * thr <= d < thr``. Any
            value at or above the store's gamma. Defaults to 0.25.
        vlr_metric (str): ``'official'`` (IoF minus the DIoU penalty, as the official code
            computes it) or ``'diou'`` (the paper's DIoU). Defaults to ``'official'``.
        normalize (str): ``'official'``: Main LD / 4 and VLR LD / 16 whatever the number of rows,
            so LD grows with the batch (as the official code does); ``'per_location'``: each
            divided by 4 x its rows on the level. Defaults to ``'official'``.
        use_dfl (bool): Keep GFL's DFL term. Defaults to True.
        **kwargs: GFLHead's arguments.
    """

    def __init__(self, *args,
                 loss_ld: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
                 loss_ld_vlr: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
                 loss_kd: dict | None = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=10, T=2),
                 loss_kd_vlr: dict | None = None,
                 vlr_gamma: float = 0.25,
                 vlr_metric: str = "official",
                 normalize: str = "official",
                 use_dfl: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if vlr_metric not in VLR_METRICS:
            raise BadInputError(f"vlr_metric must be one of {VLR_METRICS}, not {vlr_metric!r}")
        if normalize not in NORMALIZE_MODES:
            raise BadInputError(f"normalize must be one of {NORMALIZE_MODES}, not {normalize!r}")
        self.ld_losses = {name: MODELS.build(cfg) if cfg else None for name, cfg in (
            ("loss_ld", loss_ld), ("loss_ld_vlr", loss_ld_vlr), ("loss_kd", loss_kd),
            ("loss_kd_vlr", loss_kd_vlr))}
        self.vlr_gamma, self.vlr_metric, self.normalize, self.use_dfl = vlr_gamma, vlr_metric, normalize, use_dfl
        self._targets = None
        self._rows_missing: list[torch.Tensor] = []
        self._missing_counts: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []

    def get_targets(self, *args, **kwargs):
        # Keep the ATSS assignment of this step for the LD terms: computing it once saves a
        # second assignment per step.
        self._targets = super().get_targets(*args, **kwargs)
        return self._targets

    def loss_by_feat(self, cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                     batch_gt_instances_ignore=None) -> dict:
        losses = super().loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                                      batch_gt_instances_ignore)
        if not self.use_dfl:
            losses.pop("loss_dfl")
        _, labels_list, label_weights_list, *_ = self._targets
        self._targets = None
        rows = self._batch_rows([self._targets_of(meta) for meta in batch_img_metas],
                                [tuple(c.shape[-2:]) for c in cls_scores], cls_scores[0].device)
        per_level = [self._ld_terms(level, cls_scores[level], bbox_preds[level], labels_list[level],
                                    label_weights_list[level], rows)
                     for level in range(len(cls_scores))]
        for name, loss in self.ld_losses.items():
            if loss is not None:
                losses[name] = [terms[name] for terms in per_level]
        self._check_missing_rows()
        return losses

    @staticmethod
    def _targets_of(meta: dict):
        if "ld_targets" not in meta:
            raise BadInputError("a sample reached CachedLDHead without ld_targets: add "
                                "dict(type='LoadLDTargets', store=...) after PackDetInputs in the train "
                                "pipeline, or train online with OnlineLDGFL")
        return meta["ld_targets"]

    def _ld_terms(self, level: int, cls_score, bbox_pred, labels, label_weights, rows: _BatchRows) -> dict:
        """The switched-on LD/KD terms of one level: {name: loss}.

        Every term runs over all teacher rows of the level, with the rows outside its region
        weighted 0, so that no step waits for the GPU to count a region's rows."""
        bins = self.reg_max + 1
        lo, hi = rows.level_bounds[level]
        index, values = rows.index[lo:hi], rows.values[lo:hi]
        labels, label_weights = labels.reshape(-1), label_weights.reshape(-1)
        positive = (labels >= 0) & (labels < self.num_classes)
        positive_row = positive[index].float()
        num_positives = positive.sum()
        # A positive of the student without a teacher row means a store that does not fit. It is
        # counted on the device and checked once the count has arrived (see _check_missing_rows).
        self._rows_missing.append(num_positives - positive_row.sum())
        if hi == lo:
            zero = bbox_pred.sum() * 0
            return {name: zero for name, loss in self.ld_losses.items() if loss is not None}
        student_cls = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)[index]
        student_reg = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * bins)[index].reshape(-1, bins)
        teacher_reg, teacher_cls = values[:, :4 * bins].reshape(-1, bins), values[:, 4 * bins:]

        vlr_row = (rows.ratio[lo:hi] >= self.vlr_gamma).float()
        # Main LD weighs each edge by the student's own confidence, VLR LD by the row's IoU weight.
        confidence = cls_score.detach().sigmoid().permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)[index]
        regions = {"main": (positive_row, positive_row * confidence.max(dim=1).values, num_positives),
                   "vlr": (vlr_row, vlr_row * rows.weight[lo:hi], vlr_row.sum())}
        terms = {}
        for name, region, kind in (("loss_ld", "main", "edges"), ("loss_ld_vlr", "vlr", "edges"),
                                   ("loss_kd", "main", "classes"), ("loss_kd_vlr", "vlr", "classes")):
            loss = self.ld_losses[name]
            if loss is None:
                continue
            member, ld_weight, count = regions[region]
            if kind == "edges":
                avg = OFFICIAL_LD_AVG[name] if self.normalize == "official" else 4.0 * count
                terms[name] = loss(student_reg, teacher_reg, weight=ld_weight[:, None].expand(-1, 4).reshape(-1),
                                   avg_factor=avg)
            else:
                terms[name] = loss(student_cls, teacher_cls, weight=member * label_weights[index], avg_factor=count)
        return terms

    def _check_missing_rows(self) -> None:
        """Refuse a store whose rows miss positives of the student. On a GPU the count is copied to
        the host without waiting and checked at a later step, once it has arrived."""
        missing = torch.stack(self._rows_missing).sum()
        self._rows_missing = []
        if missing.device.type == "cuda":
            host = torch.empty((), dtype=missing.dtype, pin_memory=True)
            host.copy_(missing, non_blocking=True)
            arrived = torch.cuda.Event()
            arrived.record()
            self._missing_counts.append((host, arrived))
        else:
            self._missing_counts.append((missing, None))
        while self._missing_counts and (self._missing_counts[0][1] is None or self._missing_counts[0][1].query()):
            count = int(self._missing_counts.pop(0)[0])
            if count > 0:
                raise StoreMismatchError(
                    f"{count} ATSS positive location(s) of the student had no cached teacher row. The store's "
                    "regions do not match this student's assignment (anchors, topk or GT boxes differ), or the "
                    "store was dumped with --region distill for another dataset; re-dump for this config")

    def _batch_rows(self, targets: list, grids: list[tuple[int, int]], device) -> _BatchRows:
        """The teacher rows of the whole batch, level after level, moved to `device` at once: flat
        index into each level's (B, H, W) grid, values, VLR ratio and weight of the configured metric."""
        metric = VLR_METRICS.index(self.vlr_metric)
        index, values, ratio, weight, bounds = [], [], [], [], []
        for level, (height, width) in enumerate(grids):
            first = sum(len(i) for i in index)
            for i, t in enumerate(targets):
                lo, hi = int(t.level_ptr[level]), int(t.level_ptr[level + 1])
                masks = t.masks[lo:hi]
                grid_w = int(t.grid[level][1])
                loc = masks["loc"].astype(np.int64)
                index.append(i * height * width + (loc // grid_w) * width + loc % grid_w)
                values.append(t.values[lo:hi])
                ratio.append(masks["vlr_ratio"][:, metric])
                weight.append(masks["vlr_weight"][:, metric])
            bounds.append((first, sum(len(i) for i in index)))
        return _BatchRows(_to_device(index, np.int64, device), _to_device(values, np.float32, device),
                          _to_device(ratio, np.float32, device), _to_device(weight, np.float32, device), bounds)


@dataclass
class _BatchRows:
    """A batch's teacher rows on the device, level-major: level l owns rows level_bounds[l]."""

    index: torch.Tensor  # int64 [R]: flat index into the level's (B, H, W) grid
    values: torch.Tensor  # float32 [R, 4 * bins + C]
    ratio: torch.Tensor  # float32 [R]
    weight: torch.Tensor  # float32 [R]
    level_bounds: list[tuple[int, int]]


def _to_device(parts: list, dtype, device) -> torch.Tensor:
    """One tensor on `device` from host arrays (one copy, from pinned memory on a GPU, so that it
    does not wait for the GPU) or from tensors a live teacher made there."""
    if parts and isinstance(parts[0], torch.Tensor):
        return torch.cat(parts).to(device=device, dtype=getattr(torch, np.dtype(dtype).name))
    host = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts), dtype=dtype))
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
