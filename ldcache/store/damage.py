"""Damage to a store: whether a chunk object is intact, which block and records it holds, and the
error that says so with the command that repairs it (docs/store-format.md, "Checksums")."""
from __future__ import annotations

import itertools

import google_crc32c
import numpy as np

from ..errors import StoreCorruptError
from .attrs import StoreAttrs

CRC_BYTES = 4  # zarr's crc32c codec appends the CRC32C of the encoded chunk, little-endian


def checksum_problem(blob: bytes | None) -> str | None:
    """What is wrong with a chunk object as read (None: absent), or None when its CRC32C holds."""
    if blob is None:
        return "the chunk object is missing"
    if len(blob) < CRC_BYTES:
        return f"the chunk object is truncated to {len(blob)} bytes"
    stored = int.from_bytes(blob[-CRC_BYTES:], "little")
    computed = google_crc32c.value(bytes(memoryview(blob)[:-CRC_BYTES]))
    if stored != computed:
        return (f"checksum mismatch (CRC32C of the {len(blob) - CRC_BYTES} bytes is {computed:08x}, "
                f"stored {stored:08x}): the chunk is truncated or damaged")
    return None


class BlockMap:
    """Which block and records the rows of `masks` and `logits`, and so their chunks, belong to."""

    def __init__(self, ptr: np.ndarray, attrs: StoreAttrs, image_ids: np.ndarray | None = None):
        self.ptr, self.image_ids = ptr, image_ids
        self.block_size, self.chunk_rows = attrs.layout.block_size, attrs.layout.chunk_rows
        self.num_views = attrs.layout.num_views
        self.num_blocks = -(-ptr.shape[0] // self.block_size)
        self.block_starts = ptr[::self.block_size, 0]

    def records(self, block: int) -> range:
        return range(block * self.block_size, min((block + 1) * self.block_size, self.ptr.shape[0]))

    def rows(self, block: int) -> tuple[int, int]:
        """(first row, end row) of a block."""
        records = self.records(block)
        return int(self.ptr[records.start, 0]), int(self.ptr[records.stop - 1, -1])

    def chunks(self, block: int) -> range:
        """The chunks of `masks` and `logits` that hold the block's rows (none for a block without rows)."""
        start, end = self.rows(block)
        if end <= start:
            return range(0)
        return range(start // self.chunk_rows, (end - 1) // self.chunk_rows + 1)

    def block_of_chunk(self, chunk: int) -> int:
        # Blocks start on chunk boundaries; among blocks starting at the same row, the last has the rows.
        return int(np.searchsorted(self.block_starts, chunk * self.chunk_rows, side="right") - 1)

    def describe(self, block: int) -> str:
        """'block 3: records 12-15, image ids 7 to 8'."""
        records = self.records(block)
        text = f"block {block}: records {records.start}-{records.stop - 1}"
        if self.image_ids is not None:
            first, last = records.start // self.num_views, (records.stop - 1) // self.num_views
            text += f", image ids {int(self.image_ids[first])} to {int(self.image_ids[last])}"
        return text


def repair_command(store, attrs: StoreAttrs) -> str:
    """The dump command that redoes the damaged blocks, as far as the attributes record it."""
    return (f"`ldcache dump-teacher {attrs.teacher.config} {attrs.teacher.checkpoint} "
            f"--ann-file {attrs.dataset.ann_file} --img-dir {attrs.dataset.img_dir} --out {store} --resume` "
            "with the dump's other options")


def corrupt_error(store, attrs: StoreAttrs, array: str, chunk: str, where: str, problem: str) -> StoreCorruptError:
    """The error for a damaged chunk: what, where, and how to get it back."""
    return StoreCorruptError(
        f"{store}: array '{array}', chunk {chunk} ({where}), is damaged: {problem}. Repair it with "
        f"{repair_command(store, attrs)}; `ldcache verify {store}` lists all damage.")


def chunk_grid(array) -> list[tuple[int, ...]]:
    """The coordinates of every chunk of a zarr array, in order."""
    return list(itertools.product(*(range(-(-size // chunk)) for size, chunk in zip(array.shape, array.chunks))))


def chunk_key(array, coords: tuple[int, ...]) -> str:
    """The chunk's object name inside its array's folder, e.g. 'c/12/0'."""
    return array.metadata.chunk_key_encoding.encode_chunk_key(coords)
