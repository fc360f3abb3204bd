"""Real unprivileged LXC containers on the lab bridge, set up the way Proxmox VE sets them up.

Used by the lab's API server and by boot tests. Everything lives under one lxcpath owned
by the caller (never /var/lib/lxc), so nothing here can touch someone else's containers.

Example::

    from pathlib import Path
    from lab import lxc

    created = lxc.ensure_bridge()                      # mrdlab0 with 10.157.0.1/24
    ct = lxc.Container("boot-test", Path("/tmp/lab-state/lxc"))
    lxc.extract_template(Path("debian-12.tar.zst"), ct.rootfs)
    ct.write_config(address="10.157.0.50/24", gateway="10.157.0.1")
    ct.start()
    try:
        ct.wait_running(timeout=120)                   # dumps the journal if it never gets there
        print(ct.attach(["systemctl", "is-system-running"]).stdout)
    finally:
        ct.destroy()
        if created:
            lxc.remove_bridge()
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import CommandError, LabError
from lab.process import ANY_EXIT, run_command

BRIDGE = "mrdlab0"
GATEWAY = "10.157.0.1"
NETWORK = ipaddress.ip_network("10.157.0.0/24")
# Proxmox maps container root to host uid/gid 100000 with 65536 ids (and /etc/sub[ug]id agrees).
ID_BASE = 100000
ID_COUNT = 65536
USERNSEXEC_MAP = ["-m", f"u:0:{ID_BASE}:{ID_COUNT}", "-m", f"g:0:{ID_BASE}:{ID_COUNT}"]
# Exactly Proxmox's extraction (pve-container LXC::Create::restore_archive).
TAR_EXTRACT = [
    "tar", "xpf", "-", "--zstd", "--totals", "--numeric-owner", "--acls", "--xattrs",
    "--skip-old-files", "--anchored", "--exclude", "./dev/*",
]
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLL_SECONDS = 1.0
# Address leases shared by every lab user on this machine (server, boot tests).
LEASES = Path("/run/meridian-lab/leases")


class LxcError(LabError):
    """A lab container that cannot be created, started or reached."""


def check_lab_address(cidr: str) -> ipaddress.IPv4Interface:
    """Refuse any address outside the lab subnet (network safety: the lab talks to nothing else)."""
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError as exc:
        raise LxcError(f"address {cidr!r} is not IPv4 with /prefix", hint="e.g. 10.157.0.50/24") from exc
    if iface.ip not in NETWORK or iface.network != NETWORK or iface.ip == NETWORK.network_address:
        raise LxcError(
            f"address {cidr} is not a host address in the lab subnet {NETWORK}",
            hint=f"lab containers use {NETWORK} on bridge {BRIDGE} only",
        )
    return iface


def bridge_exists(name: str = BRIDGE) -> bool:
    return Path("/sys/class/net", name, "bridge").is_dir()


def ensure_bridge(name: str = BRIDGE, address: str = f"{GATEWAY}/{NETWORK.prefixlen}") -> bool:
    """Create the lab bridge with its address unless it exists; True when this call created it."""
    if bridge_exists(name):
        return False
    run_command(["ip", "link", "add", name, "type", "bridge"])
    run_command(["ip", "addr", "add", address, "dev", name])
    run_command(["ip", "link", "set", name, "up"])
    return True


def remove_bridge(name: str = BRIDGE) -> bool:
    """Delete the lab bridge unless a container is still attached; True when deleted.

    Call it only when you created the bridge (see ensure_bridge). Several test sessions
    and the lab server share it, so it stays while anyone's veth is on it.
    """
    if not bridge_exists(name) or any(Path("/sys/class/net", name, "brif").iterdir()):
        return False
    run_command(["ip", "link", "del", name])
    return True


def lease_address(first: int = 100, last: int = 250) -> str:
    """Claim a free lab address (e.g. "10.157.0.100/24") for a test container, across processes.

    A lease is a file holding the owner's PID; leases of dead processes are taken over.
    Addresses the bridge has seen recently (a container started without a lease) are skipped.
    """
    seen = _neighbours()
    for host in range(first, last + 1):
        address = f"{NETWORK.network_address + host}/{NETWORK.prefixlen}"
        if address.split("/")[0] not in seen and claim_address(address):
            return address
    raise LxcError(f"no free lab address in {NETWORK} .{first}-.{last}", hint=f"see {LEASES}")


def claim_address(address: str) -> bool:
    """Take the lease on one address; False when a live process holds it."""
    LEASES.mkdir(parents=True, exist_ok=True)
    lease = LEASES / address.split("/")[0]
    # Linked into place whole, so a reader never sees a lease without its PID.
    draft = LEASES / f".{lease.name}.{os.getpid()}"
    draft.write_text(str(os.getpid()))
    try:
        for _ in range(2):  # the second round after removing a stale lease
            try:
                os.link(draft, lease)
                return True
            except FileExistsError:
                holder = lease.read_text().strip()
                if holder == str(os.getpid()):
                    return True  # ours already (the lab server restarting a container)
                if _alive(holder):
                    return False
                lease.unlink(missing_ok=True)
        return False
    finally:
        draft.unlink()


def _neighbours() -> set[str]:
    if not bridge_exists():
        return set()
    entries = json.loads(run_command(["ip", "-j", "neigh", "show", "dev", BRIDGE]).stdout or "[]")
    return {e["dst"] for e in entries if not {"FAILED", "INCOMPLETE"} & set(e.get("state", []))}


def release_address(address: str) -> None:
    (LEASES / address.split("/")[0]).unlink(missing_ok=True)


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path("/proc", pid).exists()


def extract_template(template: Path, rootfs: Path, timeout: float = 900) -> str:
    """Unpack a Proxmox template (.tar.zst) into rootfs with the uid shift, as Proxmox does.

    Returns tar's output (the --totals line). The rootfs ends up owned by host uid 100000.
    """
    rootfs.mkdir(parents=True, exist_ok=True)
    os.chown(rootfs, ID_BASE, ID_BASE)
    os.chmod(rootfs, 0o755)
    # Streamed on stdin, as Proxmox does: the mapped root may not be able to open the path.
    with open(template, "rb") as archive:
        proc = run_command(
            ["lxc-usernsexec", *USERNSEXEC_MAP, "--", *TAR_EXTRACT, "-C", str(rootfs)],
            stdin=archive, timeout=timeout,
        )
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class Mount:
    """A host directory bind-mounted into the container (how the lab emulates mpN volumes)."""

    source: Path
    target: str  # absolute path inside the container


@dataclass
class Container:
    """One unprivileged container in its own lxcpath; its config is lxcpath/name/config."""

    name: str
    lxcpath: Path
    rootfs_dir: Path | None = None  # default: lxcpath/name/rootfs

    @property
    def dir(self) -> Path:
        return self.lxcpath / self.name

    @property
    def rootfs(self) -> Path:
        return self.rootfs_dir or self.dir / "rootfs"

    @property
    def config_path(self) -> Path:
        return self.dir / "config"

    @property
    def log_path(self) -> Path:
        return self.dir / "lxc.log"

    def _lxc(self, tool: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        return run_command([tool, "-n", self.name, "-P", str(self.lxcpath), *args], **kwargs)

    def write_config(
        self,
        *,
        address: str | None,
        gateway: str | None = GATEWAY,
        hostname: str | None = None,
        mounts: Sequence[Mount] = (),
        nesting: bool = False,
        memory_mib: int | None = None,
        hwaddr: str | None = None,
        lxc_sets_address: bool = True,
    ) -> None:
        """Write an unprivileged LXC config: idmap, veth eth0 on the lab bridge, rootfs, mounts.

        The address must be in the lab subnet; LXC sets it on eth0 unless ``lxc_sets_address``
        is off: then the container's ifupdown does, from the /etc/network/interfaces Proxmox
        writes (setting it twice fails networking.service). No address: no network at all.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.lxcpath, 0o755)
        os.chmod(self.dir, 0o755)
        lines = [
            "lxc.include = /usr/share/lxc/config/debian.common.conf",
            "lxc.include = /usr/share/lxc/config/debian.userns.conf",
            f"lxc.uts.name = {hostname or self.name}",
            f"lxc.idmap = u 0 {ID_BASE} {ID_COUNT}",
            f"lxc.idmap = g 0 {ID_BASE} {ID_COUNT}",
            f"lxc.rootfs.path = dir:{self.rootfs}",
            "lxc.apparmor.profile = unconfined",
            *_network(address, gateway if lxc_sets_address else None, hwaddr, lxc_sets_address),
        ]
        if memory_mib:
            lines.append(f"lxc.cgroup.memory.limit_in_bytes = {memory_mib * 1024 * 1024}")
        if nesting:
            # What Proxmox adds for features=nesting=1: /proc and /sys writable enough to nest.
            lines.append("lxc.mount.auto = proc:rw sys:rw cgroup:rw")
        for mount in mounts:
            target = mount.target.lstrip("/")
            lines.append(f"lxc.mount.entry = {mount.source} {target} none bind,create=dir 0 0")
        lines.append(f"lxc.console.logfile = {self.dir / 'console.log'}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def state(self) -> str:
        """RUNNING, STOPPED, STARTING, STOPPING ... STOPPED when it has no config or LXC cannot
        load it (a broken guest is listed as Proxmox lists it, never an error for the caller)."""
        if not self.config_path.exists():
            return "STOPPED"
        proc = self._lxc("lxc-info", "-s", "-H", check=ANY_EXIT)
        return proc.stdout.strip() if proc.returncode == 0 else "STOPPED"

    def config_problem(self) -> str | None:
        """Why LXC cannot load this container's config (its own words), or None."""
        if not self.config_path.exists():
            return None
        proc = self._lxc("lxc-info", "-s", "-H", check=ANY_EXIT)
        if proc.returncode == 0:
            return None
        return (proc.stderr.strip().splitlines() or ["lxc-info failed"])[-1]

    def pid(self) -> int | None:
        if self.state() != "RUNNING":
            return None
        out = self._lxc("lxc-info", "-p", "-H").stdout.strip()
        return int(out) if out.isdigit() else None

    def start(self) -> None:
        """Start daemonized; the LXC log of this start is in log_path."""
        self.log_path.unlink(missing_ok=True)
        try:
            self._lxc("lxc-start", "-d", "-o", str(self.log_path), "-l", "INFO", timeout=60)
        except CommandError as exc:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise LxcError(f"lxc-start {self.name} failed: {exc}\n{_tail(log)}") from exc

    def stop(self, timeout: int = 30, force: bool = False, kill_after: bool = True) -> None:
        """Clean shutdown (SIGRTMIN+3 to systemd), killed after timeout unless kill_after is
        False (then it may still run); force kills at once."""
        if self.state() == "STOPPED":
            return
        args = ["-k"] if force else ["-t", str(timeout), *([] if kill_after else ["--nokill"])]
        self._lxc("lxc-stop", *args, timeout=timeout + 30, check=(0, 1, 2))

    def destroy(self, keep_rootfs: bool = False) -> None:
        """Stop (forced) and remove the container's directory, and its rootfs unless kept."""
        self.stop(force=True)
        if not keep_rootfs:
            shutil.rmtree(self.rootfs, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def attach(
        self, cmd: Sequence[str], *, check: Sequence[int] = (0,), timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run cmd inside the container with a clean environment; stdout/stderr captured."""
        return self._lxc(
            "lxc-attach", "--clear-env", "--set-var", f"PATH={CONTAINER_PATH}",
            "--set-var", "LC_ALL=C.UTF-8", "--", *cmd,
            check=check, timeout=timeout, input=input,
        )

    def system_state(self) -> str:
        """systemctl is-system-running inside (initializing, starting, running, degraded ...)."""
        if self.state() != "RUNNING":
            return "offline"
        proc = self.attach(["systemctl", "is-system-running"], check=ANY_EXIT, timeout=30)
        return proc.stdout.strip() or "unknown"

    def wait_running(self, timeout: float = 120, accept: Sequence[str] = ("running", "degraded")) -> str:
        """Wait (bounded) for systemd to settle; on timeout raise with failed units and journal."""
        deadline = time.monotonic() + timeout
        state = "offline"
        for _ in range(int(timeout / POLL_SECONDS) + 1):
            state = self.system_state()
            if state in accept:
                return state
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        raise LxcError(
            f"container {self.name} did not reach {'/'.join(accept)} within {timeout:.0f}s "
            f"(last state: {state})\n{self.diagnostics()}",
            hint=f"LXC log: {self.log_path}, console: {self.dir / 'console.log'}",
        )

    def diagnostics(self) -> str:
        """Failed units and the journal tail, or the LXC log when the container is not running."""
        if self.state() != "RUNNING":
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            return "LXC log:\n" + _tail(log)
        failed = self.attach(["systemctl", "--failed", "--no-legend"], check=ANY_EXIT).stdout
        journal = self.attach(
            ["journalctl", "-b", "--no-pager", "-n", "80"], check=ANY_EXIT
        ).stdout
        return f"failed units:\n{failed}\njournal:\n{journal}"

    def journal(self) -> str:
        """The whole journal of the current boot (for a test's failure report)."""
        return self.attach(["journalctl", "-b", "--no-pager"], check=ANY_EXIT).stdout


def _network(address: str | None, gateway: str | None, hwaddr: str | None,
             set_address: bool = True) -> list[str]:
    if address is None:
        return ["lxc.net.0.type = empty"]
    iface = check_lab_address(address)
    lines = [
        "lxc.net.0.type = veth",
        f"lxc.net.0.link = {BRIDGE}",
        "lxc.net.0.name = eth0",
        "lxc.net.0.flags = up",
    ]
    if set_address:
        lines.append(f"lxc.net.0.ipv4.address = {iface.with_prefixlen} {iface.network.broadcast_address}")
    if gateway:
        lines.append(f"lxc.net.0.ipv4.gateway = {gateway}")
    if hwaddr:
        lines.append(f"lxc.net.0.hwaddr = {hwaddr}")
    return lines


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
