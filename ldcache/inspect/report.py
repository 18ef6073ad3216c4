"""What `ldcache inspect` reports: the store summary, one image's rows, one location's distributions.

A row of a record is named by its RowKey (level, location, prior): with several priors per
location (RetinaNet's 9 anchors) a location holds up to that many rows, and the reports show the
anchor index beside the location ("P3 grid [12, 40] anchor 4/9")."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import console
from ..domain.classes import listed_classes
from ..domain.grid import prior_points
from ..errors import BadInputError, StoreMismatchError
from ..store.filesystem import store_bytes_on_disk
from ..store.format import FLAG_MAIN, REGION_FLAGS, VLR_METRICS
from ..store.reader import StoreReader
from ..store.targets import LDTargets, LevelRows
from ..store.statistics import edge_entropy

EDGES = ("left", "top", "right", "bottom")
# The VLR rule without a metric (FCOS): what its rows' stored ratio 1 and weight 1 stand for.
INSIDE_GT = "inside_gt"
INSIDE_GT_VLR = "VLR (inside a GT, weighted by the student's score at train time)"


class RowKey(NamedTuple):
    """One stored row of a record: its level, its location on the level's grid (y * W + x) and
    its prior there (the anchor index, 0 with one prior per location)."""

    level: int
    loc: int
    prior: int


def store_summary(reader: StoreReader) -> dict:
    """What `ldcache inspect STORE` shows, as a dict (the --json output). It reads the statistics the
    dump wrote into the attributes, never a chunk of the logits."""
    from ..domain.region_rule import stored_rule

    attrs = reader.attrs
    stats = attrs.statistics.to_dict()
    disk = store_bytes_on_disk(reader.path)
    return {
        "store": str(reader.path), "format_version": attrs.ldcache_format, "status": attrs.status,
        "teacher_config": attrs.teacher.config, "teacher_checkpoint": attrs.teacher.checkpoint,
        "checkpoint_sha256": attrs.teacher.checkpoint_sha256, "teacher_head": attrs.teacher.head,
        "priors_per_location": attrs.head.num_base_priors, "prior_kind": attrs.head.priors,
        "classes": list(attrs.dataset.classes),
        "images": len(reader.image_ids), "views": [v.name for v in attrs.views],
        "image_views": reader.num_records, "region_mode": attrs.region.mode,
        "vlr_metrics": list(attrs.region.vlr_metrics),
        "gamma": attrs.region.gamma, "region_main": dict(attrs.region.main), "region_vlr": attrs.region.vlr,
        "region_rules": stored_rule(attrs.region).describe(), "strides": list(attrs.head.strides),
        "rows_per_level": stats["rows_per_level"], "rows_per_level_and_region": stats["rows_per_level_and_region"],
        "bytes_on_disk": disk, "bytes_per_image_view": disk / max(reader.num_records, 1),
        "compression_vs_dense_fp16": attrs.summary.dense_fp16_bytes / max(disk, 1),
        "mean_edge_entropy_per_level": stats["mean_edge_entropy"],
    }


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The summary's (name, value) lines, as the terminal and the viewer show them."""
    return [
        ("format / status", f"v{summary['format_version']} / {summary['status']}"),
        ("teacher", f"{summary['teacher_config']}\n{summary['teacher_checkpoint']} "
                    f"(sha256 {summary['checkpoint_sha256'][:12]}...)"),
        ("teacher head (family)", f"{summary['teacher_head']}: "
                                  f"{counted(summary['priors_per_location'], summary['prior_kind'])} per location"),
        ("region rules", summary["region_rules"]),
        ("classes", listed_classes(summary["classes"])),
        ("images x views", f"{summary['images']} x {len(summary['views'])} ({', '.join(summary['views'])}) "
                           f"= {summary['image_views']}"),
        ("region mode, gamma", f"{summary['region_mode']}, {summary['gamma']}" if summary["vlr_metrics"]
                               else f"{summary['region_mode']} (no VLR rows)"),
        ("bytes on disk", f"{summary['bytes_on_disk'] / 2**20:.2f} MiB "
                          f"({summary['bytes_per_image_view'] / 1024:.1f} KiB per image-view, "
                          f"{summary['compression_vs_dense_fp16']:.1f}x smaller than dense fp16)"),
    ]


