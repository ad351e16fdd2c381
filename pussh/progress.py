"""Progress output: a rich bar per blob on a terminal, a line per finished blob otherwise, and the
per-host summary lines. Everything but results goes to stderr. rich is imported only for a
terminal: it is 40-50 ms of the start of every push that shows no bar (scripts, CI, --quiet)."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Bar:
    """Progress of one transfer; `advance` takes negative counts too (a retried chunk)."""

    def __init__(self, ui: "UI", label: str, total: int) -> None:
        self.ui, self.label, self.total = ui, label, total
        self.done_bytes = 0
        self.t0 = time.monotonic()
        self.task: TaskID | None = None
        if ui.progress is not None:
            self.task = ui.progress.add_task(label, total=total or None)

    def advance(self, n: int) -> None:
        self.done_bytes += n
        if self.task is not None and self.ui.progress is not None:
            self.ui.progress.update(self.task, completed=self.done_bytes)

    def discard(self) -> None:
        """Take the bar away without a line (the transfer failed; the error says why)."""
        if self.task is not None and self.ui.progress is not None:
            self.ui.progress.remove_task(self.task)
            self.task = None

    def finish(self, verb: str = "sent") -> None:
        secs = max(time.monotonic() - self.t0, 1e-6)
        if self.task is not None and self.ui.progress is not None:
            self.ui.progress.update(self.task, completed=self.total or self.done_bytes)
            self.ui.progress.remove_task(self.task)
            self.task = None
        self.ui.line(f"{self.label}: {verb} {human_bytes(self.total or self.done_bytes)} in {secs:.1f}s")


class UI:
    def __init__(self, *, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.progress: Progress | None = None
        self.console: Any = None  # rich's, on a terminal; else lines are written to stderr as they are
        if sys.stderr.isatty() and (not quiet or verbose):
            from rich.console import Console
            self.console = Console(stderr=True, highlight=False)
        if self.console is not None and not quiet:
            from rich import progress as rp
            self.progress = rp.Progress(
                rp.TextColumn("{task.description}", table_column=None), rp.BarColumn(), rp.DownloadColumn(),
                rp.TransferSpeedColumn(), rp.TimeRemainingColumn(), console=self.console, transient=True,
            )

    def _print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, style=style, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def __enter__(self) -> "UI":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def bar(self, label: str, total: int) -> Bar:
        return Bar(self, label, total)

    def line(self, text: str) -> None:
        """A progress line (per finished blob, per step): hidden with --quiet."""
        if not self.quiet:
            self._print(text)

    def debug(self, text: str) -> None:
        if self.verbose:
            self._print(text, style="dim")
