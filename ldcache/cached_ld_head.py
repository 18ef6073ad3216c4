"""CachedLDHead: mmdet's GFLHead plus the four LD terms, with teacher targets from the batch.

The teacher's logits come in each sample's metainfo as ``ld_targets`` (an LDTargets): from the
store through the ``LoadLDTargets`` transform (cached LD) or from a live teacher through
``OnlineLDGFL`` (online LD). No teacher runs here.

Terms, per FPN level, with mmdet's KnowledgeDistillationKLDivLoss (KL at temperature T, mean
over bins or classes, times T^2):
- Main LD: edge distributions at the student's ATSS positives, weighted per edge by the student's
  own max class score (as the official code does).
- VLR LD: edge distributions at VLR rows (``vlr_ratio >= vlr_gamma`` for ``vlr_metric``),
  weighted by the stored IoU weight.
- Main KD / VLR KD: class logits (softmax over classes) at the same rows.
``normalize='official'`` divides Main LD by 4 and VLR LD by 16 whatever the number of rows (the
official code's choice, so LD grows with the batch). ``'per_location'`` divides by 4 x rows.
"""
from __future__ import annotations

import numpy as np
import torch
from mmdet.models.dense_heads import GFLHead
from mmdet.registry import MODELS

from .errors import LDCacheError
from .regions import VLR_METRICS

NORMALIZE_MODES = ("official", "per_location")


@MODELS.register_module()
class CachedLDHead(GFLHead):

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
            raise LDCacheError(f"vlr_metric must be one of {VLR_METRICS}, not {vlr_metric!r}")
        if normalize not in NORMALIZE_MODES:
            raise LDCacheError(f"normalize must be one of {NORMALIZE_MODES}, not {normalize!r}")
        self.ld_losses = {name: MODELS.build(cfg) if cfg else None for name, cfg in (
            ("loss_ld", loss_ld), ("loss_ld_vlr", loss_ld_vlr), ("loss_kd", loss_kd),
            ("loss_kd_vlr", loss_kd_vlr))}
        self.vlr_gamma, self.vlr_metric, self.normalize, self.use_dfl = vlr_gamma, vlr_metric, normalize, use_dfl
        self._targets = None

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
        targets = [self._targets_of(meta) for meta in batch_img_metas]
        per_level = [self._ld_terms(level, cls_scores[level], bbox_preds[level], labels_list[level],
                                    label_weights_list[level], targets)
                     for level in range(len(cls_scores))]
        for name, loss in self.ld_losses.items():
            if loss is not None:
                losses[name] = [terms[name] for terms in per_level]
        return losses

    @staticmethod
    def _targets_of(meta: dict):
        if "ld_targets" not in meta:
            raise LDCacheError("a sample reached CachedLDHead without ld_targets: add "
                               "dict(type='LoadLDTargets', store=...) after PackDetInputs in the train "
                               "pipeline, or train online with OnlineLDGFL")
        return meta["ld_targets"]

    def _ld_terms(self, level, cls_score, bbox_pred, labels, label_weights, targets) -> dict:
        batch, _, height, width = cls_score.shape
        device = cls_score.device
        cls_flat = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
        reg_flat = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (self.reg_max + 1))
        index, values, ratio, weight = self._batch_rows(targets, level, height, width, device)
        bins = self.reg_max + 1
        soft_reg, soft_cls = values[:, :4 * bins], values[:, 4 * bins:]
        zero = bbox_pred.sum() * 0
        terms = {}

        labels, label_weights = labels.reshape(-1), label_weights.reshape(-1)
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        row_at = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
        row_at[index] = torch.arange(len(index), device=device)
        pos_rows = row_at[pos]
        if (pos_rows < 0).any():
            raise LDCacheError(
                f"level {level}: {int((pos_rows < 0).sum())} ATSS positive location(s) of the student have no "
                "cached teacher row. The store's regions do not match this student's assignment "
                "(anchors, topk or GT boxes differ), or the store was dumped with --region distill "
                "for another dataset; re-dump for this config")
        if self.ld_losses["loss_ld"] is not None:
            if len(pos):
                score = cls_score.detach().sigmoid().permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
                edge_weight = score.max(dim=1).values[pos][:, None].expand(-1, 4).reshape(-1)
                avg = 4.0 if self.normalize == "official" else 4.0 * len(pos)
                terms["loss_ld"] = self.ld_losses["loss_ld"](
                    reg_flat[pos].reshape(-1, bins), soft_reg[pos_rows].reshape(-1, bins),
                    weight=edge_weight, avg_factor=avg)
            else:
                terms["loss_ld"] = zero
        if self.ld_losses["loss_kd"] is not None:
            terms["loss_kd"] = self.ld_losses["loss_kd"](
                cls_flat[pos], soft_cls[pos_rows], weight=label_weights[pos],
                avg_factor=len(pos)) if len(pos) else zero

        vlr = (ratio >= self.vlr_gamma).nonzero().squeeze(1)
        vlr_index = index[vlr]
        if self.ld_losses["loss_ld_vlr"] is not None:
            if len(vlr):
                edge_weight = weight[vlr][:, None].expand(-1, 4).reshape(-1)
                avg = 16.0 if self.normalize == "official" else 4.0 * len(vlr)
                terms["loss_ld_vlr"] = self.ld_losses["loss_ld_vlr"](
                    reg_flat[vlr_index].reshape(-1, bins), soft_reg[vlr].reshape(-1, bins),
                    weight=edge_weight, avg_factor=avg)
            else:
                terms["loss_ld_vlr"] = zero
        if self.ld_losses["loss_kd_vlr"] is not None:
            terms["loss_kd_vlr"] = self.ld_losses["loss_kd_vlr"](
                cls_flat[vlr_index], soft_cls[vlr], weight=label_weights[vlr_index],
                avg_factor=len(vlr)) if len(vlr) else zero
        return terms

    def _batch_rows(self, targets, level, height, width, device):
        """Rows of one level for the whole batch: flat index into the batch's (B, H, W) grid,
        teacher values, VLR ratio and weight of the configured metric."""
        metric = VLR_METRICS.index(self.vlr_metric)
        index, values, ratio, weight = [], [], [], []
        for i, t in enumerate(targets):
            rows = t.level(level)
            grid_w = int(t.grid[level][1])
            loc = _tensor(rows.loc, np.int64, device)
            index.append(i * height * width + (loc // grid_w) * width + loc % grid_w)
            lo, hi = int(t.level_ptr[level]), int(t.level_ptr[level + 1])
            values.append(torch.as_tensor(t.values[lo:hi], device=device).float())
            ratio.append(_tensor(rows.vlr_ratio[:, metric], np.float32, device))
            weight.append(_tensor(rows.vlr_weight[:, metric], np.float32, device))
        return torch.cat(index), torch.cat(values), torch.cat(ratio), torch.cat(weight)


def _tensor(field: np.ndarray, dtype, device) -> torch.Tensor:
    # Fields of packed mask rows are views with odd strides (a 1-row view even passes as
    # contiguous): always copy into a fresh array before handing it to torch.
    return torch.from_numpy(np.array(field, dtype=dtype, order="C", copy=True)).to(device)