def print_summary(summary: dict) -> None:
    """The summary as a table, then the per-level table."""
    console.key_value_table(f"ldcache store {summary['store']}", summary_rows(summary))
    print_level_table(summary["strides"], summary, region_columns(summary["region_vlr"], summary["vlr_metrics"]))


def counted(number: int, kind: str) -> str:
    """'9 anchors', '1 point': a count of priors of `kind` ('anchors' or 'points')."""
    return f"{number} {kind if number != 1 else kind[:-1]}"


def print_level_table(strides, stats: dict, regions: dict[str, str]) -> None:
    """Rows per level and region (`regions`: region_columns), and the mean edge entropy, of a
    summary or of --stats."""
    console.table("per level", level_columns(regions), level_rows(strides, stats, regions))


def region_columns(vlr_rule: str, vlr_metrics) -> dict[str, str]:
    """The region counts a table shows, heading -> key of REGION_FLAGS: Main, and the VLR of each
    metric the store holds, or one VLR column for inside_gt (whose rows carry every stored
    metric's flag); a store of Main rows only has no VLR column."""
    columns = {"main": "main"}
    if vlr_rule == INSIDE_GT and vlr_metrics:
        columns["VLR inside a GT"] = f"vlr_{vlr_metrics[0]}"
    elif vlr_rule != INSIDE_GT:
        columns.update({f"VLR {metric}": f"vlr_{metric}" for metric in vlr_metrics})
    return columns


def level_columns(regions: dict[str, str]) -> tuple[str, ...]:
    """The headings of level_rows."""
    return ("level", "stride", "rows", *regions, "mean edge entropy (nats)")


def level_rows(strides, stats: dict, regions: dict[str, str]) -> list[tuple[str, ...]]:
    """Per level, the level_columns of a summary or of --stats."""
    counts = stats["rows_per_level_and_region"]
    entropies = stats.get("mean_edge_entropy_per_level", stats.get("mean_edge_entropy"))
    return [(f"P{level + 3}", str(stride), str(stats["rows_per_level"][level]),
             *[str(counts[key][level]) for key in regions.values()],
             "-" if entropies[level] is None else f"{entropies[level]:.3f}")
            for level, stride in enumerate(strides)]


def print_stats(strides, stats: dict, regions: dict[str, str]) -> None:
    """`inspect --stats` as tables: the per-level table (`regions`: region_columns), then the
    entropy quartiles per level."""
    print_level_table(strides, stats, regions)
    edges = np.asarray(stats["entropy_bin_edges"])
    rows = []
    for level, counts in enumerate(stats["entropy_histogram"]):
        cumulative = np.cumsum(counts)
        total = cumulative[-1] if len(cumulative) else 0
        quartiles = ["-"] * 3 if not total else [
            f"{edges[np.searchsorted(cumulative, q * total) + 1]:.2f}" for q in (0.25, 0.5, 0.75)]
        rows.append((f"P{level + 3}", str(int(total)), *quartiles))
    console.table("edge entropy per row (nats, upper bin edge)", ("level", "rows", "25%", "median", "75%"), rows)


def check_level(reader: StoreReader, level: int | None) -> None:
    """A clear error for a level the store does not have."""
    count = len(reader.strides)
    if level is not None and not 0 <= level < count:
        raise BadInputError(f"level {level} out of range: the store has levels 0..{count - 1} (P3..P{count + 2})")


def check_anchor(reader: StoreReader, anchor: int | None) -> None:
    """A clear error for an anchor index the store's head does not have."""
    count = reader.attrs.head.num_base_priors
    if anchor is not None and not 0 <= anchor < count:
        raise BadInputError(f"anchor {anchor} out of range: the store's {reader.attrs.teacher.head} has "
                            f"{counted(count, reader.attrs.head.priors)} per location (indexes 0..{count - 1})")


def anchor_label(prior: int, priors_per_location: int) -> str:
    """' anchor 4/9' beside a location with several priors per location, '' with one."""
    return f" anchor {prior}/{priors_per_location}" if priors_per_location > 1 else ""


def row_index(targets: LDTargets, key: RowKey) -> int:
    """The index within its level of the row `key`, or a clear error."""
    rows = targets.level(key.level)
    hit = np.flatnonzero((rows.loc == key.loc) & (rows.prior == key.prior))
    if not len(hit):
        raise StoreMismatchError(f"this record stores no row at {key}")
    return int(hit[0])


