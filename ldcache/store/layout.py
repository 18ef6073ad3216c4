"""Where rows go: records in blocks, each block's rows one shard of `masks` and of `logits`.

The one place that addresses blocks: which records and rows a block owns, which shard and inner
chunks hold them, and the other way round (docs/store-format.md, "Blocks and shards").
"""
from __future__ import annotations

import numpy as np


def num_blocks(num_records: int, block_size: int) -> int:
    return -(-num_records // block_size)


def shard_rows_for(block_totals: np.ndarray, chunk_rows: int) -> int:
    """Rows per shard: the largest block's rows, rounded up to whole chunks, so every block fits
    one shard (a block without rows still needs a positive size)."""
    largest = int(block_totals.max(initial=0))
    return max(-(-largest // chunk_rows), 1) * chunk_rows


def block_row_starts(counts: np.ndarray, block_size: int, chunk_rows: int) -> tuple[np.ndarray, int, int]:
    """The layout from every record's per-level row counts [N, L].

    Returns:
        ptr [N, L+1] int64: record r owns rows ptr[r, 0]:ptr[r, L], level l ptr[r, l]:ptr[r, l+1].
        total rows: the row arrays' length, whole shards.
        shard rows: every block with rows starts a shard of its own and fits in it; a block
            without rows takes none.
    """
    num_records, num_levels = counts.shape
    per_record = counts.sum(axis=1)
    starts = np.arange(0, num_records, block_size)
    block_totals = np.add.reduceat(per_record, starts) if num_records else np.zeros(0, np.int64)
    shard_rows = shard_rows_for(block_totals, chunk_rows)
    # Block b's first row: its shard's, one shard per earlier block with rows.
    shard_of_block = np.concatenate([[0], np.cumsum(block_totals > 0)])[:-1]
    block_first = shard_of_block * shard_rows
    within = np.cumsum(per_record) - per_record  # rows before each record, over the whole store
    block_of = np.arange(num_records) // block_size
    first = block_first[block_of] + within - within[starts][block_of] if num_records else np.zeros(0, np.int64)
    ptr = np.zeros((num_records, num_levels + 1), dtype=np.int64)
    ptr[:, 0] = first
    ptr[:, 1:] = first[:, None] + np.cumsum(counts, axis=1)
    return ptr, int((block_totals > 0).sum()) * shard_rows, shard_rows


class BlockMap:
    """Blocks of a laid-out store: their records, rows, shards and inner chunks, and back."""

    def __init__(self, ptr: np.ndarray, block_size: int, chunk_rows: int, shard_rows: int, num_views: int = 1,
                 image_ids: np.ndarray | None = None):
        self.ptr, self.image_ids = ptr, image_ids
        self.block_size, self.chunk_rows, self.shard_rows = block_size, chunk_rows, shard_rows
        self.num_views = num_views
        self.num_blocks = num_blocks(ptr.shape[0], block_size)
        self.chunks_per_shard = shard_rows // chunk_rows

    @classmethod
    def of_store(cls, ptr: np.ndarray, attrs, image_ids: np.ndarray | None = None) -> BlockMap:
        layout = attrs.layout
        return cls(ptr, layout.block_size, layout.chunk_rows, layout.shard_rows, layout.num_views, image_ids)

    def records(self, block: int) -> range:
        return range(block * self.block_size, min((block + 1) * self.block_size, self.ptr.shape[0]))

    def rows(self, block: int) -> tuple[int, int]:
        """(first row, end row) of a block."""
        records = self.records(block)
        return int(self.ptr[records.start, 0]), int(self.ptr[records.stop - 1, -1])

    def has_rows(self, block: int) -> bool:
        start, end = self.rows(block)
        return end > start

    def shard(self, block: int) -> int:
        """The shard holding the block's rows (of `masks` and of `logits` alike)."""
        return self.rows(block)[0] // self.shard_rows

    def chunks(self, block: int) -> range:
        """The block's inner chunks within its shard (none for a block without rows)."""
        start, end = self.rows(block)
        if end <= start:
            return range(0)
        base = self.shard(block) * self.shard_rows
        return range((start - base) // self.chunk_rows, (end - 1 - base) // self.chunk_rows + 1)

    def blocks_with_rows(self) -> list[int]:
        return [b for b in range(self.num_blocks) if self.has_rows(b)]

    def block_of_row(self, row: int) -> int:
        """The block whose rows include `row` (or start at it)."""
        # Blocks without rows start where the next block does: of those, the last has the rows.
        return int(np.searchsorted(self.ptr[::self.block_size, 0], row, side="right") - 1)

    def describe(self, block: int) -> str:
        """'block 3: records 12-15, image ids 7 to 8'."""
        records = self.records(block)
        text = f"block {block}: records {records.start}-{records.stop - 1}"
        if self.image_ids is not None:
            first, last = records.start // self.num_views, (records.stop - 1) // self.num_views
            text += f", image ids {int(self.image_ids[first])} to {int(self.image_ids[last])}"
        return text
