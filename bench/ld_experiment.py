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
main_ld_vlr@per_image runs. Each row's LD and KD terms start from the head class's defaults
(not from configs/tiny/ld_r18_tiny_cached.py, which holds the recipe chosen here). Each choice
is made on the first --select-seeds seeds; the rows chosen (and the baseline) then get every
seed, and the online row every seed. Runs are separate processes, --jobs at a time, each with
torch threads = 2 / jobs; finished runs (--records, keyed by row, seed, --student-epochs,
--lr-drops, the dataset (the digest of its images and labels) and, for LD rows, the teacher: the
digest of its weights; each teacher is trained and dumped in its own folder, named by its epochs)
are not redone, so an interrupted experiment resumes. A run killed part-way (a teacher's or a
student's) resumes from the checkpoint of its last validation, where OUT is still there
(bench/resumable.py): it ends with the weights of an uninterrupted run, and its record counts the
time of each start up to that checkpoint and lists the epochs it resumed at (`resumed_at`).
The tables go to docs/results.md (with a summary in docs/results.json, which the demo quotes);
every '## ' section under them (the analysis, the families' tables) is kept.

    python bench/ld_experiment.py --seeds 0 1 2 3 4

With --family NAME (retina, fcos, atss, gflv2), the paper's Table 5 on the same data for that
family instead: the teacher is the family's tiny config with a ResNet-34 backbone (ResNet-18's
channels, so the neck fits), trained on train and dumped once; the ResNet-18 student runs

    baseline                      the plain family config (configs/tiny/<family>_dist_tiny.py)
    ld@official                   the cached-LD student (ld_<family>_dist_tiny_cached.py) at its
                                  head's official LD and KD loss weights
    ld@official/10                every LD and KD loss weight / 10 (the official strengths were
                                  tuned for pretrained backbones on COCO)
        -> the recipe: the LD row of the better mean val AP on the first --select-seeds seeds

then baseline and recipe on every seed (3 by default), on test, paired by seed, with the CPU time
of each run. Defaults: students 48 epochs with the LR dropping tenfold at 1/2 and 5/6 of the
iterations (so that the last third, where convergence is read, starts after the first drop:
with mmdet's 2/3 and 11/12 it would begin at the drop and take in its gain); the teacher 72
epochs (1.5x the students', mmdet's 1x drop shape), so that it is stronger than the students it
teaches, which the section checks against the baseline's val AP. Every student validates every
--student-val-interval epochs (a sixth of the schedule); the baseline's val curve tells whether
its schedule has converged (val AP gains less than 0.01 over the last third of training), printed
after the baseline's runs, which come first (before the teacher), and stated in the table.
--baseline-only stops there: a cheap way to pick --student-epochs, whose baseline runs the full
experiment then reuses; --stop-unconverged stops there only when the rule fails (exit status 3),
so that an unattended chain of families spends no teacher or LD runs on a schedule the rule
rejects. A family takes about 6 hours on 2 CPU cores, more than one sitting on a machine whose
work_dirs/ does not outlive it, so its records are kept in the repository
(bench/records/table5_<family>.jsonl, with a record of each teacher: its weights' digest, val
curve and dump time) and a later sitting takes up where the last one stopped. The LD runs read
the teacher's store, which lives in OUT: --ld-only trains and dumps the teacher and runs the LD
rows without the baselines (about 4 hours); a later sitting reuses the teacher and its store if OUT
is still there (and resumes the run the last one was killed in), else trains the teacher again
and goes on with the LD runs not recorded if its weights come out the same. The baselines need no
teacher and can run in any sitting. A sitting that finds every run recorded writes the section
without the teacher.
OUT is work_dirs/experiment_<family>; the family's own section of docs/results.md
("## Table 5 on shapes: <Family>", placed in the order of FAMILIES) and its entry under
"families" in docs/results.json are replaced, the rest of both files kept.

    python bench/ld_experiment.py --family retina --seeds 0 --baseline-only   # the schedule
    python bench/ld_experiment.py --family retina --select-seeds 1 --ld-only  # teacher and LD rows
    python bench/ld_experiment.py --family retina --select-seeds 1            # the rest; the section
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own modules, run as a script or not
from resumable import checkpoint_options, logged, prepare, train, val_curve

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/tiny"
TEACHER = TINY / "gfl_r34_tiny_teacher.py"
BASELINE = TINY / "gfl_r18_tiny.py"
CACHED = TINY / "ld_r18_tiny_cached.py"
# Normalisation candidates; "/10" divides both LD loss weights by 10 (the official strength is far
# above the task losses for a student trained from scratch for a few epochs).
NORMALIZATIONS = ("per_image", "weight_sum", "per_image/10")
KD_REDUCTIONS = ("official", "class_sum")
HEAD = "model.bbox_head."
# The head's LD and KD terms (CachedLD's loss arguments); None switches one off.
LD_KD_TERMS = ("loss_ld", "loss_ld_vlr", "loss_kd", "loss_kd_vlr")
# A family's LD rows: its head's official weights, and all of them divided by 10.
FAMILY_LD_ROWS = ("ld@official", "ld@official/10")
# The convergence rule: the baseline's val AP gains less than this over the last third.
CONVERGED_GAIN = 0.01
# ldcache.train.schedule.DROPS as JSON keeps it (importing ldcache.train loads mmdet; a test checks both agree).
DEFAULT_DROPS = [[2, 3], [11, 12]]
# A family's students: the last third of training, where convergence is read, after the first drop.
FAMILY_DROPS = [[1, 2], [5, 6]]
FAMILY_HEADING = "## Table 5 on shapes: "


@dataclass(frozen=True)
class Family:
    """A detector family: its plain and cached-LD student configs and its teacher (a config and the
    cfg options that make it the teacher)."""

    name: str
    title: str
    plain: Path
    cached: Path
    teacher: Path
    teacher_options: dict = field(default_factory=dict)
    # Defaults of the options the GFL experiment and a family's Table 5 set differently.
    defaults: dict = field(default_factory=dict)


GFL = Family("gfl", "GFL", BASELINE, CACHED, TEACHER, defaults={
    "seeds": [0, 1, 2, 3, 4], "teacher_epochs": 12, "teacher_val_interval": 2, "student_epochs": 2,
    "out": REPO / "work_dirs/experiment"})
FAMILIES = {name: Family(name, title, TINY / f"{name}_dist_tiny.py", TINY / f"ld_{name}_dist_tiny_cached.py",
                         TINY / f"{name}_dist_tiny.py", {"model.backbone.depth": 34},
                         {"seeds": [0, 1, 2], "teacher_epochs": 72, "teacher_val_interval": 6, "student_epochs": 48,
                          "lr_drops": FAMILY_DROPS, "out": REPO / f"work_dirs/experiment_{name}",
                          "records": REPO / f"bench/records/table5_{name}.jsonl"})
            for name, title in (("retina", "RetinaNet"), ("fcos", "FCOS"), ("atss", "ATSS"), ("gflv2", "GFLv2"))}


@dataclass(frozen=True)
class HeadLosses:
    """The LD and KD terms of a cached-LD config's head: what the config sets (`own`, its bbox_head)
    and its head class's __init__ defaults (the first class of the MRO that names the argument:
    the family heads pass the others on to CachedLD)."""

    own: dict
    defaults: dict

    @classmethod
    def of(cls, config: Path) -> HeadLosses:
        from mmdet.registry import MODELS

        from ldcache.domain.ld_config import load_config

        head = load_config(config).model.bbox_head  # imports the config's custom_imports: the head is registered
        init_params = [inspect.signature(klass.__init__).parameters
                       for klass in MODELS.get(head.type).__mro__ if "__init__" in vars(klass)]
        return cls(head, {name: next(p[name].default for p in init_params if name in p) for name in LD_KD_TERMS})

    def built(self) -> dict[str, dict]:
        """The terms the head is built with (those switched on): the config's, else the defaults."""
        return {name: dict(cfg) for name in LD_KD_TERMS if (cfg := self.own.get(name, self.defaults[name]))}

    def options(self, losses: dict) -> dict:
        """Config options that set these terms whole (a loss config, or None: off) whatever the
        config has there: mmengine merges a dict into a dict only, so `_delete_` where it has one."""
        return {HEAD + name: {**cfg, "_delete_": True} if cfg and name in self.own else cfg
                for name, cfg in losses.items()}


def row_options(row: str, weights: dict, head: HeadLosses) -> dict:
    """The head options of a row name such as 'full@per_image,kd=class_sum' (online: prefix aside).
    Its terms start from the head class's defaults, not from the config's recipe (which this
    experiment chose), and the others are switched off."""
    kind, _, rest = row.removeprefix("online:").partition("@")
    norm, _, kd = rest.partition(",kd=")
    norm, _, divisor = norm.partition("/")
    on = {"main_ld": ("loss_ld",), "main_ld_vlr": ("loss_ld", "loss_ld_vlr"),
          "full": ("loss_ld", "loss_ld_vlr", "loss_kd")}[kind]
    losses = {name: dict(head.defaults[name]) if name in on else None for name in LD_KD_TERMS}
    for name in ("loss_ld", "loss_ld_vlr"):  # the LD terms' weights (KD's stays the default)
        if losses[name]:
            weight = weights[name] if norm == "weight_sum" else losses[name]["loss_weight"]
            losses[name]["loss_weight"] = weight / float(divisor or 1)
    options = {HEAD + "normalize": norm, **head.options(losses)}
    if kind == "full":
        options[HEAD + "kd_reduction"] = kd
    return options


def family_row_options(row: str, head: HeadLosses) -> dict:
    """The head options of a family row, 'ld@official' or 'ld@official/D': every LD and KD loss
    weight the head is built with divided by D."""
    divisor = float(row.partition("/")[2] or 1)
    if divisor == 1:
        return {}
    return head.options({name: {**cfg, "loss_weight": cfg["loss_weight"] / divisor}
                         for name, cfg in head.built().items()})


def test_split_options(root: Path) -> dict:
    return {"test_dataloader.dataset.ann_file": "annotations/instances_test.json",
            "test_dataloader.dataset.data_prefix.img": "images/test/",
            "test_evaluator.ann_file": str(root / "annotations/instances_test.json")}


def logged_mean(work_dir: Path, key: str) -> float | None:
    """The mean of a logged training scalar over the run in work_dir (mmengine's scalars.json)."""
    values = [r[key] for r in logged(work_dir)[0].values() if r.get(key) is not None]
    return statistics.mean(values) if values else None


def iterations_per_epoch(train_images: int) -> int:
    """Batches of 8 in one epoch (the shapes configs' batch size; the last batch may be short)."""
    return -(-train_images // 8)


def train_one(job: dict) -> dict:
    """One student run (in its own process): train, resuming the killed start of the same job if
    any, then COCO AP on val and on test."""
    import torch

    from ldcache.train.evaluate import coco_ap
    from ldcache.train.runner import runner_from_config
    from ldcache.train.schedule import scaled_iteration_schedule
    from ldcache.train.student import build_student_runner

    torch.set_num_threads(job["threads"])
    os.environ["LDCACHE_DATA_ROOT"] = job["root"] + "/"
    root, work, row, epochs = Path(job["root"]), Path(job["work"]), job["row"], job["epochs"]
    drops = tuple(tuple(f) for f in job["lr_drops"])
    options = {**scaled_iteration_schedule(epochs, iterations_per_epoch(job["train_images"]), drops),
               "train_cfg.val_interval": job["val_interval"], **checkpoint_options(job["val_interval"]),
               "randomness.seed": job["seed"], "default_hooks.logger.interval": 10, **test_split_options(root),
               **job["options"]}
    if row == "baseline":
        def build(cfg_options: dict, resume: bool):
            return runner_from_config(job["config"], work, cfg_options, resume=resume)
    else:
        source = ({"teacher": (Path(job["teacher"]), Path(job["checkpoint"]))} if row.startswith("online:")
                  else {"cache": Path(job["store"])})

        def build(cfg_options: dict, resume: bool):
            return build_student_runner(job["config"], work_dir=work, cfg_options=cfg_options, resume=resume,
                                        **source)
    runner, clock = train(work, options, build)
    record = {"row": row, "seed": job["seed"], "epochs": epochs, "lr_drops": job["lr_drops"],
              **({} if row == "baseline" else {"teacher_epochs": job["teacher_epochs"],
                                               "teacher_sha256": job["teacher_sha256"]}),
              "train_seconds": clock.seconds(), "train_cpu_seconds": clock.cpu_seconds(),
              **clock.resumes(),
              "ld_main_weight_mean": logged_mean(work, "ld_main_weight_mean"), "val_curve": val_curve(work)}
    for split, evaluate in (("val", runner.val), ("test", runner.test)):
        record.update({f"{split}_{k}": v for k, v in coco_ap(evaluate()).items()})
    return record


@dataclass(frozen=True)
class Inputs:
    """What the student runs read: the dataset's root, and the teacher's store and checkpoint (not
    yet known while a family's baselines run first)."""

    root: Path
    store: Path | None = None
    checkpoint: Path | None = None


class Experiment:
    """The runs of one family's experiment: each (row, seed) once at --student-epochs, recorded in
    --records with the teachers they learn from. `options(row)` gives an LD row's config options;
    `teacher` is the digest of the weights of the teacher that LD rows must have learnt from
    (None until it is known)."""

    def __init__(self, args, family: Family, inputs: Inputs, options: Callable[[str], dict]):
        from ldcache.demo.shapes import dataset_sha256

        self.args, self.family, self.inputs, self.options = args, family, inputs, options
        self.teacher: str | None = None
        self.log = args.records
        # Only the records of this dataset (its images and labels) count: a run on other data is not comparable.
        self.dataset = dataset_sha256(inputs.root)
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        records = [r for r in map(json.loads, lines) if r.get("dataset_sha256") == self.dataset]
        self.records = [r for r in records if r["row"] != "teacher"]
        self.teachers = [r for r in records if r["row"] == "teacher"]

    def _append(self, record: dict) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:
            f.write(json.dumps({**record, "dataset_sha256": self.dataset}) + "\n")

    def recorded_teacher(self) -> dict | None:
        """The newest teacher record at --teacher-epochs, if any."""
        mine = [t for t in self.teachers if t["teacher_epochs"] == self.args.teacher_epochs]
        return mine[-1] if mine else None

    def record_teacher(self, teacher: dict) -> None:
        """Record a teacher (once per weights digest) and make it the one LD rows must come from."""
        if all(t["weights_sha256"] != teacher["weights_sha256"] for t in self.teachers):
            self.teachers.append(teacher)
            self._append(teacher)
        self.teacher = teacher["weights_sha256"]

    def runs(self, row: str, seeds: list[int] | None = None) -> list[dict]:
        """The records of a row at this schedule (epochs and LR drops) and, but for the baseline,
        from this teacher (the digest of its weights), for `seeds` (default: all). Records written
        before they carried their epochs are taken to be at this schedule, and those without LR drops
        at the default ones."""
        args = self.args
        return [r for r in self.records if r["row"] == row and r["seed"] in (seeds or args.seeds)
                and r.get("epochs", args.student_epochs) == args.student_epochs
                and r.get("lr_drops", DEFAULT_DROPS) == args.lr_drops
                and (row == "baseline" or r.get("teacher_sha256") == self.teacher)]

    def rows(self) -> list[str]:
        """The rows with runs at this schedule and these seeds, in the order they were first run."""
        return [row for row in dict.fromkeys(r["row"] for r in self.records) if self.runs(row)]

    def run(self, rows: list[str], seeds: list[int] | None = None) -> None:
        """Every seed (of `seeds`, or all) of these rows not yet recorded, --jobs at a time."""
        todo = [(row, seed) for seed in (seeds or self.args.seeds) for row in rows if not self.runs(row, [seed])]
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for record in pool.map(lambda job: self._subprocess(*job), todo):
                self.records.append(record)
                self._append(record)
                print(json.dumps(record), flush=True)

    def job(self, row: str, seed: int) -> dict:
        """The spec of one run, which names its folder's job (`resumable.prepare`). A baseline's
        carries nothing of the teacher, so that one killed after the teacher became known resumes."""
        work = self.args.out / "".join(c if c.isalnum() else "_" for c in row) / f"seed{seed}"
        plain = row == "baseline"
        job = {"row": row, "seed": seed, "epochs": self.args.student_epochs, "lr_drops": self.args.lr_drops,
               "train_images": self.args.train,
               "val_interval": self.args.student_val_interval, "root": str(self.inputs.root),
               "config": str(self.family.plain if plain else self.family.cached),
               "options": {} if plain else self.options(row), "work": str(work),
               "threads": max(1, 2 // self.args.jobs)}
        if not plain:
            job.update(teacher_epochs=self.args.teacher_epochs, teacher_sha256=self.teacher,
                       store=str(self.inputs.store), teacher=str(self.family.teacher),
                       checkpoint=str(self.inputs.checkpoint))
        return job

    def _subprocess(self, row: str, seed: int) -> dict:
        job = self.job(row, seed)
        work = Path(job["work"])
        prepare(work, job)
        env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
        with open(work / "run.log", "a") as log:  # a resumed job's log follows its killed start's
            subprocess.run([sys.executable, __file__, "--job", json.dumps(job)], check=True, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
        return json.loads((work / "record.json").read_text())

    def mean(self, row: str, key: str = "val_bbox_mAP", seeds: list[int] | None = None) -> float:
        return statistics.mean(r[key] for r in self.runs(row, seeds))

    def best(self, rows: list[str], seeds: list[int] | None = None) -> str:
        """The row of the highest mean val AP (over `seeds`, default all); the first listed on a tie."""
        return max(rows, key=lambda row: self.mean(row, seeds=seeds))


def shapes_root(args) -> Path:
    """The dataset of --train/--val/--test images, made if needed; LDCACHE_DATA_ROOT points at it."""
    from ldcache.demo.shapes import ShapesSpec, ensure_shapes_dataset

    root = ensure_shapes_dataset(ShapesSpec(num_train=args.train, num_val=args.val, num_test=args.test, seed=100))
    os.environ["LDCACHE_DATA_ROOT"] = str(root) + "/"
    args.out.mkdir(parents=True, exist_ok=True)
    return root


def weights_sha256(checkpoint: Path) -> str:
    """A digest of a checkpoint's weights (names, dtypes, shapes, values), not of its file, whose
    metadata differs between two trainings that reach the same weights (it holds the run's name)."""
    import hashlib

    from ldcache.checkpoint_trust import load_checkpoint_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_checkpoint_file(checkpoint, map_location="cpu")["state_dict"].items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_teacher(config: Path, work: Path, options: dict) -> dict:
    """Train a teacher in `work`, resuming its killed start if any; returns its COCO AP on val and
    its training time (wall seconds, across resumes)."""
    from ldcache.train.evaluate import coco_ap
    from ldcache.train.runner import runner_from_config

    prepare(work, {"config": str(config), "options": options})
    runner, clock = train(work, options, lambda cfg_options, resume: runner_from_config(
        config, work, cfg_options, resume=resume))
    return {**coco_ap(runner.test()), "seconds": clock.seconds(),
            **clock.resumes()}


def teacher_and_store(args, family: Family, root: Path) -> tuple[Inputs, dict]:
    """The family's teacher trained on train, and its dump: each done once and reused. Returns them
    and the teacher's record: its epochs, weights digest, metrics, val curve and dump time."""
    from ldcache.demo.run import run_once
    from ldcache.dump.run import DumpOptions, run_dump
    from ldcache.domain.views import parse_views
    from ldcache.train.schedule import scaled_schedule

    options = {**scaled_schedule(args.teacher_epochs, args.teacher_val_interval), "default_hooks.logger.interval": 20,
               **checkpoint_options(args.teacher_val_interval), **family.teacher_options}
    # Keyed by the teacher's epochs: another --teacher-epochs trains and dumps its own teacher.
    name = f"teacher_{args.teacher_epochs}ep"
    teacher = run_once(args.out / name, lambda: train_teacher(family.teacher, args.out / name, options))
    checkpoint = Path((args.out / name / "last_checkpoint").read_text().strip())
    store = args.out / f"{name}.zarr"
    dump_info = run_once(args.out / f"dump_{args.teacher_epochs}ep", lambda: run_dump(DumpOptions(
        family.teacher, checkpoint, root / "annotations/instances_train.json", root / "images/train", store,
        parse_views([(320, 320)], flip=True), workers=0, resume=store.exists(),
        cfg_options=family.teacher_options or None)).to_dict())
    record = {"row": "teacher", "teacher_epochs": args.teacher_epochs, "weights_sha256": weights_sha256(checkpoint),
              "teacher": teacher, "teacher_curve": val_curve(args.out / name), "dump_seconds": dump_info["seconds"]}
    return Inputs(root, store, checkpoint), record


def run_experiment(args) -> None:
    """The GFL experiment, or with --family a family's Table 5; the results go to --results."""
    root = shapes_root(args)
    if args.family:
        run_family(args, FAMILIES[args.family], root)
    else:
        run_gfl(args, root)


def run_gfl(args, root: Path) -> None:
    """The GFL rows of the module docstring, each choice on val, then the tables."""
    from ld_calibration import weight_sum_weights

    inputs, teacher = teacher_and_store(args, GFL, root)
    setup = {"argv": " ".join(sys.argv[1:]), **teacher}
    weights: dict = {}  # 'weight_sum' loss weights, once the students' confidence is known
    head = HeadLosses.of(GFL.cached)
    exp = Experiment(args, GFL, inputs, lambda row: row_options(row, weights, head))
    exp.record_teacher(teacher)
    # Choices are made on the val AP of the first --select-seeds seeds; the rows chosen then get every seed.
    select = args.seeds[:args.select_seeds]
    exp.run(["baseline", "main_ld_vlr@per_image"], select)
    confidence = statistics.mean(r["ld_main_weight_mean"] for r in exp.runs("main_ld_vlr@per_image"))
    weights.update(weight_sum_weights(confidence))
    exp.run([f"main_ld_vlr@{n}" for n in NORMALIZATIONS], select)
    norm = exp.best([f"main_ld_vlr@{n}" for n in NORMALIZATIONS], select).split("@")[1]
    exp.run([f"full@{norm},kd={kd}" for kd in KD_REDUCTIONS], select)
    kd = exp.best([f"full@{norm},kd={kd}" for kd in KD_REDUCTIONS], select).split("=")[1]
    exp.run([f"main_ld@{norm}"], select)
    chosen = exp.best([f"main_ld@{norm}", f"main_ld_vlr@{norm}", f"full@{norm},kd={kd}"], select)
    exp.run(["baseline", f"main_ld@{norm}", f"main_ld_vlr@{norm}", f"full@{norm},kd={kd}"])
    exp.run([f"online:{chosen}"])
    setup.update({"norm": norm, "kd": kd, "chosen": chosen, "confidence": confidence, "weights": weights})
    write_results(exp, setup, args.results)
    print(args.results.read_text())


def run_family(args, family: Family, root: Path) -> None:
    """A family's Table 5: the baseline first (its convergence printed; the teacher is not needed
    yet), the LD recipe chosen on val, then both on every seed; its section of --results once
    every run is recorded. With --ld-only, the teacher and the LD rows only."""
    head = HeadLosses.of(family.cached)
    exp = Experiment(args, family, Inputs(root), lambda row: family_row_options(row, head))
    select = args.seeds[:args.select_seeds]
    if not args.ld_only:
        exp.run(["baseline"], select)
        schedule = convergence(exp)
        print(convergence_text(schedule), flush=True)
        if args.baseline_only:
            return
        if args.stop_unconverged and not schedule["converged"]:
            why = ("has not converged at this schedule" if schedule["converged"] is False else
                   "has no validation early enough to tell whether it converged (see --student-val-interval)")
            print(f"--stop-unconverged: {family.name}'s baseline {why}; no teacher or LD run started. Choose "
                  "--student-epochs and --lr-drops with --baseline-only", flush=True)
            sys.exit(3)
    teacher = exp.recorded_teacher()
    if teacher:
        exp.teacher = teacher["weights_sha256"]
    if not (teacher and ld_rows_done(exp, select)):  # the LD runs need the teacher's store
        recorded = teacher
        exp.inputs, teacher = teacher_and_store(args, family, root)
        exp.record_teacher(teacher)
        if recorded and recorded["weights_sha256"] != teacher["weights_sha256"]:
            print(f"{family.name}: this teacher's weights differ from the recorded one's (another machine or "
                  "library?): the LD runs of the recorded teacher are not counted, and run again", flush=True)
    exp.run(list(FAMILY_LD_ROWS), select)
    chosen = exp.best(list(FAMILY_LD_ROWS), select)
    exp.run([chosen])
    if not args.ld_only:
        exp.run(["baseline"])
    if len(exp.runs("baseline")) < len(args.seeds):
        print(f"{family.name}: LD rows done; the section is written once the baselines of seeds {args.seeds} are "
              "recorded (run without --ld-only)", flush=True)
        return
    setup = {"argv": " ".join(sys.argv[1:]), **teacher, "chosen": chosen, "select": select, "losses": head.built(),
             "selection": {row: exp.mean(row, seeds=select) for row in ("baseline", *FAMILY_LD_ROWS)}}
    print(write_family_results(exp, setup, args.results))


def ld_rows_done(exp: Experiment, select: list[int]) -> bool:
    """Whether the LD rows are recorded (for exp.teacher): both on the select seeds, and the better
    of them on every seed."""
    if any(len(exp.runs(row, select)) < len(select) for row in FAMILY_LD_ROWS):
        return False
    return len(exp.runs(exp.best(list(FAMILY_LD_ROWS), select))) == len(exp.args.seeds)


def paired(exp: Experiment, row: str, key: str = "test_bbox_mAP") -> list[float]:
    """Per seed, the row's AP minus the baseline's (same seed, same data order)."""
    base = {r["seed"]: r[key] for r in exp.runs("baseline")}
    return [r[key] - base[r["seed"]] for r in sorted(exp.runs(row), key=lambda r: r["seed"]) if r["seed"] in base]


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {_std(values):.3f}"


def table_lines(exp: Experiment) -> list[str]:
    """The results table: per row, its APs over its seeds, its test AP minus the baseline's paired by
    seed, and the wall and CPU seconds of its training (with its validations)."""
    lines = ["| row | seeds | val AP | test AP | test AP50 | test AP75 | test AP - baseline, paired (mean +- std) | "
             "per seed | wall s/run | CPU s/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in exp.rows():
        runs = exp.runs(row)
        diffs = paired(exp, row) if row != "baseline" else []
        lines.append(" | ".join([
            f"| {row}", str(len(runs)), _mean_std([r["val_bbox_mAP"] for r in runs]),
            _mean_std([r["test_bbox_mAP"] for r in runs]), _mean_std([r["test_bbox_mAP_50"] for r in runs]),
            _mean_std([r["test_bbox_mAP_75"] for r in runs]), _mean_std(diffs) if diffs else "",
            " ".join(f"{d:+.3f}" for d in diffs),
            f"{statistics.mean(r['train_seconds'] for r in runs):.0f}",
            f"{statistics.mean(r['train_cpu_seconds'] for r in runs):.0f} |"]))
    return lines


def split_sections(text: str) -> list[str]:
    """A markdown file cut before each '## ' heading: the part above the first (maybe empty), then
    one chunk per section."""
    return re.split(r"(?m)^(?=## )", text)


def join_sections(chunks: list[str]) -> str:
    return "\n\n".join(chunk.strip("\n") for chunk in chunks if chunk.strip()) + "\n"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_results(exp: Experiment, setup: dict, out: Path) -> None:
    """The GFL part: the top of `out` (above its first '## ' section, all of which are kept) and the
    top-level keys of its .json (its "families" kept)."""
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
        *table_lines(exp),
    ]
    chunks = split_sections(out.read_text() if out.is_file() else "")
    chunks[0] = "\n".join(lines)
    out.write_text(join_sections(chunks))
    families = {k: v for k, v in read_json(out.with_suffix(".json")).items() if k == "families"}
    write_json(out.with_suffix(".json"), {**verdict(exp, setup["chosen"]), **families})


def verdict(exp: Experiment, row: str) -> dict:
    """The chosen row against the baseline on test, for the demo to quote: beyond the spread when the
    mean paired difference exceeds the standard deviation of the paired differences."""
    diffs = paired(exp, row)
    mean, std = statistics.mean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    return {"row": row, "seeds": len(diffs), "paired_mean": round(mean, 4), "paired_std": round(std, 4),
            "paired_t": round(mean / (std / len(diffs) ** 0.5), 2) if len(diffs) > 1 and std > 0 else None,
            "beyond_spread": bool(len(diffs) > 1 and abs(mean) > std), "improves": mean > 0,
            "student_epochs": exp.args.student_epochs, "train_images": exp.args.train}


def lr_drops(text: str) -> list[list[int]]:
    """--lr-drops "1/2,5/6" -> [[1, 2], [5, 6]]: fractions strictly between 0 and 1, rising."""
    try:
        drops = [[int(v) for v in part.split("/")] for part in text.split(",")]
        ok = all(len(f) == 2 and 0 < f[0] < f[1] for f in drops) and drops == sorted(drops, key=lambda f: f[0] / f[1])
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"takes rising fractions of the run like 1/2,5/6, not {text!r}")
    return drops


def last_third_gain(run: dict, epochs: int) -> tuple[int, float] | None:
    """(epoch, gain): the run's last validation at or before 2/3 of its epochs, and the val AP gained
    from it to the end of training; None when it has no such validation."""
    start = [(epoch, ap) for epoch, ap in run.get("val_curve", []) if 3 * epoch <= 2 * epochs]
    return (start[-1][0], run["val_bbox_mAP"] - start[-1][1]) if start else None


def convergence(exp: Experiment) -> dict:
    """The baseline's schedule, its val AP by epoch (mean over its seeds) and whether it has converged
    by the issue's rule: its val AP, on average over the seeds, gains less than CONVERGED_GAIN over
    the last third of training (None when not measured: no validation early enough)."""
    args, runs = exp.args, sorted(exp.runs("baseline"), key=lambda r: r["seed"])
    gains = [last_third_gain(r, args.student_epochs) for r in runs]
    measured = bool(runs) and None not in gains
    epochs = sorted(set.intersection(*(set(e for e, _ in r.get("val_curve", [])) for r in runs))) if runs else []
    mean_gain = statistics.mean(g for _, g in gains) if measured else None
    return {"epochs": args.student_epochs, "iterations": args.student_epochs * iterations_per_epoch(args.train),
            "lr_drops": args.lr_drops,
            "val_interval": args.student_val_interval, "seeds": [r["seed"] for r in runs],
            "val_ap_by_epoch": [[e, round(statistics.mean(dict(r["val_curve"])[e] for r in runs), 4)] for e in epochs],
            "from_epoch": gains[0][0] if measured else None,
            "gains": [round(g, 4) for _, g in gains] if measured else [],
            "mean_gain": None if mean_gain is None else round(mean_gain, 4),
            "converged": None if mean_gain is None else mean_gain < CONVERGED_GAIN}


def convergence_text(c: dict) -> str:
    """The baseline's schedule and convergence (a `convergence` dict) in one paragraph."""
    curve = ", ".join(f"{e}: {ap:.3f}" for e, ap in c["val_ap_by_epoch"]) or "none logged"
    drops = " and ".join(f"{n}/{d}" for n, d in c.get("lr_drops", DEFAULT_DROPS))
    text = (f"Baseline schedule: {c['epochs']} epochs = {c['iterations']} iterations, the LR dropping tenfold at "
            f"{drops} of them. Its val AP by epoch (mean of "
            f"seeds {c['seeds']}): {curve}.")
    if c["converged"] is None:
        return text + (f" Convergence not measured: no validation at or before epoch {2 * c['epochs'] // 3} "
                       "(2/3 of training; see --student-val-interval).")
    verdict_word = (f"converged (under {CONVERGED_GAIN})" if c["converged"]
                    else f"NOT converged ({CONVERGED_GAIN} or more: lengthen --student-epochs, or drop the LR "
                         "earlier with --lr-drops)")
    return text + (f" Gain over the last third of training (epoch {c['from_epoch']} to {c['epochs']}): "
                   f"{c['mean_gain']:+.3f} (per seed {' '.join(f'{g:+.3f}' for g in c['gains'])}): {verdict_word}.")


def verdict_text(exp: Experiment, row: str) -> str:
    """The LD row against the baseline in words: as plain when it does not help as when it does."""
    v, diffs = verdict(exp, row), paired(exp, row)
    if v["improves"]:
        words = ("helps: above the baseline by more than the seeds' spread" if v["beyond_spread"] else
                 "does not help beyond the seeds' spread (above the baseline on average, within the spread)")
    else:
        words = ("hurts: below the baseline by more than the seeds' spread" if v["beyond_spread"] else
                 "does not help: not above the baseline on average, within the seeds' spread")
    return (f"**Result: cached LD (`{row}`) {words}.** Test AP minus the baseline's, paired by seed: "
            # From the differences, not from verdict()'s 4-digit rounding: the table's figures to the digit.
            f"{statistics.mean(diffs):+.3f} +- {_std(diffs):.3f} over {v['seeds']} seeds "
            f"(per seed {' '.join(f'{d:+.3f}' for d in diffs)}).")


def family_section(exp: Experiment, setup: dict) -> str:
    """A family's section of the results: its setup, the baseline's convergence, the recipe chosen
    on val, the table and the result in words."""
    args, family, chosen = exp.args, exp.family, setup["chosen"]
    teacher_curve = ", ".join(f"{e}: {ap:.3f}" for e, ap in setup["teacher_curve"])
    weights = ", ".join(f"{name} {cfg['loss_weight']:g}" for name, cfg in setup["losses"].items())
    selection = ", ".join(f"`{row}` {ap:.3f}" for row, ap in setup["selection"].items())
    lines = [
        FAMILY_HEADING + family.title,
        "",
        f"Produced by `python bench/ld_experiment.py {setup['argv']}` on a 2-core CPU machine (no GPU), "
        f"{args.jobs} run(s) at a time; {args.train} train, {args.val} val, {args.test} test images.",
        f"Teacher: {family.title} R34 tiny (`{family.teacher.relative_to(REPO)}` with `model.backbone.depth=34`), "
        f"{args.teacher_epochs} epochs (the learning rate / 10 at 2/3 and 11/12), val AP "
        f"{setup['teacher'].get('bbox_mAP', float('nan')):.3f} "
        f"(by epoch: {teacher_curve}); dump {setup['dump_seconds']:.0f} s (identity + flipped view).",
        f"Students: {family.title} R18 tiny from scratch, AdamW, batch 8, {args.student_epochs} epochs, the "
        f"learning rate / 10 at {' and '.join(f'{n}/{d}' for n, d in args.lr_drops)} of the iterations, val AP "
        f"every {args.student_val_interval} epochs; the same seeds (weights and data order) in every row.",
        "",
        convergence_text(convergence(exp)),
        "",
        teacher_margin_text(exp, setup["teacher"].get("bbox_mAP", float("nan"))),
        "",
        f"Recipe, chosen on the mean val AP of seeds {setup['select']}: `{chosen}` ({selection}). Official LD "
        f"and KD loss weights of `{family.cached.relative_to(REPO)}`: {weights}; `ld@official/10` divides each "
        "by 10.",
        "",
        *table_lines(exp),
        "",
        verdict_text(exp, chosen),
        *resumed_lines(exp, setup["teacher"]),
    ]
    return "\n".join(lines)


def resumed_lines(exp: Experiment, teacher: dict) -> list[str]:
    """The runs of the section that were killed and resumed, and where; none: no line."""
    resumed = [("the teacher", teacher["resumed_at"])] if teacher.get("resumed_at") else []
    resumed += [(f"`{r['row']}` seed {r['seed']}", r["resumed_at"]) for row in exp.rows()
                for r in sorted(exp.runs(row), key=lambda r: r["seed"]) if r.get("resumed_at")]
    if not resumed:
        return []
    where = "; ".join(f"{run} at epoch {', '.join(map(str, epochs))}" for run, epochs in resumed)
    return ["", f"Resumed after a kill, from the checkpoint of the last validation (the weights of an "
                f"uninterrupted run; each start's time counted up to that checkpoint): {where}."]


def teacher_margin_text(exp: Experiment, teacher_ap: float) -> str:
    """The teacher's val AP against the baseline students' (mean over their seeds): LD can only
    pass on what the teacher knows beyond the student."""
    student_ap = exp.mean("baseline")
    text = (f"Teacher val AP {teacher_ap:.3f} against the baseline students' {student_ap:.3f} (mean of "
            f"{len(exp.runs('baseline'))} seeds): {teacher_ap - student_ap:+.3f}")
    if teacher_ap <= student_ap:
        return text + ": the teacher is no stronger than the students it teaches, so LD has little to pass on."
    return text + "."


def family_summary(exp: Experiment, setup: dict) -> dict:
    """A family's results for docs/results.json: the chosen row's verdict (as the top level has the
    GFL one), the APs, the costs, the choice and the baseline's convergence."""
    chosen = setup["chosen"]
    mean = lambda row, key: round(exp.mean(row, key), 4)  # noqa: E731
    return {**verdict(exp, chosen), "family": exp.family.title, "argv": setup["argv"],
            "per_seed": [round(d, 4) for d in paired(exp, chosen)],
            "baseline_test_ap": mean("baseline", "test_bbox_mAP"), "ld_test_ap": mean(chosen, "test_bbox_mAP"),
            "train_seconds": {row: mean(row, "train_seconds") for row in ("baseline", chosen)},
            "train_cpu_seconds": {row: mean(row, "train_cpu_seconds") for row in ("baseline", chosen)},
            "selection_seeds": setup["select"],
            "selection_val_ap": {row: round(ap, 4) for row, ap in setup["selection"].items()},
            "official_loss_weights": {name: cfg["loss_weight"] for name, cfg in setup["losses"].items()},
            "teacher_epochs": exp.args.teacher_epochs, "teacher_val_ap": setup["teacher"].get("bbox_mAP"),
            "teacher_weights_sha256": setup["weights_sha256"],
            "dump_seconds": setup["dump_seconds"], "convergence": convergence(exp)}


def write_family_results(exp: Experiment, setup: dict, out: Path) -> str:
    """Put the family's section in `out` (replacing its old one; a new one goes before the sections of
    the families after it, else at the end) and its summary under "families" in the .json; the rest
    of both files is kept. Returns the section."""
    section = family_section(exp, setup)
    chunks = split_sections(out.read_text() if out.is_file() else "")
    headings = [chunk.partition("\n")[0].strip() for chunk in chunks]
    order = [FAMILY_HEADING + family.title for family in FAMILIES.values()]
    mine = FAMILY_HEADING + exp.family.title
    if mine in headings:
        chunks[headings.index(mine)] = section
    else:
        later = [i for i, heading in enumerate(headings) if heading in order[order.index(mine) + 1:]]
        chunks.insert(later[0] if later else len(chunks), section)
    out.write_text(join_sections(chunks))
    summary = read_json(out.with_suffix(".json"))
    summary.setdefault("families", {})[exp.family.name] = family_summary(exp, setup)
    write_json(out.with_suffix(".json"), summary)
    return section


def parse_args() -> argparse.Namespace:
    """The options; those left unset take the defaults of the GFL experiment or of --family's."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=list(FAMILIES),
                        help="a family's Table 5 instead of the GFL experiment")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 3 4; 0 1 2 with --family")
    parser.add_argument("--teacher-epochs", type=int, help="default 12; 72 with --family (1.5x the students')")
    parser.add_argument("--teacher-val-interval", type=int, help="default 2; 6 with --family")
    parser.add_argument("--student-epochs", type=int, help="default 2; 48 with --family")
    parser.add_argument("--lr-drops", type=lr_drops, metavar="N/D,N/D",
                        help="where the students' LR drops tenfold, as fractions of the run; default 2/3,11/12 "
                             "(mmdet's 1x), 1/2,5/6 with --family (the last third, where convergence is read, "
                             "after the first drop)")
    parser.add_argument("--student-val-interval", type=int,
                        help="epochs between the students' validations; default: a sixth of --student-epochs "
                        "with --family (the baseline's convergence is read from them), none (at the end only) without")
    parser.add_argument("--baseline-only", action="store_true",
                        help="with --family: train the baseline on the --select-seeds seeds, print its val curve "
                        "and convergence, and stop (to pick --student-epochs)")
    parser.add_argument("--stop-unconverged", action="store_true",
                        help="with --family: stop after the baseline's --select-seeds runs (exit status 3) when "
                        "its schedule has not converged, before the teacher and LD runs it would waste; for "
                        "unattended runs of several families")
    parser.add_argument("--ld-only", action="store_true",
                        help="with --family: the teacher, its dump and the LD rows, no baseline run (the LD runs "
                        "read the teacher's store in OUT, so they should share its sitting; the baselines can "
                        "run in another)")
    parser.add_argument("--select-seeds", type=int, default=3, help="seeds the val choices are made on")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (on 2 cores one run of 2 threads is "
                        "faster than two of one)")
    parser.add_argument("--out", type=Path, help="default work_dirs/experiment; work_dirs/experiment_<family> "
                        "with --family")
    parser.add_argument("--records", type=Path, help="the runs' records (JSON lines); default OUT/runs.jsonl, "
                        "bench/records/table5_<family>.jsonl with --family (kept in the repository: a family's "
                        "experiment takes more than one sitting)")
    parser.add_argument("--results", type=Path, default=REPO / "docs/results.md")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ld_only and args.baseline_only:
        parser.error("--ld-only and --baseline-only exclude each other: the first runs no baseline, the second "
                     "nothing else")
    if args.select_seeds < 1:  # an empty selection would read as "every seed" below
        parser.error("--select-seeds takes a count of seeds, 1 or more")
    family = FAMILIES.get(args.family, GFL)
    for name, value in {"lr_drops": DEFAULT_DROPS, **family.defaults}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.records is None:
        args.records = args.out / "runs.jsonl"
    if args.student_val_interval is None:
        args.student_val_interval = max(1, args.student_epochs // 6) if args.family else args.student_epochs + 1
    return args


def main() -> None:
    args = parse_args()
    if args.job:
        job = json.loads(args.job)
        record = train_one(job)
        (Path(job["work"]) / "record.json").write_text(json.dumps(record))
        return
    run_experiment(args)


if __name__ == "__main__":
    main()
