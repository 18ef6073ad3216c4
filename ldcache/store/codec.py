"""How a row's teacher logits sit in the store's `logits` array: fp16, fp32 or q8.

A row's logits are the 4 edge distributions (edge-major, `bins` each) then the C class logits.
fp16 and fp32 store them as they are. q8 is the smaller, lossy option: softmax is unchanged by
adding a constant, so each edge keeps only how far each bin lies below the edge's largest logit,
in steps of `max(range / 255, Q8_MIN_STEP)` (the step kept as fp16), at most 255 of them. The
class logits stay fp16. A q8 row is bytes: 4 fp16 steps, then 4*bins uint8 codes, then C fp16
class logits.

Why the floor: rounding to a step s moves each logit by at most s/2, and LD's KL at temperature T
then changes by about Var_p(error) / (2 T^2) <= s^2 / (24 T^2). A step of 1/16 keeps that under
1.7e-6 nats per edge at T=10 (the bound asked for is 1e-5), and an edge of a small range then
uses few distinct codes, which zstd stores in few bits. Only edges wider than 255/16 logits get
a coarser step, range/255, as before. `bench/dump_bench.py` measures the KL against the exact
teacher.

Why deltas: a trained teacher's edge distributions are smooth, so the codes of neighbouring bins
are close, and their differences take fewer bits than the codes (measured on a trained GFL: 16%
fewer bytes after zstd). A random teacher's are noise, for which differences cost more. So each
row keeps whichever is cheaper by a simple proxy, and says which in the sign bit of its first
step (steps are positive). Deltas are exact (mod 256): they change no decoded value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError

VALUE_CODECS = ("fp16", "fp32", "q8")
Q8_LEVELS = 255
Q8_MIN_STEP = 1 / 16  # exact in fp16; see the module docstring for the KL it allows
Q8_DELTA_BIT = np.uint16(0x8000)  # sign bit of a row's first fp16 step: its codes are bin-to-bin deltas


@dataclass(frozen=True)
class ValueCodec:
    """Encodes teacher logits into `logits` rows of one storage dtype, and decodes them."""

    name: str
    bins: int  # reg_max + 1
    num_classes: int

    def __post_init__(self):
        if self.name not in VALUE_CODECS:
            raise BadInputError(f"unknown value codec {self.name!r}; choose from {VALUE_CODECS}")

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
        exact_step = np.maximum(below_top.max(axis=2, keepdims=True) / Q8_LEVELS, Q8_MIN_STEP)
        step = exact_step.astype(np.float16)
        # Round up where fp16 rounded down, so that range / step never exceeds Q8_LEVELS.
        step = np.where(step < exact_step, np.nextafter(step, np.float16(np.inf)), step)
        codes = np.clip(np.rint(below_top / step.astype(np.float32)), 0, Q8_LEVELS).astype(np.uint8)
        as_delta = _deltas_are_cheaper(codes)
        codes[as_delta] = np.diff(codes[as_delta], axis=2, prepend=np.uint8(0))  # wraps mod 256
        step_bits = step.reshape(rows, 4).view(np.uint16)
        step_bits[as_delta, 0] |= Q8_DELTA_BIT
        classes = values[:, 4 * self.bins:].astype(np.float16)
        return np.concatenate([step_bits.view(np.uint8), codes.reshape(rows, -1), classes.view(np.uint8)], axis=1)

    def decode(self, stored: np.ndarray, class_rows: np.ndarray | None = None) -> np.ndarray:
        """[R, width] stored rows -> [R, num_values] logits (fp16/fp32 as stored; q8 as float32).

        `class_rows` (bool [R]) names the rows whose class logits were stored, when only some
        were (the others are zeros): q8 then converts only those from fp16, numpy's slowest step."""
        if self.name != "q8":
            return stored
        rows, split = len(stored), 8 + 4 * self.bins
        stored = np.ascontiguousarray(stored)
        step_bits = stored[:, :8].view(np.uint16)
        as_delta = (step_bits[:, 0] & Q8_DELTA_BIT) > 0
        minus_step = -(step_bits & ~Q8_DELTA_BIT).view(np.float16).astype(np.float32)
        codes = _undo_deltas(stored[:, 8:split].reshape(rows, 4, self.bins), as_delta)
        out = np.empty((rows, self.num_values), dtype=np.float32)
        np.multiply(codes, minus_step[:, :, None], out=out[:, :4 * self.bins].reshape(rows, 4, self.bins))
        if class_rows is None:
            out[:, 4 * self.bins:] = stored[:, split:].view(np.float16)
        else:
            out[:, 4 * self.bins:] = 0
            out[class_rows, 4 * self.bins:] = stored[class_rows, split:].view(np.float16)
        return out


def _deltas_are_cheaper(codes: np.ndarray) -> np.ndarray:
    """bool [R]: rows of [R, 4, bins] codes whose bin-to-bin differences are smaller in sum than
    the codes' distances to the row's median, a cheap stand-in for which zstd stores in fewer bits."""
    codes = codes.astype(np.int16)
    deltas = np.abs(np.diff(codes, axis=2, prepend=0)).sum(axis=(1, 2))
    spread = np.abs(codes - np.median(codes.reshape(len(codes), -1), axis=1)[:, None, None]).sum(axis=(1, 2))
    return deltas < spread


def _undo_deltas(codes: np.ndarray, as_delta: np.ndarray) -> np.ndarray:
    """[R, 4, bins] codes with the rows marked `as_delta` turned from differences back to codes."""
    if not as_delta.any():
        return codes
    summed = codes.copy()
    # Running sums mod 256, bin by bin: 4x faster than np.cumsum along a 17-long axis (measured).
    for k in range(1, summed.shape[2]):
        summed[:, :, k] += summed[:, :, k - 1]
    return summed if as_delta.all() else np.where(as_delta[:, None, None], summed, codes)
