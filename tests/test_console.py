"""ldcache's terminal output."""
import io

from rich.console import Console
from rich.progress import ProgressSample

from ldcache import console


def test_a_progress_line_fits_an_80_column_terminal(monkeypatch):
    terminal = Console(file=io.StringIO(), width=80, force_terminal=False)
    monkeypatch.setattr(console, "err", terminal)
    bar = console.progress()
    task = bar.add_task("pass 2/2: teacher", total=96)
    bar.update(task, completed=15)
    # A rate to show: 15 image-views in 1.5 s (rich's own record of a task's samples).
    bar.tasks[0]._progress.clear()
    bar.tasks[0]._progress.extend([ProgressSample(0.0, 0), ProgressSample(1.5, 15)])
    terminal.print(bar.make_tasks_table(bar.tasks))
    [line] = terminal.file.getvalue().splitlines()
    assert "15/96" in line and "10.00 image-views/s" in line and "ETA" in line
