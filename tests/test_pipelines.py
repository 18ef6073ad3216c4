"""pipelines/*.sh, the two stages as scripts a user runs, at tiny size on the CPU: the LD config
inheriting mmdet's, the tests' random teacher, 8 training images, a 1-epoch student (one step of 8
images), 8 test images. Each script must exit 0 having verified its store, saved a checkpoint and
printed the student's COCO AP; the SLURM script, without srun here, is checked by its dry run."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, LDCACHE, REPO, TEACHER_CONFIG, edited_dataset, moto_s3

pytestmark = pytest.mark.slow

PIPELINES = REPO / "pipelines"
LD_CONFIG = REPO / "configs" / "tiny" / "ld_r18_tiny_mmdet.py"
TRAIN_IMAGES = 8


@pytest.fixture
def small_ann(shapes_root, tmp_path) -> Path:
    """The shapes train annotation file cut to its first TRAIN_IMAGES images: the dump and the
    student both read it (the student's check hook compares its sha256 with the store's)."""
    def keep_first_images(ann):
        ann["images"] = ann["images"][:TRAIN_IMAGES]
        kept = {image["id"] for image in ann["images"]}
        ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in kept]

    return edited_dataset(shapes_root, tmp_path, keep_first_images)


@pytest.fixture
def pipeline_env(tmp_path, random_teacher, small_ann) -> dict:
    """The environment every script runs in: its variables set for the tiny run (the CPU, no
    DataLoader workers, blocks of 4 image-views, no validation during training: evaluate does it,
    on 8 test images)."""
    options = [f"model.teacher_config={TEACHER_CONFIG}", f"train_dataloader.dataset.ann_file={small_ann}"]
    return {**os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # ldcache, torchrun, dask, python of the venv
            "LDCACHE_HOME": str(tmp_path / "home"),  # the key that signs the student's checkpoints
            "LD_CONFIG": str(LD_CONFIG), "TEACHER_CKPT": str(random_teacher),
            "STORE": str(tmp_path / "teacher.zarr"), "WORK_DIR": str(tmp_path / "work"),
            "CFG_OPTIONS": " ".join(options),
            "DUMP_ARGS": "--device cpu --workers 0 --block-size 4",
            "TRAIN_ARGS": "--cfg-options train_cfg.val_begin=2",
            "EVAL_ARGS": "--cfg-options test_dataloader.dataset.indices=8"}


def start_script(name: str, env: dict, cwd: Path) -> subprocess.Popen:
    # In a session of its own, so that finish_script can stop everything it started.
    return subprocess.Popen(["bash", str(PIPELINES / name)], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish_script(proc: subprocess.Popen, timeout: int) -> subprocess.CompletedProcess:
    """The script's outcome once it ends; past `timeout` (or when the test stops for any other
    reason) its process group, torchrun's and dask's processes included, is killed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_script(name: str, env: dict, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return finish_script(start_script(name, env, cwd), timeout)


def assert_pipeline_ran(result: subprocess.CompletedProcess, env: dict) -> None:
    """Exit 0; verify said OK; the store holds the training images in 2 views; the checkpoint named by
    last_checkpoint exists; evaluate printed the COCO AP table."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    said = " ".join(result.stdout.split())  # rich wraps lines at the terminal's width
    assert f"{Path(env['STORE']).name}: OK" in said
    checkpoint = Path((Path(env["WORK_DIR"]) / "last_checkpoint").read_text().strip())
    assert checkpoint.is_file() and checkpoint.parent == Path(env["WORK_DIR"])
    assert "bbox_mAP" in result.stdout, result.stdout[-3000:]
    table = result.stdout[result.stdout.rindex("bbox_mAP"):]
    assert re.search(r"\b\d\.\d{3}\b", table), result.stdout[-3000:]
    inspected = subprocess.run([LDCACHE, "inspect", env["STORE"], "--json"], env=env, capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert json.loads(inspected.stdout)["image_views"] == 2 * TRAIN_IMAGES


def trained_in_ddp(work_dir: Path) -> bool:
    """Whether the training's log (evaluate logs to the same work dir) says it ran DDP."""
    logs = [log.read_text() for log in work_dir.glob("*/*.log")]
    return any("Epoch(train)" in log and "Distributed training: True" in log for log in logs)


def free_port_pair() -> int:
    """A port p with p and p+1 free now (multi_node.sh's two rendezvous)."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


@pytest.mark.timeout(540)
def test_one_gpu_and_its_rerun(pipeline_env, tmp_path):
    result = run_script("one_gpu.sh", pipeline_env, tmp_path, timeout=360)
    assert_pipeline_ran(result, pipeline_env)

    # Run again, the script keeps the finished store and the trained checkpoint (--resume).
    kept = [Path(pipeline_env["STORE"]) / "zarr.json", tmp_path / "work" / "epoch_1.pth"]
    written = [path.stat().st_mtime_ns for path in kept]
    again = run_script("one_gpu.sh", pipeline_env, tmp_path, timeout=160)
    assert_pipeline_ran(again, pipeline_env)
    assert [path.stat().st_mtime_ns for path in kept] == written
    assert "Auto resumed from the latest checkpoint" in again.stdout


@pytest.mark.timeout(480)
def test_torchrun_with_two_processes(pipeline_env, tmp_path):
    result = run_script("torchrun.sh", {**pipeline_env, "GPUS": "2"}, tmp_path, timeout=460)
    assert_pipeline_ran(result, pipeline_env)
    assert trained_in_ddp(tmp_path / "work")


@pytest.mark.timeout(480)
def test_multi_node_as_two_agents_on_loopback(pipeline_env, tmp_path):
    nodes = {**pipeline_env, "NNODES": "2", "GPUS_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port_pair())}
    procs = [start_script("multi_node.sh", {**nodes, "NODE_RANK": str(rank)}, tmp_path) for rank in (0, 1)]
    try:
        first = finish_script(procs[0], timeout=460)
        assert first.returncode == 0, first.stderr[-5000:]  # before node 1's: it may wait for node 0
        second = finish_script(procs[1], timeout=60)  # done with the training, which ended before node 0's evaluation
    finally:
        if procs[1].poll() is None:
            os.killpg(procs[1].pid, signal.SIGKILL)
    assert second.returncode == 0, second.stderr[-5000:]
    assert_pipeline_ran(first, pipeline_env)
    # Node 1 neither verifies nor evaluates.
    assert ": OK" not in second.stdout and "bbox_mAP" not in second.stdout
    assert trained_in_ddp(tmp_path / "work")


@pytest.mark.timeout(420)
def test_dask_pass1_starts_and_stops_its_own_cluster(pipeline_env, tmp_path):
    scratch = tmp_path / "scratch"  # where the script's mktemp puts the cluster's folder
    scratch.mkdir()
    result = run_script("dask_pass1.sh", {**pipeline_env, "DASK_WORKERS": "1", "TMPDIR": str(scratch)}, tmp_path,
                        timeout=400)
    assert_pipeline_ran(result, pipeline_env)
    said = " ".join(result.stderr.split())
    used = re.search(r"dask cluster tcp://127\.0\.0\.1:(\d+), 1 workers", said)
    assert used, said[-3000:]
    # The trap stopped the scheduler and removed the cluster's folder.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(used.group(1)))) != 0
    assert not any(scratch.iterdir())


@pytest.fixture
def s3_env():
    """A moto S3 server with one bucket; its credentials in os.environ meanwhile."""
    with moto_s3("pipelines") as env:
        yield env


@pytest.mark.timeout(420)
def test_object_store(s3_env, pipeline_env, tmp_path):
    import fsspec

    env = {**pipeline_env, **s3_env, "STORE": "s3://pipelines/caches/teacher.zarr"}
    result = run_script("object_store.sh", env, tmp_path, timeout=400)
    assert_pipeline_ran(result, env)
    fs, root = fsspec.core.url_to_fs(env["STORE"])
    assert fs.exists(f"{root}/zarr.json") and not (tmp_path / "s3:").exists()
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_slurm_dry_run_prints_one_task_per_gpu(pipeline_env, tmp_path):
    env = {**pipeline_env, "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "PARTITION": "gpu",
           "NODES": "2", "GPUS_PER_NODE": "4", "CPUS_PER_TASK": "6",
           "SRUN_ARGS": "--time=2:00:00"}
    assert shutil.which("srun", path=env["PATH"]) is None
    result = subprocess.run(["bash", str(PIPELINES / "slurm.sh"), "--dry-run"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    dump, verify, train, evaluate = (shlex.split(line) for line in result.stdout.splitlines())
    assert not Path(env["STORE"]).exists() and not Path(env["WORK_DIR"]).exists()

    common = ["--partition=gpu", "--job-name=ldcache", "--cpus-per-task=6", "--kill-on-bad-exit=1", "--time=2:00:00"]
    per_gpu = ["srun", *common, "--nodes=2", "--ntasks-per-node=4", "--ntasks=8", "--gres=gpu:4"]
    one_task = ["srun", *common, "--nodes=1", "--ntasks=1", "--gres=gpu:1"]
    options = [word for option in env["CFG_OPTIONS"].split() for word in ("--cfg-options", option)]
    wrapper = dump[len(per_gpu):len(per_gpu) + 4]
    assert wrapper[:2] == ["bash", "-c"] and wrapper[3] == "rank"
    assert dump == [*per_gpu, *wrapper, "ldcache", "dump-teacher", env["LD_CONFIG"], "--teacher-ckpt",
                    env["TEACHER_CKPT"], "--out", env["STORE"], "--resume", *options, *env["DUMP_ARGS"].split()]
    assert verify == [*one_task, "ldcache", "verify", env["STORE"]]
    assert train == [*per_gpu, *wrapper, "ldcache", "train-student", env["LD_CONFIG"], "--cache", env["STORE"],
                     "--work-dir", env["WORK_DIR"], "--resume", *options, *env["TRAIN_ARGS"].split()]
    assert evaluate == [*one_task, "ldcache", "evaluate", env["LD_CONFIG"],
                        f"<the path in {env['WORK_DIR']}/last_checkpoint>", "--work-dir", env["WORK_DIR"], *options,
                        *env["EVAL_ARGS"].split()]

    # The wrapper, run as SLURM would run task 5 of 8 (second node, second GPU), hands torchrun's
    # variables to the command it wraps (MASTER_PORT comes from the script's environment, which
    # srun passes on).
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$*" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    task_env = {"PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
                "SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    task = subprocess.run([*wrapper, "env"], env=task_env, capture_output=True, text=True, timeout=30)
    assert task.returncode == 0, task.stderr
    seen = dict(line.split("=", 1) for line in task.stdout.splitlines())
    assert {k: seen[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu07"}
