"""`ldcache verify`: read every chunk a finished store must hold and report what is damaged.

The layout comes first (array shapes, chunk shapes and codecs against the attributes; row pointers
monotone, inside the row arrays, each block on a chunk boundary): without it, no chunk can be
placed. Then every chunk object that must exist is fetched, in batches on a thread pool, and
checked: present, its CRC32C, and for `masks` and `logits` a Blosc decode of the right size. A
chunk of a block with rows is always written, so a missing one is damage, never zeros.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import console
from ..errors import StoreError
from .chunks import ChunkDamage, RowReader
from .damage import BlockMap, checksum_problem, chunk_grid, chunk_key, repair_command
from .filesystem import store_filesystem
from .format import STATUS_COMPLETE
from .layout_check import ROW_ARRAYS, array_problems, ptr_problems
from .reader import CheckedArrays, open_arrays, open_store

BATCH = 64  # chunk objects per request: fsspec fetches a batch concurrently on object stores


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: of a block, or (block None) of a per-record or per-image array."""

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
        """{block: its damaged chunks}, in block order."""
        found = {}
        for damage in sorted(self.damage, key=lambda d: (d.block, d.array, d.chunk)):
            if damage.block is not None:
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


def verify_store(path, threads: int = 8, show_progress: bool = True) -> VerifyReport:
    """Check a store's layout and every chunk it must hold. Raises StoreError only when `path`
    is not an ldcache store of this format (no store, unreadable attributes)."""
    group, attrs = open_store(path, require_complete=False)
    report = VerifyReport(str(path), attrs.status, repair=repair_command(path, attrs))
    if attrs.status != STATUS_COMPLETE:
        return report
    try:
        arrays = open_arrays(path, group)
        checked = CheckedArrays(path, attrs, arrays)
        ptr = checked.read("ptr")
    except StoreError as err:
        report.layout.append(str(err))
        return report
    report.layout = array_problems(arrays, attrs) or ptr_problems(ptr, attrs, arrays["masks"].shape[0])
    if report.layout:
        return report
    try:
        image_ids = checked.read("image_ids")
    except StoreError:
        image_ids = None  # reported with the chunks below; blocks are then named by records only
    report.blocks = BlockMap(ptr, attrs, image_ids)
    expected = _expected_chunks(arrays, report.blocks)
    report.damage = _damaged_chunks(path, arrays, expected, threads, show_progress)
    report.damage += _unset_done_flags(arrays["done"], report.damage, arrays)
    report.chunks_checked = len(expected)
    return report


def _expected_chunks(arrays: dict, blocks: BlockMap) -> list[tuple[str, tuple[int, ...], int | None]]:
    """(array, chunk coordinates, block or None) of every chunk object a finished store holds."""
    expected = []
    for block in range(blocks.num_blocks):
        chunks = blocks.chunks(block)
        expected += [(name, (c, 0), block) for name in ROW_ARRAYS for c in chunks]
        expected.append(("done", (block,), block))
        if len(chunks):  # a block without rows has no statistics written
            expected.append(("block_stats", (block, 0, 0), block))
    for name, array in arrays.items():
        if name not in (*ROW_ARRAYS, "done", "block_stats"):
            expected += [(name, coords, None) for coords in chunk_grid(array)]
    return expected


def _damaged_chunks(path, arrays: dict, expected: list, threads: int, show_progress: bool) -> list[Damage]:
    fs, root = store_filesystem(path)
    row_readers = {name: RowReader(fs, f"{root}/{name}", arrays[name], on_damage=ChunkDamage) for name in ROW_ARRAYS}

    def check(batch: list) -> list[Damage]:
        paths = [f"{root}/{name}/{chunk_key(arrays[name], coords)}" for name, coords, _ in batch]
        blobs = fs.cat(paths, on_error="return")
        found = []
        for (name, coords, block), path in zip(batch, paths):
            blob = blobs.get(path)
            blob = None if isinstance(blob, BaseException) else blob
            problem = _row_chunk_problem(row_readers[name], blob) if name in row_readers else checksum_problem(blob)
            if problem:
                found.append(Damage(name, chunk_key(arrays[name], coords), problem, block))
        return found

    batches = [expected[i:i + BATCH] for i in range(0, len(expected), BATCH)]
    damage = []
    with console.progress(show_progress, unit="chunks") as progress, ThreadPoolExecutor(threads) as pool:
        task = progress.add_task(f"verifying {path}", total=len(expected))
        for batch, found in zip(batches, pool.map(check, batches)):
            damage += found
            progress.advance(task, len(batch))
    return damage


def _row_chunk_problem(reader: RowReader, blob: bytes | None) -> str | None:
    try:
        reader.decode(blob)
    except ChunkDamage as damage:
        return str(damage)
    return None


def _unset_done_flags(done_array, damage: list[Damage], arrays: dict) -> list[Damage]:
    """Blocks whose done chunk is intact but holds 0: a finished store has every flag set."""
    damaged = {d.block for d in damage if d.array == "done"}
    intact = [b for b in range(done_array.shape[0]) if b not in damaged]
    # One read of the whole array when it can be; block by block around damaged chunks.
    done = done_array[:] if not damaged else np.array([done_array[b] if b not in damaged else 1
                                                       for b in range(done_array.shape[0])])
    return [Damage("done", chunk_key(arrays["done"], (b,)), "the done flag is 0 in a finished store", b)
            for b in intact if done[b] != 1]


def print_report(report: VerifyReport) -> None:
    """The report as a table and lines on stdout (what `ldcache verify` prints without --json)."""
    if report.status != STATUS_COMPLETE:
        console.out.print(f"{report.store}: UNFINISHED (status '{report.status}'): its dump stopped before the end; "
                          f"finish it with {report.repair}", highlight=False, markup=False, soft_wrap=True)
        return
    if report.ok:
        console.out.print(f"{report.store}: OK ({report.chunks_checked} chunks checked, every block done, "
                          "layout as the attributes say)", highlight=False, markup=False, soft_wrap=True)
        return
    for problem in report.layout:
        console.out.print(f"layout: {problem}", highlight=False, markup=False, soft_wrap=True)
    rows = [(d.array, d.chunk, report.blocks.describe(d.block) if d.block is not None else "every block", d.problem)
            for d in sorted(report.damage, key=lambda d: (-1 if d.block is None else d.block, d.array, d.chunk))]
    if rows:
        console.table(f"damaged chunks of {report.store}", ("array", "chunk", "block (records, image ids)", "problem"),
                      rows)
    blocks = len(report.damaged_blocks())
    console.out.print(f"{report.store}: DAMAGED ({len(report.layout)} layout problem(s), {len(report.damage)} damaged "
                      f"chunk(s) in {blocks} block(s) of {report.blocks.num_blocks if report.blocks else '?'}). "
                      f"Repair: {report.repair}" if not report.layout else
                      f"{report.store}: DAMAGED layout: it cannot be repaired block by block; dump it again",
                      highlight=False, markup=False, soft_wrap=True)
