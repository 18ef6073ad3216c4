"""The viewer's Plotly figures: one level of an image-view (picture, entropy heatmap, regions, GT
boxes), one row's four edge distributions, and the store's histograms.

They draw what the static `--plot` picture draws (ldcache/inspect/plots.py), from the same
functions: the entropy map, the marked regions, the GT line and its margin."""
from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...domain.grid import prior_points
from ...store.targets import LDTargets
from ..plots import (GT_COLOR, MATCH_COLOR, TEACHER_COLOR, GtMatch, entropy_map, expectations, gt_line,
                     marked_locations)
from ..report import EDGES

MAIN_COLOR, VLR_COLOR = "lime", "cyan"  # as the static picture marks them
FOCUS_COLOR = "magenta"  # the shown row's ring: apart from every other mark and from the heatmap
HEAT_OPACITY = 0.6
OVERLAYS = {"heat": "entropy heatmap", "gt": "GT boxes", "main": "Main rows", "vlr": "VLR rows (not Main)"}


def picture_uri(picture: np.ndarray) -> str:
    """The view's RGB picture as a JPEG data URI: a COCO image is ~100 KB in the page, not the
    megabytes of its pixel array as JSON."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def level_figure(targets: LDTargets, level: int, stride: int, offset: float, img_shape: tuple[int, int],
                 tau: float, overlays: list[str], picture: str | None, boxes: np.ndarray,
                 focus: dict | None = None) -> go.Figure:
    """One level of an image-view over its picture, in the view's pixels.

    Args:
        targets (LDTargets): the record's rows.
        level (int): the level shown (0 = P3).
        stride (int), offset (float): the level's stride and the prior generator's centre offset.
        img_shape (tuple[int, int]): (h, w) of the view.
        tau (float): temperature of the entropy map.
        overlays (list[str]): keys of OVERLAYS to draw.
        picture (str | None): the view's picture as a data URI (`picture_uri`), None when the image is gone.
        boxes (np.ndarray): [G, 4] xyxy GT boxes in the view.
        focus (dict | None): the shown row: its location report's `image_xy`, and `teacher_box` and
            `gt_box` ([4] xyxy or None) to draw.

    Returns:
        go.Figure: clicking it reports (x, y) in the view's pixels.
    """
    h, w = img_shape
    fig = go.Figure()
    if picture is not None:
        fig.add_trace(go.Image(source=picture, x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"))
    heat = entropy_map(targets, level, tau)
    gh, gw = heat.shape
    fig.add_trace(go.Heatmap(
        z=heat, x=prior_points(np.arange(gw), stride, offset), y=prior_points(np.arange(gh), stride, offset),
        zmin=0, zmax=float(np.log(targets.bins)), colorscale="Magma", opacity=HEAT_OPACITY if "heat" in overlays else 0,
        hoverongaps=True, name="entropy", showscale="heat" in overlays,
        colorbar={"title": {"text": f"mean edge entropy (nats), tau {tau:g}", "side": "right"}, "thickness": 14},
        hovertemplate="x %{x}, y %{y}<br>mean edge entropy %{z:.3f}<extra></extra>"))
    rows = targets.level(level)
    main, vlr = marked_locations(rows)
    marks = {"vlr": (vlr, dict(symbol="circle", size=6, color=VLR_COLOR), "VLR row (not Main)"),
             "main": (main, dict(symbol="square-open", size=10, color=MAIN_COLOR, line={"width": 2}), "Main row")}
    for key, (locs, marker, name) in marks.items():
        if key in overlays:
            fig.add_trace(go.Scatter(x=prior_points(locs % gw, stride, offset), y=prior_points(locs // gw, stride, offset),
                                     mode="markers", marker=marker, name=name,
                                     hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}<extra></extra>"))
    if "gt" in overlays:
        for box in boxes:
            fig.add_shape(type="rect", x0=box[0], y0=box[1], x1=box[2], y1=box[3], line={"color": GT_COLOR, "width": 2})
    if focus is not None:
        _draw_focus(fig, focus)
    fig.update_xaxes(range=[-0.5, w - 0.5], showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(range=[h - 0.5, -0.5], showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": 1.06},
                      clickmode="event", uirevision=f"{level}", height=max(360, min(640, 60 + int(560 * h / max(w, 1)))))
    return fig


def _draw_focus(fig: go.Figure, focus: dict) -> None:
    """The shown row's prior point ringed, the teacher's box dashed, the GT box its edges are measured to."""
    if focus.get("gt_box") is not None:
        x1, y1, x2, y2 = focus["gt_box"]
        fig.add_shape(type="rect", x0=x1, y0=y1, x1=x2, y1=y2, line={"color": MATCH_COLOR, "width": 3})
    x1, y1, x2, y2 = focus["teacher_box"]
    fig.add_shape(type="rect", x0=x1, y0=y1, x1=x2, y1=y2, line={"color": TEACHER_COLOR, "width": 2, "dash": "dash"})
    x, y = focus["image_xy"]
    fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", name="shown row", hoverinfo="skip",
                             marker={"symbol": "circle-open", "size": 18, "color": FOCUS_COLOR, "line": {"width": 3}}))


def edge_figure(report: dict, match: GtMatch | None) -> go.Figure:
    """A row's four edge distributions: bars over bins, the mean dashed, the GT edge in green (in
    the margin when the bins cannot express it).

    Args:
        report (dict): the row's `location_report` (its distributions at its tau).
        match (GtMatch | None): the GT box the edges are compared with, if any.

    Returns:
        go.Figure: one panel per edge; its bar traces hold the probabilities as plain lists.
    """
    titles = []
    for i, edge in enumerate(EDGES):
        probs = np.asarray(report["edge_distributions"][edge])
        gt = "" if match is None else ", " + gt_line(float(match.bins[i]), len(probs) - 1)[1]
        titles.append(f"{edge}: {report['edge_entropy'][edge]:.2f} nats, mean {float(expectations(probs)):.1f}{gt}")
    fig = make_subplots(rows=1, cols=len(EDGES), shared_yaxes=True, horizontal_spacing=0.03, subplot_titles=titles)
    for i, edge in enumerate(EDGES):
        probs = np.asarray(report["edge_distributions"][edge])
        fig.add_trace(go.Bar(x=list(range(len(probs))), y=probs.tolist(), name=edge, marker_color="steelblue", showlegend=False,
                             hovertemplate=f"{edge} bin %{{x}}: %{{y:.4f}}<extra></extra>"), row=1, col=i + 1)
        fig.add_vline(x=float(expectations(probs)), line={"dash": "dash", "color": "black"}, row=1, col=i + 1)
        if match is not None:
            fig.add_vline(x=gt_line(float(match.bins[i]), len(probs) - 1)[0], line={"color": "green", "width": 3},
                          row=1, col=i + 1)
        fig.update_xaxes(range=[-1, len(probs)], title_text=f"{edge} distance (bins of {report['stride']} px)",
                         row=1, col=i + 1)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=300, margin={"l": 40, "r": 10, "t": 40, "b": 40}, bargap=0.15)
    return fig


def histogram_figure(title: str, counts: list[int], edges: list[float], x_title: str,
                     color: str = "steelblue") -> go.Figure:
    """Counts [B] over bins [edges[i], edges[i+1]) (edges [B + 1]) as bars."""
    edges = np.asarray(edges, dtype=np.float64)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=list(counts), width=np.diff(edges), marker_color=color,
                           hovertemplate="%{x:.2f}: %{y}<extra></extra>"))
    fig.update_layout(title=title, height=260, margin={"l": 40, "r": 10, "t": 40, "b": 40}, xaxis_title=x_title)
    return fig
