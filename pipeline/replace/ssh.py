"""SSH into the new container as root with the deploy key (OpenSSH client, via runner.run).

Proxmox writes the deploy key into root's authorized_keys at create (``ssh-public-keys``)
and regenerates the host keys, so every deployment gets its own known_hosts file
(accept-new: the first key seen is pinned for the rest of that deployment).
File contents travel on stdin: never in argv, logs or Proxmox storage.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError, ToolError
from pipeline.polling import wait_until
from pipeline.runner import ANY_EXIT, run

CONNECT_TIMEOUT = 5
# Waiting for a container that just started: sshd listens about 0.3 s after the start, so
# poll the port often with short timeouts (no fixed sleeps), then log in. Both bounded.
READY_SECONDS = 120.0
PORT_POLL_SECONDS = 0.1
PORT_PROBE_TIMEOUT = 0.5
LOGIN_ATTEMPTS = 20
LOGIN_RETRY_SECONDS = 0.3
# A shared connection's master exits by itself this long after its last session, should the
# process that opened it die before closing it.
SHARED_IDLE_SECONDS = 60

def ensure_deploy_key(state_dir: Path, comment: str) -> str:
    """Create ``deploy_key`` (ed25519) in the state dir if missing; return the public key line."""
    key = state_dir / "deploy_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key])
    pub = key.with_name("deploy_key.pub")
    if not pub.exists():
        pub.write_text(run(["ssh-keygen", "-y", "-f", key]).stdout)
    return pub.read_text().strip()


def latest_known_hosts(state_dir: Path) -> Path | None:
    """The known_hosts file of the newest deployment (the host key replace-ct pinned), if any."""
    pinned = sorted((state_dir / "known_hosts.d").glob("*"), key=lambda p: p.stat().st_mtime)
    return pinned[-1] if pinned else None


@dataclass(frozen=True)
class SSH:
    address: str
    key: Path
    known_hosts: Path
    user: str = "root"
    control: Path | None = None  # the socket of a shared connection (see ``shared``)

    def _argv(self, command: str) -> list[str]:
        shared = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}",
                  "-o", f"ControlPersist={SHARED_IDLE_SECONDS}"] if self.control else []
        return [
            "ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "LogLevel=ERROR", *shared,
            f"{self.user}@{self.address}", command,
        ]

    def run(self, command: str | Sequence[str], *, input: bytes | None = None, stdin: IO[bytes] | None = None,
            timeout: float = 120, check: Sequence[int] = (0,),
            secrets: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """Run ``command`` over SSH; its standard input is ``input``, or the stream ``stdin``."""
        text = command if isinstance(command, str) else shlex.join(command)
        if stdin is not None:
            return run(self._argv(text), stdin=stdin, timeout=timeout, check=check,
                       secrets=secrets)
        return run(self._argv(text), input=input if input is not None else b"", timeout=timeout,
                   check=check, secrets=secrets)

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Return as soon as sshd lets us in (bounded in time and attempts)."""
        deadline = time.monotonic() + timeout
        if not wait_port(self.address, 22, deadline):
            raise PipelineError(f"{self.address}:22 did not accept connections within {timeout:.0f}s",
                                hint="check that the container started and its address is reachable")
        last = ""
        for _ in range(LOGIN_ATTEMPTS):
            try:
                self.run("true", timeout=CONNECT_TIMEOUT + 10)
                return
            except ToolError as exc:
                last = str(exc).splitlines()[-1] if str(exc) else ""
            if time.monotonic() >= deadline:
                break
            time.sleep(LOGIN_RETRY_SECONDS)
        raise PipelineError(
            f"SSH to {self.user}@{self.address} with {self.key} did not succeed after {LOGIN_ATTEMPTS} "
            f"attempts: {last}",
            hint="check that sshd runs in the template and the deploy key is authorized",
        )

    def put(self, path: str, content: bytes, mode: int, secrets: Sequence[str] = ()) -> None:
        """Write ``content`` to ``path`` atomically with ``mode`` (root-owned); ``secrets`` are
        masked should a failure message ever echo them."""
        tmp = f"{path}.replace-ct.tmp"
        script = (
            f"umask 077 && mkdir -p {shlex.quote(str(Path(path).parent))} && "
            f"cat > {shlex.quote(tmp)} && chmod {mode:o} {shlex.quote(tmp)} && "
            f"mv -f {shlex.quote(tmp)} {shlex.quote(path)}"
        )
        self.run(["sh", "-c", script], input=content, secrets=secrets)


@contextmanager
def shared(ssh: SSH) -> Iterator[SSH]:
    """``ssh`` with one connection for all its sessions (OpenSSH's ControlMaster): the first
    session logs in, the later ones reuse that login (in a container that just booted, a
    login costs about half a second). The master is closed on the way out."""
    with tempfile.TemporaryDirectory(prefix="replace-ct-ssh-") as folder:
        one = replace(ssh, control=Path(folder) / "master")
        try:
            yield one
        finally:
            run(["ssh", "-o", f"ControlPath={one.control}", "-O", "exit", f"{ssh.user}@{ssh.address}"],
                timeout=CONNECT_TIMEOUT + 10, check=ANY_EXIT)


def wait_port(address: str, port: int, deadline: float) -> bool:
    """Poll a TCP port until it accepts or ``deadline`` (time.monotonic) passes."""
    def accepts() -> bool:
        try:
            with socket.create_connection((address, port), timeout=PORT_PROBE_TIMEOUT):
                return True
        except OSError:
            return False
    left = min(READY_SECONDS, max(0.0, deadline - time.monotonic()))
    return bool(wait_until(accepts, timeout=left, pause=PORT_POLL_SECONDS))
