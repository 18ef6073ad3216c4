"""Families beyond GFL in the store: ATSS and GFLv2 distribution teachers dumped, their students
trained from the store (cached = online through the same loss code, with each family's official
LD defaults); the families the store cannot hold yet (points, several anchors per location)
refused at the dump with the reason."""
import copy
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch

from conftest import CONFIGS, LDCACHE

FAMILIES = {
    "atss": SimpleNamespace(teacher=CONFIGS / "tiny" / "atss_dist_tiny.py",
                            cached=CONFIGS / "tiny" / "ld_atss_dist_tiny_cached.py",
                            # VLR LD at 0.15 of Main LD's 0.25, divided by 4 (the official ATSS student).
                            vlr_weight=0.0375, divisors={"loss_ld": 4.0, "loss_ld_vlr": 4.0},
                            own_losses={"loss_cls", "loss_bbox", "loss_centerness"}),
    "gflv2": SimpleNamespace(teacher=CONFIGS / "tiny" / "gflv2_dist_tiny.py",
                             cached=CONFIGS / "tiny" / "ld_gflv2_dist_tiny_cached.py",
                             vlr_weight=0.25, divisors={"loss_ld": 4.0, "loss_ld_vlr": 16.0},
                             own_losses={"loss_cls", "loss_bbox", "loss_dfl"}),
}


def _ldcache(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([LDCACHE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, shapes_root, tmp_path_factory):
    """A family with a randomly initialised tiny teacher, saved weights-only, and its dump over the
    shapes train split (the teacher config's train data), in fp32."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    spec = FAMILIES[request.param]
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(spec.teacher)).model)
    model.init_weights()
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint, store = folder / "teacher.pth", folder / "teacher.zarr"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    result = _ldcache("dump-teacher", spec.teacher, checkpoint, "--out", store, "--workers", "0",
                      "--device", "cpu", "--dtype", "fp32", "--block-size", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(**vars(spec), checkpoint=checkpoint, store=store)


def test_cached_ld_equals_online_ld_on_a_batch(family):
    from mmdet.registry import DATASETS
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    from ldcache.train.student import student_and_online_twin, use_cache

    cfg = Config.fromfile(str(family.cached))
    use_cache(cfg, str(family.store))
    for step in cfg.train_dataloader.dataset.pipeline:
        if step["type"] == "RandomFlip":
            step["prob"] = 0.0
    torch.manual_seed(1)
    student, online = student_and_online_twin(cfg, family.teacher, family.checkpoint)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = student.data_preprocessor(pseudo_collate([dataset[0]]), True)
    with torch.no_grad():
        cached = student.loss(batch["inputs"], copy.deepcopy(batch["data_samples"]))
        live = online.loss(batch["inputs"], copy.deepcopy(batch["data_samples"]))
    # The family's own losses stay, and the LD terms are its official student's.
    assert family.own_losses | {"loss_ld", "loss_ld_vlr", "loss_kd"} <= set(cached)
    assert student.bbox_head.official_ld_avg == family.divisors
    assert student.bbox_head.ld_losses["loss_ld_vlr"].loss_weight == pytest.approx(family.vlr_weight)
    for term in ("loss_ld", "loss_ld_vlr", "loss_kd"):
        expected = float(sum(live[term]))
        assert expected > 0, term
        assert float(sum(cached[term])) == pytest.approx(expected, rel=1e-5), term


def test_gflv2_main_ld_weighs_by_the_joint_score_and_kd_reads_the_raw_logits():
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ldcache.train  # noqa: F401

    head = MODELS.build(Config.fromfile(str(FAMILIES["gflv2"].cached)).model.bbox_head)
    torch.manual_seed(0)
    cls_rows, reg_rows = torch.randn(5, 3), torch.randn(5, 68)
    quality = head.quality(reg_rows[:, :, None, None]).flatten()
    expected = (cls_rows.sigmoid() * quality[:, None]).max(dim=1).values
    assert torch.allclose(head._confidence(cls_rows, reg_rows), expected)
    assert not torch.allclose(expected, cls_rows.sigmoid().max(dim=1).values)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_student_trains_from_the_store(family, tmp_path):
    result = _ldcache("train-student", family.cached, "--cache", family.store, "--work-dir", tmp_path / "student",
                      "--cfg-options", "train_dataloader.dataset.indices=8", "--cfg-options", "train_cfg.max_epochs=1",
                      "--cfg-options", "val_dataloader.dataset.indices=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "student" / "epoch_1.pth").is_file()
    log = next((tmp_path / "student").glob("*/*.log")).read_text()
    assert "loss_ld_vlr" in log and all(name in log for name in family.own_losses)


@pytest.mark.parametrize("config,expected", [
    ("retina_dist_tiny.py", "RetinaDistHead has 9 anchors per location: stores of multi-anchor heads"),
    ("fcos_dist_tiny.py", "FCOSDistHead places points, not anchors"),
])
def test_a_teacher_the_store_cannot_hold_yet_is_refused(config, expected, random_teacher, shapes_root, tmp_path):
    # The head is refused before any checkpoint is loaded: any existing file stands for one.
    result = _ldcache("dump-teacher", CONFIGS / "tiny" / config, random_teacher, "--out", tmp_path / "s.zarr")
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in said, said[-2000:]
    assert expected in said and "docs/families.md" in said
    assert not (tmp_path / "s.zarr").exists()
