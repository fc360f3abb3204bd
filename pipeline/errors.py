"""The exceptions a user can cause. The CLI prints them without a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on: what failed, and (optionally) what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(PipelineError):
    """A site file that does not validate. The message names file, dotted key and value."""


class SecretError(PipelineError):
    """A secret that cannot be read, or is unsafe. Never carries the secret itself."""


class ToolError(PipelineError):
    """An external command failed: quoted command, exit code and the tail of its output."""
