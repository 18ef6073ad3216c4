"""Beyond one process: stores on S3 (a moto server on loopback), torchrun splits, dask clusters."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import (BIN, TORCHRUN, assert_same_arrays, dump_args, loaded_targets, moto_s3, rendezvous_endpoint,
                      run_dump_cli, store_arrays, unreachable_port)

pytestmark = pytest.mark.slow

BUCKET = "ldcache-test"


def _assert_same_arrays(store, reference) -> None:
    assert_same_arrays(store_arrays(store), store_arrays(reference))


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server with one bucket; its credentials in os.environ while the module runs."""
    with moto_s3(BUCKET) as env:
        yield env


def test_two_writer_processes_fill_one_s3_store_equal_to_a_local_dump(s3_env, shapes_store, shapes_root,
                                                                      random_teacher, tmp_path):
    import fsspec

    url = f"s3://{BUCKET}/stores/two-writers.zarr"
    launcher = (TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python")  # torchrun picks the port
    result = run_dump_cli(dump_args(shapes_root, random_teacher, url), launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_arrays(url, shapes_store)
    fs, root = fsspec.core.url_to_fs(url)
    assert not fs.exists(f"{root}.lock"), "rank 0 releases the store's lock"

    inspected = subprocess.run([str(BIN / "ldcache"), "inspect", url, "--json"], capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    summary = json.loads(inspected.stdout)
    assert summary["image_views"] == 96 and summary["bytes_on_disk"] > 0

    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    objects = fs.find(root)
    assert len(objects) > 10
    assert not any(secret.encode() in blob for blob in fs.cat(objects).values()), "a credential in the store"
    for text in (result.stdout, result.stderr, inspected.stdout, inspected.stderr):
        assert secret not in text and "ldcache-test-key" not in text


def test_a_dump_holds_an_s3_stores_lock_alone(s3_env):
    import fsspec

    from ldcache.dump.lock import StoreLock
    from ldcache.errors import StoreLockedError

    url = f"s3://{BUCKET}/stores/locked.zarr"
    first, second = StoreLock(url, settle_seconds=0.1), StoreLock(url, settle_seconds=0.1)
    first.acquire()
    with pytest.raises(StoreLockedError, match=f"process {os.getpid()} on "):
        second.acquire()
    # A lock left by a dump on another host whose heartbeat stopped long ago is taken over.
    fs, path = fsspec.core.url_to_fs(f"{url}.lock")
    fs.pipe_file(path, json.dumps(dict(host="another-host", pid=1, started="2020-01-01T00:00:00+00:00",
                                       heartbeat="2020-01-01T00:00:00+00:00", token="gone")).encode())
    second.acquire()
    assert json.loads(fs.cat_file(path))["pid"] == os.getpid()
    second.release()
    first.release()  # the lock is no longer its own: left as it is (already removed by the second)
    assert not fs.exists(path)


def test_dataloader_workers_read_an_s3_store_like_a_local_one(s3_env, shapes_store, tmp_path):
    import fsspec

    url = f"s3://{BUCKET}/stores/copy.zarr"
    fs, root = fsspec.core.url_to_fs(url)
    fs.put(str(shapes_store), root, recursive=True)
    remote, local = loaded_targets(url, workers=2), loaded_targets(shapes_store, workers=0)
    assert remote.keys() == local.keys() and len(remote) == 8
    for image_id, targets in local.items():
        assert np.array_equal(remote[image_id].masks, targets.masks)
        assert np.array_equal(remote[image_id].values, targets.values)


def test_missing_s3_store_is_a_one_line_error(s3_env):
    result = subprocess.run([str(BIN / "ldcache"), "inspect", f"s3://{BUCKET}/nothing-here.zarr"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("layout", ["3 processes", "2 nodes x 1 process"])
def test_stores_do_not_depend_on_how_processes_are_placed(layout, shapes_store, shapes_root, random_teacher,
                                                          tmp_path):
    out = tmp_path / "store"
    args = [str(BIN / "ldcache"), "dump-teacher", *dump_args(shapes_root, random_teacher, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with rendezvous_endpoint() as endpoint:
        if layout == "3 processes":
            launches = [[TORCHRUN, "--standalone", "--nproc-per-node", "3", "--no-python", *args]]
        else:
            # Two torchrun agents meeting at one rendezvous, as on two nodes; this process hosts it.
            rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                          endpoint, "--rdzv-conf", "is_host=false", "--rdzv-id", "ldcache-test"]
            launches = [[TORCHRUN, *rendezvous, "--no-python", *args] for _ in range(2)]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for cmd in launches]
        outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    _assert_same_arrays(out, shapes_store)


def test_mask_pass_on_a_dask_cluster_gives_the_same_store(shapes_store, shapes_root, random_teacher, tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = run_dump_cli(dump_args(shapes_root, random_teacher, out, "--dask-scheduler",
                                        cluster.scheduler_address))
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # rich wraps the line at the terminal's width
    assert "dask cluster" in said and "2 workers" in said
    _assert_same_arrays(out, shapes_store)

    with unreachable_port() as port:
        refused = run_dump_cli(dump_args(shapes_root, random_teacher, tmp_path / "nowhere", "--dask-scheduler",
                                         f"tcp://127.0.0.1:{port}"))
    assert refused.returncode == 2 and "cannot reach the dask scheduler" in refused.stderr
    assert "Traceback" not in refused.stderr