def rows_at(targets: LDTargets, level: int, loc: int) -> np.ndarray:
    """Indexes within the level of the rows stored at location `loc`, by prior."""
    hits = np.flatnonzero(targets.level(level).loc == loc)
    return hits[np.argsort(targets.level(level).prior[hits], kind="stable")]


def ambiguity(rows: LevelRows) -> np.ndarray:
    """[R]: the mean edge entropy of each row, plus 10 for a Main row: the largest is the Main row
    with the flattest edge distributions (or the flattest row when none is Main)."""
    return edge_entropy(rows.reg).mean(axis=1) + 10.0 * ((rows.flags & FLAG_MAIN) > 0)


def _grid_location(reader: StoreReader, record: int, targets: LDTargets, level: int, at: tuple[float, float],
                   grid: bool) -> int:
    """y * W + x on the level's grid of `at`: grid cells, or the view's image pixels (the nearest
    prior point, at (x + center_offset) * stride), or a clear error when it lies outside."""
    grid_h, grid_w = (int(v) for v in targets.grid[level])
    if grid:
        gx, gy = int(at[0]), int(at[1])
        if not (0 <= gx < grid_w and 0 <= gy < grid_h):
            raise BadInputError(f"grid location {gx},{gy} is outside level {level}'s {grid_w}x{grid_h} grid")
        return gy * grid_w + gx
    h, w = reader.img_shape[record]
    if not (0 <= at[0] < w and 0 <= at[1] < h):
        raise BadInputError(f"location {at[0]},{at[1]} is outside the image ({w}x{h} in this view)")
    stride, offset = reader.strides[level], reader.attrs.head.center_offset
    # The nearest prior point, kept on the grid: rounding can land one past its last column.
    gx = min(max(int(round(at[0] / stride - offset)), 0), grid_w - 1)
    gy = min(max(int(round(at[1] / stride - offset)), 0), grid_h - 1)
    return gy * grid_w + gx


def locate(reader: StoreReader, record: int, targets: LDTargets, at: tuple[float, float], level: int | None,
           grid: bool, anchor: int | None = None) -> RowKey:
    """The stored row at the location `at`, or a clear error.

    `at` is in the view's image pixels (the nearest prior point of each level), or in grid cells.
    The first level from P3 (or only `level`) that stores the location wins. Of the rows stored
    there (one per stored anchor): the row of `anchor` when given, else the most ambiguous one as
    `most_ambiguous` ranks them (Main first, then the flattest edge distributions; a tie goes to
    the lowest anchor). The location report lists every row of the location."""
    stored = {}
    for lvl in [level] if level is not None else range(len(reader.strides)):
        loc = _grid_location(reader, record, targets, lvl, at, grid)
        hits = rows_at(targets, lvl, loc)
        priors = targets.level(lvl).prior[hits]
        if len(hits):
            stored[f"P{lvl + 3}"] = priors.tolist()
        if anchor is not None:
            hits = hits[priors == anchor]
        if len(hits):
            best = hits[np.argmax(ambiguity(targets.level(lvl))[hits])]
            return RowKey(lvl, loc, int(targets.level(lvl).prior[best]))
    raise BadInputError(_not_stored(at, level, anchor, stored, reader.attrs.region.mode))


def _not_stored(at: tuple[float, float], level: int | None, anchor: int | None, stored: dict[str, list[int]],
                mode: str) -> str:
    """Why `locate` found no row: the anchor is not stored there (naming the stored ones), or no row is."""
    if stored:
        there = "; ".join(f"{name} anchors {', '.join(map(str, priors))}" for name, priors in stored.items())
        return f"anchor {anchor} is not stored at location {at[0]},{at[1]} (stored there: {there})"
    where = f"level {level}" if level is not None else "any level"
    kept = "Main and VLR locations are" if mode == "distill" else "Main locations are"
    return (f"location {at[0]},{at[1]} is not stored at {where}: in {mode!r} mode only {kept} "
            "(see the image's --plot for where they are)")


def most_ambiguous(targets: LDTargets, level: int | None, anchor: int | None = None) -> RowKey:
    """The Main-region row with the flattest edge distributions (or any row if none is Main), at
    `level` and of `anchor` when given; a tie goes to the first level, then the first row."""
    best = None
    for lvl in ([level] if level is not None else range(len(targets.level_ptr) - 1)):
        rows = targets.level(lvl)
        score = ambiguity(rows)
        if anchor is not None:
            score[rows.prior != anchor] = -np.inf
        if not len(score) or not np.isfinite(score.max()):
            continue
        i = int(np.argmax(score))
        if best is None or score[i] > best[0]:
            best = (score[i], RowKey(lvl, int(rows.loc[i]), int(rows.prior[i])))
    if best is None:
        raise StoreMismatchError("this record stores no rows at the chosen level(s)"
                                 + (f" of anchor {anchor}" if anchor is not None else ""))
    return best[1]


