# Cached LD for the tiny R18 student: configs/tiny/gfl_r18_tiny.py with three changes
# (the head, one transform after PackDetInputs, the check hook). Set the store with
# `ldcache train-student ... --cache STORE` (or edit ld_cache).
_base_ = './gfl_r18_tiny.py'

ld_cache = 'work_dirs/demo/teacher.zarr'

model = dict(
    bbox_head=dict(
        type='CachedLDHead',
        # The recipe bench/ld_experiment.py chose on its val split (docs/results.md): Main LD only,
        # normalize='per_image' (the paper's LD strength per image, at any batch size) with the
        # loss weight / 10 (0.025 instead of 0.25). At the paper's full strength, and with VLR LD
        # or Main KD added, these students trained from scratch for a few epochs did worse.
        loss_ld=dict(type='KnowledgeDistillationKLDivLoss', loss_weight=0.025, T=10),
        loss_ld_vlr=None,
        loss_kd=None,
        loss_kd_vlr=None,
        vlr_gamma=0.25,
        vlr_metric='official',  # or 'diou', the paper's true DIoU
        normalize='per_image'))

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
