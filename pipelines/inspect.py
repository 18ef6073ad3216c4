"""`ldcache inspect`: summaries, per-location edge distributions, ambiguity pictures, statistics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ldcache.errors import LDCacheError
from ldcache.regions import VLR_METRICS
from ldcache.store import FLAG_MAIN, FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL, StoreReader, store_bytes_on_disk, store_exists
from ldcache.store_stats import edge_entropy, store_statistics

EDGES = ("left", "top", "right", "bottom")
console = Console()


def store_summary(reader: StoreReader) -> dict:
    """What `ldcache inspect STORE` shows, as a dict (the --json output)."""
    attrs = reader.attrs
    stats = store_statistics(reader.group)
    disk = store_bytes_on_disk(reader.path)
    dense = attrs["summary"]["dense_fp16_bytes"]
    return {
        "store": str(reader.path), "format_version": attrs["ldcache_format"], "status": attrs["status"],
        "teacher_config": attrs["teacher"]["config"], "teacher_checkpoint": attrs["teacher"]["checkpoint"],
        "checkpoint_sha256": attrs["teacher"]["checkpoint_sha256"],
        "images": len(reader.image_ids), "views": [v["name"] for v in attrs["views"]],
        "image_views": reader.num_records, "region_mode": attrs["region"]["mode"],
        "gamma": attrs["region"]["gamma"], "strides": attrs["head"]["strides"],
        "rows_per_level": stats["rows_per_level"], "rows_per_level_and_region": stats["rows_per_level_and_region"],
        "bytes_on_disk": disk, "bytes_per_image_view": disk / max(reader.num_records, 1),
        "compression_vs_dense_fp16": dense / max(disk, 1),
        "mean_edge_entropy_per_level": stats["mean_edge_entropy"],
    }


def print_summary(summary: dict) -> None:
    table = Table(title=f"ldcache store {summary['store']}", show_header=False)
    rows = [
        ("format / status", f"v{summary['format_version']} / {summary['status']}"),
        ("teacher", f"{summary['teacher_config']}\n{summary['teacher_checkpoint']} "
                    f"(sha256 {summary['checkpoint_sha256'][:12]}...)"),
        ("images x views", f"{summary['images']} x {len(summary['views'])} ({', '.join(summary['views'])}) "
                           f"= {summary['image_views']}"),
        ("region mode, gamma", f"{summary['region_mode']}, {summary['gamma']}"),
        ("bytes on disk", f"{summary['bytes_on_disk'] / 2**20:.2f} MiB "
                          f"({summary['bytes_per_image_view'] / 1024:.1f} KiB per image-view, "
                          f"{summary['compression_vs_dense_fp16']:.1f}x smaller than dense fp16)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    levels = Table(title="per level")
    for column in ("level", "stride", "rows", "main", "VLR official", "VLR diou", "mean edge entropy (nats)"):
        levels.add_column(column, justify="right")
    regions = summary["rows_per_level_and_region"]
    for level, stride in enumerate(summary["strides"]):
        entropy = summary["mean_edge_entropy_per_level"][level]
        levels.add_row(f"P{level + 3}", str(stride), str(summary["rows_per_level"][level]),
                       str(regions["main"][level]), str(regions["vlr_official"][level]),
                       str(regions["vlr_diou"][level]), "-" if entropy is None else f"{entropy:.3f}")
    console.print(levels)


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=2))


# ----------------------------------------------------------------------------- one image

def _check_level(reader: StoreReader, level: int | None) -> None:
    count = len(reader.attrs["head"]["strides"])
    if level is not None and not 0 <= level < count:
        raise LDCacheError(f"level {level} out of range: the store has levels 0..{count - 1} (P3..P{count + 2})")


def locate(reader: StoreReader, record: int, at: tuple[float, float], level: int | None, grid: bool):
    """(level, row index within the level) of the location `at`, or a clear error."""
    h, w = reader.img_shape[record]
    strides = reader.attrs["head"]["strides"]
    targets = reader.read_record(record)
    candidates = [level] if level is not None else range(len(strides))
    for lvl in candidates:
        grid_h, grid_w = targets.grid[lvl]
        if grid:
            gx, gy = int(at[0]), int(at[1])
            if not (0 <= gx < grid_w and 0 <= gy < grid_h):
                raise LDCacheError(f"grid location {gx},{gy} is outside level {lvl}'s {grid_w}x{grid_h} grid")
        else:
            if not (0 <= at[0] < w and 0 <= at[1] < h):
                raise LDCacheError(f"location {at[0]},{at[1]} is outside the image ({w}x{h} in this view)")
            gx, gy = int(round(at[0] / strides[lvl])), int(round(at[1] / strides[lvl]))
        rows = targets.level(lvl)
        hit = np.nonzero(rows.loc == gy * grid_w + gx)[0]
        if len(hit):
            return lvl, int(hit[0])
    where = f"level {level}" if level is not None else "any level"
    raise LDCacheError(f"location {at[0]},{at[1]} is not stored at {where}: in 'distill' mode only Main and "
                       "VLR locations are (see the image's --plot for where they are)")


def most_ambiguous(reader: StoreReader, record: int, level: int | None) -> tuple[int, int]:
    """The Main-region row with the flattest edge distributions (or any row if none is Main)."""
    targets = reader.read_record(record)
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
        raise LDCacheError("this record stores no rows at the chosen level(s)")
    return best[1], best[2]


def location_report(reader: StoreReader, record: int, level: int, row: int, tau: float) -> dict:
    targets = reader.read_record(record)
    rows = targets.level(level)
    grid_w = int(targets.grid[level][1])
    stride = reader.attrs["head"]["strides"][level]
    loc = int(rows.loc[row])
    reg = rows.reg[row].astype(np.float64) / tau
    probs = np.exp(reg - reg.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cls = rows.cls[row].astype(np.float64)
    classes = reader.attrs["dataset"]["classes"]
    top = np.argsort(-cls)[:5]
    flags = int(rows.flags[row])
    return {
        "record": record, "level": level, "stride": stride, "grid_xy": [loc % grid_w, loc // grid_w],
        "image_xy": [(loc % grid_w) * stride, (loc // grid_w) * stride], "tau": tau,
        "regions": [name for name, bit in (("main", FLAG_MAIN), ("vlr_official", FLAG_VLR_OFFICIAL),
                                            ("vlr_diou", FLAG_VLR_DIOU)) if flags & bit],
        "vlr_ratio": dict(zip(VLR_METRICS, rows.vlr_ratio[row].astype(float).tolist())),
        "vlr_weight": dict(zip(VLR_METRICS, rows.vlr_weight[row].astype(float).tolist())),
        "edge_distributions": {e: probs[i].tolist() for i, e in enumerate(EDGES)},
        "edge_entropy": dict(zip(EDGES, edge_entropy(rows.reg[row], tau).tolist())),
        "top_classes": [{"class": classes[i], "logit": float(cls[i]), "score": float(1 / (1 + np.exp(-cls[i])))}
                        for i in top],
    }


def print_location(report: dict) -> None:
    console.print(f"[bold]P{report['level'] + 3}[/] (stride {report['stride']}) grid {report['grid_xy']} = "
                  f"image {report['image_xy']}; regions: {', '.join(report['regions']) or 'none'}; "
                  f"VLR ratio {report['vlr_ratio']}, weight {report['vlr_weight']}")
    bins = len(next(iter(report["edge_distributions"].values())))
    for edge, probs in report["edge_distributions"].items():
        console.print(f"[bold]{edge}[/] edge, tau {report['tau']}, entropy {report['edge_entropy'][edge]:.3f} nats "
                      f"(bin k = k x {report['stride']} px from the anchor point)")
        for k in range(bins):
            bar = "█" * int(round(probs[k] * 60))
            console.print(f"  {k:2d} {k * report['stride']:5d}px {probs[k]:6.3f} [cyan]{bar}[/]")
    top = ", ".join(f"{c['class']} {c['score']:.3f}" for c in report["top_classes"])
    console.print(f"top classes (sigmoid of the logit): {top}")


def image_report(reader: StoreReader, record: int) -> dict:
    targets = reader.read_record(record)
    per_level = []
    for lvl, rows in enumerate(targets.levels()):
        per_level.append({
            "level": lvl, "rows": int(len(rows.loc)), "main": int(((rows.flags & FLAG_MAIN) > 0).sum()),
            "vlr_official": int(((rows.flags & FLAG_VLR_OFFICIAL) > 0).sum()),
            "vlr_diou": int(((rows.flags & FLAG_VLR_DIOU) > 0).sum()),
            "mean_edge_entropy": float(edge_entropy(rows.reg).mean()) if len(rows.loc) else None})
    return {"record": record, "img_shape": reader.img_shape[record].tolist(), "flip": bool(reader.flip[record]),
            "levels": per_level}


# ----------------------------------------------------------------------------- pictures

def _image_and_boxes(reader: StoreReader, image_id: int, record: int):
    """The view's picture (resized, flipped) and its GT boxes, from the dump's annotation file."""
    import mmcv
    import torch

    from ldcache.views import View, boxes_in_view, view_geometry

    ann_file = Path(reader.attrs["dataset"]["ann_file"])
    if not ann_file.is_file():
        raise LDCacheError(f"the store's annotation file {ann_file} is gone; the picture needs it")
    coco = json.loads(ann_file.read_text())
    info = next(i for i in coco["images"] if i["id"] == image_id)
    img = mmcv.imread(str(Path(reader.attrs["dataset"]["img_dir"]) / info["file_name"]), channel_order="rgb")
    view_attrs = reader.attrs["views"][record % reader.num_views]
    view = View(tuple(view_attrs["scale"]), bool(view_attrs["flip"]))
    geo = view_geometry(info["width"], info["height"], view)
    img = mmcv.imresize(img, (geo.img_shape[1], geo.img_shape[0]))
    if view.flip:
        img = img[:, ::-1]
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in coco["annotations"] if a["image_id"] == image_id and not a.get("iscrowd", 0)]
    boxes = boxes_in_view(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), geo).numpy()
    return img, boxes


def plot_image(reader: StoreReader, image_id: int, record: int, focus: tuple[int, int], tau: float,
               out: Path, dpi: int = 100) -> Path:
    """Picture with GT boxes, per-level entropy heatmaps with Main/VLR marks, and the four edge
    distributions of the `focus` (level, row) location, drawn in pixels from the anchor point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, boxes = _image_and_boxes(reader, image_id, record)
    targets = reader.read_record(record)
    strides = reader.attrs["head"]["strides"]
    num_levels = len(strides)
    fig = plt.figure(figsize=(4 * (num_levels + 1), 8), dpi=dpi)
    grid = fig.add_gridspec(2, num_levels + 1)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(img)
    for x1, y1, x2, y2 in boxes:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.5))
    level, row = focus
    rows_focus = targets.level(level)
    grid_w = int(targets.grid[level][1])
    fx, fy = (int(rows_focus.loc[row]) % grid_w) * strides[level], (int(rows_focus.loc[row]) // grid_w) * strides[level]
    ax.plot([fx], [fy], marker="x", color="red", markersize=10)
    ax.set_title(f"image {image_id}, view {reader.attrs['views'][record % reader.num_views]['name']}")
    ax.axis("off")
    for lvl in range(num_levels):
        rows = targets.level(lvl)
        gh, gw = (int(v) for v in targets.grid[lvl])
        heat = np.full(gh * gw, np.nan)
        if len(rows.loc):
            heat[rows.loc] = edge_entropy(rows.reg, tau).mean(axis=1)
        axh = fig.add_subplot(grid[0, lvl + 1])
        axh.imshow(heat.reshape(gh, gw), cmap="magma", vmin=0, vmax=np.log(rows.reg.shape[-1]))
        main = rows.loc[(rows.flags & FLAG_MAIN) > 0]
        vlr = rows.loc[((rows.flags & FLAG_VLR_OFFICIAL) > 0) & ((rows.flags & FLAG_MAIN) == 0)]
        axh.scatter(vlr % gw, vlr // gw, s=6, c="cyan", marker=".", label="VLR")
        axh.scatter(main % gw, main // gw, s=14, c="lime", marker="s", label="Main")
        axh.set_title(f"P{lvl + 3} edge entropy (tau {tau})")
        axh.axis("off")
    axh.legend(loc="lower right", fontsize=7)
    report = location_report(reader, record, level, row, tau)
    for i, edge in enumerate(EDGES):
        axd = fig.add_subplot(grid[1, i])
        probs = report["edge_distributions"][edge]
        axd.bar(np.arange(len(probs)) * report["stride"], probs, width=report["stride"] * 0.8, color="tab:blue")
        axd.set_xlabel(f"{edge} distance (px from the anchor point)")
        axd.set_title(f"{edge}: entropy {report['edge_entropy'][edge]:.2f}")
    fig.suptitle(f"P{level + 3} location {report['grid_xy']} ({', '.join(report['regions']) or 'no region'})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_stats(stats: dict, out: Path, dpi: int = 100) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = len(stats["entropy_histogram"])
    fig, axes = plt.subplots(2, levels, figsize=(3.2 * levels, 6), dpi=dpi, squeeze=False)
    edges = np.array(stats["entropy_bin_edges"])
    for lvl in range(levels):
        axes[0, lvl].bar(edges[:-1], stats["entropy_histogram"][lvl], width=np.diff(edges), align="edge")
        axes[0, lvl].set_title(f"P{lvl + 3} edge entropy (nats)")
        sizes = stats["region_size_histogram"][lvl]
        se = np.array(sizes["edges"])
        axes[1, lvl].bar(se[:-1], sizes["counts"], width=np.diff(se), align="edge", color="tab:orange")
        axes[1, lvl].set_title(f"P{lvl + 3} rows per image-view")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def open_reader(store: str | Path) -> StoreReader:
    """A reader of a finished store of this format version, or a one-line reason why not."""
    if not store_exists(store):
        raise LDCacheError(f"store {store} does not exist")
    return StoreReader(store)
