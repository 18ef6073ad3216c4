"""RowReader: rows of one 2-D store array, one synchronous read per chunk.

zarr-python 3 routes every slice through its asyncio event loop and worker threads: about
1.3 ms per slice on these machines, more than a record's whole read budget (1 ms of CPU).
The store's arrays are plain (a bytes codec, Blosc, then a CRC32C; one chunk column), so a reader
can fetch the chunk objects itself (plain file reads on local disk; fsspec's batched, concurrent
`cat` on object stores), check their checksums and decode them with numcodecs. The layout is
checked when the reader is made.
"""
from __future__ import annotations

from collections.abc import Callable

import numcodecs
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from ..errors import StoreFormatError
from .damage import CRC_BYTES, checksum_problem

CODECS = (BytesCodec, BloscCodec, Crc32cCodec)


class ChunkDamage(Exception):
    """A chunk object that is missing, fails its checksum or does not decode; the reader's
    `on_damage` turns it into an error that names the block."""


class RowReader:
    """Reads row ranges of one [rows, width] array of the store, a chunk object per read."""

    def __init__(self, fs, array_root: str, array: zarr.Array, on_damage: Callable[[int, str], Exception]):
        """`on_damage(chunk, problem)` gives the error raised for a damaged chunk."""
        codecs = array.metadata.codecs
        if (array.ndim != 2 or array.chunks[1] != array.shape[1] or len(codecs) != len(CODECS)
                or not all(isinstance(c, kind) for c, kind in zip(codecs, CODECS))):
            raise StoreFormatError(f"array {array.path} is not laid out as docs/store-format.md says "
                                   f"(chunks {array.chunks}, codecs {codecs}); dump it again with this ldcache")
        self.fs, self.root = fs, array_root.rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)
        self.chunk_rows = array.chunks[0]
        self.dtype = array.dtype.newbyteorder("<")
        self.width = array.shape[1]
        self.chunk_key = array.metadata.chunk_key_encoding.encode_chunk_key
        self.on_damage = on_damage

    def chunk_path(self, chunk: int) -> str:
        return f"{self.root}/{self.chunk_key((chunk, 0))}"

    def rows(self, start: int, end: int) -> np.ndarray:
        """Rows start:end as a [end - start, width] array."""
        if end <= start:
            return np.zeros((0, self.width), dtype=self.dtype)
        first, last = start // self.chunk_rows, (end - 1) // self.chunk_rows
        paths = [self.chunk_path(c) for c in range(first, last + 1)]
        blobs = self._fetch(paths)
        chunks = []
        for chunk, path in enumerate(paths, first):
            try:
                # Every chunk under a done block's rows is written (the writer writes empty ones too):
                # one that is absent was lost, and is never read as zeros.
                chunks.append(self.decode(blobs.get(path)))
            except ChunkDamage as damage:
                raise self.on_damage(chunk, str(damage)) from None
        joined = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        offset = first * self.chunk_rows
        return joined[start - offset:end - offset]

    def _fetch(self, paths: list[str]) -> dict:
        """{path: bytes} of the chunk objects that exist."""
        if not self.local:
            return self.fs.cat(paths, on_error="omit")
        blobs = {}
        for path in paths:  # plain file reads: fsspec's local file objects cost more than the decoding
            try:
                with open(path, "rb") as f:
                    blobs[path] = f.read()
            except FileNotFoundError:
                pass
        return blobs

    def decode(self, blob: bytes | None) -> np.ndarray:
        """The [chunk_rows, width] rows of a chunk object; ChunkDamage if it is missing or damaged."""
        problem = checksum_problem(blob)
        if problem:
            raise ChunkDamage(problem)
        try:
            raw = numcodecs.blosc.decompress(memoryview(blob)[:-CRC_BYTES])
        except (RuntimeError, ValueError) as err:  # a checksum that holds over bytes Blosc cannot read
            raise ChunkDamage(f"Blosc cannot decode it ({err})") from None
        if len(raw) != self.chunk_rows * self.width * self.dtype.itemsize:
            raise ChunkDamage(f"it decodes to {len(raw)} bytes, not {self.chunk_rows} rows of {self.width} values")
        return np.frombuffer(raw, dtype=self.dtype).reshape(-1, self.width)
