"""Fixtures for the local lab: a small bookworm template, a work dir, a running lab API server.

Other parts use ``lab_server`` (replace-ct, end to end) and ``lab_template`` (boot tests).
Tests that break or restart a lab run one of their own with ``private_lab`` (own state and port).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from proxmoxer import ProxmoxAPI

from lab.node import DEFAULT_STATE
from pipeline.runner import run
from tests.plugins.pveapi import NODE
from tests.plugins.smalltemplate import build_small_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def lab_workdir() -> Iterator[Path]:
    """A session directory the containers' mapped root can traverse (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="meridian-lab-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_template(lab_workdir: Path) -> Path:
    """A small Debian 12 CT template (.tar.zst): systemd, ifupdown, openssh-server."""
    return build_small_template(lab_workdir / "debian-12-small_amd64.tar.zst")


@dataclass(frozen=True)
class Lab:
    """A running lab API (what `python -m lab up` prints), with a proxmoxer client factory."""

    url: str
    host: str
    port: int
    node: str
    token_id: str
    token_secret_path: Path
    ca_path: Path
    state: Path

    @classmethod
    def at(cls, state: Path, port: int) -> Lab:
        """The lab `python -m lab --state STATE up --port PORT` runs, with its own token."""
        return cls(url=f"https://127.0.0.1:{port}/api2/json", host="127.0.0.1", port=port, node=NODE,
                   token_id="pipeline@pve!lab", token_secret_path=state / "token.secret",
                   ca_path=state / "ca.pem", state=state)

    def client(self, token_id: str | None = None, secret_path: Path | None = None,
               timeout: int = 60) -> ProxmoxAPI:
        user, token_name = (token_id or self.token_id).split("!", 1)
        secret = (secret_path or self.token_secret_path).read_text().strip()
        return ProxmoxAPI(self.host, port=self.port, user=user, token_name=token_name,
                          token_value=secret, verify_ssl=str(self.ca_path), timeout=timeout)

    def add_token(self, token_id: str, acl: list[str], secret_path: Path) -> None:
        """A second token, e.g. with fewer privileges: acl entries are "PATH=ROLE"."""
        run([sys.executable, "-m", "lab", "--state", self.state, "token", "add", token_id,
             *[f"--acl={entry}" for entry in acl], "--secret-file", secret_path], cwd=REPO)


# Test sessions running at the same time share the one lab on :8006. Each session holds it
# (a file named by its PID); the last holder takes it down, and only if a session started it.
HOLDERS = Path("/run/meridian-lab/holders")
STARTED_BY_TESTS = HOLDERS / "started-by-tests"


@pytest.fixture(scope="session")
def lab_server() -> Iterator[Lab]:
    """The lab API on 127.0.0.1:8006 (state /var/lib/meridian-lab). Taken down after the last
    test session that uses it, unless someone had started it by hand."""
    state = DEFAULT_STATE
    HOLDERS.mkdir(parents=True, exist_ok=True)
    mine = HOLDERS / str(os.getpid())
    mine.touch()
    was_up = run([sys.executable, "-m", "lab", "--state", state, "status"], cwd=REPO,
                 check=(0, 1)).returncode == 0
    if not was_up:
        STARTED_BY_TESTS.touch()
    run([sys.executable, "-m", "lab", "--state", state, "up"], cwd=REPO, timeout=120)
    yield Lab.at(state, 8006)
    mine.unlink(missing_ok=True)
    others = [p for p in HOLDERS.iterdir() if p.name.isdigit() and Path("/proc", p.name).exists()]
    if not others and STARTED_BY_TESTS.exists():
        STARTED_BY_TESTS.unlink()
        run([sys.executable, "-m", "lab", "--state", state, "down"], cwd=REPO, timeout=300)


def lab_cli(state: Path, *args: str, check: Sequence[int] = (0,)) -> str:
    """``python -m lab --state STATE ARGS...``: its stdout and stderr (raises unless the exit
    code is in ``check``)."""
    proc = run([sys.executable, "-m", "lab", "--state", state, *args], cwd=REPO, timeout=300, check=check)
    return proc.stdout + proc.stderr


@contextmanager
def private_lab(state: Path, port: int, costs: Mapping[str, float] | None = None) -> Iterator[Lab]:
    """A lab of its own (state directory and port), for tests that break or restart a lab
    without disturbing the shared one on :8006; taken down afterwards. ``costs`` raises task
    floors (written to STATE/costs.yml before `up`; lab/README.md, Cost model)."""
    if costs:
        state.mkdir(parents=True, exist_ok=True)
        (state / "costs.yml").write_text(yaml.safe_dump(dict(costs)))
    lab_cli(state, "up", "--port", str(port))
    try:
        yield Lab.at(state, port)
    finally:
        lab_cli(state, "down")
