"""Pictures of a store: one image-view with its regions and edge distributions; dataset histograms."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..errors import BadInputError
from ..store.format import FLAG_MAIN, FLAGS_VLR
from ..store.reader import StoreReader
from ..store.statistics import edge_entropy
from ..store.targets import LDTargets, LevelRows
from .report import (EDGES, RowKey, anchor_label, location_report, location_title, region_names,
                     row_index)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Inches per map or histogram panel: with the default dpi and font size (10 pt) every text stays
# readable and the maps keep a few pixels per grid cell at P3.
PANEL_IN = 3.4
# Room on the right of the maps for the colour scale and the legend.
SIDE_IN = 3.6
ENTROPY_UNIT = "mean edge entropy (nats)"
# Colours: GT boxes, the GT the edges are measured to, the teacher's box of the shown row.
GT_COLOR, MATCH_COLOR, TEACHER_COLOR = "lime", "gold", "red"
# Where a GT edge the bins cannot express is drawn: in the histogram's margin, beside the bins.
MARGIN_BINS = 0.75


class GtMatch(NamedTuple):
    """The GT box a row's edges are compared with, and where its edges lie from the row's prior point."""

    box: np.ndarray  # [4] xyxy in the view's pixels
    iou: float  # with the teacher's box
    bins: np.ndarray  # [4] left, top, right, bottom distances in bins (units of the level's stride)


def view_image(reader: StoreReader, record: int) -> np.ndarray:
    """The record's picture as the teacher saw it: resized to the view's img_shape, flipped if the view is."""
    import cv2
    import mmcv

    path = Path(reader.attrs.dataset.img_dir) / reader.image_file(record // reader.num_views)
    if not path.is_file():
        raise BadInputError(f"the image {path} the store was dumped from is gone; the picture needs it")
    try:
        img = mmcv.imread(str(path), channel_order="rgb")
    except cv2.error as e:  # a file OpenCV cannot decode
        raise BadInputError(f"cannot decode the image {path}: {str(e).strip().splitlines()[-1]}") from None
    if img is None:
        raise BadInputError(f"cannot decode the image {path}")
    h, w = (int(v) for v in reader.img_shape[record])
    img = mmcv.imresize(img, (w, h))
    return img[:, ::-1] if reader.flip[record] else img


def view_gt_boxes(reader: StoreReader, record: int) -> np.ndarray:
    """[G, 4] xyxy GT boxes of the record's image in its view, mapped with the stored geometry as the
    dump mapped them for the regions (no image needed)."""
    import torch

    from ..domain.views import ViewGeometry, boxes_in_view

    geo = ViewGeometry(tuple(int(v) for v in reader.img_shape[record]), tuple(map(float, reader.scale_factor[record])),
                       tuple(int(v) for v in reader.pad_shape[record]), bool(reader.flip[record]))
    boxes = reader.gt_boxes(record // reader.num_views).astype(np.float32)
    return boxes_in_view(torch.from_numpy(boxes), geo).numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def expectations(probs: np.ndarray) -> np.ndarray:
    """[..., bins] -> [...]: each distribution's expectation, in bins."""
    return probs @ np.arange(probs.shape[-1])


def teacher_box(targets: LDTargets, key: RowKey, point: tuple[float, float], stride: int) -> np.ndarray:
    """[4] xyxy box the teacher predicts at the row: its edge expectations at temperature 1 (what its
    head decodes), in strides from the prior point."""
    rows = targets.level(key.level)
    left, top, right, bottom = expectations(_softmax(rows.reg[row_index(targets, key)])) * stride
    return np.array([point[0] - left, point[1] - top, point[0] + right, point[1] + bottom])


def _area(boxes: np.ndarray) -> np.ndarray:
    """Areas of xyxy boxes [..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[G]: IoU of one xyxy box with each of `boxes`."""
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    return inter / np.maximum(_area(box) + _area(boxes) - inter, 1e-9)


