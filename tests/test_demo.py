"""The README's first command, as a user runs it: `./dev.sh demo` passes again and again — twice
in a row, after `lab down`, and after being killed (SIGKILL) in the middle of the deploy.

These take the shared lab down and up, so conftest.py runs them after every other test. Their
own master key (no MERIDIAN_LAB_MASTER_KEY given) exercises the demo's key file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.acceptance import LAB_SITE, remove_lab_ct
from tests.plugins.hostdeps import REPO

pytestmark = [pytest.mark.integration, pytest.mark.demo]
DEMO_KEY = Path("/var/lib/meridian-lab/pipeline/demo-master.key")
DEMO_TIMEOUT = 1800
KILL_AT = "> clone CT 457"  # in the middle of the first deploy: CT 457 being cloned


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MERIDIAN_LAB_MASTER_KEY"}


def demo(kill_at: str | None = None) -> tuple[int, str]:
    """Run ./dev.sh demo in its own process group; (exit code, output). With ``kill_at``, the
    whole group gets SIGKILL as soon as a line containing it is printed."""
    proc = subprocess.Popen(["./dev.sh", "demo"], cwd=REPO, env=demo_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    watchdog = threading.Timer(DEMO_TIMEOUT, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if kill_at and kill_at in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
    return proc.returncode, "".join(lines)


def lab_down() -> None:
    subprocess.run([sys.executable, "-m", "lab", "down"], cwd=REPO, check=True, timeout=300,
                   capture_output=True)


@pytest.fixture(scope="module")
def shared_lab_restored() -> Iterator[None]:
    """Leave CT 457 as later users expect it: not deployed with the demo's own key."""
    yield
    remove_lab_ct(LAB_SITE)


def assert_passed(code: int, output: str) -> None:
    assert code == 0, output[-4000:]
    assert re.search(r"\b\d+ passed\b", output) and not re.search(r"\d+ failed", output), output[-4000:]
    next_steps = output.split("What you can do next:")[1]
    for expected in ("http://10.157.0.57:3456", "http://10.157.0.57:4000/v1", "oauth-login",
                     str(DEMO_KEY), "lab down"):
        assert expected in next_steps, next_steps


def test_demo_passes_twice_in_a_row_with_the_same_key(shared_lab_restored: None) -> None:
    assert_passed(*demo())
    key = DEMO_KEY.read_text()
    assert DEMO_KEY.stat().st_mode & 0o777 == 0o600
    assert_passed(*demo())
    assert DEMO_KEY.read_text() == key


def test_demo_passes_after_lab_down(shared_lab_restored: None) -> None:
    lab_down()
    assert not DEMO_KEY.exists()
    assert_passed(*demo())


def test_demo_passes_after_being_killed_in_the_deploy(shared_lab_restored: None) -> None:
    lab_down()
    code, output = demo(kill_at=KILL_AT)
    assert code == -signal.SIGKILL and KILL_AT in output, output[-2000:]
    assert_passed(*demo())
