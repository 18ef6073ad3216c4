# Cached LD, the paper's setting: GFL R34 student, GFL R101 ms-2x teacher, 1x on COCO.
# The R18 cached config with the R34 backbone (as gfl_r34_fpn_1x_coco.py has it).
#   ldcache train-student configs/coco/ld_r34-gfl-r101_fpn_1x_coco_cached.py --cache STORE
_base_ = './ld_r18-gfl-r101_fpn_1x_coco_cached.py'

model = dict(
    backbone=dict(
        depth=34,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet34')),
    neck=dict(in_channels=[64, 128, 256, 512]))
