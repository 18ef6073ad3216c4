"""Constants of the store format (docs/store-format.md): version, statuses, row flags, mask rows."""
from __future__ import annotations

import numpy as np

FORMAT_VERSION = 6
STATUS_CREATED, STATUS_MASKS, STATUS_COMPLETE = "created", "masks-written", "complete"
STATUSES = (STATUS_CREATED, STATUS_MASKS, STATUS_COMPLETE)
# The group of an unfinished store holding its per-block done flags and statistics.
PROGRESS = "progress"
REGION_MODES = ("distill", "main", "dense")
# The flip a stored view may carry: mmdet RandomFlip's direction (the regions mirror boxes left-right).
FLIP_DIRECTIONS = ("horizontal",)

# What a location's priors are: anchor boxes (GFL, ATSS, GFLv2, RetinaNet) or points (FCOS).
PRIOR_KINDS = ("anchors", "points")
# The region rules of the head families (ldcache/domain/region_rule.py): the Main assignment, and
# the VLR as a band of the VLR metric (positives kept, or excluded) or FCOS's points inside a GT.
MAIN_RULES = ("ATSSAssigner", "MaxIoUAssigner", "FCOSCenterSampling")
VLR_RULES = ("band", "band_without_main", "inside_gt")

# The two VLR definitions, in the order of the per-metric fields of a mask row.
VLR_METRICS = ("official", "diou")

# Flag bits of a row: which region it belongs to at the dump's gamma.
FLAG_MAIN, FLAG_VLR_OFFICIAL, FLAG_VLR_DIOU = 1, 2, 4
REGION_FLAGS = {"main": FLAG_MAIN, "vlr_official": FLAG_VLR_OFFICIAL, "vlr_diou": FLAG_VLR_DIOU}
FLAGS_VLR = FLAG_VLR_OFFICIAL | FLAG_VLR_DIOU  # VLR of either metric: a store of one has only its own
# The IoU weight of a VLR row as a step function of gamma: at most this many (ratio, IoU) steps.
VLR_STEPS = 4
MASK_DTYPE = np.dtype([
    ("loc", "<i4"),  # y * W_l + x on the level's per-image grid
    ("prior", "u1"),  # which of the location's priors (anchors), 0 with one prior per location
    ("flags", "u1"),
    ("vlr_ratio", "<f4", (2,)),  # largest d/thr below 1, per VLR metric (official, diou)
    ("vlr_step_ratio", "<f4", (2, VLR_STEPS)),  # per metric: d/thr of the GTs on the weight's steps
    ("vlr_step_weight", "<f4", (2, VLR_STEPS)),  # their IoUs; weight(gamma) = max IoU with ratio >= gamma
])

