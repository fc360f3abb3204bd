"""The lab's own errors: ``LabError`` for what a lab user can act on (the CLI prints it, a task
ends with it), and ``ApiError``, what a lab handler answers with in Proxmox's shapes.

The lab shares no code with the pipeline it stands in for (tests/test_import_rules.py).
"""

from __future__ import annotations


class LabError(Exception):
    """What failed, and (optionally) what to do about it; ``python -m lab`` prints it without a
    traceback, and a task that raises it ends with its first line as the exit status."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(f"{message}\n  hint: {hint}" if hint else message)
        self.message = message  # without the hint


class CommandError(LabError):
    """An external command failed: quoted command, exit code and the tail of its output."""


class ApiError(Exception):
    """An HTTP error: 500 for failed handlers ("CT is locked (create)"), 403, 400 with errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def forbidden(path: str, privilege: str) -> ApiError:
    return ApiError(403, f"Permission check failed ({path}, {privilege})")


def param_error(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "Parameter verification failed.", errors)
