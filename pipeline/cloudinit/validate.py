"""Validate rendered user-data with cloud-init's own schema (`cloud-init schema -c`).

The host's Debian cloud-init package is the validator (cloud-init is not on PyPI); the
host copy is disabled by /etc/cloud/cloud-init.disabled and only used for this.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.runner import require_tools, run, tail

VALID, INVALID = 0, 1


def validate_user_data(text: str, *, template: Path, site: str) -> None:
    """Raise PipelineError with the validator's message unless ``text`` is valid cloud-config.

    Callers pass a rendering without secrets: the validator echoes offending lines.
    """
    require_tools({"cloud-init": "validates rendered user-data (Debian package cloud-init)"})
    if not text.startswith("#cloud-config\n"):
        raise PipelineError(f"{template}: rendered user-data must start with '#cloud-config'")
    with tempfile.NamedTemporaryFile("w", prefix="user-data-", suffix=".yml") as fh:
        fh.write(text)
        fh.flush()
        proc = run(["cloud-init", "schema", "-c", fh.name], check=(VALID, INVALID))
    if proc.returncode == INVALID:
        message = tail(proc.stderr or proc.stdout).replace(fh.name, "user-data")
        raise PipelineError(
            f"{template} renders invalid user-data for site {site!r}:\n{message}",
            hint="fix the template; `cloud-init schema -c FILE` shows the same message",
        )
