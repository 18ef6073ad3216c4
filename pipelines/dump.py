"""`ldcache dump-teacher`: run a teacher once and write its LD targets to a store.

Pass 1 (no teacher, dask): regions from the annotations, row counts, store layout, masks.
Pass 2 (teacher): per block of records, forward the views and write the logits at the stored
rows, then mark the block done. Under torchrun, rank 0 does pass 1 and blocks go round-robin to
ranks; the layout never depends on the number of processes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import zarr
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from ldcache.errors import LDCacheError
from ldcache.regions import VLR_METRICS
from ldcache.store import (FLAG_MAIN, MASK_DTYPE, STATUS_COMPLETE, STATUS_CREATED, STATUS_MASKS,
                           block_row_starts, block_rows, create_store, open_group_checked, store_bytes_on_disk,
                           store_codec, store_exists, store_filesystem)
from ldcache.targets import RegionRowMaker, gather_logits
from ldcache.teacher import build_teacher, file_sha256, head_geometry, load_config, teacher_outputs
from ldcache.value_codec import VALUE_CODECS, ValueCodec
from ldcache.views import View, boxes_in_view, featmap_sizes, view_geometry

console = Console(stderr=True)
REGION_MODES = ("distill", "dense")


@dataclass
class DumpOptions:
    teacher_config: Path
    checkpoint: Path
    ann_file: Path
    img_dir: Path
    out: str | Path  # a folder, or an object-store URL such as s3://bucket/prefix/teacher.zarr
    views: list[View]
    region: str = "distill"
    gamma: float = 0.25
    topk: int = 9
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


@dataclass
class ImageEntry:
    image_id: int
    path: str
    width: int
    height: int
    boxes: torch.Tensor  # [G, 4] xyxy, non-crowd, non-degenerate


@dataclass
class DatasetScan:
    images: list[ImageEntry]
    skipped_no_annotations: int = 0
    crowd_boxes: int = 0
    degenerate_boxes: int = 0
    other_category_boxes: int = 0
    classes: tuple = field(default_factory=tuple)


# ----------------------------------------------------------------------------- inputs

def scan_dataset(ann_file: Path, img_dir: Path, classes) -> DatasetScan:
    """Images and GT boxes as mmdet's CocoDataset parses them (crowd boxes ignored, boxes under
    1 px dropped). Images without a usable box are skipped; missing image files are an error."""
    from mmdet.datasets import CocoDataset

    if not ann_file.is_file():
        raise LDCacheError(f"annotation file {ann_file} does not exist")
    if not img_dir.is_dir():
        raise LDCacheError(f"image folder {img_dir} does not exist")
    try:
        # pycocotools reports its loading on stdout, which belongs to the command's results.
        with redirect_stdout(io.StringIO()):
            dataset = CocoDataset(ann_file=str(ann_file), data_prefix=dict(img=str(img_dir) + "/"),
                                  metainfo=dict(classes=classes) if classes else None,
                                  filter_cfg=None, pipeline=[], serialize_data=False)
    except (KeyError, ValueError, json.JSONDecodeError, AssertionError) as err:
        raise LDCacheError(f"{ann_file} is not a COCO detection annotation file: {err}") from None
    scan = DatasetScan(images=[], classes=tuple(dataset.metainfo["classes"]))
    wanted = set(dataset.cat_ids)
    for ann in json.loads(ann_file.read_text()).get("annotations", []):
        _, _, w, h = ann["bbox"]
        if ann["category_id"] not in wanted:
            scan.other_category_boxes += 1
        elif ann.get("iscrowd", 0):
            scan.crowd_boxes += 1
        elif w < 1 or h < 1 or ann.get("area", w * h) <= 0:
            scan.degenerate_boxes += 1
    missing = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        boxes = [inst["bbox"] for inst in info["instances"] if not inst["ignore_flag"]]
        if not boxes:
            scan.skipped_no_annotations += 1
            continue
        if not os.path.isfile(info["img_path"]):
            missing.append(info["img_path"])
        scan.images.append(ImageEntry(int(info["img_id"]), info["img_path"], int(info["width"]),
                                      int(info["height"]), torch.tensor(boxes, dtype=torch.float32)))
    if missing:
        raise LDCacheError(f"{len(missing)} image file(s) named in {ann_file} are missing under {img_dir}, "
                           f"e.g. {missing[0]}")
    if not scan.images:
        hint = (f"; its {scan.other_category_boxes} boxes are of categories that are not the teacher's classes "
                f"{scan.classes[:5]}{'...' if len(scan.classes) > 5 else ''} (set the teacher config's "
                "train_dataloader.dataset.metainfo.classes)" if scan.other_category_boxes else "")
        raise LDCacheError(f"{ann_file} has no image with a usable box: nothing to distill{hint}")
    return scan


def default_scale(cfg) -> tuple[int, int]:
    """The Resize scale of the config's test pipeline (where the student is evaluated)."""
    pipeline = cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline", [])
    for step in pipeline:
        if step.get("type") == "Resize" and "scale" in step:
            return tuple(step["scale"])
    raise LDCacheError(f"{cfg.filename} has no Resize(scale=...) in its test pipeline; give --scale")


