# Student baseline of the LD paper's RetinaNet (Table 5; no distillation): RetinaNet R50 FPN with
# the distribution box branch (RetinaDistHead), 1x schedule, COCO. mmdet's RetinaNet otherwise: its
# anchors, MaxIoUAssigner(0.5, 0.4, min_pos_iou 0), Focal Loss; the box loss is GIoU (weight 2) on
# the decoded distributions, and the test NMS IoU 0.6, as in the official
# HikariTJU/LD configs/ld/ld_retina_r50_1x.py. The learning rate is mmdet's 0.01 for 16 images
# (8 GPUs x 2); the official 0.0025 is the same linear rule at 4 images (its README).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/ldcache_runtime.py']

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RetinaDistHead',
        reg_max=16,
        bbox_coder=dict(_delete_=True, type='DistancePointBBoxCoder'),
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=2.0)),
    test_cfg=dict(nms=dict(iou_threshold=0.6)))
