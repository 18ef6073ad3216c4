"""The viewer's data, without a browser: the image list's order, search and pages, and the VLR
weight at a raised gamma (tests/test_viewer_browser.py drives the pages in Chromium)."""
import numpy as np
import pytest

from conftest import synthetic_store
from ldcache.inspect.record_index import record_index
from ldcache.inspect.viewer.focus import vlr_at_gamma
from ldcache.inspect.viewer.image_list import image_page
from ldcache.store.reader import StoreReader


@pytest.fixture(scope="module")
def listed_store(tmp_path_factory):
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 40, (45, 5))
    counts[7] = 0  # an image-view without rows
    path, _, _ = synthetic_store(tmp_path_factory.mktemp("viewer") / "s.zarr", counts, chunk_rows=64, block_size=16)
    return StoreReader(str(path)), counts.sum(axis=1)


def _all_ids(reader, index, sort, query=""):
    first = image_page(reader, index, sort, query, 0, page_size=10)
    ids = [row["image_id"] for page in range(first.page_count)
           for row in image_page(reader, index, sort, query, page, page_size=10).rows]
    assert len(ids) == first.matches
    return ids


def test_image_list_orders_pages_and_searches(listed_store):
    reader, rows = listed_store
    ids = reader.image_ids
    assert _all_ids(reader, None, "id") == sorted(ids.tolist())
    assert _all_ids(reader, None, "fewest") == ids[np.lexsort((ids, rows))].tolist()
    assert _all_ids(reader, None, "most") == ids[np.lexsort((ids, -rows))].tolist()
    # Without the index the sorts that need it keep the id order, their columns blank.
    page = image_page(reader, None, "vlr", "", 0)
    assert [r["image_id"] for r in page.rows] == sorted(ids.tolist())[:len(page.rows)]
    assert {r["vlr"] for r in page.rows} == {"…"}
    index = record_index(reader)
    assert _all_ids(reader, index, "vlr") == ids[np.lexsort((ids, -index.vlr_rows))].tolist()
    ambiguous = _all_ids(reader, index, "ambiguous")
    with_main = np.isfinite(index.max_main_entropy)
    assert ambiguous[0] == int(ids[np.nanargmax(index.max_main_entropy)])
    assert set(ambiguous[-int((~with_main).sum()):]) == set(ids[~with_main].tolist())  # no Main row: last
    top = image_page(reader, index, "ambiguous", "", 0).rows[0]
    assert float(top["ambiguity"]) == pytest.approx(np.nanmax(index.max_main_entropy), abs=5e-4)
    # Search: ids starting with the digits typed; past the last page, the last page.
    prefix = str(ids[-1])[0]
    assert _all_ids(reader, None, "id", f" {prefix} ") == sorted(i for i in ids.tolist() if str(i).startswith(prefix))
    last = image_page(reader, None, "id", "", 99, page_size=10)
    assert last.page_count == 5 and [r["image_id"] for r in last.rows] == sorted(ids.tolist())[40:]
    assert image_page(reader, None, "id", "999999", 0).rows == []
    assert image_page(reader, None, "id", "cat", 0).matches == 0  # ids are numbers


def test_vlr_weight_at_a_raised_gamma():
    report = {"vlr_ratio": {"official": 0.8, "diou": 0.3},
              "vlr_weight_steps": {"official": [[0.4, 0.2], [0.8, 0.5]], "diou": [[0.3, 0.1]]}}
    both = ["official", "diou"]
    assert vlr_at_gamma(report, 0.25, both) == {"official": {"vlr": True, "weight": 0.5},
                                                "diou": {"vlr": True, "weight": 0.1}}
    assert vlr_at_gamma(report, 0.5, both) == {"official": {"vlr": True, "weight": 0.5},
                                               "diou": {"vlr": False, "weight": 0.0}}
    assert list(vlr_at_gamma(report, 0.5, ["diou"])) == ["diou"]  # a metric the store lacks is not shown
    # VLR at gamma, but the GT of its weight was not among the steps kept: unknown, not 0.
    report["vlr_weight_steps"]["official"] = [[0.4, 0.2]]
    assert vlr_at_gamma(report, 0.6, both)["official"] == {"vlr": True, "weight": None}
    assert vlr_at_gamma({"vlr_ratio": None}, 0.5, both) is None


def test_serve_user_errors(tmp_path):
    """--serve with options of the terminal reports, and a port already taken: one line, exit 2."""
    import socket
    import subprocess
    import sys

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "ldcache.cli", "inspect", str(tmp_path / "s.zarr"), "--serve",
                               *args], capture_output=True, text=True, timeout=120)

    result = serve("--image", "3", "--stats")
    assert result.returncode == 2 and "drop --image, --stats" in result.stderr and "Traceback" not in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve("--port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and "pick another port with --port" in result.stderr
    assert "Traceback" not in result.stderr


def _component(layout, component_id: str):
    """The Dash component of this id in a layout tree."""
    if getattr(layout, "id", None) == component_id:
        return layout
    children = getattr(layout, "children", None)
    for child in children if isinstance(children, list) else [children]:
        found = _component(child, component_id) if hasattr(child, "to_plotly_json") else None
        if found is not None:
            return found
    return None


def test_the_summary_page_counts_each_stored_vlr_metric(listed_store):
    from ldcache.inspect.report import store_summary
    from ldcache.inspect.viewer.app import _summary_page

    reader, _ = listed_store
    summary = store_summary(reader)
    table = _component(_summary_page(reader, summary), "level-table")
    assert [c["name"] for c in table.columns] == [
        "level", "stride", "rows", "main", "VLR official", "VLR diou", "mean edge entropy (nats)"]
    for key, heading in (("main", "main"), ("vlr_official", "VLR official"), ("vlr_diou", "VLR diou")):
        assert [int(row[heading]) for row in table.data] == list(summary["rows_per_level_and_region"][key])
