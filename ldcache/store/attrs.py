"""The store's attributes as one typed, versioned model, validated when a store is opened.

Every field here is listed in docs/store-format.md ("Attributes"), and a test keeps the two equal.
`StoreAttrs.from_dict` raises a StoreFormatError naming the first field that is missing, of the
wrong type, or not one of its allowed values.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass

from ..errors import StoreFormatError
from .codec import VALUE_CODECS, ValueCodec
from .format import (FLIP_DIRECTIONS, FORMAT_VERSION, MAIN_RULES, PRIOR_KINDS, REGION_MODES, STATUSES, VLR_METRICS,
                     VLR_RULES)


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise StoreFormatError(f"store attribute '{field}' {message}")


class _Model:
    """from_dict / to_dict for frozen dataclasses of plain JSON values, tuples and nested models."""

    @classmethod
    def from_dict(cls, data, path: str = ""):
        _require(isinstance(data, dict), path or "(root)", f"must be a mapping, not {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        _require(not unknown, f"{path}{unknown[0] if unknown else ''}", "is not part of this format version")
        values = {}
        for f in dataclasses.fields(cls):
            where = f"{path}{f.name}"
            if f.name not in data:
                _require(f.default is not dataclasses.MISSING, where, "is missing")
                continue
            values[f.name] = _convert(data[f.name], hints[f.name], where)
        return cls(**values)

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_paths(cls, prefix: str = "") -> list[str]:
        """Dotted names of every leaf field, as docs/store-format.md lists them."""
        hints = typing.get_type_hints(cls)
        paths = []
        for f in dataclasses.fields(cls):
            inner = _model_of(hints[f.name])
            paths += inner.field_paths(f"{prefix}{f.name}.") if inner else [f"{prefix}{f.name}"]
        return paths


def _model_of(hint) -> type | None:
    """The model class a field holds (alone, optional, or as a tuple of them), or None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, _Model):
            return candidate
    return None


def _convert(value, hint, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), where)
    if isinstance(hint, type) and issubclass(hint, _Model):
        return hint.from_dict(value, f"{where}.")
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), where, f"must be a list, not {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        _require(len(value) == len(args), where, f"must have {len(args)} entries, not {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, where, f"must be a number, not {value!r}")
        return float(value)
    if hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), where, f"must be an integer, not {value!r}")
        return value
    _require(isinstance(value, hint), where, f"must be of type {hint.__name__}, not {value!r}")
    return value


def _plain(value):
    if isinstance(value, _Model):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _redump_command(data) -> str:
    """The dump command that makes a store of this format again, from an older store's attributes
    as far as they name its inputs (every version so far has these fields)."""
    try:
        teacher, dataset = data["teacher"], data["dataset"]
        return (f"`ldcache dump-teacher {teacher['config']} {teacher['checkpoint']} --ann-file {dataset['ann_file']} "
                f"--img-dir {dataset['img_dir']} --out NEW_STORE` with the old dump's other options")
    except (KeyError, TypeError):
        return "`ldcache dump-teacher TEACHER_CONFIG CHECKPOINT --ann-file ... --img-dir ... --out NEW_STORE`"


def _one_of(value, choices, where: str) -> None:
    _require(value in choices, where, f"must be one of {list(choices)}, not {value!r}")


@dataclass(frozen=True)
class TeacherAttrs(_Model):
    """The teacher the store was dumped from."""

    config: str
    config_sha256: str
    checkpoint: str
    checkpoint_sha256: str
    head: str  # the teacher head's class (its family), as the store's summary shows it


@dataclass(frozen=True)
class HeadGeometry(_Model):
    """What a student head must share with the teacher for cached rows to line up."""

    num_classes: int
    reg_max: int
    strides: tuple[int, ...]
    octave_base_scale: float  # 0 for points
    scales_per_octave: int  # 1 for points
    ratios: tuple[float, ...]  # (1.0,) for points
    center_offset: float
    num_base_priors: int
    allowed_border: int  # train_cfg.allowed_border: which anchors the assigner may use (-1: all)
    priors: str = "anchors"  # 'anchors' (AnchorGenerator) or 'points' (MlvlPointGenerator: FCOS)

    def __post_init__(self):
        _one_of(self.priors, PRIOR_KINDS, "head.priors")

    @classmethod
    def of_head(cls, head) -> HeadGeometry:
        """The geometry of an mmdet dense head with edge distributions: its prior generator (anchors
        or points), bins and border rule."""
        gen = head.prior_generator
        train_cfg = getattr(head, "train_cfg", None) or {}
        strides = tuple(int(s[0]) for s in gen.strides)
        border = int(train_cfg.get("allowed_border", -1))
        if not hasattr(gen, "octave_base_scale"):  # points: one per location, at the offset
            return cls(int(head.num_classes), int(head.reg_max), strides, 0.0, 1, (1.0,), float(gen.offset),
                       int(gen.num_base_priors[0]), border, "points")
        return cls(int(head.num_classes), int(head.reg_max), strides,
                   float(gen.octave_base_scale), int(gen.scales_per_octave), tuple(float(r) for r in gen.ratios),
                   float(gen.center_offset), int(gen.num_base_priors[0]), border)


