# Student baseline of the LD paper's FCOS row (its Table 5, no distillation): FCOS R50 (caffe) whose
# box branch predicts edge distributions (ldcache.heads.FCOSDistHead), centre sampling, GIoU,
# centerness on the regression tower, 1x on COCO, as the official student configs/ld/
# ld_r50_fcos_r101_1x.py without its LD terms. mmdet's base already has that recipe's backbone,
# normalisation, optimizer (lr 0.01, bias lr x2, no bias decay), warmup, no clipping, NMS 0.6.
_base_ = [
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py',
    '../_base_/ldcache_runtime.py'
]

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
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)))
