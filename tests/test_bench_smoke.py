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
    baseline = {"row": "baseline", "seed": 0, "epochs": 6, "lr_drops": [[1, 2], [5, 6]],
                "val_curve": [[2, 0.1], [4, 0.3], [6, 0.5]], "val_bbox_mAP": 0.5, "test_bbox_mAP": 0.45,
                "dataset_sha256": _small_dataset_sha256()}
    (out / "runs.jsonl").write_text(json.dumps(baseline) + "\n")
    result = subprocess.run([sys.executable, str(REPO / "bench/ld_experiment.py"), "--family", "fcos", "--seeds", "0",
                             "--select-seeds", "1", "--student-epochs", "6", "--stop-unconverged", "--out", str(out),
                             "--records", str(out / "runs.jsonl"),
                             "--results", str(tmp_path / "results.md"), "--train", "8", "--val", "4", "--test", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 3, result.stderr[-3000:]
    said = " ".join(result.stdout.split())
    assert "+0.200" in said and "NOT converged" in said and "--stop-unconverged" in said
    assert sorted(p.name for p in out.iterdir()) == ["runs.jsonl"] and not (tmp_path / "results.md").exists()


def _small_dataset_sha256():
    """The digest of the dataset the bench runs below use (--train 8 --val 4 --test 4)."""
    from ldcache.demo.shapes import ShapesSpec, dataset_sha256, ensure_shapes_dataset

    return dataset_sha256(ensure_shapes_dataset(ShapesSpec(num_train=8, num_val=4, num_test=4, seed=100)))


def _ld_experiment():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ld_experiment", REPO / "bench" / "ld_experiment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


TEACHER = {"row": "teacher", "teacher_epochs": 72, "weights_sha256": "a" * 64, "teacher": {"bbox_mAP": 0.8},
           "teacher_curve": [[36, 0.8]], "dump_seconds": 60.0}


def _run(row, seed, val, test):
    return {"row": row, "seed": seed, "epochs": 48, "lr_drops": [[1, 2], [5, 6]], "train_seconds": 1300.0,
            "train_cpu_seconds": 2600.0, "val_curve": [[16, 0.5], [24, 0.68], [32, val - 0.004], [48, val]],
            "val_bbox_mAP": val, "test_bbox_mAP": test, "test_bbox_mAP_50": 0.9, "test_bbox_mAP_75": 0.8,
            **({} if row == "baseline" else {"teacher_epochs": 72, "teacher_sha256": "a" * 64})}


def _family_records(path, dataset):
    """A RetinaNet experiment's records on `dataset` (its digest), every run done: its teacher, 3
    baselines, the LD rows (the chosen one on 3 seeds), and a run of another teacher and one on
    other data, which must not count."""
    runs = [TEACHER, *[_run("baseline", s, 0.74, t) for s, t in ((0, 0.713), (1, 0.70), (2, 0.72))]]
    runs += [_run("ld@official", 0, 0.70, 0.69), *[_run("ld@official/10", s, 0.76, t)
                                                   for s, t in ((0, 0.73), (1, 0.71), (2, 0.735))]]
    runs[2]["resumed_at"] = [8, 40]  # baseline seed 1, killed twice
    runs.append({**_run("ld@official", 1, 0.9, 0.9), "teacher_sha256": "b" * 64})
    runs = [{**r, "dataset_sha256": dataset} for r in runs]
    runs.append({**_run("ld@official", 2, 0.9, 0.9), "dataset_sha256": "c" * 64})
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))


