"""Class names: what a checkpoint was trained on, how two lists differ, and the store check that
refuses a store of other classes by name."""
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import CACHED_CONFIG, synthetic_store
from ldcache.domain.classes import checkpoint_classes, classes_difference, teacher_classes_problem
from ldcache.errors import BadInputError, StoreMismatchError

COCO_FIRST = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train")


def _mmengine_checkpoint(path, classes, **meta):
    """A checkpoint as mmengine's Runner writes it: meta with dataset_meta, weights, and a
    message_hub of HistoryBuffers (which weights-only loading refuses)."""
    from mmengine.logging import HistoryBuffer

    hub = {"log_scalars": {"train/loss": HistoryBuffer(np.array([1.0, 0.5]), np.array([1, 1]))},
           "runtime_info": {"epoch": 1}}
    torch.save({"meta": {"epoch": 1, "dataset_meta": {"classes": classes, "palette": [(1, 2, 3)]}, **meta},
                "state_dict": {"w": torch.zeros(3, 3)}, "message_hub": hub}, path)
    return path


def test_classes_of_an_mmengine_checkpoint_are_read_without_unpickling_its_objects(tmp_path):
    path = _mmengine_checkpoint(tmp_path / "epoch_1.pth", ("cat", "dog"))
    with pytest.raises(pickle.UnpicklingError):  # why a weights-only load cannot read it
        torch.load(path, weights_only=True)
    assert checkpoint_classes(path) == ("cat", "dog")


def test_classes_of_an_mmdet2_checkpoint_in_torchs_legacy_format(tmp_path):
    path = tmp_path / "gfl_r101_mmdet2.pth"
    torch.save({"meta": {"mmdet_version": "2.3.0", "CLASSES": COCO_FIRST},
                "state_dict": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert checkpoint_classes(path) == COCO_FIRST


def test_uppercase_dataset_meta_and_checkpoints_without_names(tmp_path):
    upper = tmp_path / "upper.pth"
    torch.save({"meta": {"dataset_meta": {"CLASSES": ["a", "b"]}}, "state_dict": {}}, upper)
    assert checkpoint_classes(upper) == ("a", "b")
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, bare)
    assert checkpoint_classes(bare) is None
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2)}, weights)
    assert checkpoint_classes(weights) is None
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert checkpoint_classes(junk) is None
    with pytest.raises(BadInputError, match="does not exist"):
        checkpoint_classes(tmp_path / "missing.pth")


class _Opens:
    """Unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_reading_the_classes_runs_nothing_from_the_file(tmp_path):
    marker = tmp_path / "created-by-the-pickle"
    path = tmp_path / "hostile.pth"
    # Objects of any class, as values, set members and dict keys, are stood in for.
    torch.save({"meta": {"dataset_meta": {"classes": ("cat", "dog")}, "x": _Opens(marker), "y": {_Opens(marker)},
                         "z": {_Opens(marker): 1}}}, path)
    assert checkpoint_classes(path) == ("cat", "dog")
    assert not marker.exists()


def test_the_difference_names_count_names_and_order_on_one_line():
    assert classes_difference(("cat", "dog"), ["cat", "dog"]) is None
    assert classes_difference(None, ("cat", "dog")) is None
    assert classes_difference(("cat", "dog"), None) is None
    count = classes_difference(COCO_FIRST, ("cat", "dog"))
    assert count.startswith("the teacher was trained on 7 classes (person, bicycle, car, motorcycle, airplane, ...) "
                            "but the dataset has 2 classes (cat, dog): only the teacher has person, bicycle, car, "
                            "motorcycle, airplane, ... (7); only the dataset has cat, dog")
    names = classes_difference(("round", "pointy"), ("star", "eff"))
    assert "2 classes (round, pointy) but the dataset has 2 classes (star, eff)" in names
    assert names.endswith("only the teacher has round, pointy; only the dataset has star, eff")
    subset = classes_difference(("cat", "dog", "bird"), ("cat", "dog"))
    assert subset.endswith("only the teacher has bird")
    order = classes_difference(("cat", "dog"), ("dog", "cat"))
    assert "the same names in another order" in order and "class 0 is cat for the teacher, dog for the dataset" in order
    one = classes_difference(("cat",), ("dog",))
    assert "1 class (cat)" in one
    for text in (count, names, subset, order, one):
        assert "\n" not in text


def test_teacher_classes_problem(tmp_path):
    path = _mmengine_checkpoint(tmp_path / "teacher.pth", ("round", "pointy"))
    assert teacher_classes_problem(path, ("round", "pointy")) is None
    problem = teacher_classes_problem(path, ("star", "eff"))
    assert problem.startswith(f"teacher checkpoint {path}: the teacher was trained on 2 classes (round, pointy) but "
                              "the dataset has 2 classes (star, eff)")
    assert "ldcache train-teacher" in problem and "\n" not in problem
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": {}}, bare)
    assert teacher_classes_problem(bare, ("star", "eff")) is None  # nothing recorded: nothing to check


def _store_and_head(tmp_path):
    """A 3-class synthetic store (classes class0, class1, class2; no teacher behind it) and a
    3-class student head of its geometry."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ldcache.train  # noqa: F401
    from ldcache.store.reader import StoreReader

    path, _, _ = synthetic_store(tmp_path / "store.zarr", np.ones((4, 5), dtype=np.int64))
    cfg = Config.fromfile(str(CACHED_CONFIG))
    head = MODELS.build({**cfg.model.bbox_head, "train_cfg": cfg.model.train_cfg})
    return StoreReader(path), head


