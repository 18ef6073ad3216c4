"""train-student: cached LD equals online LD, equals mmdet's LDHead, refuses what does not fit."""
import copy
import json
import os
import subprocess

import pytest
import torch

from conftest import (BIN, CACHED_CONFIG, CONFIGS, PAPER_TERMS, TEACHER_CONFIG, cached_cfg as _cached_cfg,
                      loaded_targets)
from ldcache.errors import LDCacheError

LD_TERMS = ("loss_ld", "loss_ld_vlr", "loss_kd")



def _models_and_batch(cfg, teacher, image_index=0):
    """The cached student, an online twin with the same weights, and one preprocessed batch."""
    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate

    from ldcache.train.student import student_and_online_twin

    torch.manual_seed(1)
    student, online = student_and_online_twin(cfg, TEACHER_CONFIG, teacher)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = student.data_preprocessor(pseudo_collate([dataset[image_index]]), True)
    return student, online, batch


def _distill_total(losses):
    return sum(sum(losses[name]) for name in LD_TERMS)


@pytest.mark.parametrize("flip", [0.0, 1.0], ids=["identity", "hflip"])
def test_cached_terms_and_gradients_equal_online(shapes_store, random_teacher, shapes_root, flip):
    student, online, batch = _models_and_batch(_cached_cfg(shapes_store, flip, **PAPER_TERMS), random_teacher)
    cached = student.loss(batch["inputs"], batch["data_samples"])
    live = online.loss(batch["inputs"], copy.deepcopy(batch["data_samples"]))
    for name in LD_TERMS:
        a, b = float(sum(cached[name]).detach()), float(sum(live[name]).detach())
        assert b != 0, f"{name} is zero: the test would prove nothing"
        assert a == pytest.approx(b, rel=1e-3), name
    params = [student.bbox_head.gfl_reg.weight, student.bbox_head.gfl_cls.weight]
    twin = [online.bbox_head.gfl_reg.weight, online.bbox_head.gfl_cls.weight]
    grads_cached = torch.autograd.grad(_distill_total(cached), params)
    grads_online = torch.autograd.grad(_distill_total(live), twin)
    for gc, go in zip(grads_cached, grads_online):
        assert go.norm() > 0
        assert (gc - go).norm() <= 1e-3 * go.norm()


