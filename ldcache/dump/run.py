"""`ldcache dump-teacher`: run a teacher once and write its LD targets to a store.

Pass 1 (no teacher, dask): regions from the annotations, row counts, store layout, masks.
Pass 2 (teacher): per block of records, forward the views and write the logits at the stored
rows, then mark the block done. Under torchrun, the blocks of both passes go round-robin to the
ranks (rank 0 alone lays the store out between them); the layout never depends on the number of
processes. Rank 0 alone holds the store's lock, reads the annotation file, hashes the inputs and
checks the images, for all ranks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import console
from ..digest import file_sha256
from ..domain.classes import teacher_classes_problem
from ..domain.grid import featmap_sizes
from ..domain.head import head_mismatch
from ..domain.rows import RegionRowMaker, stored_vlr_metrics
from ..domain.ld_config import load_config, train_classes
from ..domain.region_rule import RegionRule, region_rule
from ..domain.teacher import build_teacher
from ..domain.views import PAD_DIVISOR, View, view_geometry
from ..errors import BadInputError, LDCacheError, StoreIncompleteError, StoreMismatchError
from ..store.attrs import (DatasetAttrs, DumpSummary, GridAttrs, HeadGeometry, LayoutAttrs, RegionAttrs,
                           StoreAttrs, TeacherAttrs, ValuesAttrs, ViewAttrs)
from ..store.codec import VALUE_CODECS
from ..store.damage import repair_command
from ..store.fetch import Fetcher
from ..store.filesystem import store_bytes_on_disk, store_exists, store_filesystem
from ..store.format import (FLIP_DIRECTIONS, FORMAT_VERSION, PROGRESS, REGION_MODES, STATUS_COMPLETE,
                            STATUS_CREATED, VLR_METRICS)
from ..store.layout import BlockMap
from ..store.reader import open_store
from ..store.writer import finish_store, remove_progress
from .fault import arm_write_kill
from .lock import StoreLock
from .ranks import Ranks
from .regions_pass import block_mask_rows, run_regions_pass
from .repair import repair_damaged_blocks
from .scan import DatasetScan, scan_dataset
from .space import check_room_for_pass_two, disk_full_as_error, pass_two_bytes
from .teacher_pass import run_teacher_pass


@dataclass
class DumpOptions:
    """What `ldcache dump-teacher` was asked to do (its command-line options)."""

    teacher_config: Path
    checkpoint: Path
    ann_file: Path
    img_dir: Path
    out: str | Path  # a folder, or an object-store URL such as s3://bucket/prefix/teacher.zarr
    views: list[View]
    region: str = "distill"
    gamma: float = 0.25
    dtype: str = "fp16"
    vlr_metrics: tuple[str, ...] = VLR_METRICS
    vlr_class_logits: bool = True
    device: str = "auto"
    batch_size: int = 1
    workers: int = 2
    block_size: int = 64
    chunk_rows: int = 512
    resume: bool = False
    dask_scheduler: str | None = None  # address of a dask.distributed scheduler for pass 1
    # Set from an LD config (dump/inputs.py): its student's region rules and classes, and its head
    # geometry, which must be the teacher's. None: the teacher head's own rules and classes.
    rule: RegionRule | None = None
    classes: tuple[str, ...] | None = None
    student_geometry: HeadGeometry | None = None
    cfg_options: dict | None = None  # --cfg-options of a teacher config, merged into it

    def check(self) -> None:
        """Refuse options no dump can run with, before any work starts."""
        if self.region not in REGION_MODES:
            raise BadInputError(f"--region must be one of {REGION_MODES}, not {self.region!r}")
        if self.dtype not in VALUE_CODECS:
            raise BadInputError(f"--dtype must be one of {VALUE_CODECS}, not {self.dtype!r}")
        if not self.vlr_metrics or set(self.vlr_metrics) - set(VLR_METRICS):
            raise BadInputError(f"--vlr-metric must name one or more of {VLR_METRICS}, not {list(self.vlr_metrics)}")
        if not 0 < self.gamma < 1:
            raise BadInputError(f"--gamma must lie strictly between 0 and 1, not {self.gamma}")
        for name in ("batch_size", "block_size", "chunk_rows"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")


def _input_hashes(opts: DumpOptions) -> dict:
    """sha256 of the inputs, computed once: the checkpoint and annotation file can be large."""
    return {"checkpoint": file_sha256(opts.checkpoint), "config": file_sha256(opts.teacher_config),
            "ann": file_sha256(opts.ann_file)}


def _fingerprint(opts: DumpOptions, hashes: dict, rule: RegionRule) -> str:
    """What makes two dumps write the same arrays: the inputs and every option that changes a value."""
    # The VLR options change nothing where no VLR row is stored (--region main).
    vlr = dict(gamma=opts.gamma, vlr_metrics=list(opts.vlr_metrics),
               vlr_class_logits=opts.vlr_class_logits) if stored_vlr_metrics(opts.region, opts.vlr_metrics) else {}
    keys = dict(teacher=hashes["checkpoint"], config=hashes["config"], ann=hashes["ann"],
                img_dir=str(Path(opts.img_dir).resolve()), views=[asdict(v) for v in opts.views],
                region=opts.region, topk=rule.topk, main=rule.main, vlr=rule.vlr, dtype=opts.dtype, **vlr,
                # GroupNorm in the head sees a batch's padding, so the batch size changes values.
                batch_size=opts.batch_size, block_size=opts.block_size, chunk_rows=opts.chunk_rows)
    # Only when set, so that the dumps made before these options keep their fingerprints.
    if opts.classes is not None:
        keys["classes"] = list(opts.classes)
    if opts.cfg_options:
        keys["cfg_options"] = opts.cfg_options
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def _resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return f"cuda:{local}"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {device} asked for, but no CUDA device is available")
    return device


def run_dump(opts: DumpOptions) -> DumpSummary | None:
    """Run both passes; returns the summary on rank 0 (None on other ranks).

    Rank 0 holds the store's lock (`<out>.lock`, see ldcache/dump/lock.py) from before pass 1 to
    the end: a second dump on the same store is refused, naming the first."""
    started = time.perf_counter()
    opts.check()
    ranks = Ranks.from_env()
    arm_write_kill(opts.out)
    lock = StoreLock(opts.out)
    ranks.from_first(lock.acquire)
    try:
        return _run_locked(opts, ranks, lock, started)
    finally:
        lock.release()  # a no-op on the other ranks, which never took it


def _run_locked(opts: DumpOptions, ranks: Ranks, lock: StoreLock, started: float) -> DumpSummary | None:
    device = _resolve_device(opts.device)
    cfg = load_config(opts.teacher_config, opts.cfg_options)
    model = build_teacher(cfg, opts.checkpoint, device)  # a checkpoint that does not fit fails here
    geometry = HeadGeometry.of_head(model.bbox_head)
    mismatch = opts.student_geometry and head_mismatch(geometry, opts.student_geometry, "teacher")
    if mismatch:
        raise BadInputError(f"the student's head cannot learn from this teacher's cached outputs ({mismatch}): "
                            "LD compares the two heads location by location and bin by bin")
    classes = opts.classes or train_classes(cfg)
    # Parsing the annotation file (450 MB for COCO), hashing the inputs and reading every image's
    # header are the same work on every rank: rank 0 does it and broadcasts the result over the
    # gloo group. A broadcast, rather than a file staged beside the store, needs nothing cleaned
    # up after a kill and works alike on local disks and object stores.
    scan, hashes = ranks.from_first(lambda: (scan_dataset(opts.ann_file, opts.img_dir, classes),
                                             _input_hashes(opts)))
    problem = teacher_classes_problem(opts.checkpoint, scan.classes)
    if problem:
        raise BadInputError(problem)
    if len(scan.classes) != geometry.num_classes:
        raise BadInputError(f"the teacher predicts {geometry.num_classes} classes but the dataset has "
                            f"{len(scan.classes)}; give the teacher's own dataset classes")
    records = [(entry, view) for entry in scan.images for view in opts.views]
    rule = opts.rule or region_rule(model.bbox_head)
    maker = RegionRowMaker(model.bbox_head.prior_generator, geometry.strides, opts.region, opts.gamma,
                           rule, tuple(opts.vlr_metrics))

    attrs = _new_attrs(opts, hashes, scan, geometry, rule, type(model.bbox_head).__name__)
    small_arrays = _small_arrays(scan, records)
    resume = repair_command(opts.out, attrs)
    with disk_full_as_error(opts.out, lambda: _logits_left_to_write(opts.out), resume):
        # Every process reads the same store state here, before pass 1 writes anything: they agree.
        if _needs_regions_pass(opts, attrs, ranks):
            run_regions_pass(maker, records, opts.out, attrs, small_arrays, opts.dask_scheduler, ranks)
        elif ranks.is_first:
            repair_damaged_blocks(opts.out, maker, records, small_arrays)
        ranks.barrier()
        group, attrs = open_store(opts.out, require_complete=False, mode="r+")
        # Still complete here: a finished store that --resume verified and found nothing to repair.
        untouched = attrs.status == STATUS_COMPLETE
        if untouched:
            if ranks.is_first:
                remove_progress(opts.out)  # left by a finish killed after it completed the store
        else:
            ranks.from_first(lambda: check_room_for_pass_two(opts.out, group, attrs, resume))
            lock.check()
            done = group[f"{PROGRESS}/done"][:]
            todo = [b for b in ranks.own(len(done)) if not done[b]]
            blocks = BlockMap.of_store(group["ptr"][:], attrs)  # the finish below uses it too
            run_teacher_pass(model, group, attrs, records, todo, opts.batch_size, opts.workers, ranks.is_first,
                             Fetcher(*store_filesystem(opts.out)),
                             lambda block: block_mask_rows(maker, records, blocks, block))
        ranks.barrier()
        if not ranks.is_first:
            return None
        if untouched:
            return attrs.summary
        if not np.all(group[f"{PROGRESS}/done"][:] == 1):
            raise StoreIncompleteError(f"{opts.out}: some blocks were not written; re-run with --resume")
        lock.check()
        summary = _summary(group, attrs, scan, opts, time.perf_counter() - started)
        finish_store(opts.out, group, attrs, blocks, summary)
    return summary


def _logits_left_to_write(out: str | Path) -> int | None:
    """pass_two_bytes of the store at `out`; None before pass 1 has laid it out."""
    try:
        group, attrs = open_store(out, require_complete=False)
        return pass_two_bytes(group, attrs)
    except (LDCacheError, KeyError):  # no store yet, or one whose arrays are not all created
        return None


def _new_attrs(opts: DumpOptions, hashes: dict, scan: DatasetScan, geometry: HeadGeometry, rule: RegionRule,
               head_type: str) -> StoreAttrs:
    return StoreAttrs(
        ldcache_format=FORMAT_VERSION, status=STATUS_CREATED, fingerprint=_fingerprint(opts, hashes, rule),
        teacher=TeacherAttrs(str(opts.teacher_config), hashes["config"], str(opts.checkpoint), hashes["checkpoint"],
                             head_type),
        head=geometry, grid=GridAttrs(PAD_DIVISOR, FLIP_DIRECTIONS[0]),
        dataset=DatasetAttrs(str(opts.ann_file), hashes["ann"], str(opts.img_dir), tuple(scan.classes)),
        views=tuple(ViewAttrs(v.name, tuple(v.scale), v.flip) for v in opts.views),
        region=RegionAttrs(opts.region, opts.gamma, rule.topk, stored_vlr_metrics(opts.region, opts.vlr_metrics),
                           rule.main, rule.vlr),
        values=ValuesAttrs(opts.dtype, opts.vlr_class_logits),
        # shard_rows is known once pass 1 has counted the rows; create_store sets it.
        layout=LayoutAttrs(opts.block_size, opts.chunk_rows, opts.chunk_rows, len(scan.images), len(opts.views)))


def _needs_regions_pass(opts: DumpOptions, attrs: StoreAttrs, ranks: Ranks) -> bool:
    """Whether pass 1 must run: a new store, or one killed before its masks were written. An
    existing store without --resume, or one made by another command, is refused."""
    out = opts.out
    if not store_exists(out):
        return True
    if not opts.resume:
        raise BadInputError(f"{out} already exists; add --resume to finish or reuse it, or choose another --out")
    _, stored = open_store(out, require_complete=False)
    if stored.fingerprint != attrs.fingerprint:
        raise StoreMismatchError(f"{out} was dumped with another teacher, checkpoint, annotation file, image "
                                 "folder or options than this command; --resume needs the very same command")
    if stored.status != STATUS_CREATED:
        return False  # masks are in place; pass 2 picks up the blocks not done
    if ranks.is_first:
        console.note("resuming: pass 1 had not finished, redoing it")
    return True


def _small_arrays(scan: DatasetScan, records: list) -> dict[str, np.ndarray]:
    """The per-record and per-image arrays of docs/store-format.md."""
    geos = [view_geometry(e.width, e.height, v) for e, v in records]
    names = [os.path.relpath(e.path, scan.img_dir).encode() for e in scan.images]
    files = np.zeros((len(names), max(map(len, names))), dtype=np.uint8)
    for i, name in enumerate(names):
        files[i, :len(name)] = np.frombuffer(name, dtype=np.uint8)
    box_counts = [len(e.boxes) for e in scan.images]
    return {
        "image_ids": np.array([e.image_id for e in scan.images], dtype=np.int64),
        "image_files": files,
        "gt_ptr": np.concatenate([[0], np.cumsum(box_counts)]).astype(np.int64),
        "gt_boxes": torch.cat([e.boxes for e in scan.images]).numpy().astype(np.float32),
        "img_shape": np.array([g.img_shape for g in geos], dtype=np.int32),
        "scale_factor": np.array([g.scale_factor for g in geos], dtype=np.float64),
        "pad_shape": np.array([g.pad_shape for g in geos], dtype=np.int32),
        "flip": np.array([g.flip for g in geos], dtype=np.uint8),
    }


def _summary(group, attrs: StoreAttrs, scan: DatasetScan, opts: DumpOptions, wall: float) -> DumpSummary:
    """The summary of a dump that just finished the store.

    A repair (--resume on a finished store) keeps the summary of the dump that made the store,
    its wall time and byte counts included: the repaired blocks are written again from the same
    values with the same codecs, so the store's bytes are the original dump's again, and the wall
    time stays what the whole dump cost. Only its completion_id is new, as the store's content was
    rewritten. A dump resumed after a kill had written no summary: its wall time is the resumed
    run's alone."""
    completion_id = uuid.uuid4().hex
    if attrs.summary is not None:
        return dataclasses.replace(attrs.summary, completion_id=completion_id)
    ptr = group["ptr"][:]
    per_level = (ptr[:, 1:] - ptr[:, :-1]).sum(axis=0)
    num_values = attrs.value_codec().num_values
    dense_priors = attrs.head.num_base_priors * sum(int(np.prod(s)) for p in group["pad_shape"][:]
                                                    for s in featmap_sizes(tuple(p), attrs.head.strides))
    dense_bytes = dense_priors * num_values * 2
    disk = store_bytes_on_disk(opts.out)
    records = ptr.shape[0]
    return DumpSummary(
        images=len(scan.images), views=len(opts.views), image_views=records,
        images_without_boxes=scan.images_without_boxes, ignored_crowd_boxes=scan.crowd_boxes,
        dropped_degenerate_boxes=scan.degenerate_boxes, rows_per_level=tuple(int(x) for x in per_level),
        bytes_on_disk=disk, bytes_per_image_view=disk / max(records, 1), dense_fp16_bytes=dense_bytes,
        compression_vs_dense_fp16=dense_bytes / max(disk, 1), wall_seconds=round(wall, 2),
        completion_id=completion_id)
