"""The LD domain shared by the dump, the trainer and inspect: views (the geometry a record is
stored under), grid (per-level feature-map sizes), regions (Main and VLR from anchors and boxes),
rows (a record's region rows and the teacher's logits there) and teacher (building and running an
mmdet teacher). It imports nothing from `dump/`, `train/` or `inspect/`.
"""
