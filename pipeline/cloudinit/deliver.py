"""Deliver a seed into a running container in one shell script (replace-ct sends it over one
SSH session as root, on stdin: the master key is never in an argument, a log or Proxmox storage).

A fresh container from the template boots without a seed, so cloud-init's generator
disabled cloud-init for that boot (and ds-identify cached that verdict in /run/cloud-init).
The script

1. writes the user-data's ``write_files`` right away and runs its ``systemctl`` runcmd lines,
   so the services start at once, not after cloud-init's four stages; then, when given the
   services' ports, waits (bounded) until they listen: cloud-init's stages are seconds of
   Python that would otherwise share the CPU with the services' first start (measured in the
   lab: LiteLLM's start took 6.1 s beside them against about 2.5 s alone);
2. writes the seed and the datasource pin, drops the cached verdict, re-runs the generator
   (``systemctl daemon-reload``), which now enables cloud-init, and runs the four stages in
   boot order as one blocking transaction — the same code path as a boot with a baked seed.
   cloud-init then writes the same files again (same content) and its runcmd finds the
   services started;
3. waits (bounded) for cloud-init to finish: exit 0 only when it finished without errors.

Everything the early part does comes from the rendered user-data itself, so the two can
never disagree.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence

import yaml

from pipeline.cloudinit.render import PIN_PATH, SEED_DIR, SEED_FILES, Seed, pin_file

SEED_MODE = 0o600
PIN_MODE = 0o644

# `clean` drops any earlier instance's state (a rerun on the same container) but keeps the
# seed directory. The `test` fails activation when the generator does not find the seed.
ACTIVATE_COMMANDS: tuple[str, ...] = (
    "rm -f /etc/cloud/cloud-init.disabled",
    "cloud-init clean --logs",
    "rm -rf /run/cloud-init",
    "systemctl daemon-reload",
    "test -f /run/cloud-init/enabled",
    "systemctl restart cloud-init-local.service cloud-init.service"
    " cloud-config.service cloud-final.service",
)
# Exit 0 when cloud-init finished without errors, 1 when a stage reported errors. After
# the first-boot finish it says "status: disabled" (the marker file): the exit code counts.
# Bounded: a stage that dies before writing status.json leaves `--wait` polling forever.
WAIT_SECONDS = 600
WAIT_COMMAND = f"timeout {WAIT_SECONDS} cloud-init status --wait --long"
# The wait for the services to listen: at most LISTEN_POLLS * 0.1 s (then cloud-init runs
# anyway; the gate finds a service that never came up).
LISTEN_POLLS = 600


def container_files(seed: Seed) -> list[tuple[str, bytes, int]]:
    """The seed files and the datasource pin: (absolute path, content, mode), owner root."""
    files = [(f"{SEED_DIR}/{name}", seed.files[name], SEED_MODE) for name in SEED_FILES]
    return [*files, (PIN_PATH, pin_file(), PIN_MODE)]


def service_files(seed: Seed) -> list[tuple[str, bytes, str, str]]:
    """The user-data's write_files: (path, content, owner, permissions)."""
    doc = yaml.safe_load(seed.files["user-data"])
    return [(entry["path"], str(entry.get("content", "")).encode(), entry.get("owner", "root:root"),
             str(entry.get("permissions", "0644"))) for entry in doc.get("write_files", [])]


def service_starts(seed: Seed) -> list[list[str]]:
    """The user-data's runcmd lines that start or restart services (argv lists)."""
    doc = yaml.safe_load(seed.files["user-data"])
    return [[str(arg) for arg in cmd] for cmd in doc.get("runcmd", [])
            if isinstance(cmd, list) and cmd and cmd[0] == "systemctl"]


def _write(path: str, content: bytes, owner: str, mode: str) -> str:
    """Atomic write of content (base64 in the script) with owner and mode."""
    tmp = shlex.quote(f"{path}.deliver.tmp")
    return (f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && "
            f"printf %s {base64.b64encode(content).decode()} | base64 -d > {tmp} && "
            f"chown {shlex.quote(owner)} {tmp} && chmod {mode} {tmp} && mv -f {tmp} {shlex.quote(path)}")


def rewrite_script(seed: Seed, *, before: str, restart: Sequence[str]) -> bytes:
    """A re-seed of a running container: ``before`` (a backup), the services' files, a restart
    of ``restart``. cloud-init does not run again: it ran once, at the first start."""
    lines = ["set -eu", "umask 077", before, *(_write(*entry) for entry in service_files(seed))]
    if restart:
        lines.append(shlex.join(["systemctl", "restart", *restart]))
    return ("\n".join(lines) + "\n").encode()


def listening(ports: Sequence[int]) -> str:
    """A shell condition: every port has a listening TCP socket in the container."""
    return " && ".join(f"ss -Hltn {shlex.quote(f'sport = :{port}')} | grep -q ." for port in ports)


def activation_script(seed: Seed, *, ports: Sequence[int] = ()) -> bytes:
    """The whole delivery as one ``sh -s`` script (see the module docstring); ``ports``: the
    services' ports, which cloud-init's stages wait for."""
    lines = ["set -eu", "umask 077", "# 1. the services' files, then start them"]
    lines += [_write(*entry) for entry in service_files(seed)]
    lines += [shlex.join(argv) for argv in service_starts(seed)]
    if ports:
        lines += [f"i=0; until {listening(ports)} || [ $i -ge {LISTEN_POLLS} ]; do sleep 0.1; i=$((i+1)); done"]
    lines.append("# 2. the seed and the pin, then cloud-init's stages in boot order")
    lines += [_write(path, content, "root:root", f"{mode:o}") for path, content, mode in container_files(seed)]
    lines += list(ACTIVATE_COMMANDS)
    lines += ["# 3. cloud-init finished without errors", WAIT_COMMAND]
    return ("\n".join(lines) + "\n").encode()
