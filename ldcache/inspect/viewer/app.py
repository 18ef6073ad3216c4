"""The viewer's pages and callbacks (Plotly Dash), and the server that runs them.

Pages: `/` the image list, `/image/<id>` one image (level map, click a location for its edge
distributions), `/summary` the store summary and its histograms. Every page reads the store
through one StoreSession, lazily; a store that cannot be opened, an image not in it, a location
without a row: each shows the CLI's one-line error in the page."""
from __future__ import annotations

import re
import threading

import numpy as np
from dash import Dash, Input, Output, State, ctx, dash_table, dcc, html, no_update

from ...errors import LDCacheError
from ...store.reader import StoreReader
from ..report import (EDGES, INSIDE_GT, level_columns, level_rows, location_title, most_ambiguous, region_columns,
                      region_names, summary_rows)
from ..stats import counts_histogram
from ..plots import expectations
from .figures import OVERLAYS, edge_figure, histogram_figure, level_figure
from .focus import Focus, focus, focus_row, vlr_at_gamma
from .image_list import NEEDS_INDEX, PAGE_SIZE, SORTS, image_page
from .session import StoreSession

DEFAULT_PORT = 8765
IMAGE_PATH = re.compile(r"^/image/(-?\d+)$")
TAU_MARKS = {1: "1", 2: "2", 5: "5", 10: "10 (LD)", 20: "20"}
TABLE_COLUMNS = [("image_id", "image id"), ("file", "file"), ("rows", "rows (all views)"), ("main", "Main rows"),
                 ("vlr", "VLR rows"), ("ambiguity", "most ambiguous Main row (nats)")]
STYLE = {"fontFamily": "system-ui, sans-serif", "margin": "0 16px"}
MAP_KEY = ("Click a location for its rows. Heatmap: a location's flattest row; green boxes: GT; gold: the GT the "
           "shown row's edges are measured to; red dashed: the teacher's box of the shown row (its edge means at "
           "tau 1); magenta ring: the shown row's prior point.")
EDGES_KEY = ("Bars: the shown row's edge distributions at the page's tau, bin k = k strides from its prior point; "
             "dashed: their mean; green: the GT edge (in the margin when the bins cannot reach it).")


def error_box(message: str) -> html.Div:
    """A one-line error in the page, worded as the CLI's."""
    return html.Div(f"error: {message}", className="ldcache-error",
                    style={"color": "#b00020", "fontWeight": "bold", "margin": "12px 0"})


def build_app(session: StoreSession) -> Dash:
    """The viewer's app.

    Args:
        session (StoreSession): the store (a folder or an s3:// URL), opened on the first request
            that needs it (again after a failure).

    Returns:
        Dash: its Flask server is `app.server`; `serve` runs it.
    """
    store = session.store
    app = Dash(__name__, title="ldcache inspect", suppress_callback_exceptions=True)
    app.layout = html.Div([
        dcc.Location(id="url", refresh="callback-nav"),  # a page change redraws the page, never reloads it
        html.Div([html.B("ldcache inspect "), html.Code(store), " · ", dcc.Link("images", href="/"), " · ",
                  dcc.Link("summary", href="/summary")], style={"padding": "10px 0", "borderBottom": "1px solid #ddd"}),
        html.Div(id="page"),
    ], style=STYLE)
    _route(app, session)
    _image_list_callbacks(app, session)
    _image_callbacks(app, session)
    return app


