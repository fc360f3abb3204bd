"""The services' sandboxes (issue 12): exposure, what each can read and write, a clean start.

File access is checked from inside each running service's sandbox, not by `sudo -u USER`
(which has none of it) nor `systemd-run -p User=` (a new sandbox, not the deployed one): the
probe enters the mount namespace of the unit's MainPID (where ProtectSystem=, ReadOnlyPaths=,
InaccessiblePaths=, PrivateTmp= and TemporaryFileSystem= apply) and drops to that process's
own uid, gid and supplementary groups, read from /proc/MAINPID/status, with no capabilities.
The kernel decides a read or write by the mount it goes through and by those credentials; the
service process is asserted to hold no capabilities either, so the probe can do exactly what
the service can do with a file. (The probe stays in the container's user namespace: with
PrivateUsers= the service sees other owners as nobody, but the kernel compares the same uids.)
"""

from __future__ import annotations

import re
import shlex

import pytest

from pipeline.contract import (
    CREDENTIALS_DIR,
    CREDENTIALS_FILE,
    HARDENED_UNITS,
    MASTER_KEY_ENV,
    MAX_EXPOSURE,
    OWN_DIRS,
    SERVICE_USERS,
    UNITS,
)

pytestmark = pytest.mark.image

EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")
# Private per service (PrivateTmp=, TemporaryFileSystem=): writable, but not the container's.
PRIVATE_TEMP = ("/tmp", "/var/tmp", "/dev/shm")
# Everything writable as the service user, seen from its sandbox: kernel views left out, and
# device nodes (PrivateDevices= binds /dev/null & co. over files, so find's -type says f).
FIND_WRITABLE = (
    "find / \\( -path /proc -o -path /sys \\) -prune -o \\( -type d -o -type f \\) -writable -print"
    " | while IFS= read -r p; do test -c \"$p\" || printf '%s\\n' \"$p\"; done"
)


def exposure(host, unit: str) -> float:
    out = host.check_output(f"systemd-analyze security --no-pager {unit}")
    found = EXPOSURE.search(out.splitlines()[-1])
    assert found and found.group(1) == unit, f"no exposure line for {unit}: {out.splitlines()[-1:]}"
    return float(found.group(2))


def sandbox(host, name: str):
    """run(command) -> CommandResult: `sh -c command` as the running service (module docstring)."""
    unit = UNITS[name]
    pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
    assert pid.isdigit() and pid != "0", f"{unit} is not running"
    status = dict(line.split(":", 1) for line in host.check_output(f"cat /proc/{pid}/status").splitlines())
    uid, gid = status["Uid"].split()[0], status["Gid"].split()[0]
    assert host.user(SERVICE_USERS[name]).uid == int(uid), f"{unit} does not run as {SERVICE_USERS[name]}"
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapAmb"], 16) == 0, (
        f"{unit} holds capabilities: a probe without them would understate what it can do")
    groups = ",".join(status["Groups"].split())
    creds = f"--reuid={uid} --regid={gid} " + (f"--groups={groups}" if groups else "--clear-groups")

    def run(command: str):
        return host.run(f"nsenter -t {pid} -m -- setpriv {creds} --inh-caps=-all --bounding-set=-all "
                        f"--no-new-privs -- sh -c {shlex.quote(command)}")

    return run


@pytest.mark.parametrize("name", sorted(HARDENED_UNITS))
def test_unit_exposure_within_threshold(host, name):
    assert exposure(host, HARDENED_UNITS[name]) <= MAX_EXPOSURE


def test_litellm_cannot_reach_meridian_credentials(host):
    assert host.file(CREDENTIALS_DIR).is_directory  # there to be denied, not absent
    run = sandbox(host, "litellm")
    assert run("test -r /etc/litellm/config.yaml").rc == 0, "probe broken: LiteLLM cannot read its own config"
    assert run(f"ls {shlex.quote(CREDENTIALS_DIR)}").rc != 0
    assert run(f"test -e {shlex.quote(CREDENTIALS_FILE)} || test -r {shlex.quote(CREDENTIALS_FILE)}").rc != 0


def test_meridian_cannot_read_master_key(host):
    assert host.file(MASTER_KEY_ENV).is_file  # there to be denied, not absent
    run = sandbox(host, "meridian")
    assert run(f"test -r {CREDENTIALS_DIR}").rc == 0, "probe broken: Meridian cannot read its own credentials dir"
    assert run(f"test -r {MASTER_KEY_ENV}").rc != 0
    assert run(f"cat {MASTER_KEY_ENV}").rc != 0


@pytest.mark.scan
@pytest.mark.parametrize("name", sorted(UNITS))
def test_service_writes_only_its_own_dirs(host, name):
    run = sandbox(host, name)
    found = run(FIND_WRITABLE)
    assert found.stdout.strip(), f"probe broken: nothing writable at all ({found.stderr[-300:]})"
    own = (*OWN_DIRS[name], *PRIVATE_TEMP)
    stray = [p for p in found.stdout.split("\n") if p and not any(p == d or p.startswith(d + "/") for d in own)]
    assert stray == []
    for path in PRIVATE_TEMP:  # writable there, but its own, not the container's
        inside = run(f"stat -c %d:%i {path}").stdout.strip()
        assert inside and inside != host.check_output(f"stat -c %d:%i {path}"), f"{path} is shared"


def test_litellm_logs_no_trusted_proxy_ranges_warning(host):
    log = host.check_output(f"journalctl -b -u {UNITS['litellm']} --no-pager -o cat")
    assert [line for line in log.splitlines() if "trusted_proxy_ranges" in line] == []
