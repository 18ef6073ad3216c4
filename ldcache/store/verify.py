"""`ldcache verify`: read every object a finished store must hold and report what is damaged.

The layout comes first (array shapes, chunk and shard shapes and codecs against the attributes;
row pointers monotone, inside the row arrays, each block on a shard boundary): without it, no
chunk can be placed. Then the one-object arrays are fetched and checked (present, CRC32C, zstd
decode of the right size), and every block's shards of `masks` and `logits` are fetched, a block
per task on a thread pool: their index (CRC32C, and equal to the copy in `shard_index`) and every
inner chunk under the block's rows (present, CRC32C, Blosc decode of the chunk's size). A chunk
under a finished block's rows is always written, so a missing one is damage, never zeros.

Only "not found" counts as missing: an object the storage fails to return after retries stops
verify with a StoreIOError (nothing is reported damaged because the storage had a bad minute).
Nothing here prints: the caller renders the report and any progress.
"""
from __future__ import annotations

from collections.abc import Callable
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import StoreError, StoreIOError
from .damage import chunk_key, repair_command
from .fetch import Fetcher
from .filesystem import store_filesystem
from .format import STATUS_COMPLETE
from .layout import BlockMap
from .layout_check import ONE_OBJECT_ARRAYS, array_problems, ptr_problems
from .reader import CheckedArrays, describe_chunk, open_arrays, open_store
from .shards import EMPTY, ROW_ARRAYS, ChunkDamage, ShardedRows, index_nbytes, parse_index

# A task fetches one block's two shards (tens of MB each at COCO's size): the memory verify needs
# is `threads` blocks, whatever the store's size.


@dataclass(frozen=True)
class Damage:
    """One damaged object or inner chunk: of a block, or (block None) of a one-object array."""

    array: str
    chunk: str
    problem: str
    block: int | None


@dataclass
class VerifyReport:
    """What `ldcache verify` found; `ok` when the store is finished and nothing is damaged."""

    store: str
    status: str
    chunks_checked: int = 0
    layout: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    blocks: BlockMap | None = None
    repair: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_COMPLETE and not self.layout and not self.damage

    def damaged_blocks(self) -> dict[int, list[Damage]]:
        """{block: its damage}, in block order."""
        found = {}
        of_blocks = [d for d in self.damage if d.block is not None]
        for damage in sorted(of_blocks, key=lambda d: (d.block, d.array, d.chunk)):
            found.setdefault(damage.block, []).append(damage)
        return found

    def to_dict(self) -> dict:
        """The report as `--json` prints it."""
        blocks = [{"block": block, "records": [self.blocks.records(block).start, self.blocks.records(block).stop - 1],
                   "where": self.blocks.describe(block),
                   "chunks": [{"array": d.array, "chunk": d.chunk, "problem": d.problem} for d in damages]}
                  for block, damages in self.damaged_blocks().items()]
        return {"store": self.store, "status": self.status, "ok": self.ok, "chunks_checked": self.chunks_checked,
                "layout_problems": self.layout, "damaged_blocks": blocks,
                "damaged_arrays": [{"array": d.array, "chunk": d.chunk, "problem": d.problem}
                                   for d in self.damage if d.block is None],
                "repair": self.repair if not self.ok else None}


