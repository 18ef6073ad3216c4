"""NMS of CUDA tensors where mmcv was built without its CUDA ops.

mmdet's dense heads post-process with `mmcv.ops.batched_nms`, which calls `mmcv.ops.nms`. An
mmcv built with its CPU ops only (as setup builds it, and as the lent GPU machines' wheels are)
fails on CUDA tensors ("nms_impl: implementation for device cuda:0 not found"), so evaluation on
a GPU would crash. With such an mmcv, the NMS of CUDA tensors goes to `torchvision.ops.nms`, which
keeps the same boxes as mmcv's op for its default offset 0 (plain IoU; indices by descending
score). Everything else (CPU tensors, numpy arrays, offset 1) stays with mmcv's own op.
"""
from __future__ import annotations

import sys

import torch
import torchvision


def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv was compiled with its CUDA kernels."""
    from mmcv.ops import get_compiling_cuda_version

    return get_compiling_cuda_version() != "not available"


def torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float = 0,
                    max_num: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """`mmcv.ops.nms` at offset 0 through torchvision: boxes [N, 4] and scores [N] in, dets [K, 5]
    (box and score) and kept indices [K], by descending score, out."""
    candidates = torch.arange(len(scores), device=scores.device)
    if score_threshold > 0:
        candidates = candidates[scores > score_threshold]
    inds = candidates[torchvision.ops.nms(boxes[candidates].float(), scores[candidates].float(), iou_threshold)]
    if max_num > 0:
        inds = inds[:max_num]
    return torch.cat((boxes[inds], scores[inds].reshape(-1, 1)), dim=1), inds


def route_cuda_nms_to_torchvision() -> None:
    """Make `mmcv.ops.nms` (and so `batched_nms`) send CUDA tensors to torchvision when mmcv has
    no CUDA ops. Idempotent; a no-op with an mmcv built for CUDA."""
    import mmcv.ops

    module = sys.modules["mmcv.ops.nms"]
    if getattr(module.nms, "routes_cuda_to_torchvision", False) or mmcv_has_cuda_ops():
        return
    mmcv_nms = module.nms

    def nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
        if isinstance(boxes, torch.Tensor) and boxes.is_cuda and offset == 0:
            return torchvision_nms(boxes, scores, iou_threshold, score_threshold, max_num)
        return mmcv_nms(boxes, scores, iou_threshold, offset, score_threshold, max_num)

    nms.routes_cuda_to_torchvision = True
    # batched_nms looks the op up by name in its own module; callers of mmcv.ops.nms see the package's.
    module.nms = nms
    mmcv.ops.nms = nms
