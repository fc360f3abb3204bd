"""Fixtures for the local lab: a small bookworm template, a work dir, a running lab API server.

Other parts use ``lab_server`` (replace-ct, end to end) and ``lab_template`` (boot tests).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.template import build_small_template


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
