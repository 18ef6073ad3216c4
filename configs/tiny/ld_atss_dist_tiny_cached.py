# Cached LD for the tiny ATSS distribution student: configs/tiny/atss_dist_tiny.py with three changes
# (the head, one transform after PackDetInputs, the check hook), at the official ATSS student's LD
# defaults (Main KD + Main LD + VLR LD at 0.15 of Main LD's weight, docs/families.md). Its store is
# a dump of an ATSS distribution teacher (or a GFL one of the same geometry):
#   ldcache dump-teacher configs/tiny/atss_dist_tiny.py TEACHER_CKPT --out STORE
#   ldcache train-student configs/tiny/ld_atss_dist_tiny_cached.py --cache STORE
_base_ = './atss_dist_tiny.py'

ld_cache = 'work_dirs/atss_teacher.zarr'

model = dict(bbox_head=dict(type='CachedLDATSSHead'))

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
