"""The `ldcache` command line: dump a teacher once, train students from the cache, inspect it."""
from __future__ import annotations

import contextlib
import re
import socket
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from . import console
from .demo.run import STUDENT_EPOCHS, TEACHER_EPOCHS
from .errors import LDCacheError


# A config key and its '=': a following argument such as a checkpoint path with '=' in a folder
# name ends the pairs.
CFG_PAIR = re.compile(r"[A-Za-z_][\w.]*=")


def mmdet_cfg_options(argv: list[str]) -> list[str]:
    """`argv` with mmdet's ``--cfg-options k1=v1 k2=v2`` (several pairs after one flag, as its
    tools take them) spelled as the app's options take them: one pair per ``--cfg-options``."""
    spelled, value_next, pairs = [], False, False
    for token in argv:
        if value_next:  # the flag's own value, whatever it is (the command checks it)
            spelled.append(token)
            value_next, pairs = False, True
        elif pairs and CFG_PAIR.match(token):
            spelled += ["--cfg-options", token]
        else:
            spelled.append(token)
            value_next = token == "--cfg-options"
            pairs = token.startswith("--cfg-options=")
    return spelled


class _App(TyperGroup):
    """The app's command group: it reads mmdet's spelling of --cfg-options."""

    def main(self, args=None, *rest, **options):
        return super().main(mmdet_cfg_options(sys.argv[1:] if args is None else list(args)), *rest, **options)