def test_main_ld_equals_mmdet_ldhead(shapes_store, random_teacher, shapes_root):
    from mmdet.models.utils import unpack_gt_instances
    from mmdet.registry import MODELS

    from ldcache.domain.ld_config import load_config
    from ldcache.domain.teacher import build_teacher

    cfg = _cached_cfg(shapes_store, normalize="official")
    student, _, batch = _models_and_batch(cfg, random_teacher)
    head_cfg = {k: v for k, v in cfg.model.bbox_head.items()
                if k not in ("loss_ld_vlr", "loss_kd", "loss_kd_vlr", "vlr_gamma", "vlr_metric", "normalize",
                             "kd_reduction")}
    head_cfg.update(type="LDHead", train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    reference = MODELS.build(head_cfg)
    reference.load_state_dict(student.bbox_head.state_dict())
    teacher = build_teacher(load_config(TEACHER_CONFIG), random_teacher, "cpu")

    inputs, samples = batch["inputs"], batch["data_samples"]
    with torch.no_grad():
        cls_scores, bbox_preds = student.bbox_head(student.extract_feat(inputs))
        _, soft_targets = teacher.bbox_head(teacher.extract_feat(inputs))
    gts, ignores, metas = unpack_gt_instances(samples)
    expected = reference.loss_by_feat(cls_scores, bbox_preds, gts, metas, soft_targets, ignores)["loss_ld"]
    ours = student.bbox_head.loss_by_feat(cls_scores, bbox_preds, gts, metas, ignores)["loss_ld"]
    assert float(sum(expected)) > 0
    for level, (a, b) in enumerate(zip(ours, expected)):
        assert float(a) == pytest.approx(float(b), rel=1e-3, abs=1e-7), f"level {level}"


def _head(**options):
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ldcache.train  # noqa: F401

    cfg = Config.fromfile(str(CACHED_CONFIG)).model.bbox_head
    cfg.update(options)
    return MODELS.build(cfg)


def test_one_class_head_refuses_kd_and_trains_ld_without_it():
    from ldcache.errors import BadInputError

    with pytest.raises(BadInputError, match="over one class they are both 1.*loss_kd=None"):
        _head(num_classes=1, **PAPER_TERMS)
    head = _head(num_classes=1, **{**PAPER_TERMS, "loss_kd": None})
    assert head.ld_losses["loss_kd"] is None and head.ld_losses["loss_ld"] is not None


@pytest.mark.parametrize("option,value", [("normalize", "per_location"), ("kd_reduction", "sum"),
                                          ("vlr_metric", "giou")])
def test_unknown_head_options_are_refused_with_the_choices(option, value):
    from ldcache.errors import BadInputError

    with pytest.raises(BadInputError, match=f"{option} must be one of .* not '{value}'"):
        _head(**{option: value})


def _train_losses(cfg_path, work_dir, **kw):
    from ldcache.train.student import build_student_runner

    options = {"train_dataloader.dataset.indices": 4, "train_dataloader.batch_size": 1,
               "train_cfg.max_epochs": 1, "train_cfg.val_interval": 100, "val_cfg": None,
               "val_dataloader": None, "val_evaluator": None, "default_hooks.logger.interval": 1,
               "randomness.seed": 0}
    runner = build_student_runner(cfg_path, work_dir=work_dir, cfg_options=options, **kw)
    runner.train()
    return runner.message_hub.get_scalar("train/loss")._log_history


@pytest.mark.slow
def test_loss_curves_cached_and_online_agree(shapes_store, random_teacher, shapes_root, tmp_path, private_home):
    cached = _train_losses(CACHED_CONFIG, tmp_path / "cached", cache=shapes_store)
    online = _train_losses(CACHED_CONFIG, tmp_path / "online", teacher=(TEACHER_CONFIG, random_teacher))
    assert len(cached) == len(online) == 4
    for a, b in zip(cached, online):
        assert a == pytest.approx(b, rel=1e-2)


def test_pipeline_view_mismatch_is_refused_with_the_reason(shapes_store, shapes_root):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import ldcache.train  # noqa: F401

    register_all_modules()
    cfg = _cached_cfg(shapes_store)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step["type"] == "Resize":
            step["scale"] = (256, 256)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    with pytest.raises(LDCacheError, match=r"pipeline produced img_shape \(256, 256\).*holds views"):
        dataset[0]


def test_store_that_does_not_fit_is_refused(shapes_store, shapes_root, tmp_path):
    from mmdet.registry import MODELS

    import ldcache.train  # noqa: F401
    from ldcache.train.check_hook import check_store_fits
    from ldcache.store.reader import StoreReader

    reader = StoreReader(shapes_store)
    ann = shapes_root / "annotations/instances_train.json"
    cfg = _cached_cfg(shapes_store)
    head = MODELS.build(cfg.model.bbox_head)
    ids = [int(i) for i in reader.image_ids]
    check_store_fits(reader, str(ann), ids, head)  # the matching case passes

    other = tmp_path / "other.json"
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][1:]
    other.write_text(json.dumps(data))
    with pytest.raises(LDCacheError, match="sha256 mismatch"):
        check_store_fits(reader, str(other), ids, head)
    with pytest.raises(LDCacheError, match="not in store"):
        check_store_fits(reader, None, ids + [10**6], head)
    wide = MODELS.build({**cfg.model.bbox_head, "num_classes": 5})
    with pytest.raises(LDCacheError, match="num_classes: store 3 vs student 5"):
        check_store_fits(reader, None, ids, wide)
    low_gamma = MODELS.build({**cfg.model.bbox_head, **PAPER_TERMS, "vlr_gamma": 0.1})
    with pytest.raises(LDCacheError, match="VLR rows start at gamma 0.25. Re-dump with --gamma 0.1"):
        check_store_fits(reader, None, ids, low_gamma)


def test_cli_refuses_a_config_without_cached_targets(shapes_store):
    result = subprocess.run([str(BIN / "ldcache"), "train-student", str(CONFIGS / "tiny/gfl_r18_tiny.py"),
                             "--cache", str(shapes_store)], capture_output=True, text=True)
    assert result.returncode == 2 and "no LoadLDTargets" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_process_torchrun_training(shapes_store, shapes_root, tmp_path):
    work = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LDCACHE_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", str(BIN / "ldcache"),
         "train-student", str(CACHED_CONFIG), "--cache", str(shapes_store), "--work-dir", str(work),
         "--cfg-options", "train_dataloader.dataset.indices=8", "--cfg-options", "train_dataloader.batch_size=2",
         "--cfg-options", "train_cfg.max_epochs=1", "--cfg-options", "val_dataloader.dataset.indices=4"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (work / "epoch_1.pth").is_file()
    log = next(work.glob("*/*.log")).read_text()
    assert "Distributed training: True" in log and "MMDistributedDataParallel" in log
    assert "Epoch(val)" in log  # CocoMetric ran at the end of training


def test_dataloader_workers_each_open_the_store_and_load_the_same_targets(shapes_store, shapes_root):
    import numpy as np

    loaded = {workers: loaded_targets(shapes_store, workers) for workers in (0, 2)}
    assert loaded[0].keys() == loaded[2].keys() and len(loaded[0]) == 8
    for image_id, targets in loaded[0].items():
        other = loaded[2][image_id]
        assert np.array_equal(targets.masks, other.masks) and np.array_equal(targets.values, other.values)


