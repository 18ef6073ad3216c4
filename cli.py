"""The `ldcache` command line: dump a teacher once, train students from the cache, inspect it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ldcache.errors import LDCacheError

app = typer.Typer(
    help="Offline Localization Distillation for mmdetection dense detectors: run the teacher "
         "once into a Zarr cache, then train any number of students from it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _not_yet(command: str, issue: int) -> None:
    _fail(f"`ldcache {command}` is not implemented yet (tracked in issue {issue}).")


@app.command("dump-teacher")
def dump_teacher() -> None:
    """Run a teacher once over a dataset and write its logits and LD masks to a Zarr store."""
    _not_yet("dump-teacher", 4)


@app.command("train-student")
def train_student() -> None:
    """Train a student with Localization Distillation from a cached teacher store."""
    _not_yet("train-student", 5)


@app.command("inspect")
def inspect() -> None:
    """Browse a store: summary, per-location edge distributions, ambiguity plots."""
    _not_yet("inspect", 6)


@app.command("demo")
def demo(
    work_dir: Path = typer.Option(Path("work_dirs/demo"), help="Where checkpoints, logs and the store go."),
    data_root: Optional[Path] = typer.Option(
        None, help="Where the embedded shapes dataset is built (default: data/shapes in the current folder)."),
    teacher_epochs: Optional[int] = typer.Option(
        None, help="Epochs for the tiny teacher (default: its config's schedule)."),
    fresh: bool = typer.Option(False, help="Rebuild everything instead of reusing earlier results."),
) -> None:
    """Run the main job on the embedded default: shapes dataset, tiny teacher, evaluation."""
    from pipelines.demo import run_demo

    try:
        run_demo(work_dir=work_dir, data_root=data_root or Path("data/shapes"),
                 teacher_epochs=teacher_epochs, fresh=fresh)
    except LDCacheError as e:
        _fail(str(e))


def main() -> None:  # pragma: no cover - console entry for `python cli.py`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
