"""The main job on the embedded default, end to end on the CPU.

1. the kwcoco shapes dataset (offline), 2. a tiny GFL R34 teacher, 3. its dump, 4. a GFL R18
student without distillation, 5. the same student with cached LD (the recipe of
configs/tiny/ld_r18_tiny_cached.py, the one the committed experiment selected), then a table of
COCO AP and costs, with the committed experiment's verdict, the cached-online parity on a batch,
the teacher time the cache saved, and an inspect picture. Each finished step leaves `metrics.json`
in its folder, so a re-run reuses it (unless --fresh).

The terminal shows one progress bar per step; mmengine's logs stay in each training step's log
file, and whatever else libraries print (pycocotools, warnings) in `demo.log`, unless --verbose.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import console
from .shapes import ShapesSpec, ensure_shapes_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEACHER_CONFIG = CONFIGS / "tiny" / "gfl_r34_tiny_teacher.py"
BASELINE_CONFIG = CONFIGS / "tiny" / "gfl_r18_tiny.py"
CACHED_CONFIG = CONFIGS / "tiny" / "ld_r18_tiny_cached.py"
# The committed experiment's summary (bench/ld_experiment.py writes it beside docs/results.md).
EXPERIMENT_SUMMARY = CONFIGS.parent / "docs" / "results.json"
# Sized so that the whole demo takes at most 15 minutes on 2 CPU cores (docs/benchmarks.md); the
# students' 36 steps are about the committed experiment's 40.
TEACHER_EPOCHS = 14
STUDENT_EPOCHS = 6
# What a demo run writes in its work_dir.
STEPS = ("teacher", "dump", "teacher.zarr", "student_plain", "student_cached_ld", "parity", "inspect.png",
         "settings.json", "demo.log")
TRAINING_STEPS = ("teacher", "student_plain", "student_cached_ld")


def use_shapes_dataset(root: Path) -> Path:
    """Build the dataset if needed and point the shapes configs at it (they read LDCACHE_DATA_ROOT)."""
    root = ensure_shapes_dataset(ShapesSpec(), root)
    os.environ["LDCACHE_DATA_ROOT"] = str(root.resolve()) + "/"
    return root


def run_once(folder: Path, run) -> dict:
    """Run a step once: its metrics.json is the proof it finished, and is reused afterwards. Its
    "seconds" are the step's time, unless the step gives its own (one that resumes counts its
    earlier starts)."""
    done = folder / "metrics.json"
    if done.is_file():
        console.out.print(f"[green]✓[/] reusing {folder} (use --fresh to redo)")
        return json.loads(done.read_text())
    start = time.perf_counter()
    metrics = run()
    metrics.setdefault("seconds", round(time.perf_counter() - start, 1))
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(metrics, indent=2))
    return metrics


def train_and_test(config: Path, work_dir: Path, cfg_options: dict | None = None, cache: Path | None = None,
                   verbose: bool = True) -> dict:
    """Train with mmengine's Runner, then evaluate on the val split; returns the COCO metrics.

    Unless `verbose`, mmengine logs to its log file only and training shows as a progress bar."""
    from ..train.evaluate import coco_ap
    from ..train.progress_bar_hook import ProgressBarHook
    from ..train.runner import runner_from_config
    from ..train.student import build_student_runner

    if cache is not None:
        runner = build_student_runner(config, cache=cache, work_dir=work_dir, cfg_options=cfg_options)
    else:
        runner = runner_from_config(config, work_dir, cfg_options)
    if verbose:
        runner.train()
        return coco_ap(runner.test())
    remove_console_handler(runner.logger)
    bar = ProgressBarHook()
    runner.register_hook(bar)
    try:
        runner.train()
    finally:
        bar.stop()
    return coco_ap(runner.test())


def remove_console_handler(logger: logging.Logger) -> None:
    """Leave mmengine's logger its log file only.

    Its console handler writes to the sys.stdout of when the Runner was built: under
    library_output(), demo.log, which got the environment and the config (its log file has them
    too). Removed, it neither copies every iteration there nor outlives demo.log's file."""
    for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
        logger.removeHandler(handler)


@contextmanager
def library_output(log: Path, verbose: bool) -> Iterator[None]:
    """Unless `verbose`, what libraries print (mmengine's console log, pycocotools, warnings) goes
    to `log`, appended, while ldcache's own output keeps the terminal."""
    if verbose:
        yield
        return
    with log.open("a") as file, console.library_output_to(file):
        yield


def log_files(work_dir: Path) -> list[Path]:
    """The log files of a demo run: each training step's newest mmengine log, then demo.log."""
    # mmengine writes <step>/<timestamp>/<timestamp>.log; a step that failed and ran again has several.
    newest = [sorted((work_dir / step).glob("*/*.log"))[-1:] for step in TRAINING_STEPS]
    return [log for logs in newest for log in logs] + [p for p in [work_dir / "demo.log"] if p.is_file()]


