# mmdetection's own LD config, ld_r18-gflv1-r101_fpn_1x_coco.py, shrunk for the CPU and the embedded
# shapes dataset: a user's LD config that inherits from mmdet's. Only sizes, data and the teacher
# change; the detector (KnowledgeDistillationSingleStageDetector), LDHead and its loss stay mmdet's.
#   ldcache dump-teacher configs/tiny/ld_r18_tiny_mmdet.py --teacher-ckpt CKPT --out STORE
#   ldcache train-student configs/tiny/ld_r18_tiny_mmdet.py --cache STORE
_base_ = 'mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py'

# Set LDCACHE_DATA_ROOT to use a dataset elsewhere (tests and the demo do).
data_root = '{{$LDCACHE_DATA_ROOT:data/shapes/}}'
metainfo = dict(classes=('star', 'eff', 'superstar'))
image_scale = (320, 320)

model = dict(
    # The demo's tiny teacher; its checkpoint is given with --teacher-ckpt.
    teacher_config='configs/tiny/gfl_r34_tiny_teacher.py',
    teacher_ckpt=None,
    # No download at run time.
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
    neck=dict(out_channels=64),
    bbox_head=dict(num_classes=3, in_channels=64, feat_channels=64, stacked_convs=2))

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

max_epochs = 1
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=1, max_keep_ckpts=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
