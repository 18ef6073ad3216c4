"""`dump-teacher ... --resume` on a finished store: verify it, and send exactly its damaged blocks
back through pass 2 (docs/store-format.md, "Checksums and verify").

A damaged block loses its shard objects (zarr would merge a rewrite with a damaged shard), gets its
masks rewritten from the regions when they were damaged, and is marked not done in the per-block
bookkeeping, which is laid out again from the consolidated statistics. The store's status goes
back to 'masks-written', so that pass 2 redoes those blocks and the end of the dump finishes the
store as it would have the first time. A repair killed part-way leaves damage or blocks not done
that the next --resume finds again.
"""
from __future__ import annotations

import numpy as np
import zarr

from .. import console
from ..domain.rows import RegionRowMaker
from ..errors import StoreCorruptError
from ..store.filesystem import store_filesystem
from ..store.format import MASK_DTYPE, STATUS_COMPLETE, STATUS_MASKS
from ..store.layout import BlockMap
from ..store.reader import open_store
from ..store.shards import ROW_ARRAYS, ShardedRows
from ..store.statistics import rows_statistics
from ..store.verify import VerifyReport, verify_store
from ..store.writer import open_progress, writable, write_masks, write_status
from .regions_pass import block_mask_rows

def repair_damaged_blocks(out, maker: RegionRowMaker, records: list, small_arrays: dict) -> list[int]:
    """Verify a finished store and prepare its damaged blocks for pass 2; returns those blocks."""
    _, attrs = open_store(out, require_complete=False)
    if attrs.status != STATUS_COMPLETE:
        return []  # an unfinished dump: pass 2 finishes it
    with console.progress_callback(f"verifying {out}", "blocks") as progress:
        report = verify_store(out, progress=progress)
    if report.ok:
        console.note(f"{out}: verified, nothing to repair")
        return []
    if report.layout or any(d.array == "ptr" for d in report.damage):
        problem = report.layout[0] if report.layout else "its row pointers (ptr) are damaged"
        raise StoreCorruptError(f"{out}: {problem}; the layout cannot be repaired block by block: delete the "
                                "store and dump it again")
    group = zarr.open_group(str(out), mode="r+")
    blocks = report.damaged_blocks()
    _remove_damaged_shards(out, group, report, blocks)
    damaged_arrays = {d.array for d in report.damage if d.block is None}
    for name in damaged_arrays & set(small_arrays):  # known again from the scan
        writable(group, name)[...] = small_arrays[name]
    for block, damages in blocks.items():
        if any(d.array == "masks" for d in damages):
            write_masks(group, report.blocks.rows(block)[0], block_mask_rows(maker, records, report.blocks, block))
    done = np.ones(report.blocks.num_blocks, np.uint8)
    done[list(blocks)] = 0
    stats = (_recomputed_block_stats(group, attrs, report.blocks, set(blocks)) if "block_stats" in damaged_arrays
             else group["block_stats"][:])
    open_progress(group, done, stats)
    write_status(group, attrs, STATUS_MASKS)
    console.note(f"{out}: repairing {len(blocks)} damaged block(s) ({', '.join(map(str, blocks))}) and "
                 f"{len(damaged_arrays)} damaged one-object array(s)")
    return list(blocks)


def _remove_damaged_shards(out, group: zarr.Group, report: VerifyReport, blocks: dict) -> None:
    """The damaged blocks' logits shards (pass 2 writes them whole) and damaged masks shards (rewritten
    next). A damaged `shard_index` needs nothing: the end of the dump writes it again from the shards."""
    fs, root = store_filesystem(out)
    rows = {name: ShardedRows(name, group[name]) for name in ROW_ARRAYS}
    for block, damages in blocks.items():
        for name in {"logits"} | {d.array for d in damages}:
            path = f"{root}/{rows[name].shard_key(report.blocks.shard(block))}"
            if fs.exists(path):
                fs.rm(path)


def _recomputed_block_stats(group: zarr.Group, attrs, blocks: BlockMap, redone: set[int]) -> np.ndarray:
    """The per-block statistics read again from the stored rows (pass 2 recomputes the redone blocks')."""
    codec = attrs.value_codec()
    stats = np.zeros(group["block_stats"].shape)
    for block in blocks.blocks_with_rows():
        if block in redone:
            continue
        start, end = blocks.rows(block)
        masks = np.ascontiguousarray(group["masks"][start:end]).view(MASK_DTYPE).reshape(-1)
        stats[block] = rows_statistics(masks["flags"], codec.decode(group["logits"][start:end]), blocks.ptr, start,
                                       codec.bins)
    return stats
