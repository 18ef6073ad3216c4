"""docs/own-dataset.md end to end at tiny size: a user's own 2-class COCO-format dataset, the
configs of configs/own/ edited as the page says, teacher -> dump -> cached student -> evaluate,
the class names carried through, and stores or teachers of other classes refused by name."""
import json
import re
import shutil
import subprocess
import time

import pytest

from conftest import CONFIGS, LDCACHE

OWN_CLASSES = ("pedestrian", "car")
# The shapes dataset's classes, renamed; its third, superstar, is dropped with its boxes.
RENAMED = {"star": "pedestrian", "eff": "car"}
TEACHER = "configs/own/gfl_r101_fpn_1x_own_teacher.py"
STUDENT = "configs/own/ld_r18-gfl-r101_fpn_1x_own.py"
# The same configs at CPU size: ResNet-18 from scratch, 64-channel FPN and head, one epoch and
# no validation (`ldcache evaluate` evaluates).
SMALL_HEAD = ["model.neck.out_channels=64", "model.bbox_head.in_channels=64", "model.bbox_head.feat_channels=64",
              "model.bbox_head.stacked_convs=2", "model.backbone.init_cfg=None", "train_cfg.max_epochs=1",
              "train_cfg.val_begin=2"]


def _cfg_options(*pairs: str) -> list[str]:
    """`--cfg-options` once per key=value, as ldcache's CLI takes them."""
    return [arg for pair in pairs for arg in ("--cfg-options", pair)]


TEACHER_OPTIONS = _cfg_options("model.backbone.depth=18", "model.neck.in_channels=[64,128,256,512]", *SMALL_HEAD)
STUDENT_OPTIONS = _cfg_options(*SMALL_HEAD)


def _own_split(shapes_root, root, split: str, images: int) -> None:
    """`images` images of a shapes split with a box of the kept classes, as a new COCO dataset."""
    ann = json.loads((shapes_root / f"annotations/instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in ann["categories"]}
    new_ids = {name: i + 1 for i, name in enumerate(OWN_CLASSES)}
    boxes = [a for a in ann["annotations"] if names[a["category_id"]] in RENAMED]
    with_boxes = {a["image_id"] for a in boxes}
    kept = [image for image in ann["images"] if image["id"] in with_boxes][:images]
    kept_ids = {image["id"] for image in kept}
    (root / "images" / split).mkdir(parents=True)
    for image in kept:
        shutil.copy(shapes_root / "images" / split / image["file_name"], root / "images" / split / image["file_name"])
    own = {"images": kept,
           "annotations": [{**a, "category_id": new_ids[RENAMED[names[a["category_id"]]]]}
                           for a in boxes if a["image_id"] in kept_ids],
           "categories": [{"id": i, "name": name, "supercategory": "thing"} for name, i in new_ids.items()]}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(own))


def _set(text: str, name: str, value) -> str:
    """The config text with the variable `name` set to `value`, as the user edits it."""
    text, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.M)
    assert count == 1, name
    return text


@pytest.fixture(scope="module")
def own_project(shapes_root, tmp_path_factory):
    """A user's folder: configs/ as shipped, configs/own/_base_/own_dataset.py edited for a
    2-class dataset of 12 train and 8 val images under data/own/ (its default paths)."""
    project = tmp_path_factory.mktemp("own-project")
    for folder in ("_base_", "own"):
        shutil.copytree(CONFIGS / folder, project / "configs" / folder)
    _own_split(shapes_root, project / "data/own", "train", 12)
    _own_split(shapes_root, project / "data/own", "val", 8)
    dataset = project / "configs/own/_base_/own_dataset.py"
    text = _set(dataset.read_text(), "own_classes", OWN_CLASSES)
    text = _set(text, "own_image_scale", (256, 256))
    text = _set(text, "own_batch_size", 4)
    text = _set(text, "own_workers", 0)
    dataset.write_text(text)
    return project


def _ldcache(project, *args, timeout: int = 150) -> subprocess.CompletedProcess:
    """`ldcache ARGS` run in the user's folder; its time is printed (pytest -s shows it)."""
    started = time.perf_counter()
    result = subprocess.run([LDCACHE, *map(str, args)], cwd=project, capture_output=True, text=True, timeout=timeout)
    print(f"ldcache {args[0]}: {time.perf_counter() - started:.1f} s, status {result.returncode}")
    return result


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's error line, after checking it refused as a user error: status 2, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def own_teacher(own_project):
    """`ldcache train-teacher` on the own dataset, one epoch: its checkpoint."""
    result = _ldcache(own_project, "train-teacher", TEACHER, "--work-dir", "work_dirs/teacher", *TEACHER_OPTIONS)
    assert result.returncode == 0, result.stderr[-3000:]
    return own_project / "work_dirs/teacher/epoch_1.pth"


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_own_dataset_teacher_dump_student_evaluate(own_project, own_teacher):
    from ldcache.domain.classes import checkpoint_classes
    from ldcache.store.reader import StoreReader

    assert checkpoint_classes(own_teacher) == OWN_CLASSES  # mmengine's runner recorded them
    dumped = _ldcache(own_project, "dump-teacher", TEACHER, own_teacher, "--out", "caches/own.zarr",
                      "--workers", "0", "--block-size", "4", *TEACHER_OPTIONS)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    attrs = StoreReader(own_project / "caches/own.zarr").attrs
    assert attrs.dataset.classes == OWN_CLASSES
    assert attrs.head.num_classes == 2
    assert [(view.scale, view.flip) for view in attrs.views] == [((256, 256), False), ((256, 256), True)]

    trained = _ldcache(own_project, "train-student", STUDENT, "--cache", "caches/own.zarr",
                       "--work-dir", "work_dirs/student", *STUDENT_OPTIONS)
    assert trained.returncode == 0, trained.stderr[-3000:]
    student = own_project / "work_dirs/student/epoch_1.pth"
    assert checkpoint_classes(student) == OWN_CLASSES

    evaluated = _ldcache(own_project, "evaluate", STUDENT, student, "--work-dir", "work_dirs/eval", "--json",
                         *STUDENT_OPTIONS)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # The JSON object ends stdout (mmengine's log may come before it).
    metrics = json.loads(evaluated.stdout)
    assert {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"} <= set(metrics), metrics


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_store_of_other_classes_is_refused_by_name_at_train_student(own_project, shapes_store):
    result = _ldcache(own_project, "train-student", STUDENT, "--cache", shapes_store, "--work-dir",
                      "work_dirs/refused", *STUDENT_OPTIONS)
    error = _one_line_error(result)
    assert ("holds a teacher's logits for 3 classes (star, eff, superstar) but the student's dataset has 2 classes "
            "(pedestrian, car)") in error
    assert "sha256" not in error


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_teacher_of_other_classes_is_refused_by_name_at_the_dump(own_project, own_teacher, shapes_root, tmp_path):
    # The own teacher (pedestrian, car) over the shapes images as a 2-class dataset (star, eff):
    # the same count, so only the names tell.
    result = _ldcache(own_project, "dump-teacher", TEACHER, own_teacher, "--out", tmp_path / "other.zarr",
                      "--ann-file", shapes_root / "annotations/instances_train.json",
                      "--img-dir", shapes_root / "images/train", "--workers", "0", *TEACHER_OPTIONS,
                      *_cfg_options("train_dataloader.dataset.metainfo.classes=[star,eff]"))
    error = _one_line_error(result)
    assert (f"teacher checkpoint {own_teacher}: the teacher was trained on 2 classes (pedestrian, car) but the "
            "dataset has 2 classes (star, eff)") in error
    assert not (tmp_path / "other.zarr").exists()
