# Your own COCO-format dataset: edit the values in the first block, and only them. The teacher
# (gfl_r101_fpn_1x_own_teacher.py) and the student (ld_r18-gfl-r101_fpn_1x_own.py) both read
# them, so both see the same classes in the same order: the teacher's class outputs are indexed
# by them, and the dump and the training refuse a teacher or store of other classes, by name
# (docs/own-dataset.md). Relative paths are taken from the folder you run ldcache in.
own_data_root = 'data/own/'
# The category names of your annotation files ("name" of their "categories"), in the order the
# detector's outputs take. Boxes of categories not listed are left out.
own_classes = ('cat', 'dog')
own_train_ann = 'annotations/instances_train.json'  # under own_data_root
own_train_img = 'images/train/'  # under own_data_root: the folder the file names are relative to
own_val_ann = 'annotations/instances_val.json'
own_val_img = 'images/val/'
# Resize(keep_ratio=True) scale of training, evaluation and the dump's views: mmdet's COCO
# (1333, 800) for photos; smaller for small images, larger for small objects (VisDrone).
own_image_scale = (1333, 800)
own_batch_size = 2  # images per GPU; the learning rate follows (auto_scale_lr in the configs)
own_workers = 2  # DataLoader workers per GPU

# Derived from the above: do not edit. (mmengine evaluates this file as Python; the configs read
# these values with {{_base_.NAME}}, which passes values but cannot compute with them.)
own_num_classes = len(own_classes)
own_metainfo = dict(classes=own_classes)
own_val_ann_file = f"{own_data_root.rstrip('/')}/{own_val_ann}"
own_persistent_workers = own_workers > 0
