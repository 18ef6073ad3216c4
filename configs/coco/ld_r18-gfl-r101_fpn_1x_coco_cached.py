# Cached LD, the paper's setting: GFL R18 student, GFL R101 ms-2x teacher, 1x on COCO.
# gfl_r18_fpn_1x_coco.py with three changes: the head, one transform, the check hook.
# Dump the teacher first (README, stage 1), then:
#   ldcache train-student configs/coco/ld_r18-gfl-r101_fpn_1x_coco_cached.py --cache STORE
_base_ = './gfl_r18_fpn_1x_coco.py'

ld_cache = 'caches/gfl_r101_coco.zarr'

# The paper's recipe and its normalisation (LD sums / 4 and / 16 per GPU), at mmdet's 2 images per GPU.
# normalize='per_image' keeps the same LD per image at another batch size (docs/normalization.md).
model = dict(bbox_head=dict(type='CachedLDHead', normalize='official'))  # Main KD + Main LD + VLR LD

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
    dict(type='LoadLDTargets', store=ld_cache),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [dict(type='LDCacheCheckHook')]
