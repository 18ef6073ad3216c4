"""CachedLDHead: mmdet's GFLHead plus the four LD terms, with teacher targets from the batch."""
from __future__ import annotations

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
            raise BadInputError("a sample reached CachedLDHead without ld_targets: add "
                                "dict(type='LoadLDTargets', store=...) after PackDetInputs in the train "
                                "pipeline, or train online with OnlineLDGFL")
        return meta["ld_targets"]

    def _ld_terms(self, level, cls_score, bbox_pred, labels, label_weights, targets) -> dict:
        """The switched-on LD/KD terms of one level: {name: loss}."""
        batch, _, height, width = cls_score.shape
        device = cls_score.device
        bins = self.reg_max + 1
        student_cls = cls_score.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
        student_reg = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * bins)
        index, values, ratio, weight = self._batch_rows(targets, level, height, width, device)
        teacher_reg, teacher_cls = values[:, :4 * bins], values[:, 4 * bins:]

        labels, label_weights = labels.reshape(-1), label_weights.reshape(-1)
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        row_at = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
        row_at[index] = torch.arange(len(index), device=device)
        pos_rows = row_at[pos]
        if (pos_rows < 0).any():
            raise StoreMismatchError(
                f"level {level}: {int((pos_rows < 0).sum())} ATSS positive location(s) of the student have no "
                "cached teacher row. The store's regions do not match this student's assignment "
                "(anchors, topk or GT boxes differ), or the store was dumped with --region distill "
                "for another dataset; re-dump for this config")
        vlr_rows = (ratio >= self.vlr_gamma).nonzero().squeeze(1)
        # Main LD weighs each edge by the student's own confidence, VLR LD by the row's IoU weight.
        main_score = cls_score.detach().sigmoid().permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
        regions = {
            "main": (pos, pos_rows, main_score.max(dim=1).values[pos]),
            "vlr": (index[vlr_rows], vlr_rows, weight[vlr_rows]),
        }
        terms = {}
        for name, region, kind in (("loss_ld", "main", "edges"), ("loss_ld_vlr", "vlr", "edges"),
                                   ("loss_kd", "main", "classes"), ("loss_kd_vlr", "vlr", "classes")):
            loss = self.ld_losses[name]
            if loss is None:
                continue
            locations, rows, row_weight = regions[region]
            if kind == "edges":
                terms[name] = self._kl_term(name, loss, student_reg[locations].reshape(-1, bins),
                                            teacher_reg[rows].reshape(-1, bins),
                                            row_weight[:, None].expand(-1, 4).reshape(-1), len(rows), bbox_pred)
            else:
                terms[name] = self._kl_term(name, loss, student_cls[locations], teacher_cls[rows],
                                            label_weights[locations], len(rows), bbox_pred)
        return terms

    def _kl_term(self, name: str, loss, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor,
                 rows: int, anchor: torch.Tensor) -> torch.Tensor:
        """One KL term over `rows` rows; zero (still in the graph of `anchor`) when there are none.

        KD terms average over the rows; LD terms divide as `normalize` says."""
        if rows == 0:
            return anchor.sum() * 0
        if name in OFFICIAL_LD_AVG:
            avg = OFFICIAL_LD_AVG[name] if self.normalize == "official" else 4.0 * rows
        else:
            avg = rows
        return loss(student, teacher, weight=weight, avg_factor=avg)

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
