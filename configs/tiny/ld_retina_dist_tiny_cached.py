# Cached LD for the tiny RetinaNet distribution student: configs/tiny/retina_dist_tiny.py with three changes
# (the head, one transform after PackDetInputs, the check hook), at the official RetinaNet student's LD
# defaults (Main KD at T 8 + Main LD at weight 5 over one softmax of an anchor's 68 logits + VLR LD at 0.03 of
# it, docs/families.md). Its store is a dump of a RetinaNet distribution teacher:
#   ldcache dump-teacher configs/tiny/retina_dist_tiny.py TEACHER_CKPT --out STORE
#   ldcache train-student configs/tiny/ld_retina_dist_tiny_cached.py --cache STORE
_base_ = './retina_dist_tiny.py'

ld_cache = 'work_dirs/retina_teacher.zarr'

model = dict(bbox_head=dict(type='CachedLDRetinaHead'))

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
