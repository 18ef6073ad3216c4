"""Lay out a new store, finish it, and update its attributes (docs/store-format.md).

Rows are ragged (CSR): record r = image_index * n_views + view_index owns rows
``ptr[r, 0] : ptr[r, L]``, level l rows ``ptr[r, l] : ptr[r, l + 1]``. Every row has a packed
region entry in ``masks`` and its teacher logits in ``logits``. Records are grouped in blocks of
``block_size``, and each block's rows are one shard object of each array: a block has one writer,
and two writers never touch one object. During the dump a block's done flag and statistics are
objects of their own under ``progress/``; when every block is done they are consolidated, and
``status`` becomes "complete".

Every chunk ends with a CRC32C of its encoded bytes (zarr's crc32c codec), and every chunk under a
block's rows is written even when it holds only zeros, so a reader tells a lost chunk from an
empty one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from ..errors import StoreCorruptError
from .attrs import StoreAttrs, StoreStatistics
from .codec import ValueCodec
from .fetch import Fetcher
from .filesystem import store_filesystem
from .format import MASK_DTYPE, PROGRESS, STATUS_COMPLETE, STATUS_CREATED
from .layout import BlockMap, num_blocks
from .shards import ROW_ARRAYS, ChunkDamage, ShardedRows, index_nbytes, parse_index
from .statistics import statistics_from_sums, stats_width


def blosc(typesize: int, shuffle: BloscShuffle = BloscShuffle.shuffle, clevel: int = 3,
          cname: str = "zstd") -> BloscCodec:
    """A compressor of the store's row chunks. zstd at a low level where size matters: level 9 made
    stores 4-6% smaller than level 3 at 20 to 200 times the CPU time (measured on teacher rows at
    COCO geometry), and compression was most of a dump's own CPU work."""
    return BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, typesize=typesize)


def masks_compressor(codec: ValueCodec) -> BloscCodec:
    """One mask row is one shuffle element, so the bytes of each field are grouped. A q8 store is
    the small one: zstd. Otherwise LZ4, which decodes mask chunks 3 to 4 times faster than zstd
    for 36% more bytes, about 1.5% of an fp16 store (measured on COCO-geometry rows): reading a
    record within 1 ms of CPU needs it."""
    if codec.name == "q8":
        return blosc(MASK_DTYPE.itemsize)
    return blosc(MASK_DTYPE.itemsize, clevel=9, cname="lz4")


def logits_compressor(codec: ValueCodec) -> BloscCodec:
    """Bit shuffle for float logits: their sign and exponent bits compress, and they decode about
    twice as fast as byte-shuffled floats (measured on fp16 teacher logits). LZ4 on them decodes
    2 times faster than zstd for about 4% more bytes (random-weight logits at COCO geometry).
    q8 rows are mostly small codes, which zstd packs best as they are, and as small at level 1:
    q8 is the option for size."""
    if codec.name == "q8":
        return blosc(1, BloscShuffle.noshuffle, clevel=1)
    return blosc(codec.storage_dtype.itemsize, BloscShuffle.bitshuffle, clevel=9, cname="lz4")


def checksummed(compressor) -> tuple:
    """A compressor, then the CRC32C of its output: damage is found before anything is decoded."""
    return compressor, Crc32cCodec()


def writable(group: zarr.Group, name: str) -> zarr.Array:
    """An array of the store to write to: chunks that hold only zeros are written too (zarr skips
    them by default), so that every chunk under a block's rows exists once the block is done."""
    return group[name].with_config({"write_empty_chunks": True})


def write_masks(group: zarr.Group, start: int, rows: np.ndarray) -> None:
    """A block's MASK_DTYPE rows into `masks`, from its first row `start`."""
    writable(group, "masks")[start:start + len(rows)] = rows.view(np.uint8).reshape(len(rows), MASK_DTYPE.itemsize)


