"""Where rows go: records in blocks, each block starting on a chunk boundary."""
from __future__ import annotations

import numpy as np


def block_row_starts(counts: np.ndarray, block_size: int, chunk_rows: int) -> tuple[np.ndarray, int]:
    """Row offset of every record [N, L+1] from its per-level row counts [N, L], and the total
    number of rows; every block of `block_size` records starts on a chunk boundary."""
    num_records, num_levels = counts.shape
    ptr = np.zeros((num_records, num_levels + 1), dtype=np.int64)
    cursor = 0
    for start in range(0, num_records, block_size):
        cursor = -(-cursor // chunk_rows) * chunk_rows  # next chunk boundary
        for r in range(start, min(start + block_size, num_records)):
            ptr[r, 0] = cursor
            ptr[r, 1:] = cursor + np.cumsum(counts[r])
            cursor = int(ptr[r, -1])
    return ptr, -(-cursor // chunk_rows) * chunk_rows


def block_rows(ptr: np.ndarray, block: int, block_size: int) -> tuple[int, int, range]:
    """(first row, end row, records) of a block."""
    records = range(block * block_size, min((block + 1) * block_size, ptr.shape[0]))
    return int(ptr[records.start, 0]), int(ptr[records.stop - 1, -1]), records


def num_blocks(num_records: int, block_size: int) -> int:
    return -(-num_records // block_size)