def test_online_ld_cuts_rows_at_the_merged_gamma_and_the_configs_topk(random_teacher, shapes_root, tmp_path):
    from ldcache.train.student import build_student_runner

    options = {"model.bbox_head.vlr_gamma": 0.1, "model.train_cfg.assigner.topk": 7}
    runner = build_student_runner(CACHED_CONFIG, teacher=(TEACHER_CONFIG, random_teacher), work_dir=tmp_path,
                                  cfg_options=options)
    assert runner.model.row_maker.gamma == 0.1 and runner.model.bbox_head.vlr_gamma == 0.1
    assert runner.model.row_maker.rule.topk == 7 and runner.model.row_maker.rule.main["topk"] == 7


def test_a_store_of_another_atss_topk_is_refused(shapes_store):
    from mmdet.registry import MODELS

    import ldcache.train  # noqa: F401
    from ldcache.train.check_hook import check_store_fits
    from ldcache.store.reader import StoreReader

    reader = StoreReader(shapes_store)
    cfg = _cached_cfg(shapes_store)
    ids = [int(i) for i in reader.image_ids]
    for topk, fits in ((9, True), (7, False)):
        train_cfg = copy.deepcopy(cfg.model.train_cfg)
        train_cfg.assigner.topk = topk
        head = MODELS.build({**cfg.model.bbox_head, "train_cfg": train_cfg})
        if fits:
            check_store_fits(reader, None, ids, head)
        else:
            with pytest.raises(LDCacheError, match="'topk': 9.* vs student .*'topk': 7"):
                check_store_fits(reader, None, ids, head)


def test_positives_without_a_teacher_row_are_refused(shapes_store, random_teacher, shapes_root):
    """A student whose assignment differs from the store's (here ATSS topk 30 against 9) finds
    positives the store has no row for: the step says so instead of training on missing targets."""
    cfg = _cached_cfg(shapes_store)
    cfg.model.train_cfg.assigner.topk = 30
    student, _, batch = _models_and_batch(cfg, random_teacher)
    with pytest.raises(LDCacheError, match="had no cached teacher row"):
        student.loss(batch["inputs"], batch["data_samples"])


def test_a_main_only_store_holds_the_distill_stores_main_rows(main_store, shapes_store):
    import numpy as np

    from ldcache.store.format import FLAG_MAIN
    from ldcache.store.reader import StoreReader

    main, distill = StoreReader(main_store), StoreReader(shapes_store)
    assert (main.attrs.region.mode, main.attrs.region.vlr_metrics) == ("main", ())
    assert main.num_records == distill.num_records
    rows = 0
    for record in range(main.num_records):
        for ours, full in zip(main.read_record(record).levels(), distill.read_record(record).levels()):
            kept = (full.flags & FLAG_MAIN) > 0
            assert (ours.flags == FLAG_MAIN).all() and not ours.vlr_step_weight.any()
            for field in ("loc", "prior", "reg", "cls"):
                np.testing.assert_array_equal(getattr(ours, field), getattr(full, field)[kept], err_msg=field)
            rows += len(ours.loc)
    assert 0 < rows < sum(int(n) for n in distill.attrs.summary.rows_per_level) / 5


def test_a_main_only_store_trains_main_terms_as_the_distill_store_does(main_store, shapes_store, random_teacher):
    from mmdet.registry import MODELS

    from ldcache.store.reader import StoreReader
    from ldcache.train.check_hook import check_store_fits

    main_terms = dict(PAPER_TERMS, loss_ld_vlr=None, loss_kd_vlr=None)
    losses = []
    for store in (main_store, shapes_store):
        student, _, batch = _models_and_batch(_cached_cfg(store, **main_terms), random_teacher)
        losses.append(student.loss(batch["inputs"], batch["data_samples"]))
    for name in ("loss_ld", "loss_kd"):
        a, b = (float(sum(terms[name]).detach()) for terms in losses)
        assert b != 0 and a == pytest.approx(b, rel=1e-6), name  # the sums see other row counts: last bits

    reader = StoreReader(main_store)
    ids = [int(i) for i in reader.image_ids]
    check_store_fits(reader, None, ids, MODELS.build({**_cached_cfg(main_store).model.bbox_head, **main_terms}))
    vlr_student = MODELS.build({**_cached_cfg(main_store).model.bbox_head, **PAPER_TERMS})
    with pytest.raises(LDCacheError, match=r"Main rows only \(dumped with --region main\).*loss_ld_vlr=None.*"
                                           r"--region distill"):
        check_store_fits(reader, None, ids, vlr_student)
