"""Does cached LD help, and does it match online LD? The experiment of issue 7, on kwcoco shapes.

One teacher (GFL R34 tiny) trained on a larger shapes set, dumped once. Then the GFL R18 tiny
student is trained with the same schedule under each row below and each seed, and its val COCO AP
and wall time are recorded:

    baseline          no distillation
    main_ld           cached, Main LD only                    (paper Table 2, row "Main LD")
    main_ld_vlr       cached, Main LD + VLR LD
    cached_full       cached, Main KD + Main LD + VLR LD      (the paper's best setting)
    online_full       online, Main KD + Main LD + VLR LD      (same losses, live teacher)
    cached_full_kd_c  cached_full with the KD weight scaled by C/80 (10 x 3/80): the official KD is a
                      mean over the C classes, so on 3 classes the same weight counts 80/3 more

Runs already recorded in OUT/runs.jsonl are skipped, so an interrupted experiment resumes.
The table goes to docs/results.md (mean and standard deviation over seeds).

    python bench/ld_experiment.py --train 300 --val 60 --seeds 0 1 2

Every schedule is the 1x one scaled to its length: the learning rate drops 10x at 2/3 and 11/12
of the epochs. The teacher is evaluated every --teacher-val-interval epochs; its val AP curve goes
into the results, as the check that it converged.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "configs/tiny/gfl_r34_tiny_teacher.py"
BASELINE = REPO / "configs/tiny/gfl_r18_tiny.py"
CACHED = REPO / "configs/tiny/ld_r18_tiny_cached.py"
ROWS = {
    "baseline": (BASELINE, {}),
    "main_ld": (CACHED, {"model.bbox_head.loss_kd": None, "model.bbox_head.loss_ld_vlr": None}),
    "main_ld_vlr": (CACHED, {"model.bbox_head.loss_kd": None}),
    "cached_full": (CACHED, {}),
    "online_full": (CACHED, {}),
    "cached_full_kd_c": (CACHED, {"model.bbox_head.loss_kd.loss_weight": 10 * 3 / 80}),
}
ANALYSIS_HEADING = "## What it shows"
# The rows of the paper's question; cached_full_kd_c is a follow-up, run when asked for.
DEFAULT_ROWS = ["baseline", "main_ld", "main_ld_vlr", "cached_full", "online_full"]


def scaled_schedule(epochs: int, val_interval: int | None = None) -> dict:
    """Config options for an `epochs`-long run with the 1x schedule's learning-rate drops."""
    return {"train_cfg.max_epochs": epochs, "train_cfg.val_interval": val_interval or epochs,
            "param_scheduler.1.end": epochs, "param_scheduler.1.milestones": [epochs * 2 // 3, epochs * 11 // 12]}


def val_curve(work_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val AP) of every validation of the newest run in work_dir, from mmengine's scalars.json."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not logs:
        return []
    curve = {}
    for line in logs[-1].read_text().splitlines():
        record = json.loads(line)
        if "coco/bbox_mAP" in record:
            curve.setdefault(int(record["step"]), float(record["coco/bbox_mAP"]))
    return sorted(curve.items())


def run_student(row: str, seed: int, epochs: int, store: Path, teacher: tuple[Path, Path], work: Path) -> dict:
    from ldcache.train.student import build_student_runner
    from ldcache.train.runner import runner_from_config

    config, options = ROWS[row]
    options = {**options, **scaled_schedule(epochs), "randomness.seed": seed, "default_hooks.logger.interval": 50}
    start, cpu_start = time.perf_counter(), time.process_time()
    if row == "baseline":
        runner = runner_from_config(config, work, options)
    elif row == "online_full":
        runner = build_student_runner(config, teacher=teacher, work_dir=work, cfg_options=options)
    else:
        runner = build_student_runner(config, cache=store, work_dir=work, cfg_options=options)
    runner.train()
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = runner.test()
    # CPU time beside wall time: this machine is shared, and CPU time drifts less with its load.
    return {"row": row, "seed": seed, "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu, 1),
            **{k.split("/")[-1]: float(v) for k, v in metrics.items() if k.startswith("coco/")}}


def write_results(records: list[dict], setup: dict, out: Path) -> None:
    lines = [
        "# Cached LD on kwcoco shapes: does it help, and does it equal online LD?",
        "",
        f"Produced by `python bench/ld_experiment.py {setup['argv']}` on {setup['machine']}.",
        f"Dataset: kwcoco shapes, {setup['train']} train / {setup['val']} val images, 3 classes, 320 px. "
        f"Teacher: GFL R34 tiny, {setup['teacher_epochs']} epochs, val AP {setup['teacher_ap']:.3f} "
        f"(val AP by epoch: {', '.join(f'{e}: {ap:.3f}' for e, ap in setup['teacher_curve'])}); dump "
        f"{setup['dump_seconds']:.0f} s. Students: GFL R18 tiny, {setup['student_epochs']} epochs, AdamW, "
        "same schedule and seeds for every row.",
        "",
        "| row | seeds | AP (mean +- std) | AP50 | AP75 | train wall time per run (s) | train CPU time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = [r for r in records if r["row"] == row]
        if not runs:
            continue

        def stat(key):
            values = [r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} +- {spread:.3f}"

        cpu = [r["train_cpu_seconds"] for r in runs if "train_cpu_seconds" in r]
        lines.append(f"| {row} | {len(runs)} | {stat('bbox_mAP')} | {stat('bbox_mAP_50')} | {stat('bbox_mAP_75')} | "
                     f"{statistics.mean(r['train_seconds'] for r in runs):.0f} | "
                     f"{statistics.mean(cpu) if cpu else float('nan'):.0f} |")
    lines += ["", "Rows: `baseline` is `configs/tiny/gfl_r18_tiny.py`; every other row is "
              "`configs/tiny/ld_r18_tiny_cached.py` (official loss weights and temperatures, "
              "`normalize='per_location'`) with these changes:", ""]
    lines += [f"- `{row}`: {', '.join(f'`{k}={v}`' for k, v in options.items()) or 'as it is'}"
              f"{', the live teacher (`--teacher`)' if row.startswith('online') else ''}"
              for row, (config, options) in ROWS.items()
              if row != "baseline" and any(r["row"] == row for r in records)]
    # The analysis below the table is written by hand: keep it when the table is regenerated.
    previous = out.read_text() if out.is_file() else ""
    kept = previous[previous.index(ANALYSIS_HEADING):] if ANALYSIS_HEADING in previous else ""
    out.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher-val-interval", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=6)
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    parser.add_argument("--out", type=Path, default=REPO / "work_dirs/experiment")
    parser.add_argument("--results", type=Path, default=REPO / "docs/results.md")
    args = parser.parse_args()

    from ldcache.demo.shapes import ShapesSpec, ensure_shapes_dataset
    from ldcache.dump.views import parse_views
    from ldcache.demo.run import run_once, train_and_test
    from ldcache.dump.run import DumpOptions, run_dump

    root = ensure_shapes_dataset(ShapesSpec(num_train=args.train, num_val=args.val, seed=100))
    os.environ["LDCACHE_DATA_ROOT"] = str(root) + "/"
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = run_once(args.out / "teacher", lambda: train_and_test(
        TEACHER, args.out / "teacher", {**scaled_schedule(args.teacher_epochs, args.teacher_val_interval),
                                        "default_hooks.logger.interval": 50}))
    checkpoint = Path((args.out / "teacher" / "last_checkpoint").read_text().strip())
    store = args.out / "teacher.zarr"

    def dump() -> dict:
        run_dump(DumpOptions(TEACHER, checkpoint, root / "annotations/instances_train.json", root / "images/train",
                             store, parse_views([(320, 320)], flip=True), workers=0, resume=store.exists()))
        return {}

    dump_info = run_once(args.out / "dump", dump)
    log = args.out / "runs.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for seed in args.seeds:
        for row in args.rows:
            if any(r["row"] == row and r["seed"] == seed for r in records):
                continue
            record = run_student(row, seed, args.student_epochs, store, (TEACHER, checkpoint),
                                 args.out / f"{row}_seed{seed}")
            records.append(record)
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    setup = {"argv": " ".join(os.sys.argv[1:]), "machine": "a 2-core CPU machine (no GPU)", "train": args.train,
             "val": args.val, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
             "teacher_ap": teacher.get("bbox_mAP", float("nan")),
             "teacher_curve": val_curve(args.out / "teacher"), "dump_seconds": dump_info["seconds"]}
    write_results(records, setup, args.results)
    print(args.results.read_text())


if __name__ == "__main__":
    main()
