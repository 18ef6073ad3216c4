# The LD paper's RetinaNet teacher (Table 5): RetinaNet R101 FPN with the distribution box branch
# (RetinaDistHead), multi-scale 2x on COCO, as the official HikariTJU/LD
# configs/gfl/retinagfl_r101_2x_coco.py. mmdet's model zoo has no such checkpoint (its RetinaNets
# regress deltas): train this teacher first, with `ldcache train-teacher`.
# Head and test settings as retina_dist_r50_fpn_1x_coco.py; mmdet's 2x schedule (steps 16, 22) at
# its 0.01 for 16 images (the official 0.0025 is the same linear rule at 4 images).
_base_ = ['mmdet::retinanet/retinanet_r101_fpn_2x_coco.py', '../_base_/ldcache_runtime.py']

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RetinaDistHead',
        reg_max=16,
        bbox_coder=dict(_delete_=True, type='DistancePointBBoxCoder'),
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=2.0)),
    test_cfg=dict(nms=dict(iou_threshold=0.6)))

# Multi-scale training: the shorter side drawn from [480, 800], the longer at most 1333.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=[(1333, 480), (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
