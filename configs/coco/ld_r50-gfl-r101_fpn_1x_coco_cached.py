# Cached LD, the paper's setting: GFL R50 student, GFL R101 ms-2x teacher, 1x on COCO.
# The R18 cached config with the R50 backbone (as gfl_r50_fpn_1x_coco.py has it).
#   ldcache train-student configs/coco/ld_r50-gfl-r101_fpn_1x_coco_cached.py --cache STORE
_base_ = './ld_r18-gfl-r101_fpn_1x_coco_cached.py'

model = dict(
    backbone=dict(
        depth=50,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
