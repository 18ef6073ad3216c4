"""All of ldcache's terminal output: results on stdout, progress and messages on stderr.

Results (tables, JSON) go to stdout so that they can be piped; progress bars, spinners, notes and
errors go to stderr. Every module prints through the two consoles here.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table
from rich.text import Text

from .store.format import STATUS_COMPLETE

out = Console()
err = Console(stderr=True)


def note(message: str) -> None:
    """A line of progress or advice on stderr."""
    err.print(message, highlight=False)


def error(message: str) -> None:
    """A one-line error on stderr, as the CLI reports a user mistake."""
    # Escaped: a message quotes user data such as a box "[nan, 10, 20, 30]", which is no markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_json(data) -> None:
    """Machine-readable output on stdout, exactly JSON (no styling)."""
    print(json.dumps(data, indent=2))


def key_value_table(title: str, rows: Iterable[tuple[str, str]]) -> None:
    """A two-column table without header on stdout."""
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A table with a header row on stdout, columns right-aligned."""
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column, justify="right")
    for row in rows:
        grid.add_row(*row)
    out.print(grid)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        # Never wrapped: on a narrow terminal the bar gives up its width instead of the rate its line.
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"-- {self.unit}/s", style="cyan")


def progress(enabled: bool = True, unit: str = "image-views") -> Progress:
    """A progress bar on stderr with count, rate, elapsed time and ETA."""
    # A live bar on a terminal shows what libraries print above itself, unless library_output_to()
    # sends that to a file: then it stays there.
    captured = err.file is not sys.stderr
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                    disable=not enabled, redirect_stdout=not captured, redirect_stderr=not captured)


@contextmanager
def library_output_to(file: TextIO) -> Iterator[None]:
    """Within: what other libraries write to sys.stdout and sys.stderr (prints, logging handlers
    made meanwhile, warnings) goes to `file`, while these consoles and their bars keep the terminal."""
    out.file, err.file = sys.stdout, sys.stderr
    try:
        with redirect_stdout(file), redirect_stderr(file):
            yield
    finally:
        # Built without a file, the consoles follow sys.stdout and sys.stderr again.
        out.file = err.file = None


@contextmanager
def progress_callback(description: str, unit: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar driven by a callback `(done, total)`, for work that reports its own progress."""
    with progress(enabled, unit=unit) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def verify_report(report) -> None:
    """`ldcache verify`'s report (a store.verify.VerifyReport) as a table and lines on stdout."""
    def line(text: str) -> None:
        out.print(text, highlight=False, markup=False, soft_wrap=True)

    if report.status != STATUS_COMPLETE:
        line(f"{report.store}: UNFINISHED (status '{report.status}'): its dump stopped before the end; "
             f"finish it with {report.repair}")
        return
    if report.ok:
        line(f"{report.store}: OK ({report.chunks_checked} chunks checked, every block's shards intact, "
             "layout as the attributes say)")
        return
    for problem in report.layout:
        line(f"layout: {problem}")
    rows = [(d.array, d.chunk, report.blocks.describe(d.block) if d.block is not None else "every block", d.problem)
            for d in sorted(report.damage, key=lambda d: (-1 if d.block is None else d.block, d.array, d.chunk))]
    if rows:
        table(f"damaged chunks of {report.store}", ("array", "chunk", "block (records, image ids)", "problem"), rows)
    if report.layout:
        line(f"{report.store}: DAMAGED layout: it cannot be repaired block by block; dump it again")
        return
    blocks = report.blocks.num_blocks if report.blocks else "?"
    line(f"{report.store}: DAMAGED ({len(report.damage)} damaged chunk(s) in {len(report.damaged_blocks())} "
         f"block(s) of {blocks}). Repair: {report.repair}")


class spinner:
    """A spinner on stderr while a step runs, then a tick with the step's text."""

    def __init__(self, text: str):
        self.text = text

    def __enter__(self):
        self.status = err.status(self.text)
        self.status.__enter__()

    def __exit__(self, *exc):
        self.status.__exit__(*exc)
        if exc[0] is None:
            err.print(f"[green]✓[/] {self.text}", highlight=False)