app = typer.Typer(
    cls=_App,
    help="Offline Localization Distillation for mmdetection dense detectors: run the teacher "
         "once into a Zarr cache, then train any number of students from it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Library deprecation chatter that a user can do nothing about.
warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
warnings.filterwarnings("ignore", message=".*`num_anchors` is deprecated.*")


def _fail(message: str) -> None:
    console.error(message)
    raise typer.Exit(code=2)


def _parse_scale(text: str) -> tuple[int, int]:
    try:
        long_edge, short_edge = (int(v) for v in text.lower().split("x"))
    except ValueError:
        _fail(f"--scale takes WxH like 1333x800, not {text!r}")
    return long_edge, short_edge


@app.command("dump-teacher")
def dump_teacher(
    config: str = typer.Argument(
        ..., metavar="CONFIG",
        help="The teacher's mmdet config (a head with edge distributions: GFL, ldcache's RetinaNet, FCOS, ATSS "
             "and GFLv2 heads, docs/families.md), or an LD config: one of mmdet's configs/ld/ "
             "(mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py) or a config inheriting one. An LD config gives the "
             "teacher (model.teacher_config, teacher_ckpt), the train data, the views (its train Resize and "
             "RandomFlip) and the regions (its student's assigner and family)."),
    checkpoint: Optional[str] = typer.Argument(
        None, metavar="[CHECKPOINT]", help="The teacher's checkpoint (loaded weights-only unless ldcache wrote it); "
                                           "for an LD config, instead of its teacher_ckpt. Same as --teacher-ckpt."),
    teacher_ckpt: Optional[str] = typer.Option(None, "--teacher-ckpt", help="The teacher's checkpoint (as CHECKPOINT)."),
    out: str = typer.Option(..., "--out", help="Zarr store to write: a folder, or an object-store URL "
                                               "(s3://bucket/prefix/name.zarr; credentials from AWS_* variables)."),
    ann_file: Optional[Path] = typer.Option(
        None, "--ann-file", help="COCO-format annotation file of the training images. Default: the config's train dataset."),
    img_dir: Optional[Path] = typer.Option(
        None, "--img-dir", help="Folder of the images named in the annotation file. Default: the config's train dataset."),
    cfg_options: Optional[list[str]] = typer.Option(
        None, "--cfg-options", help="key=value overrides of CONFIG (mmengine syntax), several after one flag as in "
                                    "mmdet's tools, e.g. model.teacher_config=PATH "
                                    "train_dataloader.dataset.data_root=DIR."),
    scale: Optional[list[str]] = typer.Option(
        None, "--scale", help="View scale WxH as in mmdet's Resize(keep_ratio=True); repeat for several. "
                              "Default: an LD config's train Resize scale, a teacher config's test Resize scale."),
    flip: Optional[bool] = typer.Option(
        None, "--flip/--no-flip", help="Also store the horizontally flipped view of each scale. Default: yes "
                                       "(for an LD config: when its train pipeline's RandomFlip flips)."),
    region: str = typer.Option(
        "distill", help="distill: rows at Main and VLR locations; main: rows at Main locations only, for "
                        "students without VLR terms, such as mmdet's LDHead (GFL on COCO: ~3% of distill's rows); "
                        "dense: every location."),
    gamma: float = typer.Option(0.25, help="Lowest VLR gamma the store supports (VLR: gamma*thr <= d < thr)."),
    vlr_metric: Optional[list[str]] = typer.Option(
        None, "--vlr-metric", help="VLR definition(s) to store: official (the official code's IoF-based "
                                   "metric) and/or diou (the paper's); repeat for both. Default: both."),
    vlr_class_logits: bool = typer.Option(
        True, "--vlr-class-logits/--no-vlr-class-logits",
        help="Store class logits on VLR rows too (only VLR KD uses them; without, they are stored on Main "
             "rows only and the store is smaller)."),
    dtype: str = typer.Option("fp16", help="Stored value type: fp16, fp32, or q8 (edge distributions as 8-bit "
                                           "steps of at least 1/16 logit below each edge's top, lossy: LD's KL "
                                           "at T=10 moves by about 1.6e-6 nats per edge at most; "
                                           "docs/store-format.md)."),
    device: str = typer.Option("auto", help="auto (a GPU when present), cpu, cuda, cuda:N."),
    batch_size: int = typer.Option(1, help="Images per teacher forward. 1 is exact against an online teacher "
                                           "(GroupNorm sees the padding of a batch)."),
    workers: int = typer.Option(2, help="DataLoader workers that decode images."),
    block_size: int = typer.Option(64, help="Image-views per block: the unit of work, resume and writer ownership."),
    resume: bool = typer.Option(False, help="Finish a store whose dump was interrupted."),
    dask_scheduler: Optional[str] = typer.Option(
        None, "--dask-scheduler", help="Address of a dask.distributed scheduler (tcp://host:8786) to run pass 1, "
                                       "the masks, on its workers. Default: local threads."),
) -> None:
    """Run a teacher once over a dataset and write its logits and LD masks to a Zarr store.

    Under torchrun, the processes share the work and write one store.
    """
    from .dump.inputs import DumpRequest, resolve_dump
    from .dump.run import run_dump
    from .store.format import VLR_METRICS

    if checkpoint and teacher_ckpt and checkpoint != teacher_ckpt:
        _fail(f"two checkpoints given: {checkpoint} and --teacher-ckpt {teacher_ckpt}; give one")
    if region == "main" and vlr_metric:
        _fail(f"--vlr-metric {' '.join(vlr_metric)} chooses the VLR rows to store, and --region main stores none: "
              "drop --vlr-metric, or dump --region distill")
    try:
        request = DumpRequest(config, checkpoint or teacher_ckpt, _parse_cfg_options(cfg_options), ann_file, img_dir,
                              [_parse_scale(s) for s in scale] if scale else None, flip)
        opts, notes = resolve_dump(
            request, out=out, region=region, gamma=gamma, dtype=dtype, device=device, batch_size=batch_size,
            vlr_metrics=tuple(vlr_metric) if vlr_metric else VLR_METRICS, vlr_class_logits=vlr_class_logits,
            workers=workers, block_size=block_size, resume=resume, dask_scheduler=dask_scheduler)
        if _is_first_rank():
            for line in notes:
                console.note(line)
        summary = run_dump(opts)
    except LDCacheError as e:
        _fail(str(e))
    if summary is not None:
        _print_dump_summary(out, summary)


def _is_first_rank() -> bool:
    """Whether this process prints for the job: rank 0 of a torchrun or SLURM job, or a lone process."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _print_dump_summary(out: str, summary) -> None:
    console.key_value_table(f"dump written to {out}", [
        ("images x views", f"{summary.images} x {summary.views} = {summary.image_views}"),
        ("images without a usable box (stored, no rows)", str(summary.images_without_boxes)),
        ("ignored crowd / dropped degenerate boxes", f"{summary.ignored_crowd_boxes} / {summary.dropped_degenerate_boxes}"),
        ("rows per level", ", ".join(str(r) for r in summary.rows_per_level)),
        ("bytes on disk", f"{summary.bytes_on_disk / 2**20:.2f} MiB"),
        ("bytes per image-view", f"{summary.bytes_per_image_view / 1024:.1f} KiB"),
        ("compression vs dense fp16", f"{summary.compression_vs_dense_fp16:.1f}x"),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
    ])


def _parse_cfg_options(items: list[str] | None) -> dict:
    from mmengine.config import DictAction

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--cfg-options takes key=value pairs, not {item!r}")
        options[key] = DictAction._parse_iterable(value)
    return options


@app.command("train-student")
def train_student(
    student_config: str = typer.Argument(
        ..., metavar="CONFIG",
        help="The student's config: a cached-LD config (configs/tiny/ld_r18_tiny_cached.py), or an mmdet LD config "
             "(mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py, or one inheriting it), turned into cached LD."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Store written by dump-teacher, a folder or an "
                                                              "s3:// URL (overrides the config's)."),
    online: bool = typer.Option(False, "--online", help="An LD config: train with its live teacher instead, through "
                                                        "the same loss code (a baseline for the cache)."),
    teacher_ckpt: Optional[str] = typer.Option(None, "--teacher-ckpt", help="With --online: the teacher's checkpoint "
                                                                          "instead of the LD config's teacher_ckpt."),
    teacher: Optional[tuple[str, str]] = typer.Option(
        None, "--teacher", help="CONFIG CKPT: a cached-LD config trained online with this live teacher, through "
                                "the same losses."),
    work_dir: Optional[Path] = typer.Option(None, help="Checkpoints and logs (default work_dirs/<config name>)."),
    resume: bool = typer.Option(False, help="Resume from the latest checkpoint in the work dir."),
    cfg_options: Optional[list[str]] = typer.Option(
        None, "--cfg-options", help="key=value overrides of the config (mmengine syntax), several after one "
                                    "flag as in mmdet's tools."),
) -> None:
    """Train a student with Localization Distillation from a cached teacher store.

    Works under torchrun (DDP, mmengine's pytorch launcher). Evaluation uses the config's
    val_evaluator (CocoMetric) at its val_interval.
    """
    from .train.student import build_student_runner

    online_teacher = (Path(teacher[0]), Path(teacher[1])) if teacher and teacher[0] is not None else None
    if teacher_ckpt and not online:
        _fail("--teacher-ckpt goes with --online (a cached student has no teacher)")
    try:
        runner = build_student_runner(student_config, cache, online_teacher, work_dir,
                                      _parse_cfg_options(cfg_options), resume, online=online or bool(online_teacher),
                                      teacher_ckpt=teacher_ckpt, report=_report_changes)
        runner.train()
    except LDCacheError as e:
        _fail(str(e))


def _report_changes(lines: list[str]) -> None:
    if _is_first_rank():
        for line in lines:
            console.note(line)


@app.command("train-teacher")
def train_teacher(
    config: str = typer.Argument(..., metavar="CONFIG", help="An mmdet detector config (a file or mmdet::...)."),
    work_dir: Optional[Path] = typer.Option(None, help="Checkpoints and logs (default work_dirs/<config name>)."),
    resume: bool = typer.Option(False, help="Resume from the latest checkpoint in the work dir."),
    cfg_options: Optional[list[str]] = typer.Option(
        None, "--cfg-options", help="key=value overrides of the config (mmengine syntax), several after one "
                                    "flag as in mmdet's tools."),
) -> None:
    """Train a detector (a teacher to dump) with mmengine's Runner, as mmdet's tools/train.py does.

    For a teacher on your own dataset (docs/own-dataset.md). Works under torchrun.
    """
    from .domain.ld_config import is_ld_config, load_config
    from .train.runner import install, runner_from_config

    try:
        options = _parse_cfg_options(cfg_options)
        if is_ld_config(load_config(config, options)):
            _fail(f"{config} is an LD config (a student with a teacher): train it with train-student")
        install()
        runner_from_config(config, work_dir, options, resume=resume).train()
    except LDCacheError as e:
        _fail(str(e))


@app.command("evaluate")
def evaluate(
    config: str = typer.Argument(..., metavar="CONFIG", help="The config the checkpoint was trained with (a teacher, "
                                                             "a cached-LD student or an mmdet LD config)."),
    checkpoint: Path = typer.Argument(..., help="The checkpoint to evaluate (a work dir's last_checkpoint names it)."),
    work_dir: Optional[Path] = typer.Option(None, help="Where the evaluation logs go (default work_dirs/<config name>)."),
    cfg_options: Optional[list[str]] = typer.Option(
        None, "--cfg-options", help="key=value overrides of the config (mmengine syntax), several after one "
                                    "flag as in mmdet's tools."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON (for scripts)."),
) -> None:
    """COCO AP of a checkpoint on the config's test set, as mmdet's tools/test.py computes it.

    Uses the config's test_dataloader and test_evaluator. An LD config is evaluated as its student
    alone (no teacher is built).
    """
    from .train.evaluate import AP_KEYS, evaluate_checkpoint

    try:
        # With --json, stdout carries the JSON alone: mmengine's log lines (its stream handler is made
        # with the Runner, inside this block) and pycocotools' prints go to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            metrics = evaluate_checkpoint(config, checkpoint, work_dir, _parse_cfg_options(cfg_options))
    except LDCacheError as e:
        _fail(str(e))
    if as_json:
        console.print_json(metrics)
        return
    others = sorted(set(metrics) - set(AP_KEYS))
    console.note(f"{checkpoint} on the test set of {config}:")
    console.table("", (*AP_KEYS, *others), [[f"{metrics[key]:.3f}" for key in (*AP_KEYS, *others)]])


@app.command("inspect")
def inspect(
    store: str = typer.Argument(..., help="Store written by dump-teacher: a folder or an s3:// URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of tables."),
    image: Optional[int] = typer.Option(None, "--image", help="COCO image id: show this image's records."),
    view: int = typer.Option(0, "--view", help="View index of the image (see the summary's views)."),
    level: Optional[int] = typer.Option(None, "--level", help="FPN level index, 0 = P3."),
    at: Optional[str] = typer.Option(None, "--at", help="X,Y location: image pixels of the view (or grid cells with --grid)."),
    grid: bool = typer.Option(False, "--grid", help="Read --at as level-grid coordinates."),
    anchor: Optional[int] = typer.Option(
        None, "--anchor", help="Anchor index at a location, 0..priors per location - 1 (RetinaNet: 0..8; see the "
                               "summary): with --at, that anchor's row; without, the most ambiguous row of that "
                               "anchor. Default: the most ambiguous of the location's rows."),
    tau: float = typer.Option(1.0, "--tau", help="Temperature of the shown distributions (LD trains at 10)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: the image figure with --image, histograms with --stats."),
    stats: bool = typer.Option(False, "--stats", help="Dataset-wide entropy and rows-per-image-view histograms, recomputed from every stored chunk (dask, streamed). The summary reads the statistics the dump stored instead."),
    serve: bool = typer.Option(
        False, "--serve", help="Open a web viewer of the store instead: the image list (sorted by ambiguity, VLR rows "
                               "or rows; search by id), each image's level maps (click a location for its edge "
                               "distributions at a tau slider, with the GT edge), the summary page. Reads the store "
                               "lazily; stop it with Ctrl-C."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="With --serve: the port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="With --serve: the address to bind. The default serves "
                                                          "this machine only; 0.0.0.0 opens it to the network."),
) -> None:
    """Browse a store: summary, per-location edge distributions, ambiguity plots, statistics.

    Without --image or --stats: the summary. With --image: its rows per level and one row's four
    edge distributions (--at and --anchor, or the most ambiguous Main row); with several anchors per
    location, the row's anchor index and the other anchors stored at its location. With --serve:
    all of it in the browser (http://127.0.0.1:8765 by default).
    """
    from .inspect import report
    from .inspect.stats import store_statistics
    from .store.reader import StoreReader

    if serve:
        others = [name for name, given in (("--image", image is not None), ("--stats", stats), ("--plot", plot),
                                           ("--json", as_json), ("--at", at is not None), ("--level", level is not None),
                                           ("--anchor", anchor is not None), ("--grid", grid)) if given]
        if others:
            _fail(f"--serve opens the viewer, where the image, location and statistics are chosen in the page: "
                  f"drop {', '.join(others)}")
        _serve(store, host, port)
        return
    try:
        reader = StoreReader(store)
        if image is not None:
            _inspect_image(reader, image, view, level, at, grid, anchor, tau, plot, as_json)
            return
        if plot and not stats:
            _fail("--plot needs --image ID (the image figure) or --stats (the histograms)")
        if stats:
            statistics = store_statistics(reader)
            if plot:
                from .inspect.plots import plot_stats

                plot_stats(statistics, plot)
                console.note(f"histograms written to {plot}")
            if as_json:
                console.print_json(statistics)
            else:
                region = reader.attrs.region
                report.print_stats(reader.strides, statistics, report.region_columns(region.vlr, region.vlr_metrics))
        else:
            summary = report.store_summary(reader)
            console.print_json(summary) if as_json else report.print_summary(summary)
    except LDCacheError as e:
        _fail(str(e))


def _serve(store: str, host: str, port: int) -> None:
    """The viewer until Ctrl-C. A store that cannot be opened is said here and in the page, which
    opens it again on the next load (a dump still running)."""
    from .inspect.viewer import serve
    from .inspect.viewer.session import StoreSession

    session = StoreSession(store)
    try:
        session.reader()  # opened once, here, so that a store that cannot be opened is said at once
    except LDCacheError as e:
        console.error(f"{e} (the viewer shows this until the store opens)")
    with socket.socket() as probe:  # werkzeug would exit with its own banner instead
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug binds
        try:
            probe.bind((host, port))
        except OSError as e:
            _fail(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another port with --port")
    console.note(f"ldcache viewer of {store} at http://{host}:{port}/ (Ctrl-C stops it)")
    serve(session, host, port)


def _parse_location(at: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in at.split(","))
    except ValueError:
        _fail(f"--at takes X,Y like 120,88, not {at!r}")
    return x, y


def _inspect_image(reader, image, view, level, at, grid, anchor, tau, plot, as_json) -> None:
    from .inspect import report

    report.check_level(reader, level)
    report.check_anchor(reader, anchor)
    record = reader.record_index(image, view)
    targets = reader.read_record(record)
    if at is not None:
        focus = report.locate(reader, record, targets, _parse_location(at), level, grid, anchor)
    else:
        focus = report.most_ambiguous(targets, level, anchor)
    result = {"image": report.image_report(reader, record, targets),
              "location": report.location_report(reader, record, targets, focus, tau)}
    if plot:
        from .inspect.plots import plot_image

        plot_image(reader, image, record, targets, focus, tau, plot)
    if as_json:
        console.print_json(result)
        return
    report.print_image_report(image, view, result)
    if plot:
        console.note(f"figure written to {plot}")


@app.command("verify")
def verify(
    store: str = typer.Argument(..., help="Store written by dump-teacher: a folder or an s3:// URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for scripts)."),
    threads: int = typer.Option(8, help="Threads fetching and checking chunks."),
) -> None:
    """Read every chunk of a store and check it: checksums, shard indexes, layout.

    Prints OK, or the damaged blocks (records, arrays, chunks, what is wrong) and the command
    that repairs them (`dump-teacher ... --resume`). Exit status: 0 when the store is OK, 1 when
    it is damaged or unfinished, 2 when it cannot be verified (no store, not an ldcache store of
    this format, a bad option).
    """
    from .store.verify import verify_store

    if threads < 1:
        _fail(f"--threads must be at least 1, not {threads}")
    try:
        with console.progress_callback(f"verifying {store}", "blocks", enabled=not as_json) as progress:
            report = verify_store(store, threads=threads, progress=progress)
    except LDCacheError as e:
        _fail(str(e))
    console.print_json(report.to_dict()) if as_json else console.verify_report(report)
    raise typer.Exit(code=0 if report.ok else 1)


@app.command("demo")
def demo(
    work_dir: Path = typer.Option(Path("work_dirs/demo"), help="Where checkpoints, logs and the store go."),
    data_root: Optional[Path] = typer.Option(
        None, help="Where the embedded shapes dataset is built (default: data/shapes in the current folder)."),
    teacher_epochs: int = typer.Option(
        TEACHER_EPOCHS, min=1, help="Epochs for the tiny teacher; the learning-rate drops move with it. "
                                    "The defaults fit the demo in 15 minutes on 2 CPU cores."),
    student_epochs: int = typer.Option(STUDENT_EPOCHS, min=1, help="Epochs for both students."),
    fresh: bool = typer.Option(False, help="Rebuild everything instead of reusing earlier results."),
    verbose: bool = typer.Option(False, "--verbose", help="Stream mmengine's full logs (environment, config, every "
                                                         "logged iteration) instead of one progress bar per stage; "
                                                         "they are written to log files under the work dir either way."),
) -> None:
    """Run the main job on the embedded default, end to end on the CPU.

    Builds the shapes dataset, trains a tiny teacher, dumps it, trains the same student without
    distillation and with cached LD, and prints their COCO AP with the costs.
    """
    from .demo.run import run_demo

    try:
        run_demo(work_dir=work_dir, data_root=data_root or Path("data/shapes"),
                 teacher_epochs=teacher_epochs, student_epochs=student_epochs, fresh=fresh,
                 verbose=verbose)
    except LDCacheError as e:
        _fail(str(e))


if __name__ == "__main__":  # `python -m ldcache.cli`
    app(prog_name="ldcache")