# ----------------------------------------------------------------------------- pass 1: regions

def _record_rows(maker: RegionRowMaker, entry: ImageEntry, view: View) -> list[np.ndarray]:
    geo = view_geometry(entry.width, entry.height, view)
    return maker.rows(boxes_in_view(entry.boxes, geo), geo.pad_shape)


def _staging_root(out: str | Path) -> str:
    """Where pass 1 keeps each block's rows between computing them and writing them in place:
    beside the store, on the same filesystem (a dask worker on another machine reaches it too)."""
    return f"{str(out).rstrip('/')}.pass1"


def _stage_block_rows(maker: RegionRowMaker, records: list[tuple[ImageEntry, View]], staging: str,
                      block: int) -> np.ndarray:
    """Compute a block's region rows once, stage them, and return the per-record, per-level counts
    that the layout needs (the rows are written in place once the layout is known)."""
    torch.set_num_threads(1)
    per_record = [_record_rows(maker, e, v) for e, v in records]
    rows = np.concatenate([r for levels in per_record for r in levels]) if per_record else np.zeros(0, MASK_DTYPE)
    fs, root = store_filesystem(f"{staging}/block-{block}.npy")
    with fs.open(root, "wb") as f:
        np.save(f, rows)
    return np.array([[len(r) for r in levels] for levels in per_record], dtype=np.int64)


def _write_block_masks(staging: str, block: int, store: str, start: int, end: int) -> None:
    fs, root = store_filesystem(f"{staging}/block-{block}.npy")
    with fs.open(root, "rb") as f:
        rows = np.load(f)
    if len(rows):
        assert len(rows) == end - start, "a staged block does not fit its place in the layout"
        # Opened here, not passed in: on a dask.distributed cluster this runs in another process.
        masks = zarr.open_group(store, mode="r+")["masks"]
        masks[start:end] = rows.view(np.uint8).reshape(len(rows), MASK_DTYPE.itemsize)


def _blocks(records: list, block_size: int) -> list[list]:
    return [records[i:i + block_size] for i in range(0, len(records), block_size)]


def run_mask_pass(maker: RegionRowMaker, records: list, opts: DumpOptions, attrs: dict,
                  record_meta: dict, codec: ValueCodec):
    """Pass 1: regions of every block (dask, in parallel), computed once and staged; then the store
    layout from their row counts, and the staged rows written in place (dask again)."""
    import dask

    blocks = _blocks(records, opts.block_size)
    staging = _staging_root(opts.out)
    fs, staging_path = store_filesystem(staging)
    if fs.exists(staging_path):
        fs.rm(staging_path, recursive=True)  # left by a dump killed in pass 1
    fs.makedirs(staging_path, exist_ok=True)
    with _dask_scheduler(opts.dask_scheduler) as scheduler:
        with _spinner(f"pass 1/2: regions from annotations ({_describe(scheduler)})"):
            counts = dask.compute(*[dask.delayed(_stage_block_rows)(maker, b, staging, i)
                                    for i, b in enumerate(blocks)], scheduler=scheduler)
        counts = np.concatenate(counts)
        ptr, total = block_row_starts(counts, opts.block_size, opts.chunk_rows)
        group = create_store(opts.out, attrs, ptr, total, record_meta, codec, opts.block_size, opts.chunk_rows)
        tasks = []
        for b in range(len(blocks)):
            start, end, _ = block_rows(ptr, b, opts.block_size)
            tasks.append(dask.delayed(_write_block_masks)(staging, b, str(opts.out), start, end))
        with _spinner("pass 1/2: writing region masks"):
            dask.compute(*tasks, scheduler=scheduler)
    fs.rm(staging_path, recursive=True)
    group.attrs["status"] = STATUS_MASKS
    return group


