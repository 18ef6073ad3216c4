"""What `ldcache inspect` reports: the store summary, one image's rows, one location's distributions."""
from __future__ import annotations

import numpy as np

from .. import console
from ..domain.classes import listed_classes
from ..errors import BadInputError, StoreMismatchError
from ..store.filesystem import store_bytes_on_disk
from ..store.format import FLAG_MAIN, REGION_FLAGS, VLR_METRICS
from ..store.reader import StoreReader
from ..store.targets import LDTargets
from ..store.statistics import edge_entropy

EDGES = ("left", "top", "right", "bottom")


def store_summary(reader: StoreReader) -> dict:
    """What `ldcache inspect STORE` shows, as a dict (the --json output). It reads the statistics the
    dump wrote into the attributes, never a chunk of the logits."""
    attrs = reader.attrs
    stats = attrs.statistics.to_dict()
    disk = store_bytes_on_disk(reader.path)
    return {
        "store": str(reader.path), "format_version": attrs.ldcache_format, "status": attrs.status,
        "teacher_config": attrs.teacher.config, "teacher_checkpoint": attrs.teacher.checkpoint,
        "checkpoint_sha256": attrs.teacher.checkpoint_sha256,
        "classes": list(attrs.dataset.classes),
        "images": len(reader.image_ids), "views": [v.name for v in attrs.views],
        "image_views": reader.num_records, "region_mode": attrs.region.mode,
        "gamma": attrs.region.gamma, "strides": list(attrs.head.strides),
        "rows_per_level": stats["rows_per_level"], "rows_per_level_and_region": stats["rows_per_level_and_region"],
        "bytes_on_disk": disk, "bytes_per_image_view": disk / max(reader.num_records, 1),
        "compression_vs_dense_fp16": attrs.summary.dense_fp16_bytes / max(disk, 1),
        "mean_edge_entropy_per_level": stats["mean_edge_entropy"],
    }


def print_summary(summary: dict) -> None:
    console.key_value_table(f"ldcache store {summary['store']}", [
        ("format / status", f"v{summary['format_version']} / {summary['status']}"),
        ("teacher", f"{summary['teacher_config']}\n{summary['teacher_checkpoint']} "
                    f"(sha256 {summary['checkpoint_sha256'][:12]}...)"),
        ("classes", listed_classes(summary["classes"])),
        ("images x views", f"{summary['images']} x {len(summary['views'])} ({', '.join(summary['views'])}) "
                           f"= {summary['image_views']}"),
        ("region mode, gamma", f"{summary['region_mode']}, {summary['gamma']}"),
        ("bytes on disk", f"{summary['bytes_on_disk'] / 2**20:.2f} MiB "
                          f"({summary['bytes_per_image_view'] / 1024:.1f} KiB per image-view, "
                          f"{summary['compression_vs_dense_fp16']:.1f}x smaller than dense fp16)"),
    ])
    print_level_table(summary["strides"], summary)


def print_level_table(strides, stats: dict) -> None:
    """Rows per level and region, and the mean edge entropy, of a summary or of --stats."""
    regions = stats["rows_per_level_and_region"]
    entropies = stats.get("mean_edge_entropy_per_level", stats.get("mean_edge_entropy"))
    console.table("per level", ("level", "stride", "rows", "main", "VLR official", "VLR diou",
                                "mean edge entropy (nats)"),
                  [(f"P{level + 3}", str(stride), str(stats["rows_per_level"][level]), str(regions["main"][level]),
                    str(regions["vlr_official"][level]), str(regions["vlr_diou"][level]),
                    "-" if entropies[level] is None else f"{entropies[level]:.3f}")
                   for level, stride in enumerate(strides)])


def print_stats(strides, stats: dict) -> None:
    """`inspect --stats` as tables: the per-level table, then the entropy quartiles per level."""
    print_level_table(strides, stats)
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
    count = len(reader.strides)
    if level is not None and not 0 <= level < count:
        raise BadInputError(f"level {level} out of range: the store has levels 0..{count - 1} (P3..P{count + 2})")


def locate(reader: StoreReader, record: int, targets: LDTargets, at: tuple[float, float], level: int | None,
           grid: bool) -> tuple[int, int]:
    """(level, row index within the level) of the location `at`, or a clear error.

    `at` is in the view's image pixels (the nearest anchor point of each level), or in grid cells."""
    h, w = reader.img_shape[record]
    candidates = [level] if level is not None else range(len(reader.strides))
    for lvl in candidates:
        grid_h, grid_w = (int(v) for v in targets.grid[lvl])
        if grid:
            gx, gy = int(at[0]), int(at[1])
            if not (0 <= gx < grid_w and 0 <= gy < grid_h):
                raise BadInputError(f"grid location {gx},{gy} is outside level {lvl}'s {grid_w}x{grid_h} grid")
        else:
            if not (0 <= at[0] < w and 0 <= at[1] < h):
                raise BadInputError(f"location {at[0]},{at[1]} is outside the image ({w}x{h} in this view)")
            stride = reader.strides[lvl]
            # The nearest anchor point, kept on the grid: rounding can land one past its last column.
            gx = min(int(round(at[0] / stride)), grid_w - 1)
            gy = min(int(round(at[1] / stride)), grid_h - 1)
        rows = targets.level(lvl)
        hit = np.nonzero(rows.loc == gy * grid_w + gx)[0]
        if len(hit):
            return lvl, int(hit[0])
    where = f"level {level}" if level is not None else "any level"
    raise BadInputError(f"location {at[0]},{at[1]} is not stored at {where}: in 'distill' mode only Main and "
                        "VLR locations are (see the image's --plot for where they are)")