def match_gt(boxes: np.ndarray, predicted: np.ndarray, point: tuple[float, float], stride: int) -> GtMatch | None:
    """The GT box of highest IoU with the teacher's box `predicted` (the store keeps no row's GT), and
    its edges' distances from the prior point in bins; None without a GT box that overlaps it."""
    if not len(boxes):
        return None
    ious = _iou(predicted, boxes)
    best = int(np.argmax(ious))
    if ious[best] <= 0:
        return None
    x1, y1, x2, y2 = boxes[best]
    px, py = point
    return GtMatch(boxes[best], float(ious[best]), np.array([px - x1, py - y1, x2 - px, y2 - py]) / stride)


def image_figure(reader: StoreReader, image_id: int, record: int, targets: LDTargets, focus: RowKey, tau: float,
                 picture: np.ndarray, dpi: int = 100) -> Figure:
    """The image figure as a matplotlib Figure (Agg canvas): top, the view's `picture` with its GT boxes
    and an entropy map per level that stores rows (Main/VLR marked, one colour scale, a legend beside
    them); below, the `focus` row's four edge distributions at `tau`, each with the GT edge and its
    expectation. The shown row is marked on the picture and on its level's map."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report = location_report(reader, record, targets, focus, tau)
    point = tuple(report["image_xy"])
    predicted = teacher_box(targets, focus, point, report["stride"])
    boxes = view_gt_boxes(reader, record)
    match = match_gt(boxes, predicted, point, report["stride"])
    levels = [lvl for lvl in range(len(reader.strides)) if len(targets.level(lvl).loc)]
    fig = Figure(figsize=(PANEL_IN * max(len(levels) + 1, 4) + SIDE_IN, 2.4 * PANEL_IN), dpi=dpi,
                 layout="constrained")  # constrained: no title or label overlaps another
    FigureCanvasAgg(fig)
    regions = ", ".join(region_names(report["regions"], report["vlr_rule"])) or "no region"
    fig.suptitle(f"{location_title(report)} ({regions})", fontsize="x-large")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.15, 1))
    axes = top.subplots(1, len(levels) + 1, squeeze=False)[0]
    view = reader.attrs.views[record % reader.num_views].name
    _draw_picture(axes[0], picture, boxes, match, predicted, report, f"image {image_id}, view {view}")
    _draw_maps(axes[1:], targets, levels, reader.strides, tau, report)
    _entropy_scale(top, axes[1:], targets.bins)
    top.legend(handles=_legend_handles(), loc="outside right upper")
    top.suptitle(_maps_title(levels, len(reader.strides), tau, report["priors_per_location"]))
    _draw_histograms(bottom, report, match)
    bottom.supxlabel(_caption(report, match, len(boxes)))
    return fig


def _entropy_scale(subfig, maps, bins: int) -> None:
    """One colour scale for every map (they share the range 0..ln(bins)), its top named: flat."""
    scale = subfig.colorbar(maps[0].images[0], ax=list(maps), label=ENTROPY_UNIT, shrink=0.9)
    scale.set_ticks([0, 1, 2, np.log(bins)], labels=["0", "1", "2", f"ln {bins}: flat"])


def _location_marker(ax, x: float, y: float, label: str, size: float) -> None:
    """The shown row's location: a white ring outlined in black (visible on the picture and on every
    colour of the map), labelled, the label on the side of the panel's centre so it stays inside."""
    from matplotlib import patheffects

    ax.plot(x, y, marker="o", ms=size, mfc="none", mec="white", mew=2, ls="", gid="location", clip_on=False,
            path_effects=[patheffects.withStroke(linewidth=4, foreground="black")])
    x_mid, y_mid = np.mean(ax.get_xlim()), np.mean(ax.get_ylim())
    ax.annotate(label, (x, y), xytext=(-12 if x > x_mid else 12, -12 if y < y_mid else 12),
                textcoords="offset points", ha="right" if x > x_mid else "left", va="center",
                bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.85))


