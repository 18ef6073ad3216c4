"""I/O errors of an object store are not damage: a store behind an S3 server that answers 503
(a local moto server behind a fault-injecting proxy on 127.0.0.1) is retried, then refused with a
StoreIOError that says to retry, and a `--resume` repair deletes nothing."""
import http.client
import logging
import os
import secrets
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import BIN, dump_args, run_dump_cli, s3_environ

pytestmark = pytest.mark.slow

BUCKET = "ldcache-io"


class FaultyProxy:
    """Forwards S3 requests to moto; GETs whose path contains `pattern` get 503 SlowDown, the next
    `times` of them (-1: all)."""

    def __init__(self, upstream_port: int):
        self.pattern, self.times, self.failed = "", 0, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue`, as S3 clients send it

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "GET" and proxy.pattern and proxy.pattern in self.path and proxy.times:
                    proxy.times -= proxy.times > 0
                    proxy.failed += 1
                    message = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def fail(self, pattern: str, times: int = -1) -> None:
        self.pattern, self.times, self.failed = pattern, times, 0

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def s3(shapes_store):
    """(proxy, environment, store URL): the shapes store copied to a moto bucket reached through the proxy."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = FaultyProxy(server.get_host_and_port()[1])
    env = {"AWS_ACCESS_KEY_ID": "ldcache-io-key", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_DEFAULT_REGION": "us-east-1",
           # One attempt per request in botocore: the retries under test are ldcache's own.
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    try:
        with s3_environ(env):
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            url = f"s3://{BUCKET}/teacher.zarr"
            s3fs.S3FileSystem(skip_instance_cache=True).put(str(shapes_store), url, recursive=True)
            yield proxy, env, url
    finally:
        proxy.close()
        server.stop()


def _objects(url: str) -> dict[str, int]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return {path: info["size"] for path, info in fs.find(url, detail=True).items()}


def test_a_transient_error_is_retried_and_a_lasting_one_is_an_io_error(s3, private_home):
    from ldcache.errors import StoreIOError
    from ldcache.store.reader import StoreReader

    proxy, _, url = s3
    reader = StoreReader(url)
    expected = reader.read_record(5)
    proxy.fail("/logits/", times=2)
    again = reader.read_record(5)
    assert proxy.failed == 2 and (again.values == expected.values).all(), "two 503s, then the same record"
    proxy.fail("/logits/")
    with pytest.raises(StoreIOError, match="not damage to the store: retry"):
        reader.read_record(5)
    proxy.fail("")


@pytest.mark.parametrize("failing", ["/masks/c/", "/logits/zarr.json"])
def test_verify_and_a_repair_stop_on_io_errors_and_delete_nothing(s3, shapes_root, random_teacher, failing):
    proxy, env, url = s3
    before = _objects(url)
    proxy.fail(failing)
    try:
        verify = subprocess.run([str(BIN / "ldcache"), "verify", url], capture_output=True, text=True,
                                env={**os.environ, **env})
        resumed = run_dump_cli(dump_args(shapes_root, random_teacher, url, "--resume"))
    finally:
        proxy.fail("")
    for result in (verify, resumed):
        said = " ".join(result.stderr.split())
        assert result.returncode == 2 and "Traceback" not in said, said[-2000:]
        assert "not damage to the store: retry" in said and "DAMAGED" not in result.stdout, said[-2000:]
    assert _objects(url) == before, "no object deleted or rewritten"
    assert subprocess.run([str(BIN / "ldcache"), "verify", url], capture_output=True, text=True,
                          env={**os.environ, **env}).returncode == 0
