"""The main job end to end, at a smoke-test schedule: every stage runs, a re-run reuses them."""
import json
import subprocess

import pytest

from conftest import BIN
from ldcache.demo.run import _clear_steps, _made_with_other_settings


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
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("reusing") == 5
