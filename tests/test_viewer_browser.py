"""`ldcache inspect --serve` in a real browser: headless Chromium (Debian's package, through
selenium) opens the viewer on a test store, sorts and searches the image list, opens an image,
clicks a location on its level map and checks what the page shows against the store. Each page's
screenshot is written to docs/ for the README."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts a server and a browser

DOCS = Path(__file__).resolve().parent.parent / "docs"
WAIT_S = 60


@pytest.fixture
def viewer_url(shapes_store):
    """The viewer of the shapes store, served from a thread on a free port of 127.0.0.1."""
    from werkzeug.serving import make_server

    from ldcache.inspect.viewer import build_app
    from ldcache.inspect.viewer.session import StoreSession

    server = make_server("127.0.0.1", 0, build_app(StoreSession(str(shapes_store))).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    """condition() once it is truthy; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # the element is not there yet, or was redrawn meanwhile
            pass
        time.sleep(0.2)
    driver.save_screenshot("/tmp/ldcache-viewer-timeout.png")
    raise AssertionError(f"timed out waiting for {what} (screenshot: /tmp/ldcache-viewer-timeout.png)")


def _table_ids(driver) -> list[int]:
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "#images td[data-dash-column='image_id']")
    return [int(c.text) for c in cells]


def _click_label(driver, container: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    for label in driver.find_elements(By.CSS_SELECTOR, f"#{container} label"):
        if label.text.strip().startswith(text):
            label.click()
            return
    raise AssertionError(f"no option {text!r} in #{container}")


def _plot_point(driver, graph: str, x: float, y: float) -> tuple[float, float]:
    """Offsets of the data point (x, y) from the graph's in-view centre, for a real click there.

    WebDriver moves a pointer relative to the centre of an element's part inside the viewport, not
    of the whole element: the page is first scrolled to bring the point to the viewport's middle."""
    return driver.execute_script("""
        const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const px = box => [box.left + xa._offset + xa.l2p(arguments[1]), box.top + ya._offset + ya.l2p(arguments[2])];
        window.scrollBy(0, px(gd.getBoundingClientRect())[1] - window.innerHeight / 2);
        const box = gd.getBoundingClientRect(), [pointX, pointY] = px(box);
        const left = Math.max(box.left, 0), right = Math.min(box.right, window.innerWidth);
        const top = Math.max(box.top, 0), bottom = Math.min(box.bottom, window.innerHeight);
        return [pointX - (left + right) / 2, pointY - (top + bottom) / 2];
    """, f"#{graph}", x, y)


def test_viewer_in_chromium(browser, viewer_url, shapes_store):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from ldcache.inspect.plots import match_gt, teacher_box, view_gt_boxes
    from ldcache.inspect.record_index import record_index
    from ldcache.inspect.report import location_report, location_title, most_ambiguous, region_names
    from ldcache.store.format import FLAG_MAIN
    from ldcache.store.reader import StoreReader

    reader = StoreReader(str(shapes_store))
    ids = reader.image_ids
    rows = (reader.ptr[:, -1] - reader.ptr[:, 0]).reshape(-1, reader.num_views).sum(axis=1)

    # The image list: id order first, then fewest rows, then the most ambiguous Main row (the index).
    browser.get(viewer_url + "/")
    _wait(browser, lambda: _table_ids(browser)[:3] == sorted(ids.tolist())[:3], "the image list in id order")
    _click_label(browser, "sort", "fewest rows")
    fewest = ids[np.lexsort((ids, rows))][:5].tolist()
    _wait(browser, lambda: _table_ids(browser)[:5] == fewest, "the list sorted by fewest rows")
    index = record_index(reader)
    ambiguity = np.fmax.reduce(index.max_main_entropy.reshape(-1, reader.num_views), axis=1)
    most = int(ids[np.nanargmax(ambiguity)])
    _click_label(browser, "sort", "most ambiguous Main row")
    _wait(browser, lambda: _table_ids(browser)[0] == most, "the list sorted by the most ambiguous Main row")
    shown = browser.find_element(By.CSS_SELECTOR, "#images td[data-dash-column='ambiguity']").text
    assert float(shown) == pytest.approx(np.nanmax(ambiguity), abs=5e-4)
    browser.save_screenshot(str(DOCS / "viewer-images.png"))

    # Search by id prefix: every listed id starts with it.
    prefix = str(ids[len(ids) // 2])[:1]
    search = browser.find_element(By.ID, "search")
    search.send_keys(prefix, Keys.ENTER)
    expected = int(sum(str(i).startswith(prefix) for i in ids))
    _wait(browser, lambda: f"{expected} image" in browser.find_element(By.ID, "index-status").text,
          "the search's match count")
    assert all(str(i).startswith(prefix) for i in _table_ids(browser))

    # A click on a row opens its image, showing the most ambiguous row of its view 0.
    first = _table_ids(browser)[0]
    browser.find_element(By.CSS_SELECTOR, "#images td[data-dash-column='image_id']").click()
    _wait(browser, lambda: browser.current_url.endswith(f"/image/{first}"), "the image page's URL")
    record = reader.record_index(first, 0)
    targets = reader.read_record(record)
    key = most_ambiguous(targets, None)
    report = location_report(reader, record, targets, key, 1.0)
    _wait(browser, lambda: browser.find_element(By.ID, "location-title").text == location_title(report),
          "the most ambiguous row's title")

    # A real click on a Main row's prior point of that level shows that row's distributions.
    level_rows = targets.level(key.level)
    main = np.flatnonzero((level_rows.flags & FLAG_MAIN) > 0)
    pick = main[len(main) // 2] if len(main) else len(level_rows.loc) // 2
    grid_w = int(targets.grid[key.level][1])
    stride, offset = reader.strides[key.level], reader.attrs.head.center_offset
    loc = int(level_rows.loc[pick])
    x, y = (loc % grid_w + offset) * stride, (loc // grid_w + offset) * stride
    graph = browser.find_element(By.CSS_SELECTOR, "#level-map .js-plotly-plot")
    ActionChains(browser).move_to_element_with_offset(graph, *_plot_point(browser, "level-map", x, y)).click().perform()
    clicked = key._replace(loc=loc, prior=int(level_rows.prior[pick]))
    report = location_report(reader, record, targets, clicked, 1.0)
    _wait(browser, lambda: browser.find_element(By.ID, "location-title").text == location_title(report),
          f"the clicked row's title ({location_title(report)})")
    regions = ", ".join(region_names(report["regions"], report["vlr_rule"]))
    assert browser.find_element(By.ID, "location-regions").text == regions
    bars = browser.execute_script(
        "return document.querySelector('#edges .js-plotly-plot').data.map(t => Array.from(t.y));")
    for edge, shown_bars in zip(("left", "top", "right", "bottom"), bars):
        np.testing.assert_allclose(shown_bars, report["edge_distributions"][edge], atol=1e-6)
    point = tuple(report["image_xy"])
    match = match_gt(view_gt_boxes(reader, record), teacher_box(targets, clicked, point, stride), point, stride)
    titles = browser.execute_script(
        "return document.querySelector('#edges .js-plotly-plot').layout.annotations.map(a => a.text);")
    if match is not None:
        assert all(f"GT {d:.1f}" in t for d, t in zip(match.bins, titles))
    classes = browser.find_element(By.ID, "top-classes").text
    assert f"{report['top_classes'][0]['class']} {report['top_classes'][0]['score']:.3f}" in classes
    browser.set_window_size(1400, 1450)  # the whole page: map, location panel and histograms
    browser.save_screenshot(str(DOCS / "viewer-image.png"))

    # The tau control: the distributions redrawn at LD's temperature.
    tau = browser.find_element(By.CSS_SELECTOR, "#tau input")
    tau.send_keys(Keys.CONTROL, "a")
    tau.send_keys("10", Keys.TAB)  # the slider takes a typed value when its box loses focus
    hot = location_report(reader, record, targets, clicked, 10.0)["edge_distributions"]["left"]
    _wait(browser, lambda: np.allclose(browser.execute_script(
        "return Array.from(document.querySelector('#edges .js-plotly-plot').data[0].y);"), hot, atol=1e-6),
        "the left edge at tau 10")

    # Another level forgets the clicked point: that level's most ambiguous row.
    other = next((lvl for lvl in range(len(reader.strides)) if lvl != key.level and len(targets.level(lvl).loc)), None)
    if other is not None:
        _click_label(browser, "level", f"P{other + 3}")
        title = location_title(location_report(reader, record, targets, most_ambiguous(targets, other), 1.0))
        _wait(browser, lambda: browser.find_element(By.ID, "location-title").text == title,
              f"the most ambiguous row of P{other + 3} ({title})")

    # The summary page.
    browser.get(viewer_url + "/summary")
    _wait(browser, lambda: "images x views" in browser.find_element(By.ID, "summary-table").text, "the summary")
    assert f"{len(ids)} x {reader.num_views}" in browser.find_element(By.ID, "summary-table").text
    browser.save_screenshot(str(DOCS / "viewer-summary.png"))

    # An image the store does not have: the reader's one-line error, in the page.
    browser.get(viewer_url + "/image/999999")
    shown = _wait(browser, lambda: browser.find_element(By.CLASS_NAME, "ldcache-error").text, "the error")
    assert shown == f"error: image id 999999 is not in store {shapes_store}"


def test_viewer_shows_the_cli_error_in_the_page(browser, tmp_path):
    """A store that cannot be opened: the page says what the CLI says, in one line."""
    from selenium.webdriver.common.by import By
    from werkzeug.serving import make_server

    from ldcache.inspect.viewer import build_app
    from ldcache.inspect.viewer.session import StoreSession

    missing = tmp_path / "missing.zarr"
    cli = subprocess.run([sys.executable, "-m", "ldcache.cli", "inspect", str(missing)], capture_output=True, text=True)
    assert cli.returncode == 2
    message = re.sub(r"\s+", " ", cli.stderr.strip())
    server = make_server("127.0.0.1", 0, build_app(StoreSession(str(missing))).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        shown = _wait(browser, lambda: browser.find_element(By.CLASS_NAME, "ldcache-error").text, "the error")
        assert re.sub(r"\s+", " ", shown) == message
    finally:
        server.shutdown()
