# The teacher for your own dataset (configs/own/_base_/own_dataset.py): mmdet's GFL with a
# ResNet-101 backbone (the LD paper's teacher; the backbone starts from torchvision's ImageNet
# weights), 12 epochs.
#   ldcache train-teacher configs/own/gfl_r101_fpn_1x_own_teacher.py
# writes work_dirs/gfl_r101_fpn_1x_own_teacher/epoch_12.pth, which records the dataset's classes.
# For the paper's stronger teacher, train 24 epochs with multi-scale training as mmdet's
# gfl_r101_fpn_ms-2x_coco.py does; keep the test pipeline's scale: the dump stores that view.
_base_ = [
    'mmdet::gfl/gfl_r50_fpn_1x_coco.py', '../_base_/ldcache_runtime.py', './_base_/own_dataset.py'
]

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')),
    bbox_head=dict(num_classes={{_base_.own_num_classes}}))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale={{_base_.own_image_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale={{_base_.own_image_scale}}, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size={{_base_.own_batch_size}},
    num_workers={{_base_.own_workers}},
    persistent_workers={{_base_.own_persistent_workers}},
    dataset=dict(
        data_root={{_base_.own_data_root}},
        metainfo={{_base_.own_metainfo}},
        ann_file={{_base_.own_train_ann}},
        data_prefix=dict(img={{_base_.own_train_img}}),
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers={{_base_.own_workers}},
    persistent_workers={{_base_.own_persistent_workers}},
    dataset=dict(
        data_root={{_base_.own_data_root}},
        metainfo={{_base_.own_metainfo}},
        ann_file={{_base_.own_val_ann}},
        data_prefix=dict(img={{_base_.own_val_img}}),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={{_base_.own_val_ann_file}})
test_evaluator = val_evaluator

# mmdet's learning rate is for 16 images per step (8 GPUs x 2): scale it linearly to yours.
auto_scale_lr = dict(enable=True, base_batch_size=16)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