def _draw_picture(ax, picture: np.ndarray, boxes: np.ndarray, match: GtMatch | None, predicted: np.ndarray,
                  report: dict, title: str) -> None:
    """The view's picture: GT boxes, the GT the edges are measured to, the teacher's box of the shown
    row (dashed), and the row's prior point."""
    from matplotlib.patches import Rectangle

    ax.imshow(picture)
    for box in boxes:
        ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, color=GT_COLOR, lw=1.5))
    if match is not None:
        ax.add_patch(Rectangle(match.box[:2], *(match.box[2:] - match.box[:2]), fill=False, color=MATCH_COLOR,
                               lw=3, gid="matched_gt"))
    ax.add_patch(Rectangle(predicted[:2], *(predicted[2:] - predicted[:2]), fill=False, color=TEACHER_COLOR,
                           lw=1.5, ls="--", gid="teacher_box"))
    ax.set_xlim(0, picture.shape[1])  # the image's frame, whatever boxes reach out of it
    ax.set_ylim(picture.shape[0], 0)
    _location_marker(ax, *report["image_xy"], _short_location(report), 12)
    ax.set_title(title)
    ax.axis("off")


def _short_location(report: dict) -> str:
    """'P3 [12, 30] anchor 5/9': the label of the location marker."""
    return f"P{report['level'] + 3} {report['grid_xy']}{anchor_label(report['prior'], report['priors_per_location'])}"


