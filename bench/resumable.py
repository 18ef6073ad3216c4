"""Training runs of the benchmarks that a killed sitting does not lose: each checkpoint (one per
validation) carries the random states (ldcache's RandomStateHook), the training time up to it and
the epochs the run was resumed at; a run started again with the same job resumes from the newest
checkpoint whose validation is logged, and ends with the weights of an uninterrupted run.

A job's folder holds its spec (job.json): a folder of another spec, or of no spec (a run of an
older bench), is emptied before a fresh start, so that every log in it belongs to the run.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

SPEC = "job.json"
# Checkpoints kept: the newest may lack its validation (killed while validating), the one before has it.
KEEP = 2


def checkpoint_options(val_interval: int) -> dict:
    """Config options that write a checkpoint after every validation, the last KEEP kept."""
    return {"default_hooks.checkpoint.interval": val_interval, "default_hooks.checkpoint.max_keep_ckpts": KEEP}


def prepare(work: Path, spec: dict) -> None:
    """Make `work` the folder of a job of `spec`: kept as it is if it holds this spec (a killed start
    to resume), else emptied and given the spec."""
    work.mkdir(parents=True, exist_ok=True)
    # Compared as JSON keeps it: a tuple in `spec` comes back a list, and must not read as another job.
    if (work / SPEC).is_file() and json.loads((work / SPEC).read_text()) == json.loads(json.dumps(spec)):
        return
    for path in work.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (work / SPEC).write_text(json.dumps(spec, indent=1))


def resume_point(work: Path) -> Path | None:
    """The checkpoint to resume the run in `work` (`prepare`d) from: the newest whose epoch's
    validation is logged; None for a fresh start."""
    validated = {epoch for epoch, _ in val_curve(work)}
    points = sorted(work.glob("epoch_*.pth"), key=_epoch, reverse=True)
    return next((p for p in points if _epoch(p) in validated), None)


def train(work: Path, options: dict, build: Callable[[dict, bool], object]):
    """Train the run in `work` (`prepare`d), from its resume point if it has one. `build(options,
    resume)` returns the mmengine Runner: `options` are the run's, with the checkpoint to resume from
    added. Returns the runner (trained) and its `run_clock`."""
    point = resume_point(work)
    runner = build({**options, **({"load_from": str(point)} if point else {})}, point is not None)
    clock = run_clock()
    runner.register_hook(clock)
    runner.train()
    return runner, clock


def _epoch(checkpoint: Path) -> int:
    return int(checkpoint.stem.split("_")[1])


def logged(work: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """({iteration: record}, {epoch: record}) of the training and validation scalars mmengine logged
    in `work` (its scalars.json, one per start of the run): a later start's records replace an
    earlier one's at the same step (the steps a killed start ran past its last checkpoint)."""
    train, val = {}, {}
    for log in sorted(work.glob("*/vis_data/scalars.json")):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            (train if "iter" in record else val)[int(record["step"])] = record
    return train, val


def val_curve(work: Path) -> list[tuple[int, float]]:
    """(epoch, val AP) of every validation of the run in `work`. One without COCO metrics found no
    box (mmdet's CocoMetric then returns nothing): 0 AP."""
    return sorted((epoch, float(r.get("coco/bbox_mAP", 0.0))) for epoch, r in logged(work)[1].items())


def run_clock():
    """An mmengine hook that keeps, in each checkpoint's meta, the run's training time (wall and CPU
    seconds) up to it and the epochs it was resumed at; time after the last checkpoint of a killed
    start is not counted (the resumed start trains those epochs again). Read `seconds()`,
    `cpu_seconds()` and `resumes()` after training."""
    from mmengine.hooks import Hook

    class RunClock(Hook):
        def __init__(self):
            self.before, self.resumed_at = (0.0, 0.0), []
            self.start = (time.perf_counter(), time.process_time())

        def seconds(self) -> float:
            return round(self.before[0] + time.perf_counter() - self.start[0], 1)

        def cpu_seconds(self) -> float:
            return round(self.before[1] + time.process_time() - self.start[1], 1)

        def resumes(self) -> dict:
            # A record names the epochs it resumed at only when it was resumed, keeping records of
            # uninterrupted runs as they were.
            return {"resumed_at": self.resumed_at} if self.resumed_at else {}

        def before_save_checkpoint(self, runner, checkpoint):
            checkpoint["meta"].update(train_seconds=self.seconds(), train_cpu_seconds=self.cpu_seconds(),
                                      resumed_at=self.resumed_at)

        def after_load_checkpoint(self, runner, checkpoint):
            meta = checkpoint["meta"]
            self.before = (meta.get("train_seconds", 0.0), meta.get("train_cpu_seconds", 0.0))
            self.resumed_at = [*meta.get("resumed_at", []), meta["epoch"]]
            self.start = (time.perf_counter(), time.process_time())

    return RunClock()
