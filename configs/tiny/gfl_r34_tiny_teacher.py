# Tiny GFL teacher: ResNet-34 with a wider 128-channel FPN and a 4-conv head, trained longer than
# the students so that it has something to teach.
_base_ = '../_base_/gfl_shapes.py'

model = dict(
    backbone=dict(depth=34),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    bbox_head=dict(in_channels=128, feat_channels=128, stacked_convs=4))

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[16, 22], gamma=0.1),
]
