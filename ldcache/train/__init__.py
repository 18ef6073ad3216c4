"""`ldcache train-student`: mmdet components that train students from a store or a live teacher.

Importing this package registers them with mmengine/mmdet, and makes mmdet's NMS work on CUDA
tensors with an mmcv built without CUDA ops (`nms.py`); configs name it in `custom_imports`
(configs/_base_/ldcache_runtime.py).
"""
from .. import checkpoint_trust  # noqa: F401  (mmengine loads checkpoints through it)
from . import cached_ld_head, check_hook, load_ld_targets, online_ld_gfl, runner  # noqa: F401
from .nms import route_cuda_nms_to_torchvision

route_cuda_nms_to_torchvision()
