# Student baseline of the LD paper's ATSS row (Table 5), no distillation: ATSS R50 FPN whose box
# branch predicts edge distributions (ldcache.heads.ATSSDistHead, reg_max 16), Focal + GIoU 2.0 +
# centerness, no DFL or QFL; mmdet's ATSS recipe otherwise (1x, SGD lr 0.01 at 16 images, as the
# official LD student).
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', '../_base_/ldcache_runtime.py']

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        # mmdet's ATSS head config predicts deltas (DeltaXYWHBBoxCoder): replaced whole.
        _delete_=True,
        type='ATSSDistHead',
        num_classes=80,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        reg_max=16,
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=8,
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DistancePointBBoxCoder'),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)))