def most_ambiguous(targets: LDTargets, level: int | None) -> tuple[int, int]:
    """The Main-region row with the flattest edge distributions (or any row if none is Main)."""
    best = None
    for lvl in ([level] if level is not None else range(len(targets.level_ptr) - 1)):
        rows = targets.level(lvl)
        if not len(rows.loc):
            continue
        entropy = edge_entropy(rows.reg).mean(axis=1) + 10.0 * ((rows.flags & FLAG_MAIN) > 0)
        i = int(np.argmax(entropy))
        if best is None or entropy[i] > best[0]:
            best = (entropy[i], lvl, i)
    if best is None:
        raise StoreMismatchError("this record stores no rows at the chosen level(s)")
    return best[1], best[2]


def location_report(reader: StoreReader, record: int, targets: LDTargets, level: int, row: int,
                    tau: float) -> dict:
    """One stored location: its grid and image position, regions, VLR data, the four edge
    distributions at temperature `tau` and the top classes."""
    rows = targets.level(level)
    grid_w = int(targets.grid[level][1])
    stride = reader.strides[level]
    loc = int(rows.loc[row])
    reg = rows.reg[row].astype(np.float64) / tau
    probs = np.exp(reg - reg.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cls = rows.cls[row].astype(np.float64)
    classes = reader.attrs.dataset.classes
    top = np.argsort(-cls)[:5]
    flags = int(rows.flags[row])
    return {
        "record": record, "level": level, "stride": stride, "grid_xy": [loc % grid_w, loc // grid_w],
        "image_xy": [(loc % grid_w) * stride, (loc // grid_w) * stride], "tau": tau,
        "regions": [name for name, bit in REGION_FLAGS.items() if flags & bit],
        "vlr_ratio": dict(zip(VLR_METRICS, rows.vlr_ratio[row].astype(float).tolist())),
        # The weight at the store's gamma; at a raised gamma it is the largest step IoU whose ratio reaches it.
        "vlr_weight": dict(zip(VLR_METRICS, rows.vlr_step_weight[row].max(axis=-1).astype(float).tolist())),
        "vlr_weight_steps": {m: [[float(r), float(w)] for r, w in zip(*steps) if w > 0]
                             for m, *steps in zip(VLR_METRICS, rows.vlr_step_ratio[row], rows.vlr_step_weight[row])},
        "edge_distributions": {e: probs[i].tolist() for i, e in enumerate(EDGES)},
        "edge_entropy": dict(zip(EDGES, edge_entropy(rows.reg[row], tau).tolist())),
        "top_classes": [{"class": classes[i], "logit": float(cls[i]), "score": float(1 / (1 + np.exp(-cls[i])))}
                        for i in top],
    }


def print_location(report: dict) -> None:
    say = console.out.print
    say(f"[bold]P{report['level'] + 3}[/] (stride {report['stride']}) grid {report['grid_xy']} = "
        f"image {report['image_xy']}; regions: {', '.join(report['regions']) or 'none'}; "
        f"VLR ratio {report['vlr_ratio']}, weight {report['vlr_weight']} "
        f"(steps of (ratio, IoU): {report['vlr_weight_steps']})")
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
    """Rows per level and region of one record, with their mean edge entropy."""
    per_level = []
    for lvl, rows in enumerate(targets.levels()):
        per_level.append({
            "level": lvl, "rows": int(len(rows.loc)),
            **{name: int(((rows.flags & bit) > 0).sum()) for name, bit in REGION_FLAGS.items()},
            "mean_edge_entropy": float(edge_entropy(rows.reg).mean()) if len(rows.loc) else None})
    return {"record": record, "img_shape": reader.img_shape[record].tolist(), "flip": bool(reader.flip[record]),
            "levels": per_level}


def print_image_report(image_id: int, view: int, report: dict) -> None:
    image = report["image"]
    console.table(f"image {image_id}, view {view}: img_shape {image['img_shape']}{' flipped' if image['flip'] else ''}",
                  ("level", "rows", "main", "VLR official", "VLR diou", "mean edge entropy"),
                  [(f"P{lvl['level'] + 3}", str(lvl["rows"]), str(lvl["main"]), str(lvl["vlr_official"]),
                    str(lvl["vlr_diou"]), "-" if lvl["mean_edge_entropy"] is None else f"{lvl['mean_edge_entropy']:.3f}")
                   for lvl in image["levels"]])
    print_location(report["location"])
