"""Nested, timed progress steps on the terminal (rich), and a record of their durations.

Example::

    with step("mmdebstrap base"):
        ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console

# soft_wrap: a line is never broken at the terminal width, so in a log (CI, `> file`, where rich
# assumes 80 columns) one step is one line and names stay greppable.
console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class StepRecord:
    name: str
    seconds: float
    status: str  # "ok" | "skipped" | "failed"


@dataclass
class Timeline:
    """Every step of one run, in order, for reports and benchmarks."""

    steps: list[StepRecord] = field(default_factory=list)
    depth: int = 0


timeline = Timeline()


class Skip(Exception):
    """Raised inside a step to mark it skipped (with a reason) rather than done."""


@contextmanager
def step(name: str) -> Iterator[None]:
    indent = "  " * timeline.depth
    console.print(f"{indent}[bold]>[/bold] {name}")
    timeline.depth += 1
    start = time.monotonic()
    status = "ok"
    try:
        yield
    except Skip as reason:
        status = "skipped"
        console.print(f"{indent}  [dim]skipped: {reason}[/dim]")
    except BaseException:
        status = "failed"
        raise
    finally:
        timeline.depth -= 1
        seconds = time.monotonic() - start
        timeline.steps.append(StepRecord(name, round(seconds, 2), status))
        colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[status]
        console.print(f"{indent}  [{colour}]{status}[/{colour}] {name} ({seconds:.1f}s)")
