"""Whether a store's arrays are laid out as its attributes say (docs/store-format.md): shapes, chunk
and shard shapes and codecs of every array, and row pointers that are monotone, inside the row
arrays, and start each block on a shard boundary with its rows inside that shard. Metadata and
`ptr` only: no row is read."""
from __future__ import annotations

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from ..errors import StoreFormatError
from .attrs import StoreAttrs
from .format import MASK_DTYPE
from .layout import num_blocks
from .shards import ROW_ARRAYS, ShardedRows
from .statistics import stats_width

RECORD_ARRAYS = ("img_shape", "pad_shape", "scale_factor", "flip")
IMAGE_ARRAYS = ("image_ids", "image_files", "gt_ptr", "gt_boxes")
# Written when the dump finishes, from its per-block bookkeeping and the shards.
FINISH_ARRAYS = ("block_stats", "shard_index")
ONE_OBJECT_ARRAYS = ("ptr", *FINISH_ARRAYS, *RECORD_ARRAYS, *IMAGE_ARRAYS)
ARRAYS = (*ROW_ARRAYS, *ONE_OBJECT_ARRAYS)


def expected_shapes(attrs: StoreAttrs, rows: int) -> dict[str, tuple]:
    """{array: (shape, chunks, shards)} as the attributes imply; None where the data decide (a free
    size; a one-object array's chunk shape, which is its shape; no shards)."""
    layout = attrs.layout
    records = layout.num_images * layout.num_views
    images, levels = layout.num_images, len(attrs.head.strides)
    blocks, width = num_blocks(records, layout.block_size), attrs.value_codec().width
    return {
        "ptr": ((records, levels + 1), None, None),
        "masks": ((rows, MASK_DTYPE.itemsize), (layout.chunk_rows, MASK_DTYPE.itemsize),
                  (layout.shard_rows, MASK_DTYPE.itemsize)),
        "logits": ((rows, width), (layout.chunk_rows, width), (layout.shard_rows, width)),
        "block_stats": ((blocks, levels, stats_width()), None, None),
        "shard_index": ((len(ROW_ARRAYS), None, layout.shard_rows // layout.chunk_rows, 2), None, None),
        "img_shape": ((records, 2), None, None), "pad_shape": ((records, 2), None, None),
        "scale_factor": ((records, 2), None, None), "flip": ((records,), None, None),
        "image_ids": ((images,), None, None), "image_files": ((images, None), None, None),
        "gt_ptr": ((images + 1,), None, None), "gt_boxes": ((None, 4), None, None),
    }


def _shape_matches(actual: tuple, expected: tuple) -> bool:
    return len(actual) == len(expected) and all(e is None or a == e for a, e in zip(actual, expected))


def array_problems(arrays: dict[str, zarr.Array], attrs: StoreAttrs) -> list[str]:
    """What is wrong with the arrays' shapes, chunk shapes and codecs; empty when nothing is."""
    problems = []
    rows = arrays["masks"].shape[0]
    for name, (shape, chunks, shards) in expected_shapes(attrs, rows).items():
        array = arrays[name]
        chunks = chunks or tuple(max(n, 1) for n in array.shape)
        if not _shape_matches(array.shape, shape):
            problems.append(f"array '{name}' has shape {list(array.shape)}, the attributes imply "
                            f"{['*' if n is None else n for n in shape]}")
        elif tuple(array.chunks) != chunks or (tuple(array.shards) if array.shards else None) != shards:
            problems.append(f"array '{name}' has chunks {list(array.chunks)} and shards {array.shards}, not "
                            f"{list(chunks)} and {shards}")
        if name in ROW_ARRAYS:
            try:
                ShardedRows(name, array)
            except StoreFormatError as err:
                problems.append(str(err))
        elif not isinstance(array.metadata.codecs[-1], Crc32cCodec):
            problems.append(f"array '{name}' has no crc32c checksum (codecs {array.metadata.codecs}): "
                            "written by an older ldcache; dump it again")
    if arrays["logits"].dtype != attrs.value_codec().storage_dtype:
        problems.append(f"array 'logits' holds {arrays['logits'].dtype}, values.dtype "
                        f"'{attrs.values.dtype}' needs {attrs.value_codec().storage_dtype}")
    return problems


def ptr_problems(ptr: np.ndarray, attrs: StoreAttrs, rows: int) -> list[str]:
    """What is wrong with the row pointers against the row arrays' `rows`; empty when nothing is."""
    if len(ptr) == 0:
        return []
    problems = []
    if (ptr[:, 1:] < ptr[:, :-1]).any():
        problems.append(f"ptr decreases within record(s) {_first(np.nonzero((ptr[:, 1:] < ptr[:, :-1]).any(1))[0])}")
    starts, ends = ptr[1:, 0], ptr[:-1, -1]
    block_size = attrs.layout.block_size
    inside = np.arange(1, len(ptr)) % block_size != 0  # record r+1 continues the block of record r
    if (starts[inside] != ends[inside]).any() or (starts < ends).any():
        bad = np.nonzero((inside & (starts != ends)) | (starts < ends))[0] + 1
        problems.append(f"ptr: record(s) {_first(bad)} do not start where the one before ends")
    if ptr.min() < 0 or ptr.max() > rows:
        problems.append(f"ptr points outside the {rows} rows of masks and logits (range {ptr.min()} to {ptr.max()})")
    shard_rows = attrs.layout.shard_rows
    firsts = ptr[::block_size, 0]
    misaligned = np.nonzero(firsts % shard_rows)[0]
    if len(misaligned):
        problems.append(f"block(s) {_first(misaligned)} do not start on a shard boundary ({shard_rows} rows)")
    lasts = ptr[np.minimum(np.arange(block_size - 1, len(ptr) + block_size - 1, block_size), len(ptr) - 1), -1]
    too_long = np.nonzero(lasts - firsts > shard_rows)[0]
    if len(too_long):
        problems.append(f"block(s) {_first(too_long)} hold more rows than one shard ({shard_rows})")
    return problems


def _first(indexes, shown: int = 5) -> str:
    text = ", ".join(str(int(i)) for i in indexes[:shown])
    return text + (f" and {len(indexes) - shown} more" if len(indexes) > shown else "")
