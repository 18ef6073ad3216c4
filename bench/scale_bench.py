"""COCO-scale figures for docs/scaling.md (issue 8), from a synthetic COCO-geometry set.

Images are 1333x800 with COCO's box count and size mix (bench/dump_bench.py's generator), 80
classes, 2 views. The teacher network is replaced by a stand-in that returns random logits of a
GFL head's shapes for each batch (edges N(0, 3), classes N(-6, 2)). Random logits compress worse
than a trained teacher's, so the sizes are an upper bound. Everything else is the real dump: image
decoding, pass 1 regions, gathering, encoding, compression, writing. The teacher's own cost is
set apart: it is the teacher's forward rate on the machine that runs the dump.

Measured, in one run:
- bytes per image-view for distill fp16 (the default), distill q8 + Main-only class logits, and
  dense fp16 (on a subset: a dense store is large);
- dump throughput without the teacher (image-views/s), to local disk and to S3 (a moto server on
  loopback: an in-process Python server, so its figures are a floor for a real object store);
- read throughput of complete records on one core, from local disk and from S3.
Then the extrapolation to COCO train2017 with both views.

    python bench/scale_bench.py                 # 1500 images x 2 views
    python bench/scale_bench.py --images 200    # quick look
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dump_bench import make_coco_geometry_set, random_teacher_checkpoint

REPO = Path(__file__).resolve().parents[1]
COCO_CLASSES = tuple(f"class{i}" for i in range(80))
COCO_TRAIN_IMAGES = 117_266  # train2017 images with at least one box (of 118,287)


def stand_in_outputs(model, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random per-level (cls_score, bbox_pred) of the teacher head's shapes for this batch."""
    from ldcache.domain.grid import featmap_sizes

    inputs = model.data_preprocessor(batch, False)["inputs"]
    head = model.bbox_head
    sizes = featmap_sizes(tuple(inputs.shape[-2:]), [int(s[0]) for s in head.prior_generator.strides])
    b = inputs.shape[0]
    cls = [torch.randn(b, head.num_classes, h, w) * 2 - 6 for h, w in sizes]
    reg = [torch.randn(b, 4 * (head.reg_max + 1), h, w) * 3 for h, w in sizes]
    return cls, reg


def timed_dump(opts) -> tuple[dict, float]:
    from ldcache.dump.run import run_dump

    start = time.perf_counter()
    summary = run_dump(opts)
    return summary.to_dict(), time.perf_counter() - start


def read_rate(store: str, records: int | None = None) -> tuple[float, float]:
    """(records/s, MB/s of decoded values) reading complete records in a shuffled order on one core."""
    from ldcache.store.reader import StoreReader

    reader = StoreReader(store)
    order = np.random.default_rng(0).permutation(reader.num_records)[:records]
    reader.read_record(int(order[0]))
    decoded, start = 0, time.perf_counter()
    for r in order:
        t = reader.read_record(int(r))
        decoded += t.values.nbytes + t.masks.nbytes
    seconds = time.perf_counter() - start
    return len(order) / seconds, decoded / seconds / 1e6