def serve(session: StoreSession, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Run the viewer until interrupted (Ctrl-C)."""
    # The image page draws with mmcv (the picture) and torch (the GT boxes in the view): imported
    # while the user looks at the list, the first image opens in a tenth of a second, not two.
    threading.Thread(target=_import_drawing, daemon=True, name="ldcache-warm-up").start()
    build_app(session).run(host=host, port=port, debug=False)


def _import_drawing() -> None:
    import mmcv  # noqa: F401
    import torch  # noqa: F401


def _route(app: Dash, session: StoreSession) -> None:
    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def page(pathname: str | None):
        try:
            reader = session.reader()
            if pathname in (None, "", "/"):
                return _image_list_page(reader)
            if pathname == "/summary":
                return _summary_page(reader, session.summary())
            match = IMAGE_PATH.match(pathname)
            if match:
                return _image_page(reader, int(match.group(1)))
            return error_box(f"no page {pathname}: the pages are / (images), /image/<id> and /summary")
        except LDCacheError as e:
            return error_box(str(e))


# The image list ---------------------------------------------------------------------------------

def _image_list_page(reader: StoreReader) -> html.Div:
    return html.Div([
        html.H3(f"{len(reader.image_ids)} images x {reader.num_views} views"),
        html.Div([
            html.Label("sort by ", htmlFor="sort"),
            dcc.RadioItems(id="sort", options=[{"label": v, "value": k} for k, v in SORTS.items()], value="id",
                           inline=True, style={"display": "inline-block"}, labelStyle={"marginRight": "14px"}),
        ]),
        html.Div([html.Label("search id ", htmlFor="search"),
                  dcc.Input(id="search", type="text", placeholder="image id (prefix), Enter", debounce=True, value="",
                            style={"width": "220px"}),
                  html.Span(" the ids starting with these digits", style={"color": "#555"})],
                 style={"marginTop": "6px"}),
        html.Div(id="index-status", style={"margin": "8px 0", "color": "#555"}),
        dash_table.DataTable(id="images", columns=[{"name": n, "id": k} for k, n in TABLE_COLUMNS],
                             page_action="custom", page_current=0, page_size=PAGE_SIZE, data=[],
                             style_cell={"textAlign": "left", "cursor": "pointer"}),
        html.Div("click a row to open its image", style={"color": "#555", "marginTop": "6px"}),
        dcc.Interval(id="index-poll", interval=1000, disabled=True),
    ])


def _image_list_callbacks(app: Dash, session: StoreSession) -> None:
    @app.callback(Output("images", "data"), Output("images", "page_count"), Output("images", "page_current"),
                  Output("index-status", "children"), Output("index-poll", "disabled"),
                  Input("sort", "value"), Input("search", "value"), Input("images", "page_current"),
                  Input("index-poll", "n_intervals"))
    def images(sort: str, query: str | None, page: int | None, _ticks: int | None):
        # A new sort or search starts at the first page.
        page = 0 if ctx.triggered_id in ("sort", "search") else page or 0
        try:
            reader = session.reader()
            index, status, waiting = None, "", False
            if sort in NEEDS_INDEX:
                progress = session.index()
                if progress.error:
                    status = f"error: {progress.error}"
                elif progress.result is None:
                    waiting = True
                    status = (f"reading every row for '{SORTS[sort]}' (once per machine and store completion): "
                              f"{progress.done}/{progress.total or '?'} blocks; shown by id until then")
                index = progress.result
            elif session.index_ready():
                index = session.index().result
            listed = image_page(reader, index, sort, query or "", page)
            rows = [{**row, "id": row["image_id"]} for row in listed.rows]
            found = f"{listed.matches} image{'s' * (listed.matches != 1)}"
            return rows, listed.page_count, listed.page, f"{found}. {status}".strip(), not waiting
        except LDCacheError as e:
            return [], 1, 0, f"error: {e}", True

    @app.callback(Output("url", "pathname"), Input("images", "active_cell"), prevent_initial_call=True)
    def open_image(cell: dict | None):
        if not cell or cell.get("row_id") is None:
            return no_update
        return f"/image/{cell['row_id']}"


# One image --------------------------------------------------------------------------------------

def _image_page(reader: StoreReader, image_id: int) -> html.Div:
    first = reader.record_index(image_id, 0)  # an image not in the store: its error, before any control
    gamma = float(reader.attrs.region.gamma)
    views = [{"label": v.name, "value": i} for i, v in enumerate(reader.attrs.views)]
    return html.Div([
        dcc.Store(id="image-id", data=image_id),
        dcc.Store(id="clicked"),
        dcc.Store(id="shown"),  # where the shown row is: another anchor is picked there
        html.H3(f"image {image_id}: {reader.image_file(first // reader.num_views)}"),
        _control("view", dcc.RadioItems(id="view", options=views, value=0, inline=True)),
        _control("level", dcc.RadioItems(id="level", options=[], inline=True)),
        _control("show", dcc.Checklist(id="overlays", options=[{"label": v, "value": k} for k, v in OVERLAYS.items()],
                                       value=list(OVERLAYS), inline=True)),
        _control("tau", dcc.Slider(id="tau", min=0.5, max=20, step=0.5, value=1, marks=TAU_MARKS), width="460px"),
        _control("gamma (VLR)", dcc.Slider(id="gamma", min=gamma, max=1, step=0.01, value=gamma,
                                           marks={gamma: f"{gamma:g} (store)", 1: "1"}), width="460px"),
        html.Div(id="picture-note", style={"color": "#555"}),
        html.Div([
            html.Div([dcc.Graph(id="level-map", config={"displaylogo": False}),
                      html.Div(MAP_KEY, style={"color": "#555", "fontSize": "90%"})],
                     style={"flex": "0 0 660px"}),
            html.Div([html.Div(_control("anchors here", dcc.RadioItems(id="anchor", options=[], value=None)),
                               id="anchor-row"),
                      html.Div(id="location")], style={"flex": "1 1 420px"}),
        ], style={"display": "flex", "flexWrap": "wrap", "gap": "12px"}),
        html.Div([dcc.Graph(id="edges", config={"displaylogo": False}),
                  html.Div(EDGES_KEY, style={"color": "#555", "fontSize": "90%"})], id="edges-box"),
    ])


def _control(name: str, component, width: str | None = None) -> html.Div:
    """A labelled control on one line."""
    box = {"display": "inline-block", "verticalAlign": "middle"} | ({"width": width} if width else {})
    return html.Div([html.Span(name, style={"display": "inline-block", "width": "120px", "fontWeight": "bold"}),
                     html.Div(component, style=box)], style={"margin": "4px 0"})


def _image_callbacks(app: Dash, session: StoreSession) -> None:
    @app.callback(Output("level", "options"), Output("level", "value"), Input("image-id", "data"), Input("view", "value"))
    def levels(image_id: int, view: int):
        try:
            reader = session.reader()
            targets = session.read_record(reader.record_index(image_id, view))
        except LDCacheError:
            return [], None
        counts = [len(targets.level(lvl).loc) for lvl in range(len(reader.strides))]
        options = [{"label": f"P{lvl + 3} ({n} row{'s' * (n != 1)})" if n else f"P{lvl + 3} (no rows)",
                    "value": lvl, "disabled": not n} for lvl, n in enumerate(counts)]
        # The level of the image-view's most ambiguous row (Main first), as the CLI picks it.
        return options, most_ambiguous(targets, None).level if any(counts) else None

    @app.callback(Output("clicked", "data"), Output("anchor", "value"),
                  Input("level-map", "clickData"), Input("level", "value"), Input("view", "value"))
    def clicked(click: dict | None, level: int | None, view: int):
        # A click picks a location; a new level or view forgets it (the map keeps its clickData).
        if ctx.triggered_id == "level-map" and click and click.get("points") and level is not None:
            point = click["points"][0]
            return {"level": level, "view": view, "at": [float(point["x"]), float(point["y"])]}, None
        return None, None

    @app.callback(Output("level-map", "figure"), Output("location", "children"), Output("edges", "figure"),
                  Output("anchor", "options"), Output("anchor-row", "style"), Output("picture-note", "children"),
                  Output("shown", "data"),
                  Input("image-id", "data"), Input("view", "value"), Input("level", "value"), Input("overlays", "value"),
                  Input("tau", "value"), Input("gamma", "value"), Input("clicked", "data"), Input("anchor", "value"),
                  State("level-map", "figure"), State("shown", "data"))
    def render(image_id: int, view: int, level: int | None, overlays: list[str] | None, tau: float, gamma: float,
               click: dict | None, anchor: int | None, old_figure: dict | None, shown_before: dict | None):
        try:
            reader = session.reader()
            record = reader.record_index(image_id, view)
            targets = session.read_record(record)  # a damaged chunk says so here, not as "no rows"
            if level is None:
                return {}, error_box("this image-view stores no rows"), {}, [], {"display": "none"}, "", None
            picture, note = session.picture(record)
            boxes = session.gt_boxes(record)
            here = {"level": level, "view": view}
            at = tuple(click["at"]) if click and click["level"] == level and click["view"] == view else None
            if at is None and anchor is not None and shown_before and shown_before["where"] == here:
                at = tuple(shown_before["at"])  # another anchor of the location shown, not of the level
            shown, location, edges, anchors = None, None, {}, []
            try:
                key = focus_row(targets, reader, record, level, at, anchor)
                shown = focus(reader, record, targets, key, float(tau), boxes)
                location = _location_panel(shown, float(gamma), list(reader.attrs.region.vlr_metrics))
                edges = edge_figure(shown.report, shown.match)
                anchors = [{"label": _anchor_label(r, shown.report), "value": r["prior"]}
                           for r in shown.report["location_rows"]]
            except LDCacheError as e:
                location = error_box(str(e))
            figure = level_figure(
                targets, level, reader.strides[level], reader.attrs.head.center_offset,
                tuple(int(v) for v in reader.img_shape[record]), float(tau), overlays or [], picture, boxes,
                None if shown is None else {"image_xy": shown.report["image_xy"], "teacher_box": shown.teacher_box,
                                            "gt_box": None if shown.match is None else shown.match.box})
            several = reader.attrs.head.num_base_priors > 1
            where = None if shown is None else {"where": here, "at": shown.report["image_xy"]}
            return figure, location, edges, anchors, {} if several else {"display": "none"}, note, where
        except LDCacheError as e:
            return old_figure or {}, error_box(str(e)), {}, [], {"display": "none"}, "", None


def _location_panel(shown: Focus, gamma: float, metrics: list[str]) -> html.Div:
    """The shown row's title, regions, VLR at gamma (of the store's VLR `metrics`), edge table and top classes."""
    report = shown.report
    regions = ", ".join(region_names(report["regions"], report["vlr_rule"])) or "none (stored in dense mode)"
    x, y = report["image_xy"]
    lines = [html.H4(location_title(report), id="location-title"),
             html.Div(f"prior point ({x}, {y}) px of the view, stride {report['stride']}"),
             html.Div(["regions: ", html.B(regions, id="location-regions")])]
    vlr = vlr_at_gamma(report, gamma, metrics)
    if report["vlr_rule"] == INSIDE_GT:
        lines.append(html.Div("VLR rule: inside a GT box, weighted by the student's score at train time (no ratio)"))
    elif vlr is not None:
        for metric, data in vlr.items():
            weight = "not kept" if data["weight"] is None else f"{data['weight']:.3f}"
            lines.append(html.Div(f"VLR {metric}: ratio d/thr {report['vlr_ratio'][metric]:.3f}; at gamma {gamma:g} "
                                  f"{'VLR' if data['vlr'] else 'not VLR'}, weight {weight}",
                                  className="vlr-line"))
    bins = [f"{v:.1f}" for v in (shown.match.bins if shown.match is not None else [np.nan] * 4)]
    lines.append(dash_table.DataTable(
        id="edge-table", columns=[{"name": n, "id": n} for n in ("edge", "entropy (nats)", "mean (bins)", "GT (bins)")],
        data=[{"edge": e, "entropy (nats)": f"{report['edge_entropy'][e]:.3f}",
               "mean (bins)": f"{float(expectations(np.asarray(report['edge_distributions'][e]))):.2f}",
               "GT (bins)": bins[i]} for i, e in enumerate(EDGES)],
        style_cell={"textAlign": "left"}))
    gt_note = ("GT: the view's GT box of highest IoU "
               f"({shown.match.iou:.2f}) with the teacher's box (gold); the store keeps no row's GT"
               if shown.match is not None else "no GT box overlaps the teacher's box: no GT edge")
    lines.append(html.Div(gt_note, style={"color": "#555", "fontSize": "90%"}))
    lines.append(html.Div("top classes (sigmoid of the logit): " + ", ".join(
        f"{c['class']} {c['score']:.3f}" for c in report["top_classes"]), id="top-classes"))
    return html.Div(lines)


def _anchor_label(row: dict, report: dict) -> str:
    """An anchor stored at the shown location: its regions and mean edge entropy, the shown one marked."""
    regions = ", ".join(region_names(row["regions"], report["vlr_rule"])) or "no region"
    shown = " ◀ shown" if row["prior"] == report["prior"] else ""
    return f"{row['prior']}: {regions}, {row['mean_edge_entropy']:.2f} nats{shown}"


# The summary ------------------------------------------------------------------------------------

def _summary_page(reader: StoreReader, summary: dict) -> html.Div:
    stats = reader.attrs.statistics.to_dict()
    per_record = reader.ptr[:, 1:] - reader.ptr[:, :-1]
    graphs, empty = [], []
    static = {"displayModeBar": False}
    for lvl in range(len(reader.strides)):
        if not summary["rows_per_level"][lvl]:
            empty.append(f"P{lvl + 3}")
            continue
        rows = counts_histogram(per_record[:, lvl])
        graphs.append(html.Div([
            dcc.Graph(figure=histogram_figure(f"P{lvl + 3}: edge entropy per row", stats["entropy_histogram"][lvl],
                                              stats["entropy_bin_edges"], "mean edge entropy (nats)"), config=static),
            dcc.Graph(figure=histogram_figure(f"P{lvl + 3}: rows per image-view", rows["counts"], rows["edges"],
                                              "rows", color="darkorange"), config=static)], style={"width": "340px"}))
    if empty:
        graphs.append(html.Div(f"no rows at {', '.join(empty)}", style={"alignSelf": "center", "color": "#555"}))
    regions = region_columns(summary["region_vlr"], summary["vlr_metrics"])
    columns = level_columns(regions)
    return html.Div([
        html.H3("store summary"),
        html.Table([html.Tr([html.Th(k, style={"textAlign": "left", "paddingRight": "16px", "verticalAlign": "top"}),
                             html.Td(v, style={"whiteSpace": "pre-line"})])
                    for k, v in summary_rows(summary)], id="summary-table"),
        html.H4("per level"),
        dash_table.DataTable(id="level-table", columns=[{"name": k, "id": k} for k in columns],
                             data=[dict(zip(columns, row)) for row in level_rows(summary["strides"], summary, regions)],
                             style_cell={"textAlign": "left"}),
        html.H4("dataset statistics (stored by the dump; `ldcache inspect --stats` recomputes them)"),
        html.Div(graphs, style={"display": "flex", "flexWrap": "wrap"}),
    ])
