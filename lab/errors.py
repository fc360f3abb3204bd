"""Errors a lab handler answers with, in Proxmox's shapes (message ends with a newline)."""

from __future__ import annotations


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
