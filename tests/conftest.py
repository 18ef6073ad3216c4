from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BIN = Path(sys.executable).parent
LDCACHE = str(BIN / "ldcache")
TORCHRUN = str(BIN / "torchrun")
TEACHER_CONFIG = CONFIGS / "tiny" / "gfl_r18_tiny.py"
CACHED_CONFIG = CONFIGS / "tiny" / "ld_r18_tiny_cached.py"
# The arrays whose values two dumps of the same command must agree on.
STORE_ARRAYS = ("ptr", "masks", "logits", "block_stats", "shard_index", "img_shape", "scale_factor", "flip",
                "image_ids")


def dump_args(root, teacher, out, *extra) -> list[str]:
    """dump-teacher arguments for the shapes train split, small blocks, no loader workers."""
    return [str(TEACHER_CONFIG), str(teacher), "--ann-file", str(root / "annotations/instances_train.json"),
            "--img-dir", str(root / "images/train"), "--out", str(out), "--workers", "0",
            "--block-size", "4", *extra]


# The paper's LD terms (Main LD + VLR LD + Main KD at the official weights), for tests that need
# every term on whatever recipe the tiny config holds.
PAPER_TERMS = dict(
    loss_ld=dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
    loss_ld_vlr=dict(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10),
    loss_kd=dict(type="KnowledgeDistillationKLDivLoss", loss_weight=10, T=2))


def cached_cfg(store, flip: float = 0.0, **head):
    """The tiny cached-LD student config reading `store`, with RandomFlip at probability `flip`."""
    from mmengine.config import Config

    from ldcache.train.student import use_cache

    cfg = Config.fromfile(str(CACHED_CONFIG))
    use_cache(cfg, str(store))
    for step in cfg.train_dataloader.dataset.pipeline:
        if step["type"] == "RandomFlip":
            step["prob"] = flip
    cfg.model.bbox_head.update(head)
    return cfg


def loaded_targets(store, workers: int, images: int = 8) -> dict:
    """{image id: LDTargets} of the first `images` training samples, through mmengine's DataLoader."""
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    import ldcache.train  # noqa: F401

    register_all_modules()
    cfg = cached_cfg(store, flip=1.0)
    cfg.train_dataloader.update(num_workers=workers, persistent_workers=False, batch_size=4)
    cfg.train_dataloader.dataset.indices = images
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    return {int(s.img_id): s.ld_targets for batch in loader for s in batch["data_samples"]}


def run_dump_cli(args, launcher=(), env=None, **kw) -> subprocess.CompletedProcess:
    """`ldcache dump-teacher ARGS`, under `launcher` (torchrun) when given, with `env` added."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}  # same arithmetic in every process count
    return subprocess.run([*launcher, LDCACHE, "dump-teacher", *args], env=env, capture_output=True, text=True, **kw)


def store_arrays(store) -> dict[str, np.ndarray]:
    """The STORE_ARRAYS of a finished store, read whole."""
    from ldcache.store.reader import open_store

    group, _ = open_store(store)
    return {name: group[name][:] for name in STORE_ARRAYS}


def assert_same_arrays(a: dict, b: dict) -> None:
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def edited_dataset(root, tmp_path, edit) -> Path:
    """A copy of the shapes train annotation file, changed in place by `edit(ann)`."""
    ann = json.loads((root / "annotations/instances_train.json").read_text())
    edit(ann)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path


def open_log_env(folder: Path, watched: list[Path]) -> tuple[dict, Path]:
    """(environment, log file): every Python process started with that environment logs each file it
    opens under one of `watched` as 'pid rank path' (an audit hook installed by a sitecustomize
    module). It counts work such as parsing or hashing a file in every rank of a torchrun job."""
    log = folder / "opens.log"
    hook = folder / "open-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, sys

        WATCHED = {[str(Path(w).resolve()) for w in watched]!r}

        def _log_open(event, args):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.path.realpath(os.fsdecode(args[0]))
                if any(path == w or path.startswith(w + os.sep) for w in WATCHED):
                    with open({str(log)!r}, "a") as f:  # not a watched path: no recursion
                        f.write(f"{{os.getpid()}} {{os.environ.get('RANK', '0')}} {{path}}\\n")

        sys.addaudithook(_log_open)
    """))
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": pythonpath}, log


