# Tiny RetinaNet with the distribution box branch (RetinaDistHead): ResNet-18, 64-channel FPN and
# head (2 stacked convs), on the shapes dataset. The anchors, assigner, losses and test settings are
# those of the LD paper's RetinaNet (HikariTJU/LD configs/gfl/retinagfl_r101_2x_coco.py).
_base_ = '../_base_/gfl_shapes.py'

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)

model = dict(
    type='RetinaNet',
    backbone=dict(depth=18),
    # RetinaNet's extra levels P6/P7 come from C5 (GFL's from P5).
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64, add_extra_convs='on_input'),
    bbox_head=dict(
        _delete_=True,
        type='RetinaDistHead',
        num_classes=3,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        reg_max=16,
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DistancePointBBoxCoder'),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.4,
            min_pos_iou=0,
            ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'),  # Focal Loss: no sampling
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        _delete_=True,
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100))