def _prior_point(cell: int, stride: int, offset: float) -> int | float:
    """Image pixel of a grid cell's prior point: an int when it falls on one."""
    value = float(prior_points(cell, stride, offset))
    return int(value) if value.is_integer() else value


def _regions(flags: int) -> list[str]:
    """Names of the regions (REGION_FLAGS) a row's flags mark."""
    return [name for name, bit in REGION_FLAGS.items() if flags & bit]


def _vlr_data(rows: LevelRows, row: int, vlr_rule: str, metrics: tuple[str, ...]) -> dict:
    """A row's VLR ratio, weight and weight steps per stored metric; None where none is stored
    (a Main-only store) and for a rule without a metric (inside_gt), whose stored ratio and weight
    of 1 are no IoU band."""
    if vlr_rule == INSIDE_GT or not metrics:
        return {"vlr_rule": vlr_rule, "vlr_ratio": None, "vlr_weight": None, "vlr_weight_steps": None}
    stored = [(m, VLR_METRICS.index(m)) for m in metrics]
    # The weight at the store's gamma; at a raised gamma it is the largest step IoU whose ratio reaches it.
    return {
        "vlr_rule": vlr_rule,
        "vlr_ratio": {m: float(rows.vlr_ratio[row, i]) for m, i in stored},
        "vlr_weight": {m: float(rows.vlr_step_weight[row, i].max()) for m, i in stored},
        "vlr_weight_steps": {m: [[float(r), float(w)] for r, w in zip(rows.vlr_step_ratio[row, i],
                                                                       rows.vlr_step_weight[row, i]) if w > 0]
                             for m, i in stored},
    }


def _location_rows(targets: LDTargets, key: RowKey) -> list[dict]:
    """Every row stored at the key's location, by prior: its prior, regions and mean edge entropy."""
    rows = targets.level(key.level)
    return [{"prior": int(rows.prior[i]), "regions": _regions(int(rows.flags[i])),
             "mean_edge_entropy": float(edge_entropy(rows.reg[i]).mean())} for i in rows_at(targets, *key[:2])]


