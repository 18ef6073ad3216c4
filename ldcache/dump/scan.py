"""The dump's view of the dataset: images and GT boxes as mmdet's CocoDataset parses them."""
from __future__ import annotations

import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import BadInputError


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
    img_dir: Path
    images_without_boxes: int = 0
    crowd_boxes: int = 0
    degenerate_boxes: int = 0
    other_category_boxes: int = 0
    classes: tuple = field(default_factory=tuple)


def _counting_dataset_class():
    """mmdet's CocoDataset, counting the boxes its parser leaves out as it parses: the annotation
    file is read once (it is 450 MB for COCO train2017)."""
    from mmdet.datasets import CocoDataset

    class CountingCocoDataset(CocoDataset):
        def parse_data_info(self, raw_data_info: dict):
            counts = self.left_out_counts
            image = raw_data_info["raw_img_info"]
            width, height = image["width"], image["height"]
            for ann in raw_data_info["raw_ann_info"]:
                # mmdet's parser would drop a NaN box as degenerate and keep an infinite one.
                if not all(math.isfinite(v) for v in ann["bbox"]):
                    self.bad_boxes.append((image["file_name"], image["id"],
                                           f"annotation {ann.get('id')} has a box that is not finite: {ann['bbox']}"))
                # The order and the tests of mmdet's own parser, which leaves these boxes out.
                if ann.get("ignore", False):
                    continue
                x, y, w, h = ann["bbox"]
                inside = max(0, min(x + w, width) - max(x, 0)) * max(0, min(y + h, height) - max(y, 0))
                if inside == 0 or ann["area"] <= 0 or w < 1 or h < 1:
                    counts["degenerate"] += 1
                elif ann["category_id"] not in self.cat_ids:
                    counts["other_category"] += 1
                elif ann.get("iscrowd", False):
                    counts["crowd"] += 1
            return super().parse_data_info(raw_data_info)

    return CountingCocoDataset


# EXIF orientations that turn the image a quarter: cv2, which mmcv decodes with, swaps its sides.
QUARTER_TURNS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


def image_problem(entry: ImageEntry) -> str | None:
    """Why an image file cannot be trusted to be the annotated image (None when it can), from its
    header alone: missing, unreadable, or of another size than the annotation says."""
    if not os.path.isfile(entry.path):
        return "the file is missing"
    try:
        with Image.open(entry.path) as image:  # reads the header, decodes no pixel
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:
                width, height = height, width
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"the file cannot be read as an image ({err})"
    if (width, height) != (entry.width, entry.height):
        return f"the file is {width}x{height} pixels but the annotation says {entry.width}x{entry.height}"
    return None


def image_problems(images: list[ImageEntry], threads: int = 16) -> list[str | None]:
    """image_problem of every image, the headers read in parallel (waiting on storage, not the CPU)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(image_problem, images))


def scan_dataset(ann_file: Path, img_dir: Path, classes) -> DatasetScan:
    """Every image of the annotation file with its GT boxes, as mmdet's CocoDataset parses them
    (crowd boxes ignored, boxes under 1 px dropped). An image without a usable box is kept, with
    no boxes: mmdet's training filter keeps images whose only boxes are crowd or degenerate, so
    the student meets them. Missing or unreadable image files, image files of another size than
    annotated and boxes that are not finite are listed together in one error."""
    if not ann_file.is_file():
        raise BadInputError(f"annotation file {ann_file} does not exist")
    if not img_dir.is_dir():
        raise BadInputError(f"image folder {img_dir} does not exist")
    dataset_class = _counting_dataset_class()
    dataset_class.left_out_counts = {"other_category": 0, "degenerate": 0, "crowd": 0}
    dataset_class.bad_boxes = []
    try:
        # pycocotools reports its loading on stdout, which belongs to the command's results.
        with redirect_stdout(io.StringIO()):
            dataset = dataset_class(ann_file=str(ann_file), data_prefix=dict(img=str(img_dir) + "/"),
                                    metainfo=dict(classes=classes) if classes else None,
                                    filter_cfg=None, pipeline=[], serialize_data=False)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError, AssertionError) as err:
        raise BadInputError(f"{ann_file} is not a COCO detection annotation file: {err}") from None
    counts = dataset_class.left_out_counts
    scan = DatasetScan(images=[], img_dir=img_dir, classes=tuple(dataset.metainfo["classes"]),
                       crowd_boxes=counts["crowd"], degenerate_boxes=counts["degenerate"],
                       other_category_boxes=counts["other_category"])
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        boxes = [inst["bbox"] for inst in info["instances"] if not inst["ignore_flag"]]
        scan.images_without_boxes += not boxes
        scan.images.append(ImageEntry(int(info["img_id"]), info["img_path"], int(info["width"]),
                                      int(info["height"]), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)))
    problems = [f"{name}, image id {image_id}: {problem}" for name, image_id, problem in dataset_class.bad_boxes]
    problems += [f"{os.path.relpath(e.path, img_dir)}, image id {e.image_id}: {problem}"
                 for e, problem in zip(scan.images, image_problems(scan.images)) if problem]
    if problems:
        raise BadInputError(
            f"{len(problems)} problem(s) with the images and boxes of {ann_file} (images under {img_dir}):\n  "
            + "\n  ".join(problems) + "\nFix the annotation file: give each image its file's true width and "
            "height and finite boxes, or remove the image and its annotations; then run the dump again.")
    if scan.images_without_boxes == len(scan.images):
        hint = (f"; its {scan.other_category_boxes} boxes are of categories that are not the teacher's classes "
                f"{scan.classes[:5]}{'...' if len(scan.classes) > 5 else ''} (set the teacher config's "
                "train_dataloader.dataset.metainfo.classes)" if scan.other_category_boxes else "")
        raise BadInputError(f"{ann_file} has no image with a usable box: nothing to distill{hint}")
    return scan
