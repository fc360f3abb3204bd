"""One bounded wait for every loop that polls: ask until the answer is there or the time is up.

Example::

    status = wait_until(lambda: done(upid), timeout=600, pause=0.1, slower_after=3.0)
    if status is None:
        raise TimeoutError(...)

Bounded in time (the deadline) and in count (never more than ``timeout / pause + 1`` asks).
With ``slower_after``, pauses stay at ``pause`` for that many seconds, then grow by half each
time up to ``max_pause``: short waits are noticed at once, long ones cost few requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def pauses(timeout: float, pause: float, slower_after: float | None = None,
           max_pause: float = 1.0) -> Iterator[float]:
    """The pauses between asks (a bounded number of them)."""
    current, waited = pause, 0.0
    for _ in range(int(timeout / pause) + 1):
        yield current
        waited += current
        if slower_after is not None and waited >= slower_after - 1e-9:  # 60 x 0.05 sums to 2.9999...
            current = min(max_pause, current * 1.5)


def wait_until(check: Callable[[], T], *, timeout: float, pause: float, slower_after: float | None = None,
               max_pause: float = 1.0) -> T | None:
    """Call ``check`` until it returns something true, and return that; None when the time is up."""
    deadline = time.monotonic() + timeout
    for current in pauses(timeout, pause, slower_after, max_pause):
        result = check()
        if result or time.monotonic() >= deadline:
            return result or None
        time.sleep(min(current, max(0.0, deadline - time.monotonic())))
    return None
