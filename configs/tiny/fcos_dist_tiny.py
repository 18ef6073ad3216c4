# Tiny FCOS with the distribution box branch (ldcache.heads.FCOSDistHead): ResNet-18, 64-channel
# FPN and head (2 stacked convs), on the shapes dataset.
_base_ = '../_base_/gfl_shapes.py'

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)

model = dict(
    type='FCOS',
    backbone=dict(depth=18),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(
        _delete_=True,
        type='FCOSDistHead',
        num_classes=3,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
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
    # FCOS assigns by its own rules (centre region, regress ranges: head arguments above); GFL's
    # ATSS assigner from the base would be unused.
    train_cfg=None,
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100))
