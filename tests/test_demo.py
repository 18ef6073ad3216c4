"""The main job end to end, at a smoke-test schedule: every stage runs, a re-run reuses them."""
import json
import subprocess

import pytest

from conftest import BIN

pytestmark = pytest.mark.slow


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