def location_report(reader: StoreReader, record: int, targets: LDTargets, key: RowKey, tau: float) -> dict:
    """One stored row: its location (grid and image position of the prior point) and prior, its
    regions and VLR data, the four edge distributions at temperature `tau`, the top classes, and
    the rows of every prior stored at that location."""
    rows, row = targets.level(key.level), row_index(targets, key)
    grid_w = int(targets.grid[key.level][1])
    stride, offset = reader.strides[key.level], reader.attrs.head.center_offset
    gx, gy = key.loc % grid_w, key.loc // grid_w
    reg = rows.reg[row].astype(np.float64) / tau
    probs = np.exp(reg - reg.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cls = rows.cls[row].astype(np.float64)
    classes = reader.attrs.dataset.classes
    return {
        "record": record, "level": key.level, "loc": key.loc, "prior": key.prior,
        "priors_per_location": reader.attrs.head.num_base_priors, "stride": stride, "grid_xy": [gx, gy],
        "image_xy": [_prior_point(gx, stride, offset), _prior_point(gy, stride, offset)], "tau": tau,
        "regions": _regions(int(rows.flags[row])), **_vlr_data(rows, row, reader.attrs.region.vlr, reader.attrs.region.vlr_metrics),
        "edge_distributions": {e: probs[i].tolist() for i, e in enumerate(EDGES)},
        "edge_entropy": dict(zip(EDGES, edge_entropy(rows.reg[row], tau).tolist())),
        "top_classes": [{"class": classes[i], "logit": float(cls[i]), "score": float(1 / (1 + np.exp(-cls[i])))}
                        for i in np.argsort(-cls)[:5]],
        "location_rows": _location_rows(targets, key),
    }


def region_names(regions: list[str], vlr_rule: str) -> list[str]:
    """Regions as shown: for inside_gt, its VLR in words instead of the per-metric flags."""
    if vlr_rule != INSIDE_GT:
        return regions
    shown = [name for name in regions if name == "main"]
    if len(shown) < len(regions):
        shown.append(INSIDE_GT_VLR)
    return shown


def location_title(report: dict) -> str:
    """'P3 location [12, 40] anchor 4/9' (no anchor with one prior per location): a location report's row."""
    anchor = anchor_label(report["prior"], report["priors_per_location"])
    return f"P{report['level'] + 3} location {report['grid_xy']}{anchor}"


def _region_text(report: dict) -> str:
    """The regions of a location report's row, with its VLR ratio and weights where the rule has them."""
    regions = f"regions: {', '.join(region_names(report['regions'], report['vlr_rule'])) or 'none'}"
    if report["vlr_ratio"] is None:
        return regions
    return (f"{regions}; VLR ratio {report['vlr_ratio']}, weight {report['vlr_weight']} "
            f"(steps of (ratio, IoU): {report['vlr_weight_steps']})")


def _rows_here_text(report: dict) -> str:
    """The anchors stored at the report's location, the shown one marked."""
    return "; ".join(
        f"anchor {r['prior']}{' (shown)' if r['prior'] == report['prior'] else ''}: "
        f"{', '.join(region_names(r['regions'], report['vlr_rule'])) or 'none'}, {r['mean_edge_entropy']:.3f} nats"
        for r in report["location_rows"])


def print_location(report: dict) -> None:
    """A location report: where and which row, its regions, the four edge distributions as bars, the top classes."""
    say = console.out.print
    say(f"[bold]P{report['level'] + 3}[/] (stride {report['stride']}) grid {report['grid_xy']}"
        f"{anchor_label(report['prior'], report['priors_per_location'])} = image {report['image_xy']}; "
        f"{_region_text(report)}")
    if report["priors_per_location"] > 1:
        say(f"rows at this location (mean edge entropy; --anchor K shows another): {_rows_here_text(report)}")
    bins = len(next(iter(report["edge_distributions"].values())))
    for edge, probs in report["edge_distributions"].items():
        say(f"[bold]{edge}[/] edge, tau {report['tau']}, entropy {report['edge_entropy'][edge]:.3f} nats "
            f"(bin k = k x {report['stride']} px from the anchor point)")
        for k in range(bins):
            bar = "█" * int(round(probs[k] * 60))
            say(f"  {k:2d} {k * report['stride']:5d}px {probs[k]:6.3f} [cyan]{bar}[/]")
    top = ", ".join(f"{c['class']} {c['score']:.3f}" for c in report["top_classes"])
    say(f"top classes (sigmoid of the logit): {top}")


def image_report(reader: StoreReader, record: int, targets: LDTargets) -> dict:
    """Rows and locations per level and region of one record, with their mean edge entropy."""
    per_level = []
    for lvl, rows in enumerate(targets.levels()):
        per_level.append({
            "level": lvl, "rows": int(len(rows.loc)), "locations": int(len(np.unique(rows.loc))),
            **{name: int(((rows.flags & bit) > 0).sum()) for name, bit in REGION_FLAGS.items()},
            "mean_edge_entropy": float(edge_entropy(rows.reg).mean()) if len(rows.loc) else None})
    return {"record": record, "img_shape": reader.img_shape[record].tolist(), "flip": bool(reader.flip[record]),
            "priors_per_location": reader.attrs.head.num_base_priors,
            "vlr_metrics": list(reader.attrs.region.vlr_metrics), "levels": per_level}


def print_image_report(image_id: int, view: int, report: dict) -> None:
    """The image's rows per level (and locations, with several priors per location), then its location report."""
    image = report["image"]
    several = image["priors_per_location"] > 1
    regions = region_columns(report["location"]["vlr_rule"], image["vlr_metrics"])
    console.table(f"image {image_id}, view {view}: img_shape {image['img_shape']}{' flipped' if image['flip'] else ''}",
                  ("level", "rows", *["locations"] * several, *regions, "mean edge entropy"),
                  [(f"P{lvl['level'] + 3}", str(lvl["rows"]), *[str(lvl["locations"])] * several,
                    *[str(lvl[key]) for key in regions.values()],
                    "-" if lvl["mean_edge_entropy"] is None else f"{lvl['mean_edge_entropy']:.3f}")
                   for lvl in image["levels"]])
    print_location(report["location"])
