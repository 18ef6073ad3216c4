"""Dense heads whose box branch predicts GFL's edge distributions, for the detector families of the
LD paper beyond GFL (its Table 5, and LDv2): RetinaNet, FCOS and ATSS with a distribution box
branch, and GFLv2 (GFL with the distribution-guided quality predictor). mmdet 3.x has none of them.

Importing this package registers them in mmdet's MODELS (configs name it in `custom_imports`);
teachers and plain students train with mmdet's trainer (`ldcache train-teacher`).
"""
from . import atss_dist_head, fcos_dist_head, gflv2_head, retina_dist_head  # noqa: F401
