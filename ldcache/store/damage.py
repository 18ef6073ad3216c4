"""Damage to a store: whether a chunk is intact, and the error that names it with its block and the
command that repairs it (docs/store-format.md, "Checksums and verify")."""
from __future__ import annotations

import google_crc32c

from ..errors import StoreCorruptError
from .attrs import StoreAttrs

CRC_BYTES = 4  # zarr's crc32c codec appends the CRC32C of the encoded chunk, little-endian


def checksum_problem(blob: bytes | None) -> str | None:
    """What is wrong with a chunk object as read (None: absent), or None when its CRC32C holds."""
    if blob is None:
        return "the chunk object is missing"
    blob = bytes(blob)  # google_crc32c takes bytes only
    if len(blob) < CRC_BYTES:
        return f"the chunk object is truncated to {len(blob)} bytes"
    stored = int.from_bytes(blob[-CRC_BYTES:], "little")
    computed = google_crc32c.value(blob[:-CRC_BYTES])
    if stored != computed:
        return (f"checksum mismatch (CRC32C of the {len(blob) - CRC_BYTES} bytes is {computed:08x}, "
                f"stored {stored:08x}): the chunk is truncated or damaged")
    return None


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


def chunk_key(array, coords: tuple[int, ...]) -> str:
    """The chunk's object name inside its array's folder, e.g. 'c/12/0'."""
    return array.metadata.chunk_key_encoding.encode_chunk_key(coords)
