"""The `browser` fixture: headless Chromium loads a page served on 127.0.0.1 and takes a screenshot."""
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!doctype html><html><head><title>ldcache browser check</title></head>
<body><h1 id="greeting">Hello from ldcache</h1><p id="count">3 image-views</p></body></html>"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one stderr line per request otherwise
        pass


def test_headless_chromium_loads_a_local_page_and_takes_a_screenshot(browser, tmp_path):
    from selenium.webdriver.common.by import By

    (tmp_path / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        assert browser.title == "ldcache browser check"
        assert browser.find_element(By.ID, "greeting").text == "Hello from ldcache"
        assert browser.find_element(By.ID, "count").text == "3 image-views"
        assert browser.get_window_size() == {"width": 1400, "height": 1000}
        assert browser.get_screenshot_as_png().startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
