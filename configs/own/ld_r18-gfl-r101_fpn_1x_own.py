# The LD student for your own dataset (configs/own/_base_/own_dataset.py): mmdet's own LD config
# (GFL R18 student of a GFL R101 teacher, 12 epochs) with your data, and LD made independent of
# the batch size and of the class count (docs/own-dataset.md):
#   ldcache dump-teacher configs/own/gfl_r101_fpn_1x_own_teacher.py \
#       work_dirs/gfl_r101_fpn_1x_own_teacher/epoch_12.pth --out caches/own.zarr
#   ldcache train-student configs/own/ld_r18-gfl-r101_fpn_1x_own.py --cache caches/own.zarr
#   ldcache evaluate configs/own/ld_r18-gfl-r101_fpn_1x_own.py \
#       work_dirs/ld_r18-gfl-r101_fpn_1x_own/epoch_12.pth
# ldcache trains it without its teacher: the detector becomes mmdet's GFL and the teacher's
# outputs come from the store. Its head names CachedLDHead (ldcache's LD head), which ldcache
# keeps as it is: mmdet's own tools cannot train this config.
_base_ = [
    'mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py', '../_base_/ldcache_runtime.py',
    './_base_/own_dataset.py'
]

model = dict(
    # The teacher, for `ldcache dump-teacher THIS_CONFIG --teacher-ckpt CKPT` and online LD
    # (`ldcache train-student THIS_CONFIG --online --teacher-ckpt CKPT`).
    teacher_config='configs/own/gfl_r101_fpn_1x_own_teacher.py',
    teacher_ckpt=None,
    bbox_head=dict(
        type='CachedLDHead',
        num_classes={{_base_.own_num_classes}},
        # The paper's terms and weights: Main LD, VLR LD, Main KD.
        loss_ld=dict(type='KnowledgeDistillationKLDivLoss', loss_weight=0.25, T=10),
        loss_ld_vlr=dict(type='KnowledgeDistillationKLDivLoss', loss_weight=0.25, T=10),
        # With one class, KD is 0 at every step and CachedLDHead refuses it: set loss_kd=None.
        loss_kd=dict(type='KnowledgeDistillationKLDivLoss', loss_weight=10, T=2),
        loss_kd_vlr=None,
        vlr_gamma=0.25,
        vlr_metric='official',
        # LD per image as the paper's at 2 images per GPU, at any images per GPU.
        normalize='per_image',
        # KD per location as the paper's on COCO's 80 classes, at any class count.
        kd_reduction='class_sum'))

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
