"""What the command line prints: tables at their natural width, JSON, and progress on stderr.

Results go to stdout, progress to stderr. Where stderr is a terminal, progress is one rich
display; where it is not (a log file, CI), one plain line per finished step with its time.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

import typer
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
from rich.table import Table
from typer.core import TyperCommand

from ..units import human

if TYPE_CHECKING:
    from ..pruning.engine import ProgressEvent

console = Console(highlight=False, soft_wrap=True)  # paths and class names are never wrapped


class Command(TyperCommand):
    """A command whose help names an argument by its metavar alone: typer (0.29) appends the
    Python type to every argument (``MODEL <str>``), which means nothing to a user."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super().format_help(ctx, formatter)
        formatter.buffer[:] = [re.sub(r"^(\s+[A-Z_]+) <[a-z\[\]]+>", r"\1", line) for line in formatter.buffer]


def print_table(table: Table) -> None:
    """Print at the table's natural width, so nothing is cut whatever the terminal or pipe width."""
    width = console.measure(table, options=console.options.update_width(10_000)).maximum
    Console(width=max(console.width, width), highlight=False).print(table)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def change(before: float, after: float) -> str:
    """``+12.34%``-style relative change."""
    return f"{100 * (after / before - 1):+.2f}%"


class Bars:
    """Progress bars on stderr, started at the first update (so an early error prints nothing
    else); where stderr is not a terminal (a log file, CI), one plain line per finished step
    with its time instead."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.started = False
        self.tasks: dict[str, TaskID] = {}
        self.reported: set[str] = set()
        self.begun: float | None = None  # the first event: loading and downloads before it are not a step's time
        self.last = 0.0

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.stop()

    def update(self, label: str, done: int, total: int, overall: bool = False) -> None:
        """``overall``: the line's time counts from the start, not from the previous line."""
        if self.begun is None:
            self.begun = self.last = time.monotonic()
        if not self.console.is_terminal:
            if done >= total and label not in self.reported:
                self.reported.add(label)
                now = time.monotonic()
                typer.echo(
                    f"{label.strip()}: {done}/{total} ({now - (self.begun if overall else self.last):.1f} s)", err=True
                )
                self.last = now
            return
        if not self.started:
            self.progress.start()
            self.started = True
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)

    def drop(self, label: str) -> None:
        task = self.tasks.pop(label, None)
        if task is not None:
            self.progress.remove_task(task)


class PruneProgress(Bars):
    """The engine's progress events: packages, and the current package's trajectories or solves."""

    step = ""

    def __call__(self, event: ProgressEvent) -> None:
        if "packages" not in self.tasks:  # the overall bar stays on top
            self.update("packages", event.package, event.packages, overall=True)
        if event.stage != "package":
            label = f"  package {event.package + 1}: {'trajectories' if event.stage == 'trajectories' else 'solves'}"
            if label != self.step:
                self.drop(self.step)
                self.step = label
            self.update(label, event.done, event.total)
        solved = event.stage == "solve" and event.done == event.total  # the package is finished
        self.update("packages", event.package + solved, event.packages, overall=True)
        if solved or event.stage == "package":
            self.drop(self.step)


class RecoveryProgress(Bars):
    """The recovery's optimizer steps, with the last validation loss in a plain line when one is measured."""

    def __call__(self, step: int, total: int, validation: float | None) -> None:
        self.update("recovery steps", step, total)
        if validation is not None and not self.console.is_terminal:
            typer.echo(f"step {step}: validation loss {validation:.4g}", err=True)


class ImageProgress(Bars):
    """Image generation progress of ``eval`` on stderr."""

    def __call__(self, which: str, done: int, total: int) -> None:
        self.update(f"{which} images", done, total)


__all__ = [
    "Bars",
    "Command",
    "ImageProgress",
    "PruneProgress",
    "RecoveryProgress",
    "change",
    "console",
    "human",
    "print_json",
    "print_table",
]
