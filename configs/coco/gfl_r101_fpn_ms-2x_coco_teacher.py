# The paper's teacher: mmdet's GFL R101 FPN, multi-scale 2x on COCO (41.3 box AP on val2017 in
# the mmdet model zoo). Supply its checkpoint yourself, e.g. the model zoo's
# gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth, to `ldcache dump-teacher`.
_base_ = ['mmdet::gfl/gfl_r101_fpn_ms-2x_coco.py', '../_base_/ldcache_runtime.py']

