"""`ldcache train-student`: mmdet components that train students from a store or a live teacher.

Importing this package registers them with mmengine/mmdet (configs name it in `custom_imports`,
configs/_base_/ldcache_runtime.py) and changes nothing else. `LDCacheRunner` (the configs'
`runner_type`) calls `install()` when it is built: mmengine then loads checkpoints through
`ldcache.checkpoint_trust`, and mmdet's NMS works on CUDA tensors with an mmcv built without CUDA
ops (`nms.py`). Call `ldcache.train.install()` yourself with any other runner.
"""
from . import (cached_ld_atss_head, cached_ld_fcos_head, cached_ld_gflv2_head, cached_ld_head,  # noqa: F401
               cached_ld_retina_head, check_hook, load_ld_targets,
               online_ld_gfl, progress_bar_hook, random_state_hook, runner)
from .runner import install  # noqa: F401
