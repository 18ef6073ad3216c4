import json

from ldcache.demo.shapes import CLASSES, ShapesSpec, ensure_shapes_dataset


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