@contextmanager
def _dask_scheduler(address: str | None):
    """The dask.distributed cluster at `address` when one is given, else local threads."""
    if not address:
        yield "threads"
        return
    from distributed import Client

    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise LDCacheError(f"cannot reach the dask scheduler at {address} ({err}); start one "
                           "(`dask scheduler` and `dask worker`) or leave out --dask-scheduler") from None
    with client:
        yield client


def _describe(scheduler) -> str:
    if scheduler == "threads":
        return "local threads"
    return f"dask cluster {scheduler.scheduler.address}, {len(scheduler.scheduler_info()['workers'])} workers"


# ----------------------------------------------------------------------------- pass 2: teacher

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


def run_teacher_pass(model, group, records: list, my_blocks: list[int], opts: DumpOptions,
                     device: str, strides: list[int], progress_enabled: bool) -> None:
    ptr = group["ptr"][:]
    masks, logits, done = group["masks"], group["logits"], group["done"]
    img_shapes, pad_shapes = group["img_shape"][:], group["pad_shape"][:]
    codec = store_codec(dict(group.attrs))

    def open_block(block: int) -> _BlockBuffer:
        start, end, recs = block_rows(ptr, block, opts.block_size)
        block_masks = np.ascontiguousarray(masks[start:end]).view(MASK_DTYPE).reshape(-1)
        return _BlockBuffer(block, start, block_masks, np.zeros((end - start, codec.num_values), np.float32),
                            len(recs))

    items = [(r, *records[r]) for b in my_blocks for r in block_rows(ptr, b, opts.block_size)[2]]
    # One loader for all of this rank's blocks: its workers start once and keep decoding across
    # block ends (a loader per block paid the workers' start-up on every block).
    loader = torch.utils.data.DataLoader(ViewDataset(items), batch_size=opts.batch_size,
                                         num_workers=opts.workers, collate_fn=_collate)
    writer = ThreadPoolExecutor(max_workers=1)  # writing overlaps the next block's forward passes
    pending, buffer = None, None
    with _progress(progress_enabled) as progress:
        task = progress.add_task("pass 2/2: teacher", total=len(items))
        for batch_records, batch in loader:
            cls_scores, bbox_preds = teacher_outputs(model, batch)
            for i, r in enumerate(batch_records):
                sample = batch["data_samples"][i]
                if tuple(sample.img_shape) != tuple(img_shapes[r]):
                    raise LDCacheError(
                        f"image {records[r][0].image_id}: the pipeline resized it to "
                        f"{tuple(sample.img_shape)} but pass 1 expected {tuple(img_shapes[r])}; "
                        "is the annotation file's width/height right for this image?")
                if buffer is None:
                    buffer = open_block(r // opts.block_size)
                first = buffer.start
                levels = [buffer.masks[a - first:z - first] for a, z in zip(ptr[r, :-1], ptr[r, 1:])]
                grid = featmap_sizes(tuple(pad_shapes[r]), strides)
                buffer.values[ptr[r, 0] - first:ptr[r, -1] - first] = (
                    gather_logits(cls_scores, bbox_preds, i, levels, grid).cpu().numpy())
                buffer.records_left -= 1
                if buffer.records_left == 0:
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(_write_block, logits, done, buffer, codec, opts.vlr_class_logits)
                    buffer = None
            progress.advance(task, len(batch_records))
        if pending is not None:
            pending.result()
    writer.shutdown()


def _write_block(logits, done, buffer: _BlockBuffer, codec: ValueCodec, vlr_class_logits: bool) -> None:
    values = buffer.values
    if not vlr_class_logits:
        # Class logits off the Main region only serve VLR KD; zeros cost nothing after Blosc.
        values[(buffer.masks["flags"] & FLAG_MAIN) == 0, 4 * codec.bins:] = 0
    if len(values):
        logits[buffer.start:buffer.start + len(values)] = codec.encode(values)
    done[buffer.block] = 1  # written last: a block is done only once its rows are on disk


# ----------------------------------------------------------------------------- orchestration

def _input_hashes(opts: DumpOptions) -> dict:
    """sha256 of the inputs, computed once: the checkpoint and annotation file can be large."""
    return {"checkpoint": file_sha256(opts.checkpoint), "config": file_sha256(opts.teacher_config),
            "ann": file_sha256(opts.ann_file)}


def _fingerprint(opts: DumpOptions, hashes: dict) -> str:
    keys = dict(teacher=hashes["checkpoint"], config=hashes["config"], ann=hashes["ann"],
                views=[asdict(v) for v in opts.views],
                region=opts.region, gamma=opts.gamma, topk=opts.topk, dtype=opts.dtype,
                vlr_metrics=list(opts.vlr_metrics), vlr_class_logits=opts.vlr_class_logits,
                block_size=opts.block_size, chunk_rows=opts.chunk_rows)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return f"cuda:{local}"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LDCacheError(f"--device {device} asked for, but no CUDA device is available")
    return device


def run_dump(opts: DumpOptions) -> dict | None:
    """Run both passes; returns the summary on rank 0 (None on other ranks)."""
    started = time.perf_counter()
    if opts.region not in REGION_MODES:
        raise LDCacheError(f"--region must be one of {REGION_MODES}, not {opts.region!r}")
    if opts.dtype not in VALUE_CODECS:
        raise LDCacheError(f"--dtype must be one of {VALUE_CODECS}, not {opts.dtype!r}")
    if not opts.vlr_metrics or set(opts.vlr_metrics) - set(VLR_METRICS):
        raise LDCacheError(f"--vlr-metric must name one or more of {VLR_METRICS}, not {list(opts.vlr_metrics)}")
    rank, world = _dist_info()
    device = _resolve_device(opts.device)
    cfg = load_config(opts.teacher_config)
    model = build_teacher(cfg, opts.checkpoint, device)  # a checkpoint that does not fit fails here
    geometry = head_geometry(model.bbox_head)
    classes = cfg.get("train_dataloader", {}).get("dataset", {}).get("metainfo", {}).get("classes")
    scan = scan_dataset(opts.ann_file, opts.img_dir, classes)
    if len(scan.classes) != geometry["num_classes"]:
        raise LDCacheError(f"the teacher predicts {geometry['num_classes']} classes but the dataset has "
                           f"{len(scan.classes)}; give the teacher's own dataset classes")
    records = [(entry, view) for entry in scan.images for view in opts.views]
    maker = RegionRowMaker(model.bbox_head.prior_generator, geometry["strides"], opts.region, opts.gamma,
                           opts.topk, tuple(opts.vlr_metrics))

    if rank == 0:
        _prepare_store(opts, _input_hashes(opts), scan, records, geometry, maker)
    _barrier()
    group = open_group_checked(opts.out, require_complete=False, mode="r+")
    done = group["done"][:]
    if group.attrs["status"] != STATUS_COMPLETE:
        todo = [b for b in range(len(done)) if b % world == rank and not done[b]]
        run_teacher_pass(model, group, records, todo, opts, device, geometry["strides"], rank == 0)
    _barrier()
    if rank != 0:
        return None
    group = open_group_checked(opts.out, require_complete=False, mode="r+")
    if not np.all(group["done"][:] == 1):
        raise LDCacheError(f"{opts.out}: some blocks were not written; re-run with --resume")
    summary = _summary(group, scan, opts, time.perf_counter() - started)
    group.attrs.update({"summary": summary, "status": STATUS_COMPLETE})
    return summary


def _prepare_store(opts, hashes, scan, records, geometry, maker) -> None:
    """Check an existing store for --resume, or run pass 1 into a new one."""
    out = opts.out
    fingerprint = _fingerprint(opts, hashes)
    if store_exists(out):
        if not opts.resume:
            raise LDCacheError(f"{out} already exists; add --resume to finish or reuse it, or choose "
                               "another --out")
        group = open_group_checked(out, require_complete=False, mode="r+")
        if group.attrs.get("fingerprint") != fingerprint:
            raise LDCacheError(f"{out} was dumped with another teacher, checkpoint, annotation file or "
                               "options than this command; --resume needs the very same command")
        if group.attrs["status"] != STATUS_CREATED:
            return  # masks are in place; pass 2 picks up the blocks not done
        console.print("resuming: pass 1 had not finished, redoing it")
    views = [dict(name=v.name, scale=list(v.scale), flip=v.flip) for v in opts.views]
    attrs = {
        "fingerprint": fingerprint,
        "teacher": {"config": str(opts.teacher_config), "config_sha256": hashes["config"],
                    "checkpoint": str(opts.checkpoint), "checkpoint_sha256": hashes["checkpoint"]},
        "head": geometry,
        "dataset": {"ann_file": str(opts.ann_file), "ann_sha256": hashes["ann"],
                    "img_dir": str(opts.img_dir), "classes": list(scan.classes)},
        "views": views,
        "region": {"mode": opts.region, "gamma": opts.gamma, "topk": opts.topk,
                   "vlr_metrics": [m for m in VLR_METRICS if m in opts.vlr_metrics]},
        "values": {"dtype": opts.dtype, "layout": "reg[4*(reg_max+1)] (edge-major) then cls[num_classes]",
                   "kind": "raw logits, pre-softmax, before temperature",
                   "class_logits": "all rows" if opts.vlr_class_logits else "main rows"},
        "layout": {"block_size": opts.block_size, "chunk_rows": opts.chunk_rows,
                   "num_images": len(scan.images), "num_views": len(opts.views)},
        "codecs": "blosc zstd clevel 9: masks byte-shuffled by row, float logits bit-shuffled, q8 unshuffled",
    }
    geos = [view_geometry(e.width, e.height, v) for e, v in records]
    record_meta = {
        "image_ids": np.array([e.image_id for e in scan.images], dtype=np.int64),
        "img_shape": np.array([g.img_shape for g in geos], dtype=np.int32),
        "scale_factor": np.array([g.scale_factor for g in geos], dtype=np.float64),
        "pad_shape": np.array([g.pad_shape for g in geos], dtype=np.int32),
        "flip": np.array([g.flip for g in geos], dtype=np.uint8),
    }
    codec = ValueCodec(opts.dtype, geometry["reg_max"] + 1, geometry["num_classes"])
    run_mask_pass(maker, records, opts, attrs, record_meta, codec)


def _summary(group, scan: DatasetScan, opts: DumpOptions, wall: float) -> dict:
    ptr = group["ptr"][:]
    per_level = (ptr[:, 1:] - ptr[:, :-1]).sum(axis=0)
    strides = group.attrs["head"]["strides"]
    num_values = store_codec(dict(group.attrs)).num_values
    dense_locations = sum(int(np.prod(s)) for p in group["pad_shape"][:] for s in featmap_sizes(tuple(p), strides))
    dense_bytes = dense_locations * num_values * 2
    disk = store_bytes_on_disk(opts.out)
    records = ptr.shape[0]
    return {
        "images": len(scan.images), "views": len(opts.views), "image_views": records,
        "skipped_images_without_boxes": scan.skipped_no_annotations,
        "ignored_crowd_boxes": scan.crowd_boxes, "dropped_degenerate_boxes": scan.degenerate_boxes,
        "rows_per_level": [int(x) for x in per_level], "bytes_on_disk": disk,
        "bytes_per_image_view": disk / max(records, 1), "dense_fp16_bytes": dense_bytes,
        "compression_vs_dense_fp16": dense_bytes / max(disk, 1), "wall_seconds": round(wall, 2),
    }


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} image-views/s" if task.speed else "-- image-views/s", style="cyan")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=not enabled)


class _spinner:
    def __init__(self, text: str):
        self.text = text

    def __enter__(self):
        self.status = console.status(self.text)
        self.status.__enter__()

    def __exit__(self, *exc):
        self.status.__exit__(*exc)
        console.print(f"[green]✓[/] {self.text}")
