"""The benchmarks that are run only now and then still run: tiny versions of them."""
import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_coco_scale_bench_smoke(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(REPO / "bench/coco_scale_bench.py"), "--smoke",
                             "--workdir", str(tmp_path / "work"), "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"fp16 defaults", "q8 official LD"}
    for variant in report["variants"].values():
        big, s3 = variant["big"], variant["s3_small"]
        assert big["image_views"] == 48 and variant["small"]["image_views"] == 16
        assert big["objects"] > 0 and big["bytes_per_image_view"] > 0 and big["open_files"] > 0
        assert big["read_ms_per_record"] > 0 and s3["requests_per_record"] > 0 and s3["open_requests"] > 0
        assert big["viewer open s"] > 0 and big["viewer open files"] > 0 and big["viewer image s"] > 0
    figures = {row["figure"] for row in report["table"]}
    assert {"objects (files) in the store", "inspect --stats seconds",
            "dump CPU ms per image-view"} <= figures
    assert "| figure | variant |" in result.stdout


def test_ld_experiment_stops_a_family_whose_baseline_has_not_converged(tmp_path):
    """--stop-unconverged: a baseline still gaining over its last third stops the family's
    experiment before its teacher (here a recorded baseline run, so that nothing trains)."""
    out = tmp_path / "experiment"
    out.mkdir()
    baseline = {"row": "baseline", "seed": 0, "epochs": 6, "val_curve": [[2, 0.1], [4, 0.3], [6, 0.5]],
                "val_bbox_mAP": 0.5, "test_bbox_mAP": 0.45}
    (out / "runs.jsonl").write_text(json.dumps(baseline) + "\n")
    result = subprocess.run([sys.executable, str(REPO / "bench/ld_experiment.py"), "--family", "fcos", "--seeds", "0",
                             "--select-seeds", "1", "--student-epochs", "6", "--stop-unconverged", "--out", str(out),
                             "--results", str(tmp_path / "results.md"), "--train", "8", "--val", "4", "--test", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 3, result.stderr[-3000:]
    said = " ".join(result.stdout.split())
    assert "+0.200" in said and "NOT converged" in said and "--stop-unconverged" in said
    assert sorted(p.name for p in out.iterdir()) == ["runs.jsonl"] and not (tmp_path / "results.md").exists()
