"""The `ldcache` command line: dump a teacher once, train students from the cache, inspect it."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from . import console
from .demo.run import STUDENT_EPOCHS, TEACHER_EPOCHS
from .errors import LDCacheError

app = typer.Typer(
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
    teacher_config: Path = typer.Argument(..., help="mmdet config of the teacher (GFL family)."),
    teacher_checkpoint: Path = typer.Argument(..., help="Its checkpoint (loaded weights-only unless ldcache wrote it)."),
    ann_file: Path = typer.Option(..., "--ann-file", help="COCO-format annotation file of the training images."),
    img_dir: Path = typer.Option(..., "--img-dir", help="Folder of the images named in the annotation file."),
    out: str = typer.Option(..., "--out", help="Zarr store to write: a folder, or an object-store URL "
                                               "(s3://bucket/prefix/name.zarr; credentials from AWS_* variables)."),
    scale: Optional[list[str]] = typer.Option(
        None, "--scale", help="View scale WxH as in mmdet's Resize(keep_ratio=True); repeat for several. "
                              "Default: the Resize scale of the config's test pipeline."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Also store the horizontally flipped view of each scale."),
    region: str = typer.Option("distill", help="distill: rows only at Main and VLR locations; dense: every location."),
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
    from .dump.run import DumpOptions, run_dump
    from .domain.teacher import default_scale, load_config
    from .domain.views import parse_views
    from .store.format import VLR_METRICS

    try:
        scales = [_parse_scale(s) for s in scale] if scale else [default_scale(load_config(teacher_config))]
        opts = DumpOptions(teacher_config, teacher_checkpoint, ann_file, img_dir, out, parse_views(scales, flip),
                           region=region, gamma=gamma, dtype=dtype, device=device, batch_size=batch_size,
                           vlr_metrics=tuple(vlr_metric) if vlr_metric else VLR_METRICS,
                           vlr_class_logits=vlr_class_logits,
                           workers=workers, block_size=block_size, resume=resume, dask_scheduler=dask_scheduler)
        summary = run_dump(opts)
    except LDCacheError as e:
        _fail(str(e))
    if summary is not None:
        _print_dump_summary(out, summary)


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
    student_config: Path = typer.Argument(..., help="Cached-LD student config (e.g. configs/tiny/ld_r18_tiny_cached.py)."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Store written by dump-teacher, a folder or an "
                                                              "s3:// URL (overrides the config's)."),
    teacher: Optional[tuple[str, str]] = typer.Option(
        None, "--teacher", help="CONFIG CKPT: online LD with a live teacher, through the same losses."),
    work_dir: Optional[Path] = typer.Option(None, help="Checkpoints and logs (default work_dirs/<config name>)."),
    resume: bool = typer.Option(False, help="Resume from the latest checkpoint in the work dir."),
    cfg_options: Optional[list[str]] = typer.Option(
        None, "--cfg-options", help="key=value overrides of the config, repeatable (mmengine syntax)."),
) -> None:
    """Train a student with Localization Distillation from a cached teacher store.

    Works under torchrun (DDP, mmengine's pytorch launcher). Evaluation uses the config's
    val_evaluator (CocoMetric) at its val_interval.
    """
    from .train.student import build_student_runner

    online = (Path(teacher[0]), Path(teacher[1])) if teacher and teacher[0] is not None else None
    try:
        runner = build_student_runner(student_config, cache, online, work_dir,
                                      _parse_cfg_options(cfg_options), resume)
        runner.train()
    except LDCacheError as e:
        _fail(str(e))


@app.command("inspect")
def inspect(
    store: str = typer.Argument(..., help="Store written by dump-teacher: a folder or an s3:// URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of tables."),
    image: Optional[int] = typer.Option(None, "--image", help="COCO image id: show this image's records."),
    view: int = typer.Option(0, "--view", help="View index of the image (see the summary's views)."),
    level: Optional[int] = typer.Option(None, "--level", help="FPN level index, 0 = P3."),
    at: Optional[str] = typer.Option(None, "--at", help="X,Y location: image pixels of the view (or grid cells with --grid)."),
    grid: bool = typer.Option(False, "--grid", help="Read --at as level-grid coordinates."),
    tau: float = typer.Option(1.0, "--tau", help="Temperature of the shown distributions (LD trains at 10)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: the image figure with --image, histograms with --stats."),
    stats: bool = typer.Option(False, "--stats", help="Dataset-wide entropy and rows-per-image-view histograms, recomputed from every stored chunk (dask, streamed). The summary reads the statistics the dump stored instead."),
) -> None:
    """Browse a store: summary, per-location edge distributions, ambiguity plots, statistics.

    Without --image or --stats: the summary. With --image: its rows per level and one location's
    four edge distributions (--at, or the most ambiguous Main location).
    """
    from .inspect import report
    from .inspect.stats import store_statistics
    from .store.reader import StoreReader

    try:
        reader = StoreReader(store)
        if image is not None:
            _inspect_image(reader, image, view, level, at, grid, tau, plot, as_json)
            return
        if plot and not stats:
            _fail("--plot needs --image ID (the image figure) or --stats (the histograms)")
        if stats:
            statistics = store_statistics(reader)
            if plot:
                from .inspect.plots import plot_stats

                plot_stats(statistics, plot)
                console.note(f"histograms written to {plot}")
            console.print_json(statistics) if as_json else report.print_stats(reader.strides, statistics)
        else:
            summary = report.store_summary(reader)
            console.print_json(summary) if as_json else report.print_summary(summary)
    except LDCacheError as e:
        _fail(str(e))


def _parse_location(at: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in at.split(","))
    except ValueError:
        _fail(f"--at takes X,Y like 120,88, not {at!r}")
    return x, y


def _inspect_image(reader, image, view, level, at, grid, tau, plot, as_json) -> None:
    from .inspect import report

    report.check_level(reader, level)
    record = reader.record_index(image, view)
    targets = reader.read_record(record)
    if at is not None:
        focus = report.locate(reader, record, targets, _parse_location(at), level, grid)
    else:
        focus = report.most_ambiguous(targets, level)
    result = {"image": report.image_report(reader, record, targets),
              "location": report.location_report(reader, record, targets, *focus, tau)}
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
) -> None:
    """Run the main job on the embedded default, end to end on the CPU.

    Builds the shapes dataset, trains a tiny teacher, dumps it, trains the same student without
    distillation and with cached LD, and prints their COCO AP with the costs.
    """
    from .demo.run import run_demo

    try:
        run_demo(work_dir=work_dir, data_root=data_root or Path("data/shapes"),
                 teacher_epochs=teacher_epochs, student_epochs=student_epochs, fresh=fresh)
    except LDCacheError as e:
        _fail(str(e))


if __name__ == "__main__":  # `python -m ldcache.cli`
    app()
