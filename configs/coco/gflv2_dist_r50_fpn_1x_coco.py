# GFLv2 student baseline (no distillation): R50 FPN, 1x schedule, COCO, like the official
# gflv2_r50_fpn_1x_coco.py (SGD lr 0.01 for 16 images per step). mmdet 3 has no GFLv2: this is
# mmdet's GFL R50 1x config with ldcache's GFLv2Head.
_base_ = ['mmdet::gfl/gfl_r50_fpn_1x_coco.py', '../_base_/ldcache_runtime.py']

model = dict(
    bbox_head=dict(
        type='GFLv2Head',
        # The head's classification scores are probabilities (sigmoid(logits) * quality).
        loss_cls=dict(activated=True),
        reg_topk=4,
        reg_channels=64,
        add_mean=True))

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)
