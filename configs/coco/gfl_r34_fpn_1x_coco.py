# Student baseline of the paper's Table 4 (no distillation): GFL R34 FPN, 1x schedule, COCO.
_base_ = ['mmdet::gfl/gfl_r50_fpn_1x_coco.py', '../_base_/ldcache_runtime.py']

model = dict(
    backbone=dict(
        depth=34,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet34')),
    neck=dict(in_channels=[64, 128, 256, 512]))
