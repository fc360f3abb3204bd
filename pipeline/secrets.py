"""Secret sources named in a site file: exactly one of env, command or file.

The value is read only when needed and never printed; errors say where it was looked
for, never what it is. Example (site file)::

    master_key: {command: "infisical secrets get vault_litellm_master_key --env prod --path /meridian --plain"}
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SecretError
from pipeline.schema import setting

# Values LiteLLM refuses at start, or that are placeholders in docs.
UNSAFE_VALUES = frozenset({"sk-1234", "changeme", "change-me", "secret", "password"})
MIN_LENGTH = 16


@dataclass(frozen=True, kw_only=True)
class SecretSource:
    """Where a secret comes from. ``describe()`` is safe to print."""

    env: str | None = setting(None, "environment variable holding the secret")
    command: str | None = setting(None, "command that prints the secret on stdout")
    file: Path | None = setting(None, "file holding the secret (keep it 0600)")

    def problem(self) -> str | None:
        given = [k for k in ("env", "command", "file") if getattr(self, k)]
        if len(given) != 1:
            return f"give exactly one of env, command or file (got {', '.join(given) or 'none'})"
        return None

    def describe(self) -> str:
        if self.env:
            return f"environment variable {self.env}"
        if self.command:
            return f"command `{self.command}`"
        return f"file {self.file}"

    def read(self, *, label: str, check_strength: bool = False) -> str:
        value = self._read_raw(label).strip()
        if not value:
            raise SecretError(f"{label}: {self.describe()} gave an empty value")
        if check_strength:
            check_safe(value, label=label, where=self.describe())
        return value

    def _read_raw(self, label: str) -> str:
        if self.env:
            if self.env not in os.environ:
                raise SecretError(
                    f"{label}: environment variable {self.env} is not set",
                    hint=f"export {self.env}=... before running",
                )
            return os.environ[self.env]
        if self.command:
            return _run_secret_command(self.command, label)
        assert self.file is not None
        try:
            return self.file.read_text()
        except OSError as exc:
            raise SecretError(f"{label}: cannot read file {self.file}: {exc.strerror}") from None


def check_safe(value: str, *, label: str, where: str) -> None:
    if value.lower() in UNSAFE_VALUES:
        raise SecretError(
            f"{label}: {where} gave a known placeholder value, which LiteLLM refuses",
            hint="generate one: python3 -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(32))'",
        )
    if len(value) < MIN_LENGTH:
        raise SecretError(f"{label}: {where} gave a value shorter than {MIN_LENGTH} characters")
    if any(ch.isspace() for ch in value):
        raise SecretError(f"{label}: {where} gave a value containing whitespace")


def _run_secret_command(command: str, label: str) -> str:
    try:
        proc = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise SecretError(f"{label}: command not found: {shlex.split(command)[0]}") from None
    except subprocess.TimeoutExpired:
        raise SecretError(f"{label}: `{command}` timed out after 60s") from None
    if proc.returncode != 0:
        # stderr may echo the value in odd tools; show only its first line, masked by length.
        first = (proc.stderr.strip().splitlines() or [""])[0][:200]
        raise SecretError(f"{label}: `{command}` exited with {proc.returncode}: {first}")
    return proc.stdout