def test_a_store_of_other_classes_is_refused_by_name_first(tmp_path):
    from ldcache.train.check_hook import check_store_fits

    reader, head = _store_and_head(tmp_path)
    ids = [int(i) for i in reader.image_ids]
    check_store_fits(reader, None, ids, head, ("class0", "class1", "class2"))  # the same classes pass
    check_store_fits(reader, None, ids, head)  # classes not given: not checked
    other_ann = tmp_path / "other.json"
    other_ann.write_text("{}")
    # Checked before the annotation file, whose sha256 differs too.
    with pytest.raises(StoreMismatchError) as refused:
        check_store_fits(reader, str(other_ann), ids, head, ("cat", "dog"))
    message = str(refused.value)
    assert message.startswith(f"store {reader.path}: it holds a teacher's logits for 3 classes (class0, class1, "
                              "class2) but the student's dataset has 2 classes (cat, dog): only the store has class0, "
                              "class1, class2; only the student's dataset has cat, dog. Train on the store's classes")
    assert "sha256" not in message and "\n" not in message
    with pytest.raises(StoreMismatchError, match="the same names in another order"):
        check_store_fits(reader, None, ids, head, ("class1", "class0", "class2"))


def test_the_hook_checks_the_built_datasets_classes(tmp_path):
    from ldcache.train.check_hook import LDCacheCheckHook

    reader, head = _store_and_head(tmp_path)
    ids = [int(i) for i in reader.image_ids]
    ann = tmp_path / "ann.json"
    ann.write_text("{}")

    class Dataset:  # what the hook reads of a built train dataset
        def __init__(self, classes):
            self.pipeline = [dict(type="LoadLDTargets", store=str(reader.path))]
            self.metainfo, self.ann_file = dict(classes=classes), str(ann)

        def __len__(self):
            return len(ids)

        def get_data_info(self, i):
            return {"img_id": ids[i]}

    def runner(classes):
        model = SimpleNamespace(bbox_head=head, data_preprocessor=SimpleNamespace(pad_size_divisor=32))
        return SimpleNamespace(train_dataloader=SimpleNamespace(dataset=Dataset(classes)), model=model)

    with pytest.raises(StoreMismatchError, match=r"3 classes \(class0, class1, class2\) but the student's dataset "
                                                 r"has 2 classes \(cat, dog\)"):
        LDCacheCheckHook().before_train(runner(("cat", "dog")))
    # The same classes: the next check (the annotation file's content) decides.
    with pytest.raises(StoreMismatchError, match="sha256 mismatch"):
        LDCacheCheckHook().before_train(runner(("class0", "class1", "class2")))