def _dump(root: Path, work_dir: Path, store: Path) -> dict:
    from ..dump.run import DumpOptions, run_dump
    from ..domain.views import parse_views

    checkpoint = Path((work_dir / "teacher" / "last_checkpoint").read_text().strip())
    if store.exists():
        shutil.rmtree(store)  # a dump that did not finish in an earlier run: redo it whole
    summary = run_dump(DumpOptions(TEACHER_CONFIG, checkpoint, root / "annotations/instances_train.json",
                                   root / "images/train", store, parse_views([(320, 320)], flip=True), workers=0))
    return summary.to_dict()


def run_demo(work_dir: Path, data_root: Path, teacher_epochs: int = TEACHER_EPOCHS,
             student_epochs: int = STUDENT_EPOCHS, fresh: bool = False, verbose: bool = False) -> dict:
    """Run the demo's steps (those not done yet) and print their results; returns their metrics.
    `verbose` streams every library's output instead of one progress bar per step."""
    settings = {"teacher_epochs": teacher_epochs, "student_epochs": student_epochs}
    if fresh or _made_with_other_settings(work_dir, settings):
        _clear_steps(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "settings.json").write_text(json.dumps(settings))
    with library_output(work_dir / "demo.log", verbose):
        results = _run_steps(work_dir, data_root, settings, verbose)
    console.out.print(f"full logs: {', '.join(map(str, log_files(work_dir)))}", soft_wrap=True, markup=False,
                      highlight=False)
    return results


def _run_steps(work_dir: Path, data_root: Path, settings: dict, verbose: bool) -> dict:
    teacher_epochs, student_epochs = settings["teacher_epochs"], settings["student_epochs"]
    start = time.perf_counter()
    console.out.rule("[bold]1/5 dataset (kwcoco shapes, offline)")
    root = use_shapes_dataset(data_root)
    console.out.print(f"shapes dataset ready at {root}")

    console.out.rule("[bold]2/5 teacher: GFL R34 tiny")
    teacher = run_once(work_dir / "teacher", lambda: train_and_test(
        TEACHER_CONFIG, work_dir / "teacher", _schedule(teacher_epochs), verbose=verbose))
    console.out.rule("[bold]3/5 dump the teacher (identity + flipped view)")
    store = work_dir / "teacher.zarr"
    _forget_unreadable_dump(work_dir / "dump", store)
    dump = run_once(work_dir / "dump", lambda: _dump(root, work_dir, store))

    student_opts = _schedule(student_epochs)
    console.out.rule("[bold]4/5 student GFL R18 tiny, no distillation")
    baseline = run_once(work_dir / "student_plain", lambda: train_and_test(
        BASELINE_CONFIG, work_dir / "student_plain", student_opts, verbose=verbose))
    console.out.rule("[bold]5/5 student GFL R18 tiny, cached LD (configs/tiny/ld_r18_tiny_cached.py)")
    cached = run_once(work_dir / "student_cached_ld", lambda: train_and_test(
        CACHED_CONFIG, work_dir / "student_cached_ld", student_opts, cache=store, verbose=verbose))
    parity = run_once(work_dir / "parity", lambda: cached_online_parity(store, work_dir, student_epochs))
    picture = _inspect_picture(store, work_dir / "inspect.png")
    _print_table(teacher, baseline, cached, dump, time.perf_counter() - start, picture, settings)
    _print_evidence(parity, dump)
    return {"teacher": teacher, "dump": dump, "student_plain": baseline, "student_cached_ld": cached,
            "parity": parity}


def _schedule(epochs: int) -> dict:
    """Config options of an `epochs`-long demo step. Only its last checkpoint is used: the teacher's,
    281 MB with AdamW's state, would otherwise cost seconds of writing and signing every epoch."""
    from ..train.schedule import scaled_schedule

    return {**scaled_schedule(epochs), "default_hooks.checkpoint.interval": epochs}


