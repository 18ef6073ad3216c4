# mmdet's GFL set up for the embedded kwcoco shapes dataset (ldcache.demo.shapes): 3 classes,
# 320x320 and 320x256 images, CPU-sized schedule. The tiny configs inherit this one.
_base_ = ['mmdet::gfl/gfl_r50_fpn_1x_coco.py', './ldcache_runtime.py']

# Set LDCACHE_DATA_ROOT to use a dataset elsewhere (tests and the demo do).
data_root = '{{$LDCACHE_DATA_ROOT:data/shapes/}}'
metainfo = dict(classes=('star', 'eff', 'superstar'))
image_scale = (320, 320)

model = dict(
    # No download at run time: train from scratch unless a config names a local checkpoint.
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
    bbox_head=dict(num_classes=3))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='images/train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='images/val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
# From-scratch training on a few dozen images: AdamW converges where SGD at lr 0.01 does not.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)
# mmdet's default (seed=None) draws a new seed every run; comparisons need the same one.
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=1, max_keep_ckpts=2))
# CPU runs under torchrun need gloo; on GPUs, override with --cfg-options env_cfg.dist_cfg.backend=nccl.
env_cfg = dict(dist_cfg=dict(backend='gloo'))
