# Tiny GFLv2 (GFL + the distribution-guided quality predictor, ldcache.heads.GFLv2Head): ResNet-18,
# 64-channel FPN and head (2 stacked convs), on the shapes dataset. Train it with
# `ldcache train-teacher` (mmdet's trainer, unchanged).
_base_ = '../_base_/gfl_shapes.py'

model = dict(
    type='GFL',
    backbone=dict(depth=18),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(
        _delete_=True,
        type='GFLv2Head',
        num_classes=3,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=8,
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128]),
        # QFL on the joint probability sigmoid(logits) * quality: the probability-input form.
        loss_cls=dict(
            type='QualityFocalLoss',
            use_sigmoid=True,
            activated=True,
            beta=2.0,
            loss_weight=1.0),
        loss_dfl=dict(type='DistributionFocalLoss', loss_weight=0.25),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        reg_max=16,
        reg_topk=4,
        reg_channels=64,
        add_mean=True),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(type='ATSSAssigner', topk=9),
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

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)