def verify_store(path, threads: int = 8, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check a store's layout and every object it must hold; `progress(done, total)` is called as
    blocks are checked. Raises StoreError only when `path` is not an ldcache store of this format
    (no store, unreadable attributes), and StoreIOError when the storage does not answer."""
    group, attrs = open_store(path, require_complete=False)
    report = VerifyReport(str(path), attrs.status, repair=repair_command(path, attrs))
    if attrs.status != STATUS_COMPLETE:
        return report
    fetcher = Fetcher(*store_filesystem(path))
    try:
        arrays = open_arrays(path, group)
    except StoreIOError:
        raise  # the storage did not answer: nothing is known about the layout
    except StoreError as err:
        report.layout.append(str(err))
        return report
    report.layout = array_problems(arrays, attrs)
    if report.layout:
        return report
    small, report.damage = _one_object_arrays(CheckedArrays(path, attrs, arrays, fetcher))
    if "ptr" not in small:
        return report
    report.layout = ptr_problems(small["ptr"], attrs, arrays["masks"].shape[0])
    if report.layout:
        return report
    report.blocks = BlockMap.of_store(small["ptr"], attrs, small.get("image_ids"))
    rows = [ShardedRows(name, arrays[name]) for name in ROW_ARRAYS]
    index = small.get("shard_index")
    if index is not None and index.shape[1] != len(report.blocks.blocks_with_rows()):
        report.damage.append(Damage("shard_index", "c/0/0/0/0", f"it indexes {index.shape[1]} shards, the store "
                                    f"has {len(report.blocks.blocks_with_rows())}", None))
        index = None
    checked = _check_blocks(fetcher, rows, report.blocks, index, threads, progress)
    report.damage += [d for found in checked for d in found[1]]
    report.chunks_checked = len(small) + sum(n for n, _ in checked)
    return report


def _one_object_arrays(arrays: CheckedArrays) -> tuple[dict[str, np.ndarray], list[Damage]]:
    """The intact one-object arrays and the damage of the others."""
    values, problems = arrays.check_many(list(ONE_OBJECT_ARRAYS))
    return values, [Damage(name, chunk_key(arrays.arrays[name], (0,) * arrays.arrays[name].ndim), problem, None)
                    for name, problem in problems.items()]


def _check_blocks(fetcher: Fetcher, rows: list[ShardedRows], blocks: BlockMap, index: np.ndarray | None,
                  threads: int, progress) -> list[tuple[int, list[Damage]]]:
    """(inner chunks checked, damage) per block with rows."""
    todo = blocks.blocks_with_rows()

    def check(block: int) -> tuple[int, list[Damage]]:
        shard = blocks.shard(block)
        blobs = fetcher.objects([r.shard_key(shard) for r in rows])
        found = []
        for a, (r, blob) in enumerate(zip(rows, blobs)):
            found += _shard_damage(r, blob, blocks, block, index[a, shard] if index is not None else None)
        return len(rows) * len(blocks.chunks(block)), found

    results = []
    with ThreadPoolExecutor(threads) as pool:
        # Submitted a window at a time: pool.map would hold every finished block's result at once
        # and run ahead of the consumer; here at most 2 * threads blocks are in flight.
        pending = deque()
        for block in todo:
            pending.append(pool.submit(check, block))
            if len(pending) >= 2 * threads:
                results.append(pending.popleft().result())
                if progress:
                    progress(len(results), len(todo))
        while pending:
            results.append(pending.popleft().result())
            if progress:
                progress(len(results), len(todo))
    return results


def _shard_damage(rows: ShardedRows, blob: bytes | None, blocks: BlockMap, block: int,
                  copy: np.ndarray | None) -> list[Damage]:
    """What is wrong with one block's shard of one array: its index, and each inner chunk of its rows."""
    shard = blocks.shard(block)

    def damage(problem: str, chunk: int | None = None) -> Damage:
        return Damage(rows.name, describe_chunk(rows, shard, chunk), problem, block)

    if blob is not None and copy is not None and len(blob) < _stored_length(copy, rows):
        return [damage(f"the shard object is truncated to {len(blob)} bytes (its chunks and index take "
                       f"{_stored_length(copy, rows)})")]
    try:
        own = parse_index(None if blob is None else blob[-index_nbytes(rows.chunks_per_shard):],
                          rows.chunks_per_shard)
    except ChunkDamage as err:
        return [damage(err.problem)]
    found = []
    if copy is not None and not np.array_equal(own, copy):
        found.append(damage("the shard's own index differs from its copy in `shard_index`"))
    for chunk in blocks.chunks(block):
        try:
            rows.chunk_span(own, range(chunk, chunk + 1))  # stored at all
            rows.decode_span(blob, own, range(chunk, chunk + 1), 0)
        except ChunkDamage as err:
            found.append(damage(err.problem, chunk))
    return found


def _stored_length(index: np.ndarray, rows: ShardedRows) -> int:
    """The bytes of a shard whose index is `index`: its stored chunks, then the index."""
    stored = index[index[:, 0] != EMPTY]
    return int((stored[:, 0] + stored[:, 1]).max(initial=0)) + index_nbytes(rows.chunks_per_shard)
