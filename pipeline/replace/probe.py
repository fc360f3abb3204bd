"""Is the container serving? Each service answers an HTTP request on its port (bounded waits).

A port that accepts is not enough: LiteLLM's listening socket outlives a restart of the service
(systemd keeps it, sysext/litellm/launcher.py), so the port accepts while the new process is
still importing, and the kernel queues the request. Only an answer says the service is up.
Plain http.client: a probe every 0.1 s must cost next to nothing on a host that shares its
cores with the container it waits for.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Sequence

from pipeline.errors import PipelineError
from pipeline.polling import wait_until

ANSWER_SECONDS = 1.0
POLL_SECONDS = 0.1  # the report's up time is at most this late

Endpoint = tuple[int, str]  # (port, path): a request that answers 200 once the service is up


def answers(address: str, port: int, path: str) -> bool:
    connection = http.client.HTTPConnection(address, port, timeout=ANSWER_SECONDS)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def serving(address: str, endpoints: Sequence[Endpoint]) -> bool:
    return all(answers(address, port, path) for port, path in endpoints)


def wait_serving(address: str, endpoints: Sequence[Endpoint], timeout: float) -> float:
    """Wait until every endpoint answers; return the wall-clock time it first did."""
    if wait_until(lambda: serving(address, endpoints), timeout=timeout, pause=POLL_SECONDS):
        return time.time()
    shown = ", ".join(f":{port}{path}" for port, path in endpoints)
    raise PipelineError(
        f"{address} did not answer {shown} within {timeout:.0f}s",
        hint="look at `systemctl status meridian litellm` and `cloud-init status --long` in the container",
    )