def test_a_familys_table_5_section_states_its_schedule_and_paired_results(tmp_path, monkeypatch):
    """The section a finished family's experiment writes, from recorded runs (nothing trains)."""
    bench = _ld_experiment()
    out, results = tmp_path / "experiment_retina", tmp_path / "results.md"
    out.mkdir()
    results.write_text("# Results\n\n## The GFL experiment\n\nkept as it is\n")
    from ldcache.demo.shapes import dataset_sha256

    _family_records(out / "runs.jsonl", dataset_sha256(tmp_path))
    monkeypatch.setattr(sys, "argv", ["ld_experiment.py", "--family", "retina", "--select-seeds", "1",
                                      "--out", str(out), "--records", str(out / "runs.jsonl"),
                                      "--results", str(results)])
    args = bench.parse_args()
    assert (args.student_epochs, args.lr_drops, args.teacher_epochs) == (48, [[1, 2], [5, 6]], 72), "the defaults"
    family = bench.FAMILIES["retina"]
    exp = bench.Experiment(args, family, bench.Inputs(tmp_path), lambda row: {})
    exp.teacher = exp.recorded_teacher()["weights_sha256"]
    setup = {"argv": " ".join(sys.argv[1:]), **TEACHER, "teacher": {"bbox_mAP": 0.8, "resumed_at": [60]},
             "chosen": "ld@official/10", "select": [0],
             "losses": bench.HeadLosses.of(family.cached).built(),
             "selection": {row: exp.mean(row, seeds=[0]) for row in ("baseline", *bench.FAMILY_LD_ROWS)}}
    section = bench.write_family_results(exp, setup, results)
    said = " ".join(section.split())
    assert said.startswith("## Table 5 on shapes: RetinaNet")
    assert "48 epochs, the learning rate / 10 at 1/2 and 5/6 of the iterations" in said
    assert "+0.004 (per seed +0.004 +0.004 +0.004): converged" in said
    assert "Teacher val AP 0.800 against the baseline students' 0.740 (mean of 3 seeds): +0.060." in said
    assert "| baseline | 3 |" in said and "| ld@official | 1 |" in said and "| ld@official/10 | 3 |" in said
    assert "| +0.017 +0.010 +0.015 | 1300 | 2600 |" in said and "helps" in said.split("**Result")[1]
    assert said.endswith("each start's time counted up to that checkpoint): the teacher at epoch 60; "
                         "`baseline` seed 1 at epoch 8, 40.")
    text = results.read_text()
    assert "kept as it is" in text and text.index("## The GFL experiment") < text.index("## Table 5 on shapes")
    summary = json.loads(results.with_suffix(".json").read_text())["families"]["retina"]
    assert summary["per_seed"] == [0.017, 0.01, 0.015] and summary["selection_seeds"] == [0]
    assert summary["convergence"]["converged"] is True and summary["teacher_weights_sha256"] == "a" * 64


def test_a_baselines_job_is_the_same_before_and_after_the_teacher_is_known(tmp_path, monkeypatch):
    """A baseline killed after the teacher was trained must resume in the next sitting, which runs
    the baselines before it knows the teacher: its job names nothing of the teacher. An LD row's
    job names its teacher's weights and store, so a run of another teacher starts afresh."""
    bench = _ld_experiment()
    monkeypatch.setattr(sys, "argv", ["ld_experiment.py", "--family", "atss", "--out", str(tmp_path)])
    args = bench.parse_args()
    exp = bench.Experiment(args, bench.FAMILIES["atss"], bench.Inputs(tmp_path), lambda row: {"x": row})
    before = {row: exp.job(row, 1) for row in ("baseline", "ld@official")}
    exp.teacher, exp.inputs = "a" * 64, bench.Inputs(tmp_path, tmp_path / "t.zarr", tmp_path / "t.pth")
    assert exp.job("baseline", 1) == before["baseline"]
    assert "teacher_sha256" not in before["baseline"] and "store" not in before["baseline"]
    after = exp.job("ld@official", 1)
    assert after != before["ld@official"]
    assert (after["teacher_sha256"], after["store"], after["options"]) == ("a" * 64, str(tmp_path / "t.zarr"),
                                                                           {"x": "ld@official"})


def test_a_family_whose_runs_are_all_recorded_is_written_without_its_teacher(tmp_path):
    """A later sitting (work_dirs/ gone) finds every run in the records: it writes the family's
    section from them, and trains, dumps and runs nothing."""
    out, records, results = tmp_path / "experiment", tmp_path / "table5_retina.jsonl", tmp_path / "results.md"
    _family_records(records, _small_dataset_sha256())
    result = subprocess.run([sys.executable, str(REPO / "bench/ld_experiment.py"), "--family", "retina",
                             "--select-seeds", "1", "--out", str(out), "--records", str(records),
                             "--results", str(results), "--train", "8", "--val", "4", "--test", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [], "nothing trained or dumped"
    said = " ".join(results.read_text().split())
    assert "## Table 5 on shapes: RetinaNet" in said and "| ld@official/10 | 3 |" in said
    assert "Teacher val AP 0.800" in said and "| ld@official | 1 |" in said, "the other teacher's and data's runs left out"


def test_a_teachers_digest_is_of_its_weights_not_its_file(tmp_path):
    """Two checkpoints of the same weights with different metadata share the digest that keys the
    LD runs to their teacher; another weight changes it."""
    import torch

    bench = _ld_experiment()
    weights = {"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.zeros(2)}
    paths = [tmp_path / f"{name}.pth" for name in ("a", "b", "c")]
    torch.save({"state_dict": weights, "meta": {"experiment_name": "run_1"}}, paths[0])
    torch.save({"state_dict": dict(weights), "meta": {"experiment_name": "run_2"}}, paths[1])
    torch.save({"state_dict": {**weights, "conv.bias": torch.tensor([0.0, 1e-6])}, "meta": {}}, paths[2])
    digests = [bench.weights_sha256(path) for path in paths]
    assert paths[0].read_bytes() != paths[1].read_bytes()
    assert digests[0] == digests[1] != digests[2]
