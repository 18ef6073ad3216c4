"""The row arrays `masks` and `logits`: zarr v3 shards of checksummed Blosc chunks, read without zarr.

Each block's rows of an array are one shard object: its inner chunks (`chunk_rows` rows each, the
bytes codec, Blosc, then a CRC32C) in order, then the shard index (per inner chunk its offset and
size, uint64 little-endian, 2^64-1 for a chunk not stored) and the CRC32C of that index. Plain
zarr reads them. ldcache's readers take the offsets from the store's consolidated `shard_index`
(written when the dump finishes), fetch the byte ranges of a record's chunks of both arrays in one
request, check each chunk's CRC32C and decode it with numcodecs: zarr-python's per-slice
asynchronous path costs more than a record's whole read budget.
"""
from __future__ import annotations

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

from ..errors import StoreFormatError
from .damage import CRC_BYTES, checksum_problem

ROW_ARRAYS = ("masks", "logits")
EMPTY = np.uint64(2**64 - 1)  # the sharding codec's offset and size of a chunk that is not stored
INNER_CODECS = (BytesCodec, BloscCodec, Crc32cCodec)


class ChunkDamage(Exception):
    """An inner chunk or a shard index that is missing, fails its checksum or does not decode."""

    def __init__(self, problem: str, chunk: int | None = None):
        super().__init__(problem)
        self.problem, self.chunk = problem, chunk  # chunk None: the shard object or its index


def index_nbytes(chunks_per_shard: int) -> int:
    """Bytes of a shard's index at its end: (offset, size) per inner chunk, then a CRC32C."""
    return chunks_per_shard * 16 + CRC_BYTES


def parse_index(tail: bytes | None, chunks_per_shard: int) -> np.ndarray:
    """[chunks_per_shard, 2] uint64 (offset, size) from the index bytes at a shard's end."""
    if tail is None:
        raise ChunkDamage("the shard object is missing")
    if len(tail) != index_nbytes(chunks_per_shard):
        raise ChunkDamage(f"the shard object is truncated ({len(tail)} bytes where its index needs "
                          f"{index_nbytes(chunks_per_shard)})")
    problem = checksum_problem(tail)
    if problem:
        raise ChunkDamage(f"its index is damaged: {problem}")
    return np.frombuffer(tail[:-CRC_BYTES], dtype="<u8").reshape(chunks_per_shard, 2)


class ShardedRows:
    """One [rows, width] row array: where its shards are, and how to decode an inner chunk."""

    def __init__(self, name: str, array: zarr.Array):
        codecs = array.metadata.codecs
        sharding = codecs[0] if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else None
        if (array.ndim != 2 or sharding is None or array.shards is None
                or array.chunks[1] != array.shape[1] or array.shards[1] != array.shape[1]
                or len(sharding.codecs) != len(INNER_CODECS)
                or not all(isinstance(c, kind) for c, kind in zip(sharding.codecs, INNER_CODECS))
                or sharding.index_location != ShardingCodecIndexLocation.end
                or not isinstance(sharding.index_codecs[-1], Crc32cCodec)):
            raise StoreFormatError(f"array {name} is not laid out as docs/store-format.md says "
                                   f"(shards {array.shards}, chunks {array.chunks}, codecs {codecs}); "
                                   "dump it again with this ldcache")
        self.name = name
        self.chunk_rows, self.width = array.chunks[0], array.shape[1]
        self.shard_rows = array.shards[0]
        self.chunks_per_shard = self.shard_rows // self.chunk_rows
        self.dtype = array.dtype.newbyteorder("<")
        self._key = array.metadata.chunk_key_encoding.encode_chunk_key

    def shard_key(self, shard: int) -> str:
        """The shard's object name below the store root, e.g. 'logits/c/3/0'."""
        return f"{self.name}/{self._key((shard, 0))}"

    def decode(self, blob: bytes | None, chunk: int | None = None) -> np.ndarray:
        """The [chunk_rows, width] rows of an inner chunk's bytes; ChunkDamage if they are not intact."""
        problem = checksum_problem(blob)
        if problem:
            raise ChunkDamage(problem, chunk)
        try:
            raw = numcodecs.blosc.decompress(memoryview(blob)[:-CRC_BYTES])
        except (RuntimeError, ValueError) as err:  # a checksum that holds over bytes Blosc cannot read
            raise ChunkDamage(f"Blosc cannot decode it ({err})", chunk) from None
        if len(raw) != self.chunk_rows * self.width * self.dtype.itemsize:
            raise ChunkDamage(f"it decodes to {len(raw)} bytes, not {self.chunk_rows} rows of {self.width} "
                              "values", chunk)
        return np.frombuffer(raw, dtype=self.dtype).reshape(-1, self.width)

    def chunk_span(self, index: np.ndarray, chunks: range) -> tuple[int, int]:
        """(start, end) bytes of consecutive inner chunks in their shard; ChunkDamage when one is not
        stored (every chunk under a finished block's rows is)."""
        entries = index[chunks.start:chunks.stop]
        absent = np.nonzero(entries[:, 0] == EMPTY)[0]
        if len(absent):
            raise ChunkDamage("the inner chunk is not in its shard", chunks.start + int(absent[0]))
        return int(entries[:, 0].min()), int((entries[:, 0] + entries[:, 1]).max())

    def decode_span(self, blob: bytes | None, index: np.ndarray, chunks: range, span_start: int) -> np.ndarray:
        """The rows of consecutive inner chunks from the bytes of their span."""
        if blob is None:
            raise ChunkDamage("the shard object is missing")
        parts = []
        for chunk in chunks:
            offset, size = (int(v) for v in index[chunk])
            lo = offset - span_start
            if lo + size > len(blob):
                raise ChunkDamage("the shard object is truncated (it ends before the chunk)", chunk)
            parts.append(self.decode(memoryview(blob)[lo:lo + size], chunk))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_shard_rows(fetcher, rows: ShardedRows, shard: int, count: int) -> np.ndarray:
    """The first `count` rows of a shard, through the shard's own index (before a dump finishes,
    there is no copy in `shard_index`); ChunkDamage when the shard or one of those chunks is not
    intact. A missing shard is damage, never fill values."""
    blob = fetcher.objects([rows.shard_key(shard)])[0]
    if blob is None:
        raise ChunkDamage("the shard object is missing")
    index = parse_index(blob[-index_nbytes(rows.chunks_per_shard):], rows.chunks_per_shard)
    chunks = range(0, -(-count // rows.chunk_rows))
    rows.chunk_span(index, chunks)
    return rows.decode_span(blob, index, chunks, 0)[:count]
