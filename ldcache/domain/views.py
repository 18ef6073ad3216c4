"""Views: the geometry (resize scale, horizontal flip) under which a teacher output is valid.

A cached target is only right for the exact geometry the teacher saw, so every stored record is
an (image, view) pair, and the student's pipeline must land on one of the stored views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mmcv
import torch

PAD_DIVISOR = 32  # mmdet's DetDataPreprocessor pad_size_divisor in every GFL config


@dataclass(frozen=True)
class View:
    """A resize scale and a flip: the geometry one record of every image is stored under."""

    scale: tuple[int, int]  # (long, short) edge bound as in mmdet's Resize(keep_ratio=True)
    flip: bool

    @property
    def name(self) -> str:
        return f"{self.scale[0]}x{self.scale[1]}{'-hflip' if self.flip else ''}"


@dataclass(frozen=True)
class ViewGeometry:
    """What a view makes of one image."""

    img_shape: tuple[int, int]  # (h, w) after the resize
    scale_factor: tuple[float, float]  # (w_scale, h_scale), mmdet's order
    pad_shape: tuple[int, int]  # (h, w) padded to PAD_DIVISOR
    flip: bool


def view_geometry(width: int, height: int, view: View) -> ViewGeometry:
    """What mmdet's Resize(scale, keep_ratio=True) + RandomFlip produce for an image of this size."""
    new_w, new_h = mmcv.rescale_size((width, height), view.scale)
    pad = (math.ceil(new_h / PAD_DIVISOR) * PAD_DIVISOR, math.ceil(new_w / PAD_DIVISOR) * PAD_DIVISOR)
    return ViewGeometry((new_h, new_w), (new_w / width, new_h / height), pad, view.flip)


def boxes_in_view(bboxes: torch.Tensor, geometry: ViewGeometry) -> torch.Tensor:
    """Map xyxy boxes of the original image into the view, as mmdet's Resize and RandomFlip do
    (rescale, clip to the image, then mirror)."""
    w_scale, h_scale = geometry.scale_factor
    h, w = geometry.img_shape
    boxes = bboxes * bboxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    if geometry.flip:
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return boxes


def parse_views(scales: list[tuple[int, int]], flip: bool) -> list[View]:
    """Identity view of each scale, plus its horizontal mirror when `flip`."""
    return [View(tuple(s), f) for s in scales for f in ((False, True) if flip else (False,))]
