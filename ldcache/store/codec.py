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
# Rows encoded at a time: their transposed copies stay in the CPU's cache (a whole block's, 100k
# rows and more, made the transposes 3 to 6 times slower per row, measured).
Q8_CHUNK_ROWS = 4096


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
        if self.name == "fp16":
            return _to_float16(values, np.empty(values.shape, np.float16))
        if self.name != "q8":
            return values.astype(self.storage_dtype)
        out = np.empty((len(values), self.width), np.uint8)
        for start in range(0, len(values), Q8_CHUNK_ROWS):
            self._encode_q8(values[start:start + Q8_CHUNK_ROWS], out[start:start + Q8_CHUNK_ROWS])
        return out

    def _encode_q8(self, values: np.ndarray, out: np.ndarray) -> None:
        """Encode [R, num_values] logits as q8 rows into `out` [R, width].

        It works on the edge logits bins first, [4, bins, R]: a reduction over an edge's bins is
        then an elementwise operation over whole rows, 5 to 10 times faster in numpy than along
        each edge's 17 values (measured at COCO geometry)."""
        rows, split = len(values), 4 * self.bins
        edges = np.ascontiguousarray(values[:, :split].T, dtype=np.float32).reshape(4, self.bins, rows)
        below_top = edges.max(axis=1, keepdims=True) - edges
        exact_step = np.maximum(below_top.max(axis=1) / Q8_LEVELS, Q8_MIN_STEP)
        step = exact_step.astype(np.float16)
        # Round up where fp16 rounded down, so that range / step never exceeds Q8_LEVELS.
        step = np.where(step < exact_step, np.nextafter(step, np.float16(np.inf)), step)
        codes = np.divide(below_top, step.astype(np.float32)[:, None], out=below_top)
        codes = np.clip(np.rint(codes, out=codes), 0, Q8_LEVELS, out=codes).astype(np.uint8)
        as_delta = _deltas_are_cheaper(codes)
        codes[:, :, as_delta] = np.diff(codes[:, :, as_delta], axis=1, prepend=np.uint8(0))  # wraps mod 256
        step_bits = np.ascontiguousarray(step.T).view(np.uint16)
        step_bits[as_delta, 0] |= Q8_DELTA_BIT
        out[:, :8] = step_bits.view(np.uint8)
        out[:, 8:8 + split] = codes.reshape(split, rows).T
        _to_float16(values[:, split:], out[:, 8 + split:].view(np.float16))

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
        codes = stored[:, 8:split].reshape(rows, 4, self.bins)
        out = np.empty((rows, self.num_values), dtype=np.float32)
        edges = out[:, :4 * self.bins].reshape(rows, 4, self.bins)
        np.multiply(codes, minus_step[:, :, None], out=edges)
        if as_delta.any():  # few rows of a random teacher, most of a trained one's
            delta_rows = np.flatnonzero(as_delta)
            edges[delta_rows] = _running_sums(codes[delta_rows]) * minus_step[delta_rows, :, None]
        if class_rows is None:
            out[:, 4 * self.bins:] = stored[:, split:].view(np.float16)
        else:
            out[:, 4 * self.bins:] = 0
            out[class_rows, 4 * self.bins:] = stored[class_rows, split:].view(np.float16)
        return out


def _deltas_are_cheaper(codes: np.ndarray) -> np.ndarray:
    """bool [R]: rows of [4, bins, R] codes (bins first) whose bin-to-bin differences are smaller
    in sum than the codes' distances to the row's median, a cheap stand-in for which zstd stores
    in fewer bits."""
    edges, bins, rows = codes.shape
    by_bin = codes.reshape(edges * bins, rows)
    median = _lower_median(by_bin)
    # Every value between the two middle codes gives the least sum of distances, the lower one too.
    spread = (np.maximum(by_bin, median) - np.minimum(by_bin, median)).sum(axis=0, dtype=np.int32)
    steps = np.maximum(codes[:, 1:], codes[:, :-1]) - np.minimum(codes[:, 1:], codes[:, :-1])
    # Each edge's first delta is its first code (a difference from 0).
    deltas = steps.sum(axis=(0, 1), dtype=np.int32) + codes[:, 0].sum(axis=0, dtype=np.int32)
    return deltas < spread


def _lower_median(by_bin: np.ndarray) -> np.ndarray:
    """[R] uint8: the ((n + 1) // 2)-th smallest of each column of [n, R] codes, bit by bit from
    the top: the largest value with fewer than that many codes below it (8 elementwise passes)."""
    rank = (len(by_bin) + 1) // 2
    median = np.zeros(by_bin.shape[1], np.uint8)
    below = np.empty(by_bin.shape, bool)
    for bit in (128, 64, 32, 16, 8, 4, 2, 1):
        trial = median | np.uint8(bit)
        np.less(by_bin, trial, out=below)
        np.copyto(median, trial, where=below.sum(axis=0, dtype=np.int32) < rank)
    return median


def _running_sums(deltas: np.ndarray) -> np.ndarray:
    """[R, 4, bins] delta codes turned back to codes: running sums mod 256 along each edge."""
    summed = deltas.copy()
    # Bin by bin: 4x faster than np.cumsum along a 17-long axis (measured).
    for k in range(1, summed.shape[2]):
        summed[:, :, k] += summed[:, :, k - 1]
    return summed


def _to_float16(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`out[...] = values` (float16 `out`), bit for bit as numpy casts, and returns `out`.

    From float32, torch converts with the CPU's vector instructions, about 6 times numpy's rate
    (measured on 300k logits). Both round to nearest even; they differ only in the payload of a
    NaN, which numpy converts again. Only the dump encodes, and it has torch loaded already;
    readers, which decode, never import it."""
    if values.dtype != np.float32 or not _torch_can_view(values) or not _torch_can_view(out):
        out[...] = values
        return out
    import torch

    torch.from_numpy(out).copy_(torch.from_numpy(values))
    nan = np.isnan(values)
    if nan.any():
        out[nan] = values[nan]
    return out


def _torch_can_view(array: np.ndarray) -> bool:
    """Whether torch.from_numpy takes `array` as it is: writeable, strides whole and not negative."""
    return array.flags.writeable and all(s >= 0 and s % array.itemsize == 0 for s in array.strides)
