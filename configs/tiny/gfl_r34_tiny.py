# Tiny GFL student: ResNet-34, 64-channel FPN and head (2 stacked convs), on the shapes dataset.
_base_ = '../_base_/gfl_shapes.py'

model = dict(
    backbone=dict(depth=34),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2))
