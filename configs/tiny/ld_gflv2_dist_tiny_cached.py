# Cached LD for the tiny GFLv2 student (LDv2): configs/tiny/gflv2_dist_tiny.py with three changes (the
# head, one transform after PackDetInputs, the check hook), at the official LDv2 defaults (Main KD
# on the raw class logits + Main LD + VLR LD, GFL's divisors; docs/families.md). Its store is a
# dump of a GFLv2 teacher (or a GFL one of the same geometry):
#   ldcache dump-teacher configs/tiny/gflv2_dist_tiny.py TEACHER_CKPT --out STORE
#   ldcache train-student configs/tiny/ld_gflv2_dist_tiny_cached.py --cache STORE
_base_ = './gflv2_dist_tiny.py'

ld_cache = 'work_dirs/gflv2_teacher.zarr'

model = dict(bbox_head=dict(type='CachedLDGFLv2Head'))

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
