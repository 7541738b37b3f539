"""Progress bars on an interactive stderr, and an object with the same methods that shows nothing otherwise.

Callers never test the terminal themselves: they ask :func:`transfer_progress` for a bar and call its
methods; in a pipe, a CI log or with ``--quiet`` those calls cost nothing (STYLE habit 7). rich is imported
only when a bar is really drawn, so ``pacs --help`` and scripted runs never load it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class NullProgress:
    """The no-op bar: same methods, no output."""

    def start(self, files: int, size: int) -> None:
        pass

    def advance(self, files: int = 1, size: int = 0) -> None:
        pass

    def clear(self) -> None:
        pass


class TransferBar:
    """One rich task counting bytes (rate and ETA come from bytes) with the file count beside it.

    The bar (and rich's refresh thread) starts at :meth:`start`, not before: a caller that forks worker
    processes first must not fork while that thread runs.
    """

    def __init__(self, progress, description: str):
        self._progress = progress
        self._description = description
        self._task = None
        self._files = 0

    def start(self, files: int, size: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(self._description, total=max(size, 1), files=0, total_files=files)

    def advance(self, files: int = 1, size: int = 0) -> None:
        if self._task is not None:
            self._files += files
            self._progress.update(self._task, advance=size, files=self._files)

    def clear(self) -> None:
        """Take the bar off the screen, e.g. before a summary is printed where it was."""
        if self._task is not None:
            self._progress.stop()
            self._task = None


def interactive(quiet: bool, stream=None) -> bool:
    stream = stream or sys.stderr
    return not quiet and hasattr(stream, "isatty") and stream.isatty()


@contextmanager
def transfer_progress(description: str, quiet: bool = False) -> Iterator[NullProgress | TransferBar]:
    """A files + bytes + rate + ETA bar on stderr when it is a terminal and not ``quiet``; else a no-op."""
    if not interactive(quiet):
        yield NullProgress()
        return
    bar = TransferBar(_rich_progress(), description)
    try:
        yield bar
    finally:
        bar.clear()


def _rich_progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]:,}/{task.fields[total_files]:,} files"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
