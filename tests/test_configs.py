import pytest
from mmengine.config import Config

from conftest import CONFIGS

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_builds_its_gfl_model(path, shapes_root):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(path))
    assert cfg.runner_type == "LDCacheRunner"
    model = MODELS.build(cfg.model)
    head = model.bbox_head
    assert head.reg_max == 16
    assert head.prior_generator.strides == [(8, 8), (16, 16), (32, 32), (64, 64), (128, 128)]
    expected_classes = 80 if "coco" in path.parts else 3
    assert head.num_classes == expected_classes
