"""Is the container serving? TCP connect to both service ports (bounded waits)."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from pipeline.errors import PipelineError
from pipeline.polling import wait_until

CONNECT_SECONDS = 1.0
POLL_SECONDS = 0.1  # the report's up time is at most this late


def serving(address: str, ports: Sequence[int]) -> bool:
    for port in ports:
        try:
            with socket.create_connection((address, port), timeout=CONNECT_SECONDS):
                pass
        except OSError:
            return False
    return True


def wait_serving(address: str, ports: Sequence[int], timeout: float) -> float:
    """Wait until every port accepts; return the wall-clock time it first did."""
    if wait_until(lambda: serving(address, ports), timeout=timeout, pause=POLL_SECONDS):
        return time.time()
    shown = ", ".join(str(p) for p in ports)
    raise PipelineError(
        f"{address} did not accept connections on ports {shown} within {timeout:.0f}s",
        hint="look at `systemctl status meridian litellm` and `cloud-init status --long` in the container",
    )
