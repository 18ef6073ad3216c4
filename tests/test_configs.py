import pytest
from mmengine.config import Config

from conftest import CONFIGS

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_builds_its_gfl_model(path, shapes_root):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from ldcache.domain.ld_config import is_ld_config, train_classes
    from ldcache.train.mmdet_ld import as_plain_student

    register_all_modules()
    cfg = Config.fromfile(str(path))
    # An mmdet-dialect LD config gets ldcache's runner when ldcache trains it; its teacher is not built here.
    if is_ld_config(cfg):
        as_plain_student(cfg)
    assert cfg.runner_type == "LDCacheRunner"
    model = MODELS.build(cfg.model)
    head = model.bbox_head
    assert head.reg_max == 16
    assert head.prior_generator.strides == [(8, 8), (16, 16), (32, 32), (64, 64), (128, 128)]
    folder = path.parts[-2]
    expected_classes = {"coco": 80, "own": len(train_classes(cfg) or ())}.get(folder, 3)
    assert head.num_classes == expected_classes


@pytest.mark.parametrize("epochs, drops", [(14, [9, 12]), (6, [4, 5]), (24, [16, 22]), (1, [1, 1])])
def test_scaled_schedule_moves_the_learning_rate_drops_with_the_length(epochs, drops):
    import torch
    from mmengine.optim.scheduler import MultiStepLR

    from ldcache.train.schedule import scaled_schedule

    cfg = Config.fromfile(str(CONFIGS / "tiny" / "gfl_r34_tiny_teacher.py"))
    cfg.merge_from_dict(scaled_schedule(epochs))
    step = cfg.param_scheduler[1]
    assert (cfg.train_cfg.max_epochs, step.end, step.milestones) == (epochs, epochs, drops)
    # A run of one epoch must start at the full learning rate: a drop at 0 would apply at once.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    MultiStepLR(optimizer, milestones=step.milestones, gamma=0.1, by_epoch=True, end=epochs)
    assert optimizer.param_groups[0]["lr"] == 1.0


def test_iteration_schedule_takes_other_drops_and_the_experiment_agrees():
    """bench/ld_experiment.py --lr-drops: drops at other fractions of the run, in whole iterations;
    the bench's JSON default is the schedule's own."""
    import argparse
    import importlib.util
    import sys

    from ldcache.train.schedule import DROPS, scaled_iteration_schedule

    assert scaled_iteration_schedule(48, 20)["param_scheduler.1.milestones"] == [640, 880]
    assert scaled_iteration_schedule(48, 20, ((1, 2), (5, 6)))["param_scheduler.1.milestones"] == [480, 800]
    spec = importlib.util.spec_from_file_location("ld_experiment", CONFIGS.parent / "bench" / "ld_experiment.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.DEFAULT_DROPS == [list(f) for f in DROPS]
    assert bench.lr_drops("1/2,5/6") == [[1, 2], [5, 6]]
    for bad in ("1/2,1/3", "3/2", "a/b", "1/2/3", "0/4"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.lr_drops(bad)
