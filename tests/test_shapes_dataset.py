import json
import subprocess
import sys

import numpy as np

from ldcache.demo.shapes import CLASSES, ShapesSpec, dataset_sha256, ensure_shapes_dataset


def test_mmdet_coco_dataset_loads_the_shapes_set(shapes_root):
    from mmdet.datasets import CocoDataset

    dataset = CocoDataset(
        data_root=str(shapes_root), ann_file="annotations/instances_train.json",
        data_prefix=dict(img="images/train/"), metainfo=dict(classes=CLASSES),
        filter_cfg=dict(filter_empty_gt=False), pipeline=[])
    assert len(dataset) == ShapesSpec().num_train
    shapes = set()
    boxes = 0
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        shapes.add((info["width"], info["height"]))
        for instance in info["instances"]:
            x1, y1, x2, y2 = instance["bbox"]
            assert 0 <= x1 < x2 <= info["width"] and 0 <= y1 < y2 <= info["height"]
            assert instance["bbox_label"] in range(len(CLASSES))
            boxes += 1
    assert shapes == {(320, 320), (320, 256)}, "both image shapes, so batches need padding"
    assert boxes > 2 * len(dataset)


def test_build_is_cached_and_rebuilt_when_incomplete(tmp_path):
    spec = ShapesSpec(num_train=3, num_val=2, seed=5)
    root = ensure_shapes_dataset(spec, tmp_path / "shapes")
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 2 and len(list((root / "images" / "val").iterdir())) == 2
    stamp = (root / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert ensure_shapes_dataset(spec, root) == root
    assert (root / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    (root / "COMPLETE").unlink()  # as if a build had been killed before finishing
    ensure_shapes_dataset(spec, root)
    assert (root / "COMPLETE").read_text() == spec.digest()


def test_a_spec_draws_the_same_dataset_in_every_process(tmp_path):
    """Results on the shapes data are compared across runs and machines: a spec must always give
    the same images and labels, whatever state numpy's global generator is in."""
    spec = ShapesSpec(num_train=4, num_val=2, num_test=2, seed=7)
    first = dataset_sha256(ensure_shapes_dataset(spec, tmp_path / "first"))
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    again = dataset_sha256(ensure_shapes_dataset(spec, tmp_path / "again"))
    assert np.array_equal(np.random.get_state()[1], state), "the caller's random state is left as it was"
    code = ("import sys; from pathlib import Path; from ldcache.demo.shapes import *; "
            "spec = ShapesSpec(num_train=4, num_val=2, num_test=2, seed=7); "
            "print(dataset_sha256(ensure_shapes_dataset(spec, Path(sys.argv[1]))))")
    elsewhere = subprocess.run([sys.executable, "-c", code, str(tmp_path / "elsewhere")], capture_output=True,
                               text=True, check=True).stdout.split()[-1]  # after kwcoco's progress lines
    assert first == again == elsewhere