def cached_online_parity(store: Path, work_dir: Path, epochs: int) -> dict:
    """On one training batch, the trained cached-LD student's LD terms from the store and from the
    live teacher (largest relative difference), and the time of the teacher forward pass that
    online LD runs at every step and the cache does not."""
    import copy

    import torch
    from mmdet.registry import DATASETS
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    from ..train.student import student_and_online_twin, use_cache

    cfg = Config.fromfile(str(CACHED_CONFIG))
    use_cache(cfg, str(store))
    teacher_ckpt, student_ckpt = (Path((work_dir / step / "last_checkpoint").read_text().strip())
                                  for step in ("teacher", "student_cached_ld"))
    student, online = student_and_online_twin(cfg, TEACHER_CONFIG, teacher_ckpt, student_ckpt)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    # Images of one size, so that the batch adds no padding: the live teacher then sees each image
    # as the dump did (GroupNorm's statistics include padding).
    shape = dataset.get_data_info(0)["height"], dataset.get_data_info(0)["width"]
    same = [i for i in range(len(dataset))
            if (dataset.get_data_info(i)["height"], dataset.get_data_info(i)["width"]) == shape]
    items = [dataset[i] for i in same[:cfg.train_dataloader.batch_size]]
    batch = student.data_preprocessor(pseudo_collate(items), True)
    with torch.no_grad():
        cached = student.loss(batch["inputs"], copy.deepcopy(batch["data_samples"]))
        live = online.loss(batch["inputs"], copy.deepcopy(batch["data_samples"]))
    terms = [name for name, loss in student.bbox_head.ld_losses.items() if loss is not None]
    difference = max(abs(float(sum(cached[n])) - float(sum(live[n]))) / max(abs(float(sum(live[n]))), 1e-12)
                     for n in terms)
    teacher = online.__dict__["teacher"]
    with torch.no_grad():
        start = time.perf_counter()
        teacher.bbox_head(teacher.extract_feat(batch["inputs"]))
        forward = time.perf_counter() - start
    steps = -(-len(dataset) // cfg.train_dataloader.batch_size) * epochs
    return {"terms": terms, "relative_difference": difference, "teacher_forward_seconds": forward,
            "steps": steps, "batch_size": len(items)}


def _made_with_other_settings(work_dir: Path, settings: dict) -> bool:
    """Whether work_dir holds steps of a demo run with other epochs (then none of them is reused)."""
    if not any((work_dir / step).exists() for step in STEPS):
        return False
    made = work_dir / "settings.json"
    if made.is_file() and json.loads(made.read_text()) == settings:
        return False
    console.note(f"[yellow]{work_dir} holds a demo run with other settings than {settings}: starting again[/]")
    return True


def _clear_steps(work_dir: Path) -> None:
    """Remove what the demo wrote there, and nothing else (work_dir may be a user's folder)."""
    for step in STEPS:
        path = work_dir / step
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _forget_unreadable_dump(step: Path, store: Path) -> None:
    """A store from an earlier run that this ldcache refuses (another format version) is dumped again."""
    from ..errors import LDCacheError
    from ..store.reader import StoreReader

    if not step.exists():
        return
    try:
        StoreReader(store)
    except LDCacheError as err:
        console.note(f"[yellow]dumping again: {err}[/]")
        shutil.rmtree(step)


def _inspect_picture(store: Path, out: Path) -> Path:
    from ..inspect.plots import plot_image
    from ..inspect.report import most_ambiguous
    from ..store.reader import StoreReader

    reader = StoreReader(store)
    image_id = int(reader.image_ids[0])
    record = reader.record_index(image_id, 0)
    targets = reader.read_record(record)
    return plot_image(reader, image_id, record, targets, most_ambiguous(targets, None), 1.0, out)


def _print_evidence(parity: dict, dump: dict) -> None:
    say = console.out.print
    say(f"cached = online: on one batch of {parity['batch_size']} training images of one size, the trained "
        f"student's LD terms ({', '.join(parity['terms'])}) from the store and from the live teacher differ by "
        f"at most {parity['relative_difference']:.1e}, relative")
    saved = parity["steps"] * parity["teacher_forward_seconds"]
    say(f"teacher time: online LD would run the teacher forward at each of the student's {parity['steps']} steps "
        f"({parity['teacher_forward_seconds']:.2f} s a batch here: {saved:.0f} s per student trained); the dump "
        f"ran it once per image-view ({dump['seconds']:.0f} s, dataset scan and writing included), "
        "and every further student or ablation reuses it")
    if not EXPERIMENT_SUMMARY.is_file():
        return
    summary = json.loads(EXPERIMENT_SUMMARY.read_text())
    verdict = "beyond" if summary["beyond_spread"] else "NOT beyond"
    say(f"committed experiment (docs/results.md, {summary['seeds']} seeds, held-out test split, "
        f"{summary['student_epochs']}-epoch students on {summary['train_images']} images): "
        f"{summary['row']} minus the baseline = {summary['paired_mean']:+.3f} +- {summary['paired_std']:.3f} AP "
        f"(paired by seed): {verdict} the seeds' spread. One demo run, with one seed, shows less than that.")


def _print_table(teacher, baseline, cached, dump, wall, picture, settings) -> None:
    from ..train.evaluate import AP_KEYS

    rows = [(name, *(f"{metrics.get(k, float('nan')):.3f}" for k in AP_KEYS), f"{metrics['seconds']:.0f} s train")
            for name, metrics in ((f"teacher GFL R34 tiny, {settings['teacher_epochs']} epochs", teacher),
                                  ("student R18, no distillation", baseline), ("student R18, cached LD", cached))]
    rows.append(("teacher dump", "", "", "", f"{dump['seconds']:.0f} s"))
    console.table(f"ldcache demo ({wall:.0f} s; both students {settings['student_epochs']} epochs, same seed)",
                  ("model", "AP", "AP50", "AP75", "time"), rows)
    console.out.print(f"store: {dump['bytes_on_disk'] / 2**20:.2f} MiB, {dump['bytes_per_image_view'] / 1024:.1f} KiB "
                      f"per image-view ({dump['compression_vs_dense_fp16']:.1f}x smaller than dense fp16); "
                      f"inspect picture: {picture}")
