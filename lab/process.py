"""How the lab runs a host tool: an argument list, a small clean environment, a timeout, and
on failure a ``CommandError`` with the quoted command, its exit code and the tail of its output.

Example::

    run_command(["ip", "link", "set", "mrdlab0", "up"])
    state = run_command(["lxc-info", "-n", "457", "-s", "-H"], check=ANY_EXIT).stdout
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import IO

from lab.errors import CommandError

# Everything else in the caller's environment is dropped. SOURCE_DATE_EPOCH and the proxy
# variables reach mmdebstrap (the small test template); the rest is what any tool expects.
PASSED_ENV = ("PATH", "HOME", "LANG", "TERM", "TMPDIR", "SOURCE_DATE_EPOCH",
              "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 25
ANY_EXIT = range(256)  # ``check=`` for a caller that reads the exit status itself


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 600,
    check: Sequence[int] = (0,),
    input: str | None = None,
    stdin: IO[bytes] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv with output captured as text; raise CommandError unless its exit code is in
    ``check``. ``stdin`` streams an open file to the tool (an archive) instead of ``input``."""
    args = [os.fspath(a) for a in argv]
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env["LC_ALL"] = "C.UTF-8"
    try:
        proc = subprocess.run(args, env=env, timeout=timeout, input=input, stdin=stdin,
                              capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise CommandError(f"command not found: {args[0]}", hint="run ./dev.sh setup") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"`{shlex.join(args)}` timed out after {timeout:.0f}s") from exc
    if proc.returncode not in check:
        output = "\n".join((proc.stdout + proc.stderr).rstrip().splitlines()[-TAIL_LINES:])
        raise CommandError(f"`{shlex.join(args)}` exited with {proc.returncode}\n{output}")
    return proc