@contextmanager
def rendezvous_endpoint():
    """'127.0.0.1:PORT' of a c10d store this process hosts, for torchrun agents started with
    `--rdzv-conf is_host=false`: the port is bound here and never handed over, so no other
    process can take it between choosing it and using it."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        yield f"127.0.0.1:{store.port}"
    finally:
        del store


@contextmanager
def unreachable_port():
    """A port bound on 127.0.0.1 that listens to nothing: every connection to it is refused while
    the block runs (a port merely found free could be taken by another process meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def synthetic_attrs(num_classes: int, records: int, chunk_rows: int, dtype: str = "fp16"):
    """Store attributes of a one-view synthetic store at 320 px (no teacher, no dataset behind it)."""
    from ldcache.store.attrs import (DatasetAttrs, GridAttrs, HeadGeometry, LayoutAttrs, RegionAttrs, StoreAttrs,
                                     TeacherAttrs, ValuesAttrs, ViewAttrs)
    from ldcache.store.format import FORMAT_VERSION, STATUS_CREATED

    return StoreAttrs(
        ldcache_format=FORMAT_VERSION, status=STATUS_CREATED, fingerprint="synthetic",
        teacher=TeacherAttrs("none", "0", "none", "0", "GFLHead"),
        head=HeadGeometry(num_classes, 16, (8, 16, 32, 64, 128), 8.0, 1, (1.0,), 0.0, 1, -1),
        grid=GridAttrs(32, "horizontal"),
        dataset=DatasetAttrs("none", "0", "none", tuple(f"class{i}" for i in range(num_classes))),
        views=(ViewAttrs("synthetic", (320, 320), False),),
        region=RegionAttrs("distill", 0.25, 9, ("official", "diou"), {"type": "ATSSAssigner", "topk": 9}, "band"),
        values=ValuesAttrs(dtype, True),
        layout=LayoutAttrs(64, chunk_rows, chunk_rows, records, 1))


def synthetic_store(path, counts, num_classes: int = 3, chunk_rows: int = 512, block_size: int = 64,
                    dtype: str = "fp16", seed: int = 0):
    """A finished one-view store of random rows laid out from per-record row counts [N, L], written
    block by block as a dump writes it (no teacher, no images); returns (path, masks, values) with
    every row's MASK_DTYPE entry and stored values."""
    from ldcache.store.format import MASK_DTYPE
    from ldcache.store.layout import block_row_starts

    rng = np.random.default_rng(seed)
    counts = np.asarray(counts)
    attrs = synthetic_attrs(num_classes, len(counts), chunk_rows, dtype)
    attrs = dataclasses.replace(attrs, layout=dataclasses.replace(attrs.layout, block_size=block_size))
    # Rows in the store's row order: the layout may leave rows between blocks.
    ptr, _, _ = block_row_starts(counts, block_size, chunk_rows)
    rows = int(ptr[-1, -1]) if len(counts) else 0
    masks = np.zeros(rows, dtype=MASK_DTYPE)
    masks["flags"] = rng.integers(1, 8, rows)
    masks["loc"] = rng.integers(0, 1600, rows)
    codec = attrs.value_codec()
    values = codec.decode(codec.encode(rng.normal(0, 3, (rows, codec.num_values)).astype(np.float32)))
    finished_store(path, attrs, counts, masks, values, f"synthetic-{seed}")
    return path, masks, values


def finished_store(path, attrs, counts, masks, values, completion_id: str = "synthetic"):
    """Lay out a one-view store of per-record row counts [N, L] (image ids 1, 4, 7, ..., 320 px,
    no GT boxes) with `attrs`, and write its MASK_DTYPE rows `masks` and their `values` (in the
    store's row order, as the layout places them) block by block as pass 2 does (rows, statistics,
    done flag), then finish it."""
    from ldcache.store.attrs import DumpSummary
    from ldcache.store.format import PROGRESS
    from ldcache.store.layout import BlockMap, block_row_starts
    from ldcache.store.statistics import rows_statistics
    from ldcache.store.writer import create_store, finish_store, writable

    counts = np.asarray(counts)
    records = len(counts)
    ptr, total, shard_rows = block_row_starts(counts, attrs.layout.block_size, attrs.layout.chunk_rows)
    attrs = dataclasses.replace(attrs, layout=dataclasses.replace(attrs.layout, shard_rows=shard_rows))
    meta = {"image_ids": np.arange(records, dtype=np.int64) * 3 + 1,
            "image_files": np.full((records, 4), 97, np.uint8),
            "gt_ptr": np.zeros(records + 1, np.int64), "gt_boxes": np.zeros((0, 4), np.float32),
            "img_shape": np.full((records, 2), 320, np.int32), "scale_factor": np.ones((records, 2)),
            "pad_shape": np.full((records, 2), 320, np.int32), "flip": np.zeros(records, np.uint8)}
    group = create_store(path, attrs, ptr, total, meta)
    codec = attrs.value_codec()
    blocks = BlockMap.of_store(ptr, attrs)
    done, block_stats = (writable(group, f"{PROGRESS}/{name}") for name in ("done", "block_stats"))
    for block in range(blocks.num_blocks):
        start, end = blocks.rows(block)
        if end > start:
            writable(group, "masks")[start:end] = masks[start:end].view(np.uint8).reshape(end - start, -1)
            writable(group, "logits")[start:end] = codec.encode(values[start:end])
            block_stats[block] = rows_statistics(masks["flags"][start:end], values[start:end], ptr, start, codec.bins)
        done[block] = 1
    summary = DumpSummary(records, 1, records, 0, 0, 0, tuple(int(n) for n in counts.sum(axis=0)), 0, 0.0, 0, 0.0,
                          0.0, completion_id)
    finish_store(path, group, attrs, blocks, summary)


@contextmanager
def s3_environ(env: dict[str, str]):
    """os.environ with an S3 server's `env` set (subprocesses inherit it), restored afterwards.
    fsspec keeps one filesystem per set of arguments, endpoint not included: the filesystems made
    for another server are dropped on the way in and out."""
    import s3fs

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def moto_s3(bucket: str):
    """A moto S3 server on 127.0.0.1 with one bucket; its credentials and endpoint in os.environ
    (see s3_environ) while the block runs, and yielded."""
    import logging
    import secrets

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "ldcache-test-key", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with s3_environ(env):
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield env
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def private_tables(tmp_path_factory) -> Path:
    """Readers' local copies of the test stores' small arrays in the session's temporary folder,
    not in the user's $LDCACHE_HOME (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("tables")
    os.environ["LDCACHE_TABLES"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def shapes_root() -> Path:
    """The small kwcoco shapes dataset, built once and cached in $LDCACHE_HOME between runs."""
    from ldcache.demo.shapes import ShapesSpec, ensure_shapes_dataset

    root = ensure_shapes_dataset(ShapesSpec())
    os.environ["LDCACHE_DATA_ROOT"] = str(root) + "/"
    return root


@pytest.fixture
def private_home(tmp_path, monkeypatch) -> Path:
    """A fresh $LDCACHE_HOME (signing key included) for tests that must not touch the user's."""
    home = tmp_path / "ldcache-home"
    monkeypatch.setenv("LDCACHE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory) -> Path:
    """A randomly initialised tiny GFL teacher saved as a plain (weights-only) checkpoint."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(TEACHER_CONFIG)).model)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def shapes_store(shapes_root, random_teacher, tmp_path_factory) -> Path:
    """The random teacher dumped over the shapes train split: identity and flipped views."""
    out = tmp_path_factory.mktemp("store") / "teacher.zarr"
    result = run_dump_cli(dump_args(shapes_root, random_teacher, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def main_store(shapes_root, random_teacher, tmp_path_factory) -> Path:
    """The random teacher dumped like shapes_store, with --region main: the Main rows only."""
    out = tmp_path_factory.mktemp("main_store") / "teacher.zarr"
    result = run_dump_cli(dump_args(shapes_root, random_teacher, out, "--region", "main"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


BROWSER_MISSING = ("headless Chromium not installed: run `bash scripts/setup.sh --browser` "
                   "(Debian's chromium and chromium-driver)")


@pytest.fixture
def browser(monkeypatch):
    """A selenium Chrome driver of headless Chromium (1400 x 1000), quit afterwards; the test is
    skipped when Debian's chromium or chromium-driver, or selenium, is missing. The driver is the
    installed chromedriver, named explicitly: selenium's Selenium Manager, which would download one,
    is never run (and SE_OFFLINE forbids it any download)."""
    import shutil

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"{BROWSER_MISSING}; selenium is not installed either (pip install -e '.[test]')")
    chromium = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip(BROWSER_MISSING)
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


class Killed(Exception):
    """Stands for a training run killed part-way (see `killed_at`)."""


def killed_at(stage: str):
    """An mmengine hook that raises Killed at the first `stage` ("after_train_epoch": once the
    epoch's checkpoint is written; "after_val_epoch": once its validation is logged), after every
    other hook of that stage."""
    from mmengine.hooks import Hook

    class KillHook(Hook):
        priority = "LOWEST"

    def kill(self, runner, *args, **kwargs):
        raise Killed

    setattr(KillHook, stage, kill)
    return KillHook()
