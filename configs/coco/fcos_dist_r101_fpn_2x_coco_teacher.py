# The LD paper's FCOS teacher (its Table 5): FCOS R101 (caffe) whose box branch predicts edge
# distributions (ldcache.heads.FCOSDistHead), centre sampling, GIoU, centerness on the regression
# tower, multi-scale (1333x640 / 1333x800) 2x on COCO, as the official
# configs/gfl/fcos_gfl_r101_2x_center.py. There is no public checkpoint of it: train it first
#   ldcache train-teacher configs/coco/fcos_dist_r101_fpn_2x_coco_teacher.py
_base_ = ['mmdet::fcos/fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco.py', '../_base_/ldcache_runtime.py']

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        _delete_=True,
        type='FCOSDistHead',
        num_classes=80,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        strides=[8, 16, 32, 64, 128],
        reg_max=16,
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)),
        center_sampling=True,
        center_sample_radius=1.5,
        norm_on_bbox=False,
        centerness_on_reg=True,
        conv_bias=True,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    test_cfg=dict(nms=dict(type='nms', iou_threshold=0.6)))

# The official schedule: linear warmup from lr/3 over 500 iterations, drops at 16 and 22, no
# gradient clipping (mmdet's base holds lr/3 constant for the warmup and clips at 35).
max_epochs = 24
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
optim_wrapper = dict(clip_grad=None)
