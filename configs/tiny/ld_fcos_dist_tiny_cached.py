# Cached LD for the tiny FCOS distribution student: configs/tiny/fcos_dist_tiny.py with three changes
# (the head, one transform after PackDetInputs, the check hook), at the official FCOS student's LD
# defaults (Main KD + Main LD + VLR LD at 0.25 of Main LD's weight, weighted by the student's score,
# docs/families.md). Its store is a dump of a FCOS distribution teacher:
#   ldcache dump-teacher configs/tiny/fcos_dist_tiny.py TEACHER_CKPT --out STORE
#   ldcache train-student configs/tiny/ld_fcos_dist_tiny_cached.py --cache STORE
_base_ = './fcos_dist_tiny.py'

ld_cache = 'work_dirs/fcos_teacher.zarr'

model = dict(bbox_head=dict(type='CachedLDFCOSHead'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale={{_base_.image_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
    dict(type='LoadLDTargets', store=ld_cache),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [dict(type='LDCacheCheckHook')]
