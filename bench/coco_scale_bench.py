"""A store at COCO geometry, measured at the largest size this machine allows, extrapolated to COCO.

It dumps two stores per variant, of `--small-image-views` and of `--image-views` image-views,
for the fp16 defaults and for the q8 store official LD needs (`--dtype q8 --no-vlr-class-logits
--vlr-metric official`), and measures in one run, on both sizes:

- objects in the store (files, counted under its folder, whatever the layout) and bytes per image-view;
- the dump's own CPU time per image-view: the dump's process and its loader workers, the
  teacher replaced by a stand-in that returns fixed random logits (bench/dump_proxy_bench.py's),
  taken as the difference of the two sizes, so that start-up is left out;
- opening a StoreReader: files opened (an audit hook on `open`) and time; reading records in
  a random order: files opened and time per record;
- the same through S3, for the small store copied up with s3fs to a moto server on 127.0.0.1
  (an in-process Python server: its times are a floor for a real object store): requests (the
  server's request log) and time to open, and per record;
- `verify_store`, the `inspect` summary and `inspect --stats` (time, and the process's peak
  RSS above what it held before the call).
- the web viewer (`ldcache inspect --serve`, through Flask's test client, as a browser asks): the
  time, files opened and peak RSS from `build_app` to the image list's first page (GET / and
  /_dash-layout, the router's and the list's callbacks), then the first image's page and the next
  one's (the router, `levels` and `render` with the picture); each response checked.

Each probe runs in a fresh interpreter that imports only what an `ldcache` command would. Every
figure is then extrapolated to COCO train2017 with both views (118,287 images x 2 = 236,574
image-views): figures that grow with the store by the line through the two sizes (a + b n),
figures per image-view or per record as measured on the larger store; the formula is printed
next to each. The dataset: COCO's box count and size mix (train2017: about 7.3 boxes per image;
41% small (< 32^2), 34% medium, 25% large; bench/dump_bench.py's generator), 80 classes,
1333x800 images, identity and flipped view. The images are a few distinct blurred-noise JPEGs
under many names (symlinks): the dump decodes each, but they take little disk. Random logits
compress worse than a trained teacher's: the sizes are upper bounds.

    python bench/coco_scale_bench.py                     # 10,000 and 1,024 image-views per variant
    python bench/coco_scale_bench.py --image-views 2000  # a quicker look
    python bench/coco_scale_bench.py --smoke             # tiny: that it runs (tests/test_bench_smoke.py)

The default run writes about 6 GB of stores under --workdir (a temporary folder by default; the
stores are left there) and holds the small fp16 store (about 0.5 GB) in the S3 server's memory
while it is read. `--smoke`'s stores are one block each: its extrapolations mean nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
COCO_IMAGE_VIEWS = 118_287 * 2  # train2017, identity and flipped view
DOCS_ROWS_PER_IMAGE_VIEW = 1_736  # docs/scaling.md, distill fp16
DISTINCT_IMAGES = 8
RECORDS_READ = 200  # records each read probe reads, in a random order
WARM_UP_RECORDS = 20  # read first, not timed
BUCKET = "ldcache-bench"


# ---------------------------------------------------------------------------------------- dataset

def make_dataset(work: Path, images: int) -> Path:
    """work/data: `images` 1333x800 images with COCO's box statistics, 80 classes; the image files
    are DISTINCT_IMAGES JPEGs under many names. Returns the annotation file."""
    import cv2
    import numpy as np

    from dump_bench import COCO_CLASSES, coco_geometry_boxes

    rng = np.random.default_rng(0)
    folder = work / "data/images"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(DISTINCT_IMAGES):
        canvas = cv2.GaussianBlur(rng.integers(60, 200, (800, 1333, 3), dtype=np.uint8), (0, 0), 8)
        cv2.imwrite(str(folder / f"distinct-{k}.jpg"), canvas)
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        name = f"{image_id:07d}.jpg"
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(f"distinct-{image_id % DISTINCT_IMAGES}.jpg")
        entries.append({"id": image_id, "file_name": name, "width": 1333, "height": 800})
        for x, y, w, h in coco_geometry_boxes(rng):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "category_id": int(rng.integers(1, len(COCO_CLASSES) + 1)),
                                "area": w * h, "iscrowd": 0})
    ann = work / "data/instances.json"
    categories = [{"id": i, "name": n} for i, n in enumerate(COCO_CLASSES, 1)]
    ann.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return ann


# ------------------------------------------------------------------ probes (fresh interpreters)

def _opens_under(root: str) -> list:
    """A list that grows by one for every file opened under `root` from now on (an audit hook)."""
    opened = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and os.fsdecode(args[0]).startswith(root):
            opened.append(args[0])

    sys.addaudithook(hook)
    return opened


def _timed(fn, *args) -> tuple[object, float, float]:
    """fn(*args), its wall and CPU seconds (this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


class PeakRSS:
    """The process's peak resident memory while a `with` block runs, above what it held at the
    start, sampled every 10 ms (ru_maxrss would keep the peak of the imports before it)."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2 ** 20


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe_read(store: str, records: int) -> dict:
    """Open a StoreReader, then read `records` records in a random order: files and time of each."""
    import numpy as np

    from ldcache.store.reader import StoreReader

    opened = _opens_under(os.path.abspath(store) if "://" not in store else "\0")
    reader, open_wall, open_cpu = _timed(StoreReader, store)
    open_files = len(opened)
    permutation = np.random.default_rng(0).permutation(reader.num_records)
    order = permutation[:records]
    warm_up = permutation[records:records + WARM_UP_RECORDS] if records else permutation[:0]
    # What a DataLoader worker pays per record once it runs: the first reads' one-off costs (the
    # codecs' and the allocator's first calls, the tables' first pages) are left out.
    for record in warm_up:
        reader.read_record(int(record))
    before_reads = len(opened)
    _, read_wall, read_cpu = _timed(lambda: [reader.read_record(int(r)) for r in order])
    return {"open_s": open_wall, "open_cpu_s": open_cpu, "open_files": open_files, "records": len(order),
            "read_ms_per_record": 1000 * read_wall / max(len(order), 1),
            "read_cpu_ms_per_record": 1000 * read_cpu / max(len(order), 1),
            "files_per_record": (len(opened) - before_reads) / max(len(order), 1)}


def probe_command(store: str, command: str) -> dict:
    """`verify`, `inspect` (the summary) or `inspect --stats` through their public functions:
    time, and the peak RSS above the process's before the call."""
    from ldcache.inspect.report import store_summary
    from ldcache.inspect.stats import store_statistics
    from ldcache.store.reader import StoreReader
    from ldcache.store.verify import verify_store

    calls = {"verify": lambda: verify_store(store).ok,  # its defaults: what `ldcache verify` does
             "inspect": lambda: store_summary(StoreReader(store))["image_views"],
             "inspect --stats": lambda: store_statistics(StoreReader(store))["rows_per_level"]}
    with PeakRSS() as memory:
        result, wall, cpu = _timed(calls[command])
    return {"s": wall, "cpu_s": cpu, "peak_rss_above_start_mb": memory.above_start_mb,
            "peak_rss_mb": memory.peak / 2 ** 20, "result": result}


def _dash_call(client, callbacks: list[dict], first_output: str, values: dict) -> dict:
    """POST one callback to /_dash-update-component as the browser's renderer does (Dash 4.4's
    `dispatch`): the callback is found by its first output in /_dash-dependencies' list, whose
    `output` string keys it ("id.prop", or "..a.b...c.d.." for several outputs), and `values` give
    its inputs' and states' values by "id.prop" (all of them: a missing one fails here). Returns the
    response's outputs by "id.prop"; any status but 200 fails the probe."""
    matches = [cb for cb in callbacks if cb["output"].strip(".").split("...")[0] == first_output]
    assert len(matches) == 1, f"{len(matches)} callbacks with the first output {first_output}"
    callback = matches[0]

    def prop(spec: str) -> dict:
        component, name = spec.rsplit(".", 1)
        return {"id": component, "property": name}

    outputs = [prop(spec) for spec in callback["output"].strip(".").split("...")]
    body = {"output": callback["output"], "outputs": outputs if callback["output"].startswith("..") else outputs[0],
            "inputs": [{**dep, "value": values[f"{dep['id']}.{dep['property']}"]} for dep in callback["inputs"]],
            "state": [{**dep, "value": values[f"{dep['id']}.{dep['property']}"]} for dep in callback["state"]],
            "changedPropIds": []}  # the page's first calls: nothing changed by the user
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200, f"{first_output}: HTTP {response.status_code}: {response.get_data(True)[:2000]}"
    answer = response.get_json()["response"]
    return {f"{component}.{name}": value for component, props in answer.items() for name, value in props.items()}


def _component(tree, component_id: str) -> dict:
    """The props of the component `component_id` in a Dash layout (JSON), which must be there."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack += node
        elif isinstance(node, dict):
            if node.get("props", {}).get("id") == component_id:
                return node["props"]
            stack += list(node.values())
    raise AssertionError(f"no component {component_id!r} in the page")


def _no_error(tree, where: str) -> None:
    """Fails when the viewer put its one-line error box (class ldcache-error) in `tree`."""
    text = json.dumps(tree)
    assert "ldcache-error" not in text, f"{where} shows an error: {text[text.find('error: '):][:300]}"


def probe_viewer(store: str, images: int) -> dict:
    """`ldcache inspect STORE --serve` through Flask's test client, as a browser opens it: the time,
    files and peak RSS from build_app to the image list's first page, then the first image's page
    and the next one's. Every response is checked: a wrong request or page fails the probe."""
    started = time.perf_counter()
    from ldcache.inspect.viewer import build_app  # what `ldcache inspect --serve` imports
    from ldcache.inspect.viewer.image_list import PAGE_SIZE
    from ldcache.inspect.viewer.session import StoreSession
    import_s = time.perf_counter() - started
    opened = _opens_under(os.path.abspath(store) if "://" not in store else "\0")
    steps = {}

    def step(name: str, fn, *args):
        result, steps[name], _ = _timed(fn, *args)
        return result

    def get(path: str):
        response = client.get(path)
        assert response.status_code == 200, f"GET {path}: HTTP {response.status_code}"
        return response

    def open_viewer() -> tuple[list[int], list[dict]]:
        nonlocal client
        app = step("build_app", lambda: build_app(StoreSession(store)))
        client = app.server.test_client()
        assert "_dash-config" in step("GET /", get, "/").get_data(True)
        step("GET /_dash-layout", get, "/_dash-layout")
        callbacks = step("GET /_dash-dependencies", get, "/_dash-dependencies").get_json()
        page = step("router /", _dash_call, client, callbacks, "page.children", {"url.pathname": "/"})["page.children"]
        _no_error(page, "the image list page")
        _component(page, "images")
        listed = step("images", _dash_call, client, callbacks, "images.data",
                      {"sort.value": "id", "search.value": "", "images.page_current": 0,
                       "index-poll.n_intervals": None})
        _no_error(listed, "the image list")
        rows = listed["images.data"]
        assert len(rows) == min(PAGE_SIZE, images), f"{len(rows)} rows on the first page of {images} images"
        assert listed["images.page_count"] == -(-images // PAGE_SIZE), listed["images.page_count"]
        assert listed["index-status.children"] == f"{images} images.", listed["index-status.children"]
        assert listed["index-poll.disabled"] is True
        assert [row["image_id"] for row in rows] == sorted(row["image_id"] for row in rows)
        return [row["image_id"] for row in rows], callbacks

    def image_page(image_id: int, callbacks: list[dict], again: str = "") -> None:
        page = step("router /image" + again, _dash_call, client, callbacks, "page.children",
                    {"url.pathname": f"/image/{image_id}"})["page.children"]
        _no_error(page, f"the page of image {image_id}")
        values = {"image-id.data": image_id, "clicked.data": None, "anchor.value": None, "level-map.figure": None,
                  "shown.data": None,
                  **{f"{name}.value": _component(page, name)["value"] for name in ("view", "overlays", "tau", "gamma")}}
        assert values["view.value"] == 0 and values["tau.value"] == 1 and values["overlays.value"], values
        levels = step("levels" + again, _dash_call, client, callbacks, "level.options", values)
        assert levels["level.value"] is not None and levels["level.options"], levels
        values["level.value"] = levels["level.value"]
        shown = step("render" + again, _dash_call, client, callbacks, "level-map.figure", values)
        _no_error(shown, f"the render of image {image_id}")
        assert shown["picture-note.children"] == "", shown["picture-note.children"]
        traces = shown["level-map.figure"]["data"]
        assert any(trace["type"] == "image" and trace["source"].startswith("data:image/jpeg;base64,")
                   for trace in traces), "the level map has no picture"
        assert shown["edges.figure"].get("data"), "no edge distributions"

    client = None
    with PeakRSS() as memory:
        (shown, callbacks), open_wall, open_cpu = _timed(open_viewer)
    open_files = len(opened)
    # The first image's page pays the one-off imports of its first picture and GT boxes (mmcv,
    # torch); the next image's is what every later one costs.
    _, image_wall, image_cpu = _timed(image_page, shown[0], callbacks)
    image_files = len(opened) - open_files
    _, next_wall, _ = _timed(image_page, shown[1], callbacks, " (next)")
    return {"import_s": import_s, "open_s": open_wall, "open_cpu_s": open_cpu, "open_files": open_files,
            "open_peak_rss_above_start_mb": memory.above_start_mb, "image_s": image_wall, "image_cpu_s": image_cpu,
            "image_files": image_files, "next_image_s": next_wall, "image_ids": shown[:2], "steps_s": steps}


def run_probe(kind: str, store: str, arg, env: dict | None = None) -> dict:
    """A probe in a fresh interpreter (only what an ldcache command imports)."""
    result = subprocess.run([sys.executable, __file__, "--probe", kind, store, str(arg)], capture_output=True,
                            text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"probe {kind} {arg} of {store} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the store, on S3

class RequestCounter(logging.Handler):
    """Counts the HTTP requests moto's server logs (werkzeug logs one line per request). The
    server's threads call emit under the handler's own lock, so counts are not lost."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def start_s3() -> tuple[object, dict, RequestCounter]:
    """A moto S3 server on 127.0.0.1 with one bucket: the server, the environment that reaches it
    (as a user's credentials would), and its request counter."""
    import boto3
    from moto.server import ThreadedMotoServer

    counter = RequestCounter()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # counted, not printed
    werkzeug.addHandler(counter)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return server, env, counter


def s3_figures(store: Path, name: str, env: dict, counter: RequestCounter) -> dict:
    """Copy a store up (s3fs put), then open it and read records through S3: requests and times."""
    import fsspec

    url = f"s3://{BUCKET}/{name}"
    fs, root = fsspec.core.url_to_fs(url)
    _, upload_s, _ = _timed(fs.put, str(store), root, True)
    counts = []
    for records in (0, RECORDS_READ):  # the requests of opening alone, then of opening and reading
        start = counter.count
        probe = run_probe("read", url, records, env)
        counts.append(counter.count - start)
    fs.rm(root, recursive=True)  # moto holds objects in memory
    return {"open_s": probe["open_s"], "open_requests": counts[0], "read_ms_per_record": probe["read_ms_per_record"],
            # The second probe read its warm-up records too, untimed but requested.
            "requests_per_record": (counts[1] - counts[0]) / (probe["records"] + WARM_UP_RECORDS),
            "upload_s": upload_s}


# ------------------------------------------------------------------------------ measuring, fitting

def store_objects(path: Path) -> tuple[int, int]:
    """(files, bytes) under a store's folder."""
    files = [Path(folder, name) for folder, _, names in os.walk(path) for name in names]
    return len(files), sum(f.stat().st_size for f in files)


def measure_store(store: Path, dump: dict, images: int) -> dict:
    """Every local figure of one dumped store (of `images` images)."""
    objects, size = store_objects(store)
    read = run_probe("read", str(store), RECORDS_READ)
    figures = {"image_views": dump["image_views"], "rows_per_image_view": dump["rows_per_view"],
               "objects": objects, "GB": size / 1e9, "bytes_per_image_view": size / dump["image_views"],
               "dump_cpu_s": dump["cpu_s"], "dump_wall_s": dump["wall_s"],
               "open_files": read["open_files"], "open_s": read["open_s"],
               "read_ms_per_record": read["read_ms_per_record"],
               "read_cpu_ms_per_record": read["read_cpu_ms_per_record"], "files_per_record": read["files_per_record"]}
    for command in ("verify", "inspect", "inspect --stats"):
        probe = run_probe("command", str(store), command)
        figures[f"{command} s"] = probe["s"]
        figures[f"{command} peak RSS above start MB"] = probe["peak_rss_above_start_mb"]
    viewer = run_probe("viewer", str(store), images)
    figures.update({"viewer open s": viewer["open_s"], "viewer open files": viewer["open_files"],
                    "viewer open peak RSS above start MB": viewer["open_peak_rss_above_start_mb"],
                    "viewer image s": viewer["image_s"], "viewer next image s": viewer["next_image_s"],
                    "viewer import s": viewer["import_s"], "viewer": viewer})
    return figures


# figure -> (label, how it extrapolates: "line" through both sizes; "memory", the same line as an
# upper bound (memory that batches bound stops growing); "per", as measured on the larger store)
FIGURES = {
    "rows_per_image_view": (f"rows per image-view (docs/scaling.md: {DOCS_ROWS_PER_IMAGE_VIEW:,} for fp16)", "per"),
    "objects": ("objects (files) in the store", "line"),
    "GB": ("GB on disk", "line"),
    "bytes_per_image_view": ("bytes per image-view", "per"),
    "open_files": ("files opened to open a StoreReader", "line"),
    "open_s": ("seconds to open a StoreReader, local disk", "line"),
    "read_ms_per_record": ("ms per record read, local disk (wall)", "per"),
    "read_cpu_ms_per_record": ("CPU ms per record read, local disk", "per"),
    "files_per_record": ("files opened per record read", "per"),
    "verify s": ("verify_store seconds", "line"),
    "verify peak RSS above start MB": ("verify_store peak RSS above start, MB", "memory"),
    "inspect s": ("inspect (summary) seconds", "line"),
    "inspect peak RSS above start MB": ("inspect (summary) peak RSS above start, MB", "memory"),
    "inspect --stats s": ("inspect --stats seconds", "line"),
    "inspect --stats peak RSS above start MB": ("inspect --stats peak RSS above start, MB", "memory"),
    "viewer import s": ("viewer: importing it (what `inspect --serve` imports), s; not in the open", "per"),
    "viewer open s": ("viewer open, s: build_app to the image list's first page (GET / and its layout and "
                      "dependencies, the router and the list's callback, Flask's test client)", "line"),
    "viewer open files": ("viewer open: files opened in the store", "line"),
    "viewer open peak RSS above start MB": ("viewer open: peak RSS above start, MB", "memory"),
    "viewer image s": ("viewer, first image's page, s: router, `levels`, `render` (with the picture; pays the "
                       "one-off imports of mmcv and torch)", "per"),
    "viewer next image s": ("viewer, the next image's page, s (imports done)", "per"),
}
S3_FIGURES = {
    "open_requests": "requests to open a StoreReader through S3",
    "open_s": "seconds to open a StoreReader through S3",
    "requests_per_record": "requests per record read through S3",
    "read_ms_per_record": "ms per record read through S3 (wall)",
}


def extrapolate(small: dict, big: dict, key: str, how: str) -> tuple[float, str]:
    """(the figure at COCO's image-views, the formula that gave it)."""
    n1, n2, y1, y2 = small["image_views"], big["image_views"], small[key], big[key]
    if how == "per":
        return y2, f"as measured at n = {n2:,} (independent of n)"
    slope = (y2 - y1) / (n2 - n1)
    if slope <= 0:  # a figure of the whole store does not shrink as the store grows: noise
        return y2, f"as measured at n = {n2:,} (no larger than at n = {n1:,})"
    intercept = y1 - slope * n1
    formula = f"{intercept:.4g} + {slope:.4g} n (the line through n = {n1:,}, {n2:,})"
    return intercept + slope * COCO_IMAGE_VIEWS, ("at most " if how == "memory" else "") + formula


def dump_cpu_rows(small: dict, big: dict, gpu_rate: float) -> list[dict]:
    """The dump's own CPU time per image-view (the two sizes' difference over their image-views,
    so that start-up is left out), the CPU-hours of a COCO dump, and the cores that keep a GPU fed."""
    views = big["image_views"] - small["image_views"]
    per_view = (big["dump_cpu_s"] - small["dump_cpu_s"]) / views
    between = f"(CPU at n = {big['image_views']:,} - at n = {small['image_views']:,}) / {views:,}"
    return [{"figure": "dump CPU ms per image-view", "small": None, "big": 1000 * per_view, "coco": 1000 * per_view,
             "formula": between},
            {"figure": "dump CPU-hours (process + loader workers)", "small": None, "big": None,
             "coco": per_view * COCO_IMAGE_VIEWS / 3600, "formula": "ms per image-view x n / 3.6e6"},
            {"figure": f"cores the dump needs at {gpu_rate:g} image-views/s", "small": None, "big": None,
             "coco": per_view * gpu_rate, "formula": f"ms per image-view x {gpu_rate:g} / 1000 (--gpu-rate, assumed)"}]


def table_rows(variant: str, small: dict, big: dict, s3: dict, gpu_rate: float) -> list[dict]:
    """The table's rows of one variant: each figure at both sizes, at COCO's size, and how."""
    rows = dump_cpu_rows(small, big, gpu_rate)
    for key, (label, how) in FIGURES.items():
        coco, formula = extrapolate(small, big, key, how)
        rows.append({"figure": label, "small": small[key], "big": big[key], "coco": coco, "formula": formula})
    local_open_slope = max((big["open_s"] - small["open_s"]) / (big["image_views"] - small["image_views"]), 0.0)
    for key, label in S3_FIGURES.items():
        if key == "open_s":  # measured on the small store: the part that grows taken from the local line
            coco = s3[key] + local_open_slope * (COCO_IMAGE_VIEWS - small["image_views"])
            formula = f"{s3[key]:.4g} + {local_open_slope:.4g} (n - {small['image_views']:,}) (local open's slope)"
        else:
            coco, formula = s3[key], f"as measured at n = {small['image_views']:,}"
        rows.append({"figure": label, "small": s3[key], "big": None, "coco": coco, "formula": formula})
    for row in rows:
        row["variant"] = variant
    return rows


def print_table(rows: list[dict], sizes: tuple[int, int]) -> None:
    print(f"\n| figure | variant | at {sizes[0]:,} image-views | at {sizes[1]:,} | COCO train2017 x 2 views "
          f"({COCO_IMAGE_VIEWS:,}) | formula |\n|---|---|---|---|---|---|")
    for row in rows:
        cells = [_fmt(row[k]) for k in ("small", "big", "coco")]
        print(f"| {row['figure']} | {row['variant']} | {' | '.join(cells)} | {row['formula']} |")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


# -------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-views", type=int, default=10_000, help="image-views of the larger store")
    parser.add_argument("--small-image-views", type=int, default=1_024,
                        help="image-views of the smaller store (also the one copied to S3)")
    parser.add_argument("--smoke", action="store_true", help="tiny stores (48 and 16 image-views): that it runs")
    parser.add_argument("--gpu-rate", type=float, default=180.0,
                        help="image-views/s one GPU runs the teacher at (assumed: 180 for GFL R101 on an H200)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the figures (default: WORKDIR/coco_scale.json)")
    parser.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        kind, store, arg = args.probe
        probes = {"read": lambda: probe_read(store, int(arg)), "viewer": lambda: probe_viewer(store, int(arg)),
                  "command": lambda: probe_command(store, arg)}
        print(json.dumps(probes[kind]()))
        return
    import dump_proxy_bench as proxy

    big, small = (48, 16) if args.smoke else (args.image_views, args.small_image_views)
    images = (small // 2, big // 2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ldcache-coco-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proxy.write_subsets(make_dataset(work, images[1]), images)
    proxy.write_teacher(work)
    server, env, counter = start_s3()
    results, rows = {}, []
    try:
        for variant in proxy.VARIANTS:
            slug = variant.replace(" ", "_")
            stores = {count: work / f"{slug}-{count}.zarr" for count in images}
            figures = {count: measure_store(stores[count], proxy.run_child(REPO, work, count, variant, stores[count]),
                                            count) for count in images}
            s3 = s3_figures(stores[images[0]], f"{slug}-{images[0]}.zarr", env, counter)
            results[variant] = {"small": figures[images[0]], "big": figures[images[1]], "s3_small": s3}
            rows += table_rows(variant, figures[images[0]], figures[images[1]], s3, args.gpu_rate)
    finally:
        server.stop()
    report = {"image_views": [small, big], "coco_image_views": COCO_IMAGE_VIEWS,
              "docs_rows_per_image_view": DOCS_ROWS_PER_IMAGE_VIEW, "seconds": time.perf_counter() - started,
              "variants": results, "table": rows}
    out = args.json or work / "coco_scale.json"
    out.write_text(json.dumps(report, indent=2))
    print_table(rows, (small, big))
    print(f"\n{time.perf_counter() - started:.0f} s; figures in {out}; stores in {work}")


if __name__ == "__main__":
    main()
