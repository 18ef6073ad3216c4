"""The dump's view of the dataset: images and GT boxes as mmdet's CocoDataset parses them."""
from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
            width, height = raw_data_info["raw_img_info"]["width"], raw_data_info["raw_img_info"]["height"]
            for ann in raw_data_info["raw_ann_info"]:
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


def scan_dataset(ann_file: Path, img_dir: Path, classes) -> DatasetScan:
    """Every image of the annotation file with its GT boxes, as mmdet's CocoDataset parses them
    (crowd boxes ignored, boxes under 1 px dropped). An image without a usable box is kept, with
    no boxes: mmdet's training filter keeps images whose only boxes are crowd or degenerate, so
    the student meets them. Missing image files are an error."""
    if not ann_file.is_file():
        raise BadInputError(f"annotation file {ann_file} does not exist")
    if not img_dir.is_dir():
        raise BadInputError(f"image folder {img_dir} does not exist")
    dataset_class = _counting_dataset_class()
    dataset_class.left_out_counts = {"other_category": 0, "degenerate": 0, "crowd": 0}
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
    missing = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        boxes = [inst["bbox"] for inst in info["instances"] if not inst["ignore_flag"]]
        scan.images_without_boxes += not boxes
        if not os.path.isfile(info["img_path"]):
            missing.append(info["img_path"])
        scan.images.append(ImageEntry(int(info["img_id"]), info["img_path"], int(info["width"]),
                                      int(info["height"]), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)))
    if missing:
        raise BadInputError(f"{len(missing)} image file(s) named in {ann_file} are missing under {img_dir}, "
                            f"e.g. {missing[0]}")
    if scan.images_without_boxes == len(scan.images):
        hint = (f"; its {scan.other_category_boxes} boxes are of categories that are not the teacher's classes "
                f"{scan.classes[:5]}{'...' if len(scan.classes) > 5 else ''} (set the teacher config's "
                "train_dataloader.dataset.metainfo.classes)" if scan.other_category_boxes else "")
        raise BadInputError(f"{ann_file} has no image with a usable box: nothing to distill{hint}")
    return scan
