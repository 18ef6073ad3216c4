"""OnlineLDGFL: a GFL detector that runs a teacher at every step, for comparison with cached LD.

The teacher's outputs are cut into the same LDTargets the store holds (same regions, same rows),
so online and cached LD share one loss code: the head's CachedLD terms.
"""
from __future__ import annotations

import torch
from mmdet.models.detectors import GFL
from mmdet.registry import MODELS

from ..domain.rows import RegionRowMaker, gather_logits
from ..domain.ld_config import load_config
from ..domain.region_rule import region_rule
from ..domain.teacher import build_teacher
from ..domain.grid import featmap_sizes
from ..store.targets import targets_from_rows


@MODELS.register_module()
class OnlineLDGFL(GFL):
    """A single-stage detector with a cached-LD head (CachedLDHead and the family heads of
    docs/families.md) whose targets come from a live teacher.

    The teacher is kept out of the module tree: it is not trained, not in the optimizer, not
    saved in checkpoints, and moved to the student's device when first used. The rows are cut at
    the head's own ``vlr_gamma`` by the student head's region rules (its assigner and family), as
    a store dumped for this config holds them.

    Args:
        teacher_config (str): The teacher's mmdet config.
        teacher_ckpt (str): Its checkpoint (loaded weights-only unless ldcache wrote it).
        **kwargs: GFL's arguments; ``bbox_head`` must be a cached-LD head.
    """

    def __init__(self, *args, teacher_config: str, teacher_ckpt: str, **kwargs):
        super().__init__(*args, **kwargs)
        # Building the teacher must not move the RNG: the student's initialisation stays the
        # same as in a cached run with the same seed.
        with torch.random.fork_rng():
            teacher = build_teacher(load_config(teacher_config), teacher_ckpt, "cpu")
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule
        strides = [int(s[0]) for s in teacher.bbox_head.prior_generator.strides]
        self.row_maker = RegionRowMaker(teacher.bbox_head.prior_generator, strides, "distill",
                                        self.bbox_head.vlr_gamma, region_rule(self.bbox_head))
        self.strides = strides

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples) -> dict:
        teacher = self.__dict__["teacher"]
        if next(teacher.parameters()).device != batch_inputs.device:
            teacher.to(batch_inputs.device)
        with torch.no_grad():
            teacher.eval()
            # The head's first two outputs, as the dump stores them.
            cls_scores, bbox_preds, *_ = teacher.bbox_head(teacher.extract_feat(batch_inputs))
        for i, sample in enumerate(batch_data_samples):
            pad = tuple(sample.pad_shape)
            grid = featmap_sizes(pad, self.strides)
            rows = self.row_maker.rows(sample.gt_instances.bboxes, pad)
            values = gather_logits(cls_scores, bbox_preds, i, rows, grid, self.row_maker.priors_per_location)
            sample.set_metainfo({"ld_targets": targets_from_rows(rows, values, grid, teacher.bbox_head.num_classes)})
        return super().loss(batch_inputs, batch_data_samples)
