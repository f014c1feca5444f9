"""A progress bar for cohorts: cases done and failed, rate and time left, on stderr."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from dxgraph.agent.cohort._outcome import CaseOutcome


class CohortProgress:
    """Counts finished cases; draws a bar when ``enabled`` (a TTY, not ``--json``)."""

    def __init__(self, total: int, *, enabled: bool | None = None, skipped: int = 0) -> None:
        self.total = total
        """Cases to run in this call."""
        self.done = 0
        """Cases finished (completed or failed)."""
        self.failed = 0
        """Cases that failed."""
        self.skipped = skipped
        """Cases already finished by an earlier run of the cohort."""
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        """Whether the bar is drawn."""
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> CohortProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]cases"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("cases", total=self.total, failed=0, rate="")
        return self

    def advance(self, outcome: CaseOutcome) -> None:
        """Count one finished case."""
        self.done += 1
        self.failed += outcome.status == "failed"
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)
            speed = self._progress.tasks[0].speed
            rate = f"{speed:.2f} cases/s" if speed else ""
            self._progress.update(self._task, failed=self.failed, rate=rate)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
