"""How a row's teacher logits sit in the store's `logits` array: fp16, fp32 or q8.

A row's logits are the 4 edge distributions (edge-major, `bins` each) then the C class logits.
fp16 and fp32 store them as they are. q8 is the smaller, lossy option: softmax is unchanged by
adding a constant, so each edge keeps only how far each bin lies below the edge's largest logit,
in 255 equal steps of that edge's own range (the step kept as fp16). The class logits stay fp16.
A q8 row is bytes: 4 fp16 steps, then 4*bins uint8 codes, then C fp16 class logits.
`bench/dump_bench.py` measures its KL against the exact teacher.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALUE_CODECS = ("fp16", "fp32", "q8")
Q8_LEVELS = 255


@dataclass(frozen=True)
class ValueCodec:
    name: str
    bins: int  # reg_max + 1
    num_classes: int

    def __post_init__(self):
        if self.name not in VALUE_CODECS:
            raise ValueError(f"unknown value codec {self.name!r}; choose from {VALUE_CODECS}")

    @property
    def num_values(self) -> int:
        """Logits per row once decoded."""
        return 4 * self.bins + self.num_classes

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype({"fp16": np.float16, "fp32": np.float32, "q8": np.uint8}[self.name])

    @property
    def width(self) -> int:
        """Columns of the `logits` array."""
        if self.name == "q8":
            return 4 * 2 + 4 * self.bins + 2 * self.num_classes
        return self.num_values

    def encode(self, values: np.ndarray) -> np.ndarray:
        """[R, num_values] float logits -> [R, width] rows of the storage dtype."""
        if self.name != "q8":
            return values.astype(self.storage_dtype)
        rows = len(values)
        edges = values[:, :4 * self.bins].astype(np.float32).reshape(rows, 4, self.bins)
        below_top = edges.max(axis=2, keepdims=True) - edges
        step = (below_top.max(axis=2, keepdims=True) / Q8_LEVELS).astype(np.float16)
        # A flat edge (range under fp16's smallest step) stores all zeros: every bin equal.
        safe_step = np.where(step > 0, step.astype(np.float32), np.float32(1))
        codes = np.clip(np.rint(below_top / safe_step), 0, Q8_LEVELS).astype(np.uint8)
        codes[np.broadcast_to(step == 0, codes.shape)] = 0
        classes = values[:, 4 * self.bins:].astype(np.float16)
        return np.concatenate([step.reshape(rows, 4).view(np.uint8), codes.reshape(rows, -1),
                               classes.view(np.uint8)], axis=1)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """[R, width] stored rows -> [R, num_values] logits (fp16/fp32 as stored; q8 as float32)."""
        if self.name != "q8":
            return stored
        rows, split = len(stored), 8 + 4 * self.bins
        stored = np.ascontiguousarray(stored)
        minus_step = -stored[:, :8].view(np.float16).astype(np.float32)
        out = np.empty((rows, self.num_values), dtype=np.float32)
        np.multiply(stored[:, 8:split].reshape(rows, 4, self.bins), minus_step[:, :, None],
                    out=out[:, :4 * self.bins].reshape(rows, 4, self.bins))
        out[:, 4 * self.bins:] = stored[:, split:].view(np.float16)
        return out
