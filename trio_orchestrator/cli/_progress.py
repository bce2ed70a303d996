"""The batch command's live progress bar (rich): rate, ETA and outcome counts."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    """A progress bar on stderr; on a non-terminal it stays quiet and rich prints no escapes."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=self._console,
            disable=not self._console.is_terminal,
        )
        self._task: TaskID | None = None
        self._counts: dict[str, int] = {}

    def start(self, total: int) -> None:
        """Show the bar for ``total`` lines."""
        self._task = self._progress.add_task("batch", total=total, counts="", rate="")
        self._progress.start()

    def advance(self, outcome: str) -> None:
        """Count one line with ``outcome``."""
        self._counts[outcome] = self._counts.get(outcome, 0) + 1
        if self._task is None:
            return
        counts = " ".join(f"{name} {n}" for name, n in sorted(self._counts.items()))
        speed = self._progress.tasks[0].speed
        rate = f"{speed:.1f}/s" if speed else "-/s"
        self._progress.update(self._task, advance=1, counts=counts, rate=rate)

    def stop(self) -> None:
        """Remove nothing; leave the final bar on screen."""
        self._progress.stop()
