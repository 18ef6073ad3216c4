# The paper's ATSS teacher (Table 5): ATSS R101 FPN with the distribution box branch, multi-scale
# 2x on COCO (shorter side 480-800, 24 epochs, lr drops at 16 and 22), as the official
# atss_gfl_r101_2x. mmdet's model zoo has no such checkpoint: train it first (`ldcache
# train-teacher`), then dump it with `ldcache dump-teacher`.
_base_ = './atss_dist_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[16, 22], gamma=0.1),
]

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=[(1333, 480), (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