def start_s3() -> tuple[object, str]:
    """A moto S3 server on loopback with a bucket; credentials go to os.environ (as a user's would)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY=secrets.token_hex(16),
                      AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3").create_bucket(Bucket="ldcache-bench")
    return server, "s3://ldcache-bench"


def extrapolate(per_view_bytes: dict, write_rate: float, read_records_per_s: float, args) -> dict:
    """COCO train2017, both views: storage, teacher GPU-hours (dump vs online LD), reading needs."""
    views = COCO_TRAIN_IMAGES * 2
    teacher_hours = {
        "dump (2 views, once)": views / args.teacher_rate / 3600,
        "online LD, 12 epochs": COCO_TRAIN_IMAGES * 12 / args.teacher_rate / 3600,
        "online LD, 24 epochs": COCO_TRAIN_IMAGES * 24 / args.teacher_rate / 3600,
    }
    need = args.student_rate * per_view_bytes["distill_fp16"]
    return {
        "image_views": views,
        "storage_GB": {k: round(v * views / 1e9, 1) for k, v in per_view_bytes.items()},
        "teacher_gpu_hours_at_rate": {k: round(v, 1) for k, v in teacher_hours.items()},
        "dump_hours_without_teacher_one_process": round(views / write_rate / 3600, 1),
        "read_MB_per_s_per_training_gpu": round(need / 1e6, 2),
        "dataloader_cores_for_ld_reads_per_gpu": round(args.student_rate / read_records_per_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--dense-images", type=int, default=50)
    parser.add_argument("--s3-images", type=int, default=150)
    parser.add_argument("--teacher-rate", type=float, default=15.0,
                        help="assumed teacher forward passes per second per GPU (GFL R101, 1333x800)")
    parser.add_argument("--student-rate", type=float, default=25.0,
                        help="assumed images per second one training GPU consumes")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import ldcache.dump.run as dump
    import ldcache.dump.teacher_pass as teacher_pass
    from ldcache.domain.views import parse_views

    teacher_pass.teacher_outputs = stand_in_outputs  # the stand-in: no teacher network runs
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-scale-"))
    ann, img_dir = make_coco_geometry_set(work / "data", args.images)
    config = random_teacher_checkpoint(REPO / "configs/tiny/gfl_r18_tiny.py", work / "teacher.pth", COCO_CLASSES)
    views = parse_views([(1333, 800)], flip=True)

    def options(out, ann_file=ann, **fields):
        return dump.DumpOptions(config, work / "teacher.pth", ann_file, img_dir, out, views, workers=2, **fields)

    def subset(count: int, name: str) -> Path:
        data = json.loads(ann.read_text())
        keep = {im["id"] for im in data["images"][:count]}
        data["images"] = [im for im in data["images"] if im["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        path = work / f"{name}.json"
        path.write_text(json.dumps(data))
        return path

    results, rates = {}, {}
    variants = {"distill_fp16": ({}, ann), "distill_q8_main_cls": ({"dtype": "q8", "vlr_class_logits": False}, ann),
                "dense_fp16": ({"region": "dense"}, subset(args.dense_images, "dense"))}
    for name, (fields, ann_file) in variants.items():
        summary, seconds = timed_dump(options(str(work / f"{name}.zarr"), ann_file, **fields))
        results[name] = summary
        rates[name] = summary["image_views"] / seconds
    local_read = read_rate(str(work / "distill_fp16.zarr"))

    server, bucket = start_s3()
    try:
        s3_ann = subset(args.s3_images, "s3")
        summary, seconds = timed_dump(options(f"{bucket}/distill_fp16.zarr", s3_ann))
        s3_write = summary["image_views"] / seconds
        s3_read = read_rate(f"{bucket}/distill_fp16.zarr")
    finally:
        server.stop()

    per_view = {k: r["bytes_per_image_view"] for k, r in results.items()}
    report = {
        "image_views": {k: r["image_views"] for k, r in results.items()},
        "bytes_per_image_view": {k: round(v) for k, v in per_view.items()},
        "vs_dense_fp16": {k: round(r["compression_vs_dense_fp16"], 1) for k, r in results.items()},
        "rows_per_image_view": round(sum(results["distill_fp16"]["rows_per_level"])
                                     / results["distill_fp16"]["image_views"]),
        "dump_image_views_per_s_without_teacher": {**{k: round(v, 1) for k, v in rates.items()},
                                                   "s3_distill_fp16": round(s3_write, 1)},
        "read_records_per_s_one_core": {"local": round(local_read[0]), "s3_moto": round(s3_read[0])},
        "read_decoded_MB_per_s_one_core": {"local": round(local_read[1], 1), "s3_moto": round(s3_read[1], 1)},
        "assumed": {"teacher_forward_per_s": args.teacher_rate, "student_images_per_s_per_gpu": args.student_rate},
        "coco_train2017_two_views": extrapolate(per_view, rates["distill_fp16"], local_read[0], args),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
