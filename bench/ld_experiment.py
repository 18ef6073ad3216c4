"""Does cached LD help, and does it equal online LD? Settings chosen on val, AP reported on test.

kwcoco shapes, three splits: train (teacher and students), val (every choice below is made on
it), test (a held-out split drawn with another seed, on which nothing is chosen). One teacher
(GFL R34 tiny) is trained on train and dumped once; the GFL R18 tiny student is then trained
with the same schedule, seeds and data order under each row:

    baseline                      no distillation
    main_ld_vlr@per_image         Main LD + VLR LD, normalize='per_image' (the paper's strength)
    main_ld_vlr@weight_sum        the same, normalize='weight_sum' (weights calibrated, below)
    main_ld_vlr@per_image/10      'per_image' with both LD loss weights / 10
        -> the normalisation N of the best val AP
    full@N,kd=official            Main KD + Main LD + VLR LD, KD averaged over the classes
    full@N,kd=class_sum           the same, KD summed over the classes / 80
        -> the KD option K of the better val AP
    main_ld@N                     Main LD only
    online:R                      R, the row of the best val AP among main_ld@N, main_ld_vlr@N
                                  and full@N,kd=K, trained with the live teacher (no cache)

'weight_sum' loss weights: bench/ld_calibration.py's COCO-geometry sums at 2 images per GPU,
with the students' mean confidence at their positives (ld_main_weight_mean) over the
main_ld_vlr@per_image runs. Each choice is made on the first --select-seeds seeds; the rows
chosen (and the baseline) then get every seed, and the online row every seed. Runs are separate
processes, --jobs at a time, each with torch threads = 2 / jobs; finished runs (OUT/runs.jsonl)
are not redone, so an interrupted experiment resumes. The tables go to docs/results.md (with a
summary in docs/results.json, which the demo quotes); the analysis under them is kept.

    python bench/ld_experiment.py --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "configs/tiny/gfl_r34_tiny_teacher.py"
BASELINE = REPO / "configs/tiny/gfl_r18_tiny.py"
CACHED = REPO / "configs/tiny/ld_r18_tiny_cached.py"
# Normalisation candidates; "/10" divides both LD loss weights by 10 (the official strength is far
# above the task losses for a student trained from scratch for a few epochs).
NORMALIZATIONS = ("per_image", "weight_sum", "per_image/10")
KD_REDUCTIONS = ("official", "class_sum")
ANALYSIS_HEADING = "## What it shows"
HEAD = "model.bbox_head."


def row_options(row: str, weights: dict) -> dict:
    """The head options of a row name such as 'full@per_image,kd=class_sum' (online: prefix aside)."""
    kind, _, rest = row.removeprefix("online:").partition("@")
    norm, _, kd = rest.partition(",kd=")
    norm, _, divisor = norm.partition("/")
    options = {HEAD + "normalize": norm}
    if kind == "main_ld":
        options.update({HEAD + "loss_kd": None, HEAD + "loss_ld_vlr": None})
    elif kind == "main_ld_vlr":
        options[HEAD + "loss_kd"] = None
    else:
        assert kind == "full", row
        options[HEAD + "kd_reduction"] = kd
    ld_weights = weights if norm == "weight_sum" else {"loss_ld": 0.25, "loss_ld_vlr": 0.25}
    for name, weight in ld_weights.items():
        if HEAD + name in options:  # switched off
            continue
        options[HEAD + name + ".loss_weight"] = weight / float(divisor or 1)
    return options


def test_split_options(root: Path) -> dict:
    return {"test_dataloader.dataset.ann_file": "annotations/instances_test.json",
            "test_dataloader.dataset.data_prefix.img": "images/test/",
            "test_evaluator.ann_file": str(root / "annotations/instances_test.json")}


def logged_mean(work_dir: Path, key: str) -> float | None:
    """The mean of a logged training scalar over the newest run in work_dir (mmengine's scalars.json)."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    values = [json.loads(line).get(key) for line in logs[-1].read_text().splitlines()] if logs else []
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def val_curve(work_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val AP) of every validation of the newest run in work_dir."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    curve = {}
    for line in (logs[-1].read_text().splitlines() if logs else []):
        record = json.loads(line)
        if "coco/bbox_mAP" in record:
            curve.setdefault(int(record["step"]), float(record["coco/bbox_mAP"]))
    return sorted(curve.items())


def train_one(job: dict) -> dict:
    """One student run (in its own process): train, then COCO AP on val and on test."""
    import torch

    from ldcache.train.evaluate import coco_ap
    from ldcache.train.runner import runner_from_config
    from ldcache.train.schedule import scaled_iteration_schedule
    from ldcache.train.student import build_student_runner

    torch.set_num_threads(job["threads"])
    os.environ["LDCACHE_DATA_ROOT"] = job["root"] + "/"
    root, work, row = Path(job["root"]), Path(job["work"]), job["row"]
    options = {**scaled_iteration_schedule(job["epochs"], -(-job["train_images"] // 8)),
               "train_cfg.val_interval": job["epochs"] + 1,
               "randomness.seed": job["seed"], "default_hooks.logger.interval": 10, **test_split_options(root)}
    start, cpu_start = time.perf_counter(), time.process_time()
    if row == "baseline":
        runner = runner_from_config(BASELINE, work, options)
    elif row.startswith("online:"):
        runner = build_student_runner(CACHED, teacher=(TEACHER, Path(job["checkpoint"])), work_dir=work,
                                      cfg_options={**options, **row_options(row, job["weights"])})
    else:
        runner = build_student_runner(CACHED, cache=Path(job["store"]), work_dir=work,
                                      cfg_options={**options, **row_options(row, job["weights"])})
    runner.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    record = {"row": row, "seed": job["seed"], "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu, 1),
              "ld_main_weight_mean": logged_mean(work, "ld_main_weight_mean")}
    for split, evaluate in (("val", runner.val), ("test", runner.test)):
        record.update({f"{split}_{k}": v for k, v in coco_ap(evaluate()).items()})
    return record


class Experiment:
    """The runs of the experiment: each (row, seed) once, recorded in OUT/runs.jsonl."""

    def __init__(self, args, root: Path, store: Path, checkpoint: Path):
        self.args, self.root, self.store, self.checkpoint = args, root, store, checkpoint
        self.log = args.out / "runs.jsonl"
        self.records = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        self.weights: dict = {}

    def runs(self, row: str) -> list[dict]:
        return [r for r in self.records if r["row"] == row and r["seed"] in self.args.seeds]

    def run(self, rows: list[str], seeds: list[int] | None = None) -> None:
        """Every seed (of `seeds`, or all) of these rows not yet recorded, --jobs at a time."""
        todo = [(row, seed) for seed in (seeds or self.args.seeds) for row in rows
                if not any(r["row"] == row and r["seed"] == seed for r in self.records)]
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for record in pool.map(lambda job: self._subprocess(*job), todo):
                self.records.append(record)
                with open(self.log, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)

    def _subprocess(self, row: str, seed: int) -> dict:
        work = self.args.out / "".join(c if c.isalnum() else "_" for c in row) / f"seed{seed}"
        job = {"row": row, "seed": seed, "epochs": self.args.student_epochs, "train_images": self.args.train,
               "root": str(self.root),
               "store": str(self.store), "checkpoint": str(self.checkpoint), "work": str(work),
               "weights": self.weights, "threads": max(1, 2 // self.args.jobs)}
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
        with open(work / "run.log", "w") as log:
            subprocess.run([sys.executable, __file__, "--job", json.dumps(job)], check=True, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
        return json.loads((work / "record.json").read_text())

    def mean(self, row: str, key: str = "val_bbox_mAP") -> float:
        return statistics.mean(r[key] for r in self.runs(row))

    def best(self, rows: list[str]) -> str:
        """The row of the highest mean val AP."""
        return max(rows, key=self.mean)


def run_experiment(args) -> None:
    from ld_calibration import weight_sum_weights
    from ldcache.demo.run import run_once, train_and_test
    from ldcache.demo.shapes import ShapesSpec, ensure_shapes_dataset
    from ldcache.dump.run import DumpOptions, run_dump
    from ldcache.domain.views import parse_views
    from ldcache.train.schedule import scaled_schedule

    root = ensure_shapes_dataset(ShapesSpec(num_train=args.train, num_val=args.val, num_test=args.test, seed=100))
    os.environ["LDCACHE_DATA_ROOT"] = str(root) + "/"
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = run_once(args.out / "teacher", lambda: train_and_test(
        TEACHER, args.out / "teacher", {**scaled_schedule(args.teacher_epochs, args.teacher_val_interval),
                                        "default_hooks.logger.interval": 20}))
    checkpoint = Path((args.out / "teacher" / "last_checkpoint").read_text().strip())
    store = args.out / "teacher.zarr"
    dump_info = run_once(args.out / "dump", lambda: run_dump(DumpOptions(
        TEACHER, checkpoint, root / "annotations/instances_train.json", root / "images/train", store,
        parse_views([(320, 320)], flip=True), workers=0, resume=store.exists())).to_dict())

    exp = Experiment(args, root, store, checkpoint)
    # Choices are made on the val AP of the first --select-seeds seeds; the rows chosen then get every seed.
    select = args.seeds[:args.select_seeds]
    exp.run(["baseline", "main_ld_vlr@per_image"], select)
    confidence = statistics.mean(r["ld_main_weight_mean"] for r in exp.runs("main_ld_vlr@per_image"))
    exp.weights = weight_sum_weights(confidence)
    exp.run([f"main_ld_vlr@{n}" for n in NORMALIZATIONS], select)
    norm = exp.best([f"main_ld_vlr@{n}" for n in NORMALIZATIONS]).split("@")[1]
    exp.run([f"full@{norm},kd={kd}" for kd in KD_REDUCTIONS], select)
    kd = exp.best([f"full@{norm},kd={kd}" for kd in KD_REDUCTIONS]).split("=")[1]
    exp.run([f"main_ld@{norm}"], select)
    chosen = exp.best([f"main_ld@{norm}", f"main_ld_vlr@{norm}", f"full@{norm},kd={kd}"])
    exp.run(["baseline", f"main_ld@{norm}", f"main_ld_vlr@{norm}", f"full@{norm},kd={kd}"])
    exp.run([f"online:{chosen}"])
    setup = {"argv": " ".join(sys.argv[1:]), "teacher": teacher, "teacher_curve": val_curve(args.out / "teacher"),
             "dump_seconds": dump_info["seconds"], "norm": norm, "kd": kd, "chosen": chosen,
             "confidence": confidence, "weights": exp.weights}
    write_results(exp, setup, args.results)
    print(args.results.read_text())


def paired(exp: Experiment, row: str, key: str = "test_bbox_mAP") -> list[float]:
    """Per seed, the row's AP minus the baseline's (same seed, same data order)."""
    base = {r["seed"]: r[key] for r in exp.runs("baseline")}
    return [r[key] - base[r["seed"]] for r in sorted(exp.runs(row), key=lambda r: r["seed"]) if r["seed"] in base]


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def write_results(exp: Experiment, setup: dict, out: Path) -> None:
    args = exp.args
    curve = ", ".join(f"{e}: {ap:.3f}" for e, ap in setup["teacher_curve"])
    lines = [
        "# Cached LD on kwcoco shapes: chosen on val, reported on a held-out test split",
        "",
        f"Produced by `python bench/ld_experiment.py {setup['argv']}` on a 2-core CPU machine (no GPU), "
        f"{args.jobs} runs at a time.",
        f"Dataset: kwcoco shapes, 3 classes, 320 px: {args.train} train, {args.val} val, {args.test} test images "
        "(test drawn with another seed). Teacher: GFL R34 tiny, "
        f"{args.teacher_epochs} epochs, val AP {setup['teacher'].get('bbox_mAP', float('nan')):.3f} (by epoch: {curve}); "
        f"dump {setup['dump_seconds']:.0f} s. Students: GFL R18 tiny, {args.student_epochs} epochs, AdamW, batch 8, "
        "the same seeds (weights and data order) in every row.",
        "",
        f"Chosen on the val AP of seeds {exp.args.seeds[:exp.args.select_seeds]}: normalisation `{setup['norm']}`, KD `{setup['kd']}`, best row `{setup['chosen']}` "
        f"(online twin below). `weight_sum` weights: loss_ld {setup['weights']['loss_ld']:.2f}, loss_ld_vlr "
        f"{setup['weights']['loss_ld_vlr']:.2f} (students' mean confidence at positives {setup['confidence']:.3f}).",
        "",
        "| row | seeds | val AP | test AP | test AP50 | test AP75 | test AP - baseline, paired (mean +- std) | "
        "per seed | wall s/run | CPU s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = list(dict.fromkeys(r["row"] for r in exp.records if r["seed"] in args.seeds))
    for row in rows:
        runs = exp.runs(row)
        diffs = paired(exp, row) if row != "baseline" else []
        lines.append(" | ".join([
            f"| {row}", str(len(runs)), _mean_std([r["val_bbox_mAP"] for r in runs]),
            _mean_std([r["test_bbox_mAP"] for r in runs]), _mean_std([r["test_bbox_mAP_50"] for r in runs]),
            _mean_std([r["test_bbox_mAP_75"] for r in runs]), _mean_std(diffs) if diffs else "",
            " ".join(f"{d:+.3f}" for d in diffs),
            f"{statistics.mean(r['train_seconds'] for r in runs):.0f}",
            f"{statistics.mean(r['train_cpu_seconds'] for r in runs):.0f} |"]))
    previous = out.read_text() if out.is_file() else ""
    kept = previous[previous.index(ANALYSIS_HEADING):] if ANALYSIS_HEADING in previous else ""
    out.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))
    out.with_suffix(".json").write_text(json.dumps(verdict(exp, setup["chosen"]), indent=2) + "\n")


def verdict(exp: Experiment, row: str) -> dict:
    """The chosen row against the baseline on test, for the demo to quote: beyond the spread when the
    mean paired difference exceeds the standard deviation of the paired differences."""
    diffs = paired(exp, row)
    mean, std = statistics.mean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    return {"row": row, "seeds": len(diffs), "paired_mean": round(mean, 4), "paired_std": round(std, 4),
            "paired_t": round(mean / (std / len(diffs) ** 0.5), 2) if len(diffs) > 1 and std > 0 else None,
            "beyond_spread": bool(len(diffs) > 1 and abs(mean) > std), "improves": mean > 0,
            "student_epochs": exp.args.student_epochs, "train_images": exp.args.train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--teacher-val-interval", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument("--select-seeds", type=int, default=3, help="seeds the val choices are made on")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (on 2 cores one run of 2 threads is "
                        "faster than two of one)")
    parser.add_argument("--out", type=Path, default=REPO / "work_dirs/experiment")
    parser.add_argument("--results", type=Path, default=REPO / "docs/results.md")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job = json.loads(args.job)
        record = train_one(job)
        (Path(job["work"]) / "record.json").write_text(json.dumps(record))
        return
    run_experiment(args)


if __name__ == "__main__":
    main()
