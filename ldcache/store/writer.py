"""Lay out a new store and update its attributes (docs/store-format.md).

Rows are ragged (CSR): record r = image_index * n_views + view_index owns rows
``ptr[r, 0] : ptr[r, L]``, level l rows ``ptr[r, l] : ptr[r, l + 1]``. Every row has a packed
region entry in ``masks`` and its teacher logits in ``logits``. Records are grouped in blocks of
``block_size``, and each block's rows start on a chunk boundary: a block has one writer, and two
writers never touch one chunk. A block's ``done`` flag is written after its rows, and ``status``
becomes "complete" only once every block is done.

Every chunk ends with a CRC32C of its encoded bytes (zarr's crc32c codec), and every chunk a writer
touches is written even when it holds only zeros, so a reader tells a lost chunk from an empty one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from .attrs import StoreAttrs
from .codec import ValueCodec
from .format import MASK_DTYPE, STATUS_CREATED
from .layout import num_blocks
from .statistics import stats_width


def blosc(typesize: int, shuffle: BloscShuffle = BloscShuffle.shuffle, clevel: int = 3) -> BloscCodec:
    """The store's compressor: zstd at a low level. Level 9 made stores 4-6% smaller than level 3
    at 20 to 200 times the CPU time (measured on teacher rows at COCO geometry): compression was
    most of a dump's own CPU work."""
    return BloscCodec(cname="zstd", clevel=clevel, shuffle=shuffle, typesize=typesize)


def logits_compressor(codec: ValueCodec) -> BloscCodec:
    """Bit shuffle for float logits: their sign and exponent bits compress, and zstd decodes the
    bit planes about twice as fast as byte-shuffled floats (measured on fp16 teacher logits).
    q8 rows are mostly small codes, which zstd packs best as they are, and as small at level 1."""
    if codec.name == "q8":
        return blosc(1, BloscShuffle.noshuffle, clevel=1)
    return blosc(codec.storage_dtype.itemsize, BloscShuffle.bitshuffle)


def checksummed(compressor) -> tuple:
    """A compressor, then the CRC32C of its output: damage is found before anything is decoded."""
    return compressor, Crc32cCodec()


def writable(group: zarr.Group, name: str) -> zarr.Array:
    """An array of the store to write to: chunks that hold only zeros are written too (zarr skips
    them by default), so that every chunk a block owns exists once the block is done."""
    return group[name].with_config({"write_empty_chunks": True})


def create_store(path: str | Path, attrs: StoreAttrs, ptr: np.ndarray, total_rows: int,
                 small_arrays: dict[str, np.ndarray]) -> zarr.Group:
    """Lay out an empty store: every array allocated, no block done, status 'created'.

    `small_arrays` are the per-record and per-image arrays, each stored as one chunk."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(dataclasses.replace(attrs, status=STATUS_CREATED).to_dict())
    codec, layout = attrs.value_codec(), attrs.layout
    rows = max(total_rows, 1)
    for name, values in {"ptr": ptr, **small_arrays}.items():
        group.create_array(name, data=values, chunks=tuple(max(n, 1) for n in values.shape),
                           compressors=checksummed(ZstdCodec()), config={"write_empty_chunks": True})
    group.create_array("masks", shape=(rows, MASK_DTYPE.itemsize), dtype="u1",
                       chunks=(layout.chunk_rows, MASK_DTYPE.itemsize), fill_value=0,
                       # One row is one shuffle element: its bytes are grouped field by field.
                       compressors=checksummed(blosc(MASK_DTYPE.itemsize)))
    group.create_array("logits", shape=(rows, codec.width), dtype=codec.storage_dtype,
                       chunks=(layout.chunk_rows, codec.width), compressors=checksummed(logits_compressor(codec)),
                       fill_value=0)
    blocks = num_blocks(ptr.shape[0], layout.block_size)
    group.create_array("done", shape=(blocks,), dtype="u1", chunks=(1,), fill_value=0,
                       compressors=checksummed(ZstdCodec()))
    # One chunk per block, so that each block's writer owns its statistics' chunk too.
    group.create_array("block_stats", shape=(blocks, ptr.shape[1] - 1, stats_width()), dtype="f8",
                       chunks=(1, ptr.shape[1] - 1, stats_width()), fill_value=0,
                       compressors=checksummed(ZstdCodec()))
    return group


def write_status(group: zarr.Group, attrs: StoreAttrs, status: str, **changes) -> StoreAttrs:
    """Record a new status (and any other attribute changes) in the store; returns the new attributes."""
    attrs = dataclasses.replace(attrs, status=status, **changes)
    group.attrs.update(attrs.to_dict())
    return attrs
