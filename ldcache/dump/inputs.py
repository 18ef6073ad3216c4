"""What `ldcache dump-teacher` dumps, read from the config it is given: a teacher's own config, or
an mmdet LD config (``mmdet::ld/...`` or one inheriting it), whose student the store is made for."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..domain.head import build_config_head, vlr_terms
from ..domain.ld_config import (is_ld_config, load_config, teacher_checkpoint, teacher_config_file,
                                train_classes, train_data_files, train_views)
from ..domain.region_rule import region_rule
from ..domain.teacher import default_scale
from ..store.attrs import HeadGeometry
from ..domain.views import parse_views
from ..errors import BadInputError
from .run import DumpOptions


@dataclass
class DumpRequest:
    """The command line's inputs before they are resolved against the config."""

    config: str  # a teacher config or an LD config: a path or a package:: name
    checkpoint: str | None = None
    cfg_options: dict = field(default_factory=dict)
    ann_file: Path | None = None
    img_dir: Path | None = None
    scales: list[tuple[int, int]] | None = None
    flip: bool | None = None  # None: the LD config's RandomFlip, else True


def resolve_dump(request: DumpRequest, **options) -> tuple[DumpOptions, list[str]]:
    """The DumpOptions of a request (`options`: DumpOptions' other fields) and, for an LD config,
    a few lines saying where each input came from."""
    cfg = load_config(request.config, request.cfg_options)
    if is_ld_config(cfg):
        return _from_ld_config(cfg, request, options)
    if request.checkpoint is None:
        raise BadInputError(f"{request.config} is a teacher config: give its checkpoint (CHECKPOINT or "
                            "--teacher-ckpt), or give an LD config that names its teacher")
    ann_file, img_dir = _data_files(cfg, request)
    scales = request.scales or [default_scale(cfg)]
    opts = DumpOptions(Path(cfg.filename), Path(request.checkpoint), ann_file, img_dir,
                       views=parse_views(scales, True if request.flip is None else request.flip),
                       cfg_options=request.cfg_options or None, **options)
    return opts, []


def _from_ld_config(cfg, request: DumpRequest, options: dict) -> tuple[DumpOptions, list[str]]:
    """The store an LD config trains with: its teacher, its train data and views, its student's
    region rules and classes; the student's head geometry is checked against the teacher's."""
    teacher_config = teacher_config_file(cfg)
    checkpoint = teacher_checkpoint(cfg, request.checkpoint)
    ann_file, img_dir = _data_files(cfg, request)
    if request.scales:
        scales, flip = request.scales, True
    else:
        scale, flip = train_views(cfg)
        scales = [scale]
    if request.flip is not None:
        flip = request.flip
    head = build_config_head(cfg)
    rule = region_rule(head)
    opts = DumpOptions(teacher_config, checkpoint, ann_file, img_dir, views=parse_views(scales, flip), rule=rule,
                       classes=train_classes(cfg), student_geometry=HeadGeometry.of_head(head), **options)
    views = ", ".join(f"{w}x{h}" for w, h in scales) + (" and flipped" if flip else "")
    notes = [f"LD config {request.config}, dumped for its student:",
             f"  teacher {teacher_config}, checkpoint {checkpoint}",
             f"  train data {ann_file}, images {img_dir}",
             f"  views {views}; the student's regions: {rule.describe()}"]
    if opts.region == "distill" and not vlr_terms(getattr(head, "ld_losses", {})):
        notes.append("  its student has no VLR term: --region main would store its Main rows alone (GFL on COCO: "
                     "about 3% of the rows); the default keeps the VLR rows for students that add them")
    return opts, notes


def _data_files(cfg, request: DumpRequest) -> tuple[Path, Path]:
    """--ann-file and --img-dir, each defaulting to the config's train dataset."""
    if request.ann_file is not None and request.img_dir is not None:
        return request.ann_file, request.img_dir
    ann_file, img_dir = train_data_files(cfg)
    return request.ann_file or ann_file, request.img_dir or img_dir
