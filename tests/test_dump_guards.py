"""dump-teacher's guards: one dump per store (its lock), a full disk, torchrun's process groups,
zarr's whole-or-nothing chunk writes, and what a repair keeps of the dump's summary."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import TEACHER_CONFIG, assert_same_arrays, dump_args, run_dump_cli, store_arrays
from ldcache.domain.views import View
from ldcache.dump.lock import StoreLock, lock_path
from ldcache.errors import BadInputError, DiskFullError, StoreLockedError
from ldcache.store.format import STATUS_MASKS
from ldcache.store.reader import StoreReader, open_store


def _stamp(seconds_ago: float = 0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")


def _write_lock(out, host: str, pid: int, heartbeat_age: float = 0) -> dict:
    holder = dict(host=host, pid=pid, started=_stamp(heartbeat_age + 60), heartbeat=_stamp(heartbeat_age),
                  token="someone-else")
    Path(lock_path(out)).write_text(json.dumps(holder))
    return holder


def _dead_pid() -> int:
    """The id of a process of this host that has ended (and been reaped), as a SIGKILLed dump's."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_holder(out) -> dict:
    return json.loads(Path(lock_path(out)).read_text())


def test_a_store_locked_by_a_live_dump_is_refused_in_one_line(shapes_root, random_teacher, tmp_path):
    out = tmp_path / "teacher.zarr"
    holder = _write_lock(out, socket.gethostname(), os.getpid())  # this test's process: alive
    result = run_dump_cli(dump_args(shapes_root, random_teacher, out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    said = " ".join(result.stderr.split())  # rich wraps lines at the terminal's width
    assert (f"is being written by another dump: process {os.getpid()} on {socket.gethostname()}, started "
            f"{holder['started']}") in said, said
    assert "--resume" in said and "Wait for it to end" in said
    assert _lock_holder(out) == holder and not out.exists(), "the holder's lock and store are left alone"


def test_a_lock_whose_process_is_gone_is_taken_over_and_released(tmp_path):
    out = tmp_path / "teacher.zarr"
    _write_lock(out, socket.gethostname(), _dead_pid())
    lock = StoreLock(out, settle_seconds=0.01)
    lock.acquire()
    assert _lock_holder(out)["pid"] == os.getpid() and _lock_holder(out)["host"] == socket.gethostname()
    lock.release()
    assert not Path(lock_path(out)).exists() and not out.exists()


def test_a_lock_on_another_host_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path):
    out = tmp_path / "teacher.zarr"
    _write_lock(out, "another-host", 1, heartbeat_age=60)  # pid 1 exists here, but not on that host
    with pytest.raises(StoreLockedError, match="process 1 on another-host"):
        StoreLock(out, stale_seconds=600, settle_seconds=0.01).acquire()
    _write_lock(out, "another-host", 1, heartbeat_age=3600)
    lock = StoreLock(out, stale_seconds=600, settle_seconds=0.01)
    lock.acquire()
    assert _lock_holder(out)["pid"] == os.getpid()
    lock.release()


def test_a_lock_file_that_no_dump_wrote_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "teacher.zarr"
    Path(lock_path(out)).write_text("my notes")
    with pytest.raises(StoreLockedError, match="is not the lock of an ldcache dump; if no dump is writing"):
        StoreLock(out).acquire()
    assert Path(lock_path(out)).read_text() == "my notes"


def test_the_heartbeat_refreshes_the_lock(tmp_path):
    out = tmp_path / "teacher.zarr"
    lock = StoreLock(out, heartbeat_seconds=0.05, settle_seconds=0.01)
    lock.acquire()
    first = _lock_holder(out)
    deadline = time.monotonic() + 30
    while _lock_holder(out)["heartbeat"] == first["heartbeat"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the stamps have a resolution of one second
    assert _lock_holder(out)["heartbeat"] > first["heartbeat"] and _lock_holder(out)["token"] == first["token"]
    lock.release()
    assert not Path(lock_path(out)).exists()


def test_a_dump_whose_lock_was_taken_over_stops_at_its_next_check(tmp_path):
    out = tmp_path / "teacher.zarr"
    lock = StoreLock(out, heartbeat_seconds=3600, settle_seconds=0.01)  # beats by hand below, not by its thread
    lock.acquire()
    assert lock._beat_once()
    lock.check()
    taker = _write_lock(out, "another-host", 4321)
    assert not lock._beat_once()
    with pytest.raises(StoreLockedError, match="process 4321 on another-host.*took over"):
        lock.check()
    lock.release()
    assert _lock_holder(out) == taker, "the lock is the taker's now: release leaves it"


def test_a_lock_on_an_object_store_refuses_a_second_dump(tmp_path):
    out = f"memory://ldcache-test-{os.getpid()}/teacher.zarr"
    first, second = StoreLock(out, settle_seconds=0.01), StoreLock(out, settle_seconds=0.01)
    first.acquire()
    with pytest.raises(StoreLockedError, match=f"process {os.getpid()} on {socket.gethostname()}"):
        second.acquire()
    first.release()
    assert not first.fs.exists(first.path)
    second.acquire()
    second.release()


@pytest.fixture
def one_thread():
    """Torch on one thread, as the reference dump (OMP_NUM_THREADS=1): the same arithmetic, the same logits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _options(shapes_root, random_teacher, out, **changes):
    from ldcache.dump.run import DumpOptions

    return DumpOptions(TEACHER_CONFIG, random_teacher, shapes_root / "annotations/instances_train.json",
                       shapes_root / "images/train", out, [View((320, 320), False), View((320, 320), True)],
                       workers=0, block_size=4, **changes)


@pytest.mark.slow
def test_pass_2_is_refused_before_it_starts_on_a_disk_that_clearly_cannot_hold_it(shapes_root, random_teacher,
                                                                                  tmp_path, monkeypatch):
    from ldcache.dump.run import run_dump

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    out = tmp_path / "teacher.zarr"
    with pytest.raises(DiskFullError, match=r"pass 2 writes up to \d+\.\d MiB .* 4\.0 KiB free.*--resume"):
        run_dump(_options(shapes_root, random_teacher, out))
    group, attrs = open_store(out, require_complete=False)
    assert attrs.status == STATUS_MASKS and not group["progress/done"][:].any(), "refused before any teacher block"
    assert not Path(lock_path(out)).exists()


@pytest.mark.slow
def test_a_full_disk_in_pass_2_stops_with_the_resume_command_and_resume_finishes(shapes_store, shapes_root,
                                                                                  random_teacher, tmp_path,
                                                                                  monkeypatch, one_thread):
    from zarr.storage import LocalStore

    from ldcache.dump.run import run_dump

    logits_writes = []
    original_set = LocalStore.set

    async def filling_set(self, key, value):
        if key.startswith("logits/"):
            logits_writes.append(key)
            if len(logits_writes) > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", filling_set)
    out = tmp_path / "teacher.zarr"
    with pytest.raises(DiskFullError) as refused:
        run_dump(_options(shapes_root, random_teacher, out))
    said = str(refused.value)
    assert "the disk is full (No space left on device)" in said and "\n" not in said
    assert "the rest of the dump needs up to" in said and f"--out {out} --resume" in said
    group, _ = open_store(out, require_complete=False)
    assert not group["progress/done"][:].all() and not Path(lock_path(out)).exists()

    monkeypatch.undo()  # space is freed
    run_dump(_options(shapes_root, random_teacher, out, resume=True))
    assert_same_arrays(store_arrays(out), store_arrays(shapes_store))


@pytest.mark.slow
def test_a_write_a_kill_interrupted_leaves_no_file_once_the_resumed_dump_finishes(
        shapes_store, shapes_root, random_teacher, tmp_path, monkeypatch, one_thread):
    from ldcache.dump.run import run_dump

    original_replace = Path.replace
    renames = []

    def die_at_the_fourth_logits_rename(self, target):
        if "/logits/" in str(target):
            renames.append(target)
            if len(renames) == 4:
                raise OSError(errno.EIO, "the process died here")
        return original_replace(self, target)

    monkeypatch.setattr(Path, "replace", die_at_the_fourth_logits_rename)
    out = tmp_path / "teacher.zarr"
    with pytest.raises(OSError, match="the process died here"):
        run_dump(_options(shapes_root, random_teacher, out))
    monkeypatch.undo()
    # zarr deletes its staged file when the write raises; a SIGKILL gives it no chance: what it leaves.
    staged = renames[-1].with_suffix(".0123456789abcdef0123456789abcdef.partial")
    staged.write_bytes(b"half a shard")

    run_dump(_options(shapes_root, random_teacher, out, resume=True))
    assert not list(out.rglob("*.partial"))
    assert_same_arrays(store_arrays(out), store_arrays(shapes_store))


def test_ranks_on_gpus_set_the_device_first_and_meet_on_a_gloo_group(monkeypatch):
    import torch
    import torch.distributed as dist

    from ldcache.dump.ranks import Ranks

    calls, initialized = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LDCACHE_BARRIER_TIMEOUT", "7200")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(initialized))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend)) or initialized.append(1))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "new_group", lambda backend, timeout: calls.append(("new_group", backend, timeout))
                        or "the gloo group")
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "barrier", lambda group=None: calls.append(("barrier", group)))
    ranks = Ranks.from_env()
    ranks.barrier()
    assert (ranks.rank, ranks.world) == (1, 2)
    assert calls == [("set_device", 1), ("init", "nccl"), ("new_group", "gloo", timedelta(hours=2)),
                     ("barrier", "the gloo group")]


def test_a_barrier_timeout_that_is_not_a_number_of_seconds_is_refused(monkeypatch):
    from ldcache.dump.ranks import barrier_timeout

    monkeypatch.setenv("LDCACHE_BARRIER_TIMEOUT", "2h")
    with pytest.raises(BadInputError, match="LDCACHE_BARRIER_TIMEOUT must be a positive number of seconds"):
        barrier_timeout()


def _refuse_the_annotation_file() -> None:
    raise BadInputError("no such annotation file")


def _rank_process(rank: int, rendezvous: str, results: str) -> None:
    """One of two CPU processes: a process group as on GPUs (the default group's backend reported as
    NCCL), so that Ranks makes its own gloo group and shares rank 0's results over it."""
    import torch.distributed as dist

    from ldcache.dump.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    dist.get_backend = lambda group=None: "nccl"
    ranks = Ranks.from_env()
    said = {"group": ranks.group is not None, "shared": ranks.from_first(lambda: {"scanned by": os.getpid()})}
    try:
        ranks.from_first(_refuse_the_annotation_file)
    except BadInputError as err:
        said["error"] = str(err)
    ranks.barrier()
    Path(results, f"rank{rank}.json").write_text(json.dumps(said))
    dist.destroy_process_group()


def test_ranks_share_rank_0s_results_and_errors_over_their_gloo_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_process, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    said = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert said[0]["group"] and said[1]["group"]
    assert said[0]["shared"] == said[1]["shared"], "rank 1 got rank 0's result"
    assert said[0]["error"] == said[1]["error"] == "no such annotation file"


def test_zarrs_local_store_writes_a_chunk_whole_or_not_at_all(tmp_path, monkeypatch):
    """The store relies on it: a dump killed while writing a chunk leaves the old chunk or none,
    never a torn one (zarr >= 3.1.3 writes a temporary file, then renames it into place)."""
    import zarr

    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(64,), chunks=(64,), dtype="u1")
    array[:] = 1
    [chunk] = [p for p in (tmp_path / "a.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    before = chunk.read_bytes()
    renames = []

    def crash_before_the_rename(self, target):
        renames.append((Path(self), Path(target)))
        raise OSError(errno.EIO, "the process died here")

    monkeypatch.setattr(Path, "replace", crash_before_the_rename)
    with pytest.raises(OSError, match="the process died here"):
        array[:] = 2
    [(staged, target)] = renames
    assert target == chunk and staged.parent == chunk.parent and staged != chunk
    assert chunk.read_bytes() == before, "the chunk is untouched until the rename"
    monkeypatch.undo()
    array[:] = 2
    assert np.array_equal(array[:], np.full(64, 2))


@pytest.mark.slow
def test_a_repair_keeps_the_original_dumps_summary(shapes_store, shapes_root, random_teacher, tmp_path):
    out = tmp_path / "teacher.zarr"
    shutil.copytree(shapes_store, out)
    original = StoreReader(out).attrs.summary
    logits_files = sorted(p for p in (out / "logits" / "c").rglob("*") if p.is_file())
    damaged = logits_files[len(logits_files) // 2]
    damaged.write_bytes(damaged.read_bytes()[:100])

    repaired = run_dump_cli(dump_args(shapes_root, random_teacher, out, "--resume"))
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert "repairing 1 damaged block(s)" in " ".join(repaired.stderr.split())
    summary = StoreReader(out).attrs.summary
    assert summary.completion_id != original.completion_id, "the content was rewritten"
    for field in ("wall_seconds", "bytes_on_disk", "bytes_per_image_view", "compression_vs_dense_fp16",
                  "dense_fp16_bytes", "rows_per_level", "image_views"):
        assert getattr(summary, field) == getattr(original, field), field
    assert_same_arrays(store_arrays(out), store_arrays(shapes_store))

    again = run_dump_cli(dump_args(shapes_root, random_teacher, out, "--resume"))
    assert again.returncode == 0 and "nothing to repair" in " ".join(again.stderr.split())
    assert StoreReader(out).attrs.summary == summary, "a store without damage is left as it is"
