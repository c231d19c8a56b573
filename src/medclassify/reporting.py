"""Progress bars and messages. Library code reports through a Reporter; the CLI and the Python API
use the rich one, tests pass `Reporter(quiet=True)`."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

log = logging.getLogger("medclassify")
# Messages reach the user through the Reporter's console; the logger is for applications that
# attach their own handlers. Without this, Python's last-resort handler printed every warning twice.
log.addHandler(logging.NullHandler())


class Task:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._id, advance=n, **fields)

    def update(self, completed: int | None = None, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._id, completed=completed, **fields)


def printable(text: str) -> str:
    """A file name that is not valid UTF-8 reaches Python as lone surrogates, which no terminal can
    print: show those bytes as the replacement character instead of failing."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Reporter:
    def __init__(self, quiet: bool = False, console=None):
        self.quiet = quiet
        self.messages: list[tuple[str, str]] = []  # (level, text), kept for the run's log
        if console is None and not quiet:
            from rich.console import Console

            console = Console(stderr=True, highlight=False)
        self.console = console

    def _print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(printable(text), style=style, markup=False, soft_wrap=True)

    def info(self, text: str) -> None:
        self.messages.append(("info", text))
        log.info(text)
        self._print(text)

    def warn(self, text: str) -> None:
        self.messages.append(("warning", text))
        log.warning(text)
        self._print(f"warning: {text}", style="bold yellow")

    @contextlib.contextmanager
    def task(self, description: str, total: int, fields: str = "") -> Iterator[Task]:
        """A progress bar; `fields` is a format string of extra live values, e.g. 'loss {task.fields[loss]}'."""
        if self.console is None or not (self.console.is_terminal or self.console.is_jupyter):
            yield Task(None, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        if fields:
            columns.append(TextColumn(fields))
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, loss=float("nan"), metric="")
            yield Task(progress, task_id)


def default_reporter(quiet: bool = False) -> Reporter:
    return Reporter(quiet=quiet or not sys.stderr)
