"""Pictures of a store: one image-view with its regions and edge distributions; dataset histograms."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..store.format import FLAG_MAIN, FLAG_VLR_OFFICIAL
from ..store.reader import StoreReader
from ..store.targets import LDTargets
from .report import EDGES, RowKey, location_report, location_title, region_names
from ..store.statistics import edge_entropy


def _image_and_boxes(reader: StoreReader, record: int):
    """The view's picture (resized, flipped) and its GT boxes, as the dump saw them."""
    import mmcv
    import torch

    from ..domain.views import View, boxes_in_view, view_geometry

    image_index = record // reader.num_views
    path = Path(reader.attrs.dataset.img_dir) / reader.image_file(image_index)
    if not path.is_file():
        raise BadInputError(f"the image {path} the store was dumped from is gone; the picture needs it")
    img = mmcv.imread(str(path), channel_order="rgb")
    view_attrs = reader.attrs.views[record % reader.num_views]
    view = View(tuple(view_attrs.scale), view_attrs.flip)
    geo = view_geometry(img.shape[1], img.shape[0], view)
    img = mmcv.imresize(img, (geo.img_shape[1], geo.img_shape[0]))
    if view.flip:
        img = img[:, ::-1]
    boxes = boxes_in_view(torch.from_numpy(reader.gt_boxes(image_index).astype(np.float32)), geo).numpy()
    return img, boxes


def plot_image(reader: StoreReader, image_id: int, record: int, targets: LDTargets, focus: RowKey,
               tau: float, out: Path, dpi: int = 100) -> Path:
    """Picture with GT boxes, per-level entropy heatmaps with Main/VLR marks (with several priors
    per location, the location's flattest row), and the four edge distributions of the `focus`
    row, drawn in pixels from the anchor point; the title names its location and anchor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, boxes = _image_and_boxes(reader, record)
    strides = reader.strides
    num_levels = len(strides)
    fig = plt.figure(figsize=(4 * (num_levels + 1), 8), dpi=dpi)
    grid = fig.add_gridspec(2, num_levels + 1)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(img)
    for x1, y1, x2, y2 in boxes:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.5))
    report = location_report(reader, record, targets, focus, tau)
    ax.plot(*report["image_xy"], marker="x", color="red", markersize=10)
    ax.set_title(f"image {image_id}, view {reader.attrs.views[record % reader.num_views].name}")
    ax.axis("off")
    for lvl in range(num_levels):
        rows = targets.level(lvl)
        gh, gw = (int(v) for v in targets.grid[lvl])
        heat = np.full(gh * gw, np.nan)
        # A location with several rows (anchors) shows its flattest; fmax skips the NaN of the empty cell.
        np.fmax.at(heat, rows.loc, edge_entropy(rows.reg, tau).mean(axis=1))
        axh = fig.add_subplot(grid[0, lvl + 1])
        axh.imshow(heat.reshape(gh, gw), cmap="magma", vmin=0, vmax=np.log(rows.reg.shape[-1]))
        main = rows.loc[(rows.flags & FLAG_MAIN) > 0]
        vlr = rows.loc[((rows.flags & FLAG_VLR_OFFICIAL) > 0) & ((rows.flags & FLAG_MAIN) == 0)]
        axh.scatter(vlr % gw, vlr // gw, s=6, c="cyan", marker=".", label="VLR")
        axh.scatter(main % gw, main // gw, s=14, c="lime", marker="s", label="Main")
        axh.set_title(f"P{lvl + 3} edge entropy (tau {tau})")
        axh.axis("off")
    axh.legend(loc="lower right", fontsize=7)
    for i, edge in enumerate(EDGES):
        axd = fig.add_subplot(grid[1, i])
        probs = report["edge_distributions"][edge]
        axd.bar(np.arange(len(probs)) * report["stride"], probs, width=report["stride"] * 0.8, color="tab:blue")
        axd.set_xlabel(f"{edge} distance (px from the anchor point)")
        axd.set_title(f"{edge}: entropy {report['edge_entropy'][edge]:.2f}")
    regions = region_names(report["regions"], report["vlr_rule"])
    fig.suptitle(f"{location_title(report)} ({', '.join(regions) or 'no region'})")
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
