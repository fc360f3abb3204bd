"""One way to run an external tool: argument list, clean environment, timeout, secrets masked.

Example::

    run(["mksquashfs", src, dst, "-noappend"], timeout=600)
    out = run(["systemd-sysext", "status", "--json=short"]).stdout
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError, ToolError

# Variables passed through from the caller's environment. Everything else is dropped so a
# build does not depend on whoever runs it. The trust-store variables matter behind a
# TLS-intercepting proxy (docs/containers.md): build steps get the host's bundle, never the image.
PASSTHROUGH_ENV = (
    "PATH", "HOME", "LANG", "TERM", "TMPDIR", "SOURCE_DATE_EPOCH",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS",
    "NPM_CONFIG_REGISTRY", "npm_config_registry", "NPM_CONFIG_CAFILE", "npm_config_cafile",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
)

TAIL_LINES = 25
# ``check=`` values: any exit status is an answer the caller reads itself (never raises), and
# the same including death by a signal (subprocess reports signal N as -N).
ANY_EXIT = range(256)
ANY_EXIT_OR_SIGNAL = range(-64, 256)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 600,
    check: Sequence[int] = (0,),
    input: str | bytes | None = None,
    stdin: IO[bytes] | None = None,
    secrets: Iterable[str] = (),
    log: Path | None = None,
    interactive: bool = False,
) -> subprocess.CompletedProcess:
    """Run argv; raise ToolError (quoted command, exit code, tail of output) unless allowed.

    With ``log`` the combined output goes to that file (for long build steps), else it is
    captured (``.stdout``, ``.stderr``; the tail goes into the error). ``stdin`` streams
    an open file to the tool (large archives) instead of ``input`` held in memory.
    ``interactive`` leaves the terminal to the tool (a login over ``ssh -t``): nothing captured.
    """
    args = [os.fspath(a) for a in argv]
    secrets = [s for s in secrets if s]
    shown = mask(shlex.join(args), secrets)
    text_mode = not isinstance(input, bytes)
    try:
        if log is not None:
            with open(log, "ab") as fh:
                fh.write(f"$ {shown}\n".encode())
                fh.flush()
                proc = subprocess.run(
                    args, env=clean_env(env), cwd=cwd, timeout=timeout, input=input, stdin=stdin,
                    stdout=fh, stderr=subprocess.STDOUT, text=text_mode,
                )
        else:
            proc = subprocess.run(
                args, env=clean_env(env), cwd=cwd, timeout=timeout, input=input, stdin=stdin,
                capture_output=not interactive, text=text_mode,
            )
    except FileNotFoundError as exc:
        raise ToolError(f"command not found: {args[0]}", hint="run ./dev.sh setup") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"`{shown}` timed out after {timeout:.0f}s") from exc
    if proc.returncode not in check:
        output = log.read_text(errors="replace") if log else _as_text(proc.stdout) + _as_text(proc.stderr)
        raise ToolError(
            f"`{shown}` exited with {proc.returncode}\n{mask(tail(output), secrets)}"
        )
    return proc


def _as_text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def require_tools(needs: Mapping[str, str]) -> None:
    """Fail early, naming every missing tool and why it is needed: {"mksquashfs": "sysext images"}."""
    missing = [f"{tool} ({why})" for tool, why in needs.items() if shutil.which(tool) is None]
    if missing:
        raise PipelineError(
            "missing tools: " + ", ".join(missing), hint="run ./dev.sh setup (installs them)"
        )