@dataclass(frozen=True)
class GridAttrs(_Model):
    """How a view's image becomes the grid the rows live on: what the student's pipeline must share."""

    pad_divisor: int  # the data preprocessor's pad_size_divisor: pad_shape is img_shape padded to it
    flip_direction: str  # what `views.flip` mirrors: mmdet's RandomFlip direction

    def __post_init__(self):
        _require(self.pad_divisor > 0, "grid.pad_divisor", f"must be positive, not {self.pad_divisor}")
        _one_of(self.flip_direction, FLIP_DIRECTIONS, "grid.flip_direction")


@dataclass(frozen=True)
class DatasetAttrs(_Model):
    """The annotation file and images the store was dumped from."""

    ann_file: str
    ann_sha256: str
    img_dir: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class ViewAttrs(_Model):
    """One stored view: a resize scale and a flip."""

    name: str
    scale: tuple[int, int]
    flip: bool


@dataclass(frozen=True)
class RegionAttrs(_Model):
    """Which rows are stored, and the region data they carry."""

    mode: str
    gamma: float
    topk: int  # the VLR band's ATSS threshold is made of the topk nearest anchors per level
    vlr_metrics: tuple[str, ...]
    main: dict  # the Main assignment: an mmdet assigner config, or FCOS's centre-sampling rule
    vlr: str  # the family's VLR rule: band, band_without_main or inside_gt

    def __post_init__(self):
        _one_of(self.mode, REGION_MODES, "region.mode")
        _one_of(self.vlr, VLR_RULES, "region.vlr")
        _require(self.main.get("type") in MAIN_RULES, "region.main.type",
                 f"must be one of {list(MAIN_RULES)}, not {self.main.get('type')!r}")
        for metric in self.vlr_metrics:
            _one_of(metric, VLR_METRICS, "region.vlr_metrics")
        _require(0 < self.gamma < 1, "region.gamma", f"must lie in (0, 1), not {self.gamma}")
        _require(self.topk > 0, "region.topk", f"must be positive, not {self.topk}")


@dataclass(frozen=True)
class ValuesAttrs(_Model):
    """How the teacher's logits are stored."""

    dtype: str
    vlr_class_logits: bool  # class logits stored on every row (True) or on Main rows only

    def __post_init__(self):
        _one_of(self.dtype, VALUE_CODECS, "values.dtype")


@dataclass(frozen=True)
class LayoutAttrs(_Model):
    """How records are grouped into blocks and rows into chunks."""

    block_size: int
    chunk_rows: int
    shard_rows: int  # rows per shard object of `masks` and `logits`; each block's rows are one shard
    num_images: int
    num_views: int

    def __post_init__(self):
        for name in ("block_size", "chunk_rows", "shard_rows", "num_views"):
            _require(getattr(self, name) > 0, f"layout.{name}", f"must be positive, not {getattr(self, name)}")
        _require(self.shard_rows % self.chunk_rows == 0, "layout.shard_rows",
                 f"must be a multiple of layout.chunk_rows ({self.chunk_rows}), not {self.shard_rows}")


@dataclass(frozen=True)
class DumpSummary(_Model):
    """Counts and costs of a finished dump, written with status 'complete'."""

    images: int
    views: int
    image_views: int
    images_without_boxes: int
    ignored_crowd_boxes: int
    dropped_degenerate_boxes: int
    rows_per_level: tuple[int, ...]
    bytes_on_disk: int
    bytes_per_image_view: float
    dense_fp16_bytes: int
    compression_vs_dense_fp16: float
    wall_seconds: float
    completion_id: str  # new at every completion (a repair too): names the store's content in readers' caches


@dataclass(frozen=True)
class RegionRows(_Model):
    """Rows per level that belong to each region (a row can be in several)."""

    main: tuple[int, ...]
    vlr_official: tuple[int, ...]
    vlr_diou: tuple[int, ...]


@dataclass(frozen=True)
class StoreStatistics(_Model):
    """Edge entropy and row counts of the whole store, summed block by block as the dump wrote them."""

    entropy_bin_edges: tuple[float, ...]
    entropy_histogram: tuple[tuple[int, ...], ...]  # [level][bin]: rows by their mean edge entropy
    mean_edge_entropy: tuple[float | None, ...]  # per level, nats, None for a level without rows
    rows_per_level: tuple[int, ...]
    rows_per_level_and_region: RegionRows


@dataclass(frozen=True)
class StoreAttrs(_Model):
    """All attributes of a store's root group."""

    ldcache_format: int
    status: str
    fingerprint: str
    teacher: TeacherAttrs
    head: HeadGeometry
    grid: GridAttrs
    dataset: DatasetAttrs
    views: tuple[ViewAttrs, ...]
    region: RegionAttrs
    values: ValuesAttrs
    layout: LayoutAttrs
    summary: DumpSummary | None = None
    statistics: StoreStatistics | None = None

    def __post_init__(self):
        _one_of(self.status, STATUSES, "status")
        _require(len(self.views) == self.layout.num_views, "views",
                 f"lists {len(self.views)} views but layout.num_views is {self.layout.num_views}")

    @classmethod
    def from_dict(cls, data, path: str = "") -> StoreAttrs:
        # The version decides how the rest is read: check it first, with its own message.
        version = data.get("ldcache_format") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise StoreFormatError(f"store format version {version}; this ldcache reads version {FORMAT_VERSION}. "
                                   f"Dump it again with this version of ldcache: {_redump_command(data)}")
        return super().from_dict(data, path)

    def value_codec(self) -> ValueCodec:
        """The codec of the `logits` array."""
        return ValueCodec(self.values.dtype, self.head.reg_max + 1, self.head.num_classes)