def _one_chunk(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """A small array stored whole, as one checksummed object."""
    group.create_array(name, data=values, chunks=tuple(max(n, 1) for n in values.shape), overwrite=True,
                       compressors=checksummed(ZstdCodec()), config={"write_empty_chunks": True})


def _row_array(group: zarr.Group, name: str, rows: int, width: int, dtype, layout, compressor) -> None:
    group.create_array(name, shape=(rows, width), dtype=dtype, chunks=(layout.chunk_rows, width),
                       shards=(layout.shard_rows, width), fill_value=0, compressors=checksummed(compressor))


def create_store(path: str | Path, attrs: StoreAttrs, ptr: np.ndarray, total_rows: int,
                 small_arrays: dict[str, np.ndarray]) -> zarr.Group:
    """Lay out an empty store: every array allocated, no block done, status 'created'.

    `attrs.layout.shard_rows` must be the one the layout of `ptr` was made with; `small_arrays`
    are the per-record and per-image arrays, each stored as one object."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(dataclasses.replace(attrs, status=STATUS_CREATED).to_dict())
    codec, layout = attrs.value_codec(), attrs.layout
    rows = max(total_rows, layout.shard_rows)
    for name, values in {"ptr": ptr, **small_arrays}.items():
        _one_chunk(group, name, values)
    _row_array(group, "masks", rows, MASK_DTYPE.itemsize, "u1", layout, masks_compressor(codec))
    _row_array(group, "logits", rows, codec.width, codec.storage_dtype, layout, logits_compressor(codec))
    open_progress(group, np.zeros(num_blocks(ptr.shape[0], layout.block_size), np.uint8),
                  np.zeros((num_blocks(ptr.shape[0], layout.block_size), ptr.shape[1] - 1, stats_width())))
    return group


def open_progress(group: zarr.Group, done: np.ndarray, block_stats: np.ndarray) -> None:
    """The dump's bookkeeping, one object per block so that each block's writer owns its own: its
    done flag (written after its rows) and its statistics. Only the blocks already done get
    objects here (a repair's); an absent one reads as 0, not done. Removed once the store is
    complete."""
    progress = group.require_group(PROGRESS)
    for name, values in (("done", done), ("block_stats", block_stats)):
        progress.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(1, *values.shape[1:]),
                              fill_value=0, overwrite=True, compressors=checksummed(ZstdCodec()))
    finished = np.nonzero(done)[0]
    if len(finished):
        progress["block_stats"].oindex[finished] = block_stats[finished]
        progress["done"].oindex[finished] = done[finished]


def read_shard_indexes(fetcher: Fetcher, rows: ShardedRows, shards: list[int], batch: int = 256) -> np.ndarray:
    """[len(shards), chunks_per_shard, 2] the (offset, size) index at the end of each shard object."""
    tail = index_nbytes(rows.chunks_per_shard)
    out = np.zeros((len(shards), rows.chunks_per_shard, 2), np.uint64)
    for lo in range(0, len(shards), batch):
        keys = [rows.shard_key(s) for s in shards[lo:lo + batch]]
        for i, (key, blob) in enumerate(zip(keys, fetcher.ranges(keys, [-tail] * len(keys), [None] * len(keys)))):
            try:
                out[lo + i] = parse_index(blob, rows.chunks_per_shard)
            except ChunkDamage as damage:
                raise StoreCorruptError(f"{fetcher.root}: shard {key} is damaged as its dump finishes: "
                                        f"{damage.problem}; re-run the dump with --resume") from None
    return out


def finish_store(path: str | Path, group: zarr.Group, attrs: StoreAttrs, blocks: BlockMap, summary) -> StoreAttrs:
    """Consolidate a store whose every block is done, then mark it complete.

    The per-block statistics become one object and their sum the `statistics` attribute, the
    index of every shard of `masks` and `logits` is copied into `shard_index` (readers find a
    record's bytes without reading a shard's index), the status becomes 'complete' with the
    summary, and the per-block bookkeeping is removed: a finished store holds two objects per
    block and a constant number besides."""
    block_stats = group[PROGRESS]["block_stats"][:]
    _one_chunk(group, "block_stats", block_stats)
    statistics = StoreStatistics.from_dict(statistics_from_sums(block_stats.sum(axis=0), attrs.head.reg_max + 1))
    fetcher = Fetcher(*store_filesystem(path))
    shards = [blocks.shard(b) for b in blocks.blocks_with_rows()]
    _one_chunk(group, "shard_index", np.stack([read_shard_indexes(fetcher, ShardedRows(name, group[name]), shards)
                                               for name in ROW_ARRAYS]))
    remove_interrupted_writes(path)
    attrs = write_status(group, attrs, STATUS_COMPLETE, summary=summary, statistics=statistics)
    remove_progress(path)
    return attrs


def remove_interrupted_writes(path: str | Path) -> None:
    """Delete the temporary files of chunk writes that a kill interrupted.

    zarr's local store writes a chunk to ``<chunk>.<hex>.partial`` and renames it into place, so a
    process killed mid-write leaves that file, which no reader looks at but the disk keeps. Object
    stores put whole objects and leave none. Only safe once no writer is left: the finish's."""
    fs, root = store_filesystem(path)
    if not isinstance(fs, LocalFileSystem):
        return
    for leftover in [p for p in fs.find(root) if p.endswith(".partial")]:
        fs.rm_file(leftover)


def remove_progress(path: str | Path) -> None:
    """Delete the per-block bookkeeping of a complete store (left behind if a finish was killed)."""
    fs, root = store_filesystem(path)
    target = f"{root}/{PROGRESS}"
    if fs.exists(target):
        fs.rm(target, recursive=True)


def write_status(group: zarr.Group, attrs: StoreAttrs, status: str, **changes) -> StoreAttrs:
    """Record a new status (and any other attribute changes) in the store; returns the new attributes."""
    attrs = dataclasses.replace(attrs, status=status, **changes)
    group.attrs.update(attrs.to_dict())
    return attrs
