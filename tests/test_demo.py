"""The main job end to end, at a smoke-test schedule: every stage runs, a re-run reuses them."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import BIN
from ldcache import console
from ldcache.demo.run import _clear_steps, _made_with_other_settings, library_output, remove_console_handler
from ldcache.train.progress_bar_hook import ProgressBarHook

# Fewer lines than this on success: the demo fits on a screen, its logs go to files.
DEMO_LINES = 60


def test_demo_redoes_its_steps_when_the_epochs_change_and_keeps_other_files(tmp_path):
    settings = {"teacher_epochs": 14, "student_epochs": 6}
    assert not _made_with_other_settings(tmp_path, settings)  # nothing there yet
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "metrics.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    assert _made_with_other_settings(tmp_path, settings)  # steps of an unknown run
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    assert not _made_with_other_settings(tmp_path, settings)
    assert _made_with_other_settings(tmp_path, {**settings, "student_epochs": 12})
    _clear_steps(tmp_path)
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "settings.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def fake_runner(rank: int) -> SimpleNamespace:
    """What ProgressBarHook reads of mmengine's Runner: two epochs of two iterations."""
    from mmengine.logging import MessageHub

    return SimpleNamespace(rank=rank, iter=0, max_iters=4, epoch=0, max_epochs=2,
                           message_hub=MessageHub(f"progress-bar-test-{rank}"))


def train_with_progress_bar(runner) -> None:
    """Drive a ProgressBarHook as mmengine's EpochBasedTrainLoop does; the first epoch's losses come
    in the model's outputs, the second's in the message hub only."""
    hook = ProgressBarHook()
    hook.before_train(runner)
    for epoch in range(runner.max_epochs):
        runner.epoch = epoch
        for batch in range(2):
            loss = 2.0 - runner.iter * 0.25
            runner.message_hub.update_scalar("train/loss", loss)
            # As a model's train_step returns it: with its graph.
            outputs = {"loss": torch.tensor(loss, requires_grad=True)}
            hook.after_train_iter(runner, batch, outputs=outputs if epoch == 0 else None)
            runner.iter += 1
    hook.after_train(runner)


def test_progress_bar_hook_shows_epoch_loss_and_iterations_on_rank_0_only(capsys):
    train_with_progress_bar(fake_runner(rank=0))
    captured = capsys.readouterr()
    # Not on a terminal, rich draws the finished bar once.
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert "epoch 2/2 loss 1.250" in captured.err and "4/4" in captured.err and "it/s" in captured.err
    train_with_progress_bar(fake_runner(rank=1))
    assert capsys.readouterr() == ("", "")


def test_quiet_demo_sends_library_output_to_its_log_and_verbose_leaves_it(tmp_path, capsys):
    from mmengine.logging import MMLogger

    log = tmp_path / "demo.log"
    with library_output(log, verbose=False):
        print("Loading and preparing results...")
        print("a library's warning", file=sys.stderr)
        # As a Runner builds its logger: its console handler takes the sys.stdout of the moment.
        logger = MMLogger("quiet-demo-test", log_file=str(tmp_path / "run.log"))
        logger.info("Config: environment and config")
        remove_console_handler(logger)
        logger.info("Epoch(train) [1][5/6]")
        console.out.print("results table")
        console.note("progress")
    logger.info("after the demo")  # no handler is left writing to the closed demo.log
    assert capsys.readouterr() == ("results table\n", "progress\n")
    quiet = log.read_text()
    assert "Loading and preparing" in quiet and "a library's warning" in quiet and "Config:" in quiet
    assert "Epoch(train)" not in quiet
    assert "Epoch(train)" in (tmp_path / "run.log").read_text()
    for handler in logger.handlers:
        handler.close()
    with library_output(log, verbose=True):
        print("Loading and preparing results...")
    assert capsys.readouterr().out == "Loading and preparing results...\n"
    assert log.read_text() == quiet


def named_log_files(output: str) -> list[Path]:
    """The log files named by the demo's last line."""
    [line] = [line for line in output.splitlines() if line.startswith("full logs: ")]
    return [Path(name) for name in line.removeprefix("full logs: ").split(", ")]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_steps(shapes_root, tmp_path):
    work = tmp_path / "demo"
    args = [str(BIN / "ldcache"), "demo", "--work-dir", str(work), "--data-root", str(shapes_root),
            "--teacher-epochs", "1", "--student-epochs", "1"]
    env_home = {"LDCACHE_HOME": str(tmp_path / "home")}
    import os
    env = {**os.environ, **env_home}
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    for step in ("teacher", "dump", "student_plain", "student_cached_ld", "parity"):
        assert (work / step / "metrics.json").is_file(), step
    cached = json.loads((work / "student_cached_ld" / "metrics.json").read_text())
    assert "bbox_mAP" in cached and cached["seconds"] > 0
    parity = json.loads((work / "parity" / "metrics.json").read_text())
    # The trained student's LD terms from the store and from the live teacher: the same.
    assert 0 <= parity["relative_difference"] < 1e-3 and parity["teacher_forward_seconds"] > 0
    assert "student R18, cached LD" in first.stdout and "teacher dump" in first.stdout
    assert "cached = online" in first.stdout and "committed experiment" in first.stdout
    assert (work / "inspect.png").read_bytes()[:4] == b"\x89PNG"
    # One bar per step instead of mmengine's logs, which went to the files the demo names.
    output = first.stdout + first.stderr
    assert len(output.splitlines()) < DEMO_LINES, output
    assert "Epoch(train)" not in output and "System environment" not in output
    logs = named_log_files(output)
    assert [log.parent.parent.name for log in logs[:-1]] == ["teacher", "student_plain", "student_cached_ld"]
    for log in logs[:-1]:
        assert "Config:" in log.read_text() and "Epoch(train)" in log.read_text(), log
    assert logs[-1] == work / "demo.log" and "Loading and preparing results" in logs[-1].read_text()
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("reusing") == 5
    assert named_log_files(second.stdout) == logs
