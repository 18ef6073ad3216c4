"""`dump-teacher ... --resume` on a finished store: verify it, and send exactly its damaged blocks
back through pass 2 (docs/store-format.md, "Checksums and verify").

A damaged block loses its damaged chunk objects (zarr would read them back when a write covers part
of a chunk), gets its masks rewritten from the regions when they were damaged, and has its done
flag cleared; the store's status goes back to 'masks-written', so that pass 2 redoes those blocks
and the end of the dump finishes the store as it would have the first time. A repair killed
part-way leaves damage or cleared flags that the next --resume finds again.
"""
from __future__ import annotations

import numpy as np
import zarr

from .. import console
from ..errors import StoreCorruptError
from ..store.filesystem import store_filesystem
from ..store.format import MASK_DTYPE, STATUS_COMPLETE, STATUS_MASKS
from ..store.reader import open_store
from ..store.verify import VerifyReport, verify_store
from ..store.writer import writable, write_status
from ..domain.rows import RegionRowMaker
from .regions_pass import record_rows


def repair_damaged_blocks(out, maker: RegionRowMaker, records: list, small_arrays: dict) -> list[int]:
    """Verify a finished store and prepare its damaged blocks for pass 2; returns those blocks."""
    _, attrs = open_store(out, require_complete=False)
    if attrs.status != STATUS_COMPLETE:
        return []  # an unfinished dump: pass 2 finishes it
    report = verify_store(out)
    if report.ok:
        console.note(f"{out}: verified, nothing to repair")
        return []
    if report.layout or any(d.array == "ptr" for d in report.damage):
        problem = report.layout[0] if report.layout else "its row pointers (ptr) are damaged"
        raise StoreCorruptError(f"{out}: {problem}; the layout cannot be repaired block by block: delete the "
                                "store and dump it again")
    group = zarr.open_group(str(out), mode="r+")
    _remove_damaged_chunks(out, report)
    for damage in report.damage:
        if damage.block is None:  # a per-record or per-image array, known again from the scan
            writable(group, damage.array)[...] = small_arrays[damage.array]
    blocks = report.damaged_blocks()
    for block, damages in blocks.items():
        if any(d.array == "masks" for d in damages):
            _rewrite_masks(group, report, block, maker, records)
    done = writable(group, "done")
    for block in blocks:
        done[block] = 0
    write_status(group, attrs, STATUS_MASKS)
    console.note(f"{out}: repairing {len(blocks)} damaged block(s) ({', '.join(map(str, blocks))}) and "
                 f"{sum(d.block is None for d in report.damage)} damaged per-image array chunk(s)")
    return list(blocks)


def _remove_damaged_chunks(out, report: VerifyReport) -> None:
    fs, root = store_filesystem(out)
    for damage in report.damage:
        path = f"{root}/{damage.array}/{damage.chunk}"
        if fs.exists(path):
            fs.rm(path)


def _rewrite_masks(group: zarr.Group, report: VerifyReport, block: int, maker: RegionRowMaker,
                   records: list) -> None:
    """A block's masks computed again from the annotations, as pass 1 wrote them."""
    start, end = report.blocks.rows(block)
    rows = np.concatenate([rows for r in report.blocks.records(block) for rows in record_rows(maker, *records[r])])
    if len(rows) != end - start:
        raise StoreCorruptError(f"{report.store}: block {block}'s regions give {len(rows)} rows, its place in the "
                                f"layout holds {end - start}; delete the store and dump it again")
    writable(group, "masks")[start:end] = rows.view(np.uint8).reshape(len(rows), MASK_DTYPE.itemsize)
