"""In a log (not a terminal) every step is one line: rich must not wrap at its 80-column guess."""

from __future__ import annotations

import subprocess
import sys

from tests.plugins.hostdeps import REPO

LONG = "upload meridian_1.40.0-standin.1-da617f03a9_amd64.tar.zst to local:vztmpl with sha256 " * 2


def test_step_lines_are_not_wrapped_in_a_pipe() -> None:
    code = f"from pipeline.progress import step\nwith step({LONG!r}):\n    pass\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    lines = proc.stderr.splitlines()
    assert lines[0] == f"> {LONG}", proc.stderr
    assert lines[1].startswith(f"  ok {LONG} ("), proc.stderr
    assert len(lines) == 2, proc.stderr
