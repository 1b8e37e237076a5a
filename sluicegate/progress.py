"""Long start-up steps (loading a model file, converting weights once): a Rich progress bar in a
terminal, a plain line when a step starts and one when it ends otherwise (logs, pipes, CI).

A step is a context manager giving a function to report the fraction done (0 to 1); a step
that cannot tell its fraction just never calls it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

log = logging.getLogger(__name__)
Update = Callable[[float], None]
Steps = Callable[[str], AbstractContextManager[Update]]


def _ignore(fraction: float) -> None:
    return None


@contextlib.contextmanager
def logged(description: str) -> Iterator[Update]:
    """Steps as log lines (library use, tests): when each starts and how long it took."""
    started = time.monotonic()
    log.info("%s...", description)
    yield _ignore
    log.info("%s: done in %.1f s", description, time.monotonic() - started)


def console_steps(console: Console) -> Steps:
    """Steps shown on `console`: a bar if it is a terminal, else plain lines."""

    @contextlib.contextmanager
    def step(description: str) -> Iterator[Update]:
        if console.is_terminal:
            with _bar(console, description) as update:
                yield update
            return
        started = time.monotonic()
        console.print(f"{description}...", highlight=False, soft_wrap=True)
        try:
            yield _ignore
        except BaseException:
            took = time.monotonic() - started
            console.print(f"{description}: failed after {took:.1f} s", highlight=False)
            raise
        took = time.monotonic() - started
        console.print(f"{description}: done in {took:.1f} s", highlight=False, soft_wrap=True)

    return step


@contextlib.contextmanager
def _bar(console: Console, description: str) -> Iterator[Update]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=1.0)
        yield lambda fraction: progress.update(task, completed=fraction)
        progress.update(task, completed=1.0)
