"""Pass 2 of the dump: the teacher's logits at the rows pass 1 laid out, block by block.

Writer threads encode, compress and write each finished block while the teacher runs the next
ones; a block's `done` flag is written after its rows.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import zarr

from .. import console
from ..errors import BadInputError
from ..store.attrs import StoreAttrs
from ..store.codec import ValueCodec
from ..store.format import FLAG_MAIN, MASK_DTYPE, PROGRESS
from ..domain.grid import featmap_sizes
from ..store.fetch import Fetcher
from ..store.layout import BlockMap
from ..store.shards import ChunkDamage, ShardedRows, read_shard_rows
from ..store.statistics import rows_statistics
from ..store.writer import writable, write_masks
from .fault import maybe_kill
from ..domain.rows import gather_logits
from .scan import ImageEntry
from ..domain.teacher import teacher_outputs
from ..domain.views import View

WRITERS_WITH_GPU = 4


class ViewDataset(torch.utils.data.Dataset):
    """Records of some blocks, loaded with mmdet's test transforms for their view."""

    def __init__(self, items: list[tuple[int, ImageEntry, View]]):
        from mmcv.transforms import Compose

        self.items = items
        self.pipelines = {}
        for _, _, view in items:
            if view not in self.pipelines:
                self.pipelines[view] = Compose([
                    dict(type="LoadImageFromFile"),
                    dict(type="Resize", scale=view.scale, keep_ratio=True),
                    dict(type="RandomFlip", prob=1.0 if view.flip else 0.0),
                    dict(type="PackDetInputs",
                         meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor",
                                    "flip", "flip_direction")),
                ])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        record, entry, view = self.items[i]
        data = self.pipelines[view](dict(img_path=entry.path, img_id=entry.image_id))
        data["record"] = record
        return data


def _collate(batch):
    from mmengine.dataset import pseudo_collate

    records = [b.pop("record") for b in batch]
    return records, pseudo_collate(batch)


@dataclass
class _BlockBuffer:
    """The teacher values of one block, filled record by record, then written whole."""

    block: int
    start: int  # first row
    masks: np.ndarray  # MASK_DTYPE rows of the block
    values: np.ndarray  # [rows, num_values] float32
    records_left: int


def run_teacher_pass(model: torch.nn.Module, group: zarr.Group, attrs: StoreAttrs,
                     records: list[tuple[ImageEntry, View]], my_blocks: list[int], batch_size: int,
                     workers: int, show_progress: bool, fetcher: Fetcher,
                     remake_masks: Callable[[int], np.ndarray]) -> None:
    """Forward this process's blocks of records through the teacher and write their logits.

    A block's masks are read checked (`fetcher`): a damaged or lost masks shard of an unfinished
    store is made again from the annotations (`remake_masks(block)`, MASK_DTYPE rows) and
    rewritten, never read as zeros."""
    ptr = group["ptr"][:]
    blocks = BlockMap.of_store(ptr, attrs)
    masks, logits = ShardedRows("masks", group["masks"]), writable(group, "logits")
    done, block_stats = (writable(group, f"{PROGRESS}/{name}") for name in ("done", "block_stats"))
    img_shapes, pad_shapes = group["img_shape"][:], group["pad_shape"][:]
    codec, block_size, strides = attrs.value_codec(), attrs.layout.block_size, attrs.head.strides
    priors = attrs.head.num_base_priors

    # Image-views without rows (an image without a usable box, in distill mode) need no teacher.
    with_rows = {b: [r for r in blocks.records(b) if ptr[r, -1] > ptr[r, 0]] for b in my_blocks}
    for block, recs in with_rows.items():
        if not recs:
            done[block] = 1

    def open_block(block: int) -> _BlockBuffer:
        start, end = blocks.rows(block)
        try:
            block_masks = read_shard_rows(fetcher, masks, blocks.shard(block), end - start)
            block_masks = np.ascontiguousarray(block_masks).view(MASK_DTYPE).reshape(-1)
        except ChunkDamage as damage:
            console.note(f"block {block}: its masks are damaged ({damage.problem}); computing them again "
                         "from the annotations")
            block_masks = remake_masks(block)
            write_masks(group, start, block_masks)
        return _BlockBuffer(block, start, block_masks,
                            np.zeros((end - start, codec.num_values), np.float32), len(with_rows[block]))

    items = [(r, *records[r]) for b in my_blocks for r in with_rows[b]]
    # One loader for all of this rank's blocks: its workers start once and keep decoding across
    # block ends (a loader per block paid the workers' start-up on every block).
    loader = torch.utils.data.DataLoader(ViewDataset(items), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    # Writing overlaps the next blocks' forward passes. A GPU teacher outpaces one writer thread
    # (Blosc and numpy release the GIL); on a CPU the teacher needs the cores.
    writers = WRITERS_WITH_GPU if next(model.parameters()).is_cuda else 1
    writer = ThreadPoolExecutor(max_workers=writers)
    pending, buffer = deque(), None
    written = 0
    with console.progress(show_progress) as progress:
        task = progress.add_task("pass 2/2: teacher", total=len(items))
        for batch_records, batch in loader:
            cls_scores, bbox_preds = teacher_outputs(model, batch)
            for i, r in enumerate(batch_records):
                sample = batch["data_samples"][i]
                if tuple(sample.img_shape) != tuple(img_shapes[r]):
                    raise BadInputError(
                        f"image {records[r][0].image_id}: the pipeline resized it to "
                        f"{tuple(sample.img_shape)} but pass 1 expected {tuple(img_shapes[r])}; "
                        "is the annotation file's width/height right for this image?")
                if buffer is None:
                    buffer = open_block(r // block_size)
                first = buffer.start
                levels = [buffer.masks[a - first:z - first] for a, z in zip(ptr[r, :-1], ptr[r, 1:])]
                grid = featmap_sizes(tuple(pad_shapes[r]), strides)
                buffer.values[ptr[r, 0] - first:ptr[r, -1] - first] = (
                    gather_logits(cls_scores, bbox_preds, i, levels, grid, priors).cpu().numpy())
                buffer.records_left -= 1
                if buffer.records_left == 0:
                    if len(pending) == writers:
                        pending.popleft().result()
                        written += 1
                        maybe_kill("pass2", written)
                    pending.append(writer.submit(_write_block, logits, done, block_stats, ptr, buffer, codec,
                                                 attrs.values.vlr_class_logits))
                    buffer = None
            progress.advance(task, len(batch_records))
        while pending:
            pending.popleft().result()
    writer.shutdown()


def _write_block(logits, done, block_stats, ptr: np.ndarray, buffer: _BlockBuffer, codec: ValueCodec,
                 vlr_class_logits: bool) -> None:
    """Encode and write a block's rows, then its statistics, then its done flag."""
    values = buffer.values
    if not vlr_class_logits:
        # Class logits off the Main region only serve VLR KD; zeros cost nothing after Blosc.
        values[(buffer.masks["flags"] & FLAG_MAIN) == 0, 4 * codec.bins:] = 0
    stored = codec.encode(values)
    logits[buffer.start:buffer.start + len(values)] = stored
    # Statistics of the values as stored, so that they agree with a pass over the store.
    block_stats[buffer.block] = rows_statistics(buffer.masks["flags"], codec.decode(stored), ptr, buffer.start,
                                                codec.bins)
    done[buffer.block] = 1  # written last: a block is done only once its rows are on disk
