# The LDv2 paper's GFLv2 teacher: R101 FPN, multi-scale (1333, 480-800) 2x on COCO, like the
# official gflv2_r101_fpn_2x_coco.py (GFL R101 ms-2x with the DGQP head; SGD lr 0.01 for 16 images
# per step). mmdet 3 has no GFLv2: this is mmdet's GFL R101 ms-2x config with ldcache's GFLv2Head.
_base_ = ['mmdet::gfl/gfl_r101_fpn_ms-2x_coco.py', '../_base_/ldcache_runtime.py']

model = dict(
    bbox_head=dict(
        type='GFLv2Head',
        # The head's classification scores are probabilities (sigmoid(logits) * quality).
        loss_cls=dict(activated=True),
        reg_topk=4,
        reg_channels=64,
        add_mean=True))

custom_imports = dict(imports=['ldcache.train', 'ldcache.heads'], allow_failed_imports=False)