def _draw_maps(axes, targets: LDTargets, levels: list[int], strides, tau: float, report: dict) -> None:
    """One entropy map per level in `levels` (a location with several rows shows its flattest; grey:
    no row), Main and VLR rows marked, the shown row's location ringed."""
    vmax = np.log(targets.bins)  # the entropy of a flat distribution: every map on the same scale
    for ax, lvl in zip(axes, levels):
        rows = targets.level(lvl)
        heat = entropy_map(targets, lvl, tau)
        ax.imshow(heat, cmap="magma", vmin=0, vmax=vmax)
        # Marks about one grid cell wide, whatever the level's grid size.
        gh, gw = heat.shape
        cell = min(0.8 * PANEL_IN * 72 / max(gh, gw), 8.0)
        main, vlr = marked_locations(rows)
        ax.scatter(vlr % gw, vlr // gw, s=(cell / 2) ** 2, c="cyan", marker="o", lw=0)
        # Open squares: the entropy of a Main location stays visible inside its mark.
        ax.scatter(main % gw, main // gw, s=cell ** 2, marker="s", facecolors="none", edgecolors="lime", lw=0.8)
        if lvl == report["level"]:
            _location_marker(ax, *report["grid_xy"], _short_location(report), 10)
        ax.set_title(f"P{lvl + 3} (stride {strides[lvl]}): {len(rows.loc)} row{'s' * (len(rows.loc) != 1)}")
        ax.set_facecolor("0.8")
        ax.set_xticks([])
        ax.set_yticks([])


def entropy_map(targets: LDTargets, level: int, tau: float) -> np.ndarray:
    """[H_l, W_l] mean edge entropy (nats, at `tau`) per location of the level's grid: a location with
    several rows shows its flattest, one without rows NaN."""
    rows = targets.level(level)
    gh, gw = (int(v) for v in targets.grid[level])
    heat = np.full(gh * gw, np.nan)
    # fmax keeps a location's largest entropy and skips the NaN of a location without rows.
    np.fmax.at(heat, rows.loc, edge_entropy(rows.reg, tau).mean(axis=1))
    return heat.reshape(gh, gw)


def marked_locations(rows: LevelRows) -> tuple[np.ndarray, np.ndarray]:
    """Locations (y * W + x) of the level's Main rows, and of its VLR rows that are not Main (VLR of
    either stored metric: a store of one metric has only that metric's flag)."""
    main = (rows.flags & FLAG_MAIN) > 0
    return rows.loc[main], rows.loc[((rows.flags & FLAGS_VLR) > 0) & ~main]


def _maps_title(levels: list[int], num_levels: int, tau: float, priors_per_location: int) -> str:
    """The maps' heading: what they show, and the levels left out for having no rows."""
    flattest = " (a location's flattest row)" if priors_per_location > 1 else ""
    empty = [f"P{lvl + 3}" for lvl in range(num_levels) if lvl not in levels]
    note = f"; no rows at {', '.join(empty)}" if empty else ""
    return f"edge entropy per location at tau {tau:g}{flattest}{note}"


def _legend_handles() -> list:
    """Proxy artists of the legend beside the maps: one per kind of mark in the picture and maps."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=GT_COLOR, lw=1.5, label="GT box"),
            Line2D([], [], color=MATCH_COLOR, lw=3, label="GT of the edges below"),
            Line2D([], [], color=TEACHER_COLOR, lw=1.5, ls="--", label="teacher box of the row"),
            Line2D([], [], marker="s", ls="", mfc="none", mec="lime", label="Main row"),
            Line2D([], [], marker="o", ms=5, ls="", mew=0, color="cyan", label="VLR row (not Main)"),
            Line2D([], [], marker="o", ls="", mfc="none", mec="black", mew=2, label="shown row")]


def _draw_histograms(subfig, report: dict, match: GtMatch | None) -> None:
    """The shown row's four edge distributions over bins, each with its GT edge and its expectation."""
    axes = subfig.subplots(1, len(EDGES))
    for i, (ax, edge) in enumerate(zip(axes, EDGES)):
        probs = np.asarray(report["edge_distributions"][edge])
        ax.bar(np.arange(len(probs)), probs, width=0.8, color="tab:blue")
        # Dashed and above the GT line: both stay visible when they nearly coincide.
        ax.axvline(expectations(probs), color="black", ls="--", lw=1.5, gid="mean", zorder=3,
                   label=f"mean {expectations(probs):.1f}")
        if match is not None:
            _gt_line(ax, match.bins[i], len(probs) - 1)
        ax.set_xlim(-1, len(probs))
        ax.set_xticks(range(0, len(probs), 2))
        ax.set_ylim(0, 1.45 * probs.max())  # headroom above the bars for the legend
        ax.set_xlabel(f"{edge} distance (bins of {report['stride']} px)")
        ax.set_title(f"{edge}: entropy {report['edge_entropy'][edge]:.2f} nats")
        ax.legend(loc="upper right")


def _gt_line(ax, distance: float, last_bin: int) -> None:
    """A vertical GT line at `distance` bins. One the bins cannot express (past the last, or before
    bin 0 when the prior point lies outside the GT box) is drawn in the margin on that side, with
    an arrow head pointing out and the distance in the legend."""
    shown, label = gt_line(distance, last_bin)
    ax.axvline(shown, color="green", lw=2.5, gid="gt", label=label)
    if shown != distance:
        ax.plot(shown, 0.5, marker=">" if shown > last_bin else "<", ms=12, color="green", clip_on=False,
                transform=ax.get_xaxis_transform())


def gt_line(distance: float, last_bin: int) -> tuple[float, str]:
    """Where a GT edge `distance` bins from the prior point is drawn on a histogram of bins
    0..last_bin, and its label: at the distance, or in the margin on the side the bins cannot
    express (past the last, or before bin 0 when the prior point lies outside the GT box)."""
    if 0 <= distance <= last_bin:
        return distance, f"GT {distance:.1f}"
    if distance > last_bin:
        return last_bin + MARGIN_BINS, f"GT {distance:.1f} (past bin {last_bin})"
    return -MARGIN_BINS, f"GT {distance:.1f} (before bin 0)"


def _caption(report: dict, match: GtMatch | None, num_boxes: int) -> str:
    """What the histograms show, and how the GT edge was chosen (the store keeps no row's GT box)."""
    x, y = report["image_xy"]
    bars = (f"Bars: the row's edge distributions at tau {report['tau']:g}, bin k = k x {report['stride']} px "
            f"from its prior point ({x}, {y}); dashed: their mean (expectation).")
    if match is None:
        why = "no GT box in this view" if not num_boxes else "no GT box overlaps the teacher's box"
        return f"{bars}\nNo GT line: {why}."
    return (f"{bars}\nGT: the edge of the view's GT box of highest IoU ({match.iou:.2f}) with the teacher's box "
            "(the row's expectations at tau 1); the store keeps no row's GT.")


def plot_image(reader: StoreReader, image_id: int, record: int, targets: LDTargets, focus: RowKey,
               tau: float, out: Path, dpi: int = 100) -> Path:
    """Write the image figure (`image_figure`) of the record's picture as a PNG at `out`."""
    image_figure(reader, image_id, record, targets, focus, tau, view_image(reader, record), dpi).savefig(out)
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
