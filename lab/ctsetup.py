"""What Proxmox writes into a Debian container (pve-container LXC::Setup::Debian).

At create: machine-id cleared, new SSH host keys, root's authorized_keys, the systemd
preset, timezone. At create and at every start: hostname, hosts, network interfaces,
resolv.conf. Files are written as host root and then handed to the container's root
(uid 100000); paths are never followed through symlinks that leave the rootfs.

Example::

    net = NetConfig.parse("name=eth0,bridge=mrdlab0,ip=10.157.0.57/24,gw=10.157.0.1")
    at_create(rootfs, conf, ssh_keys="ssh-ed25519 AAAA... me@host")
    at_start(rootfs, conf)
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lab.lxc import GATEWAY, ID_BASE
from lab.process import run_command
from lab.pveconf import parse_props
from lab.tasks import TaskFailed, TaskLog

PRESET = (Path(__file__).parent / "data" / "00-pve.preset").read_text()
HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")


@dataclass(frozen=True)
class NetConfig:
    name: str
    bridge: str
    ip: str | None
    gw: str | None
    hwaddr: str | None

    @classmethod
    def parse(cls, value: str) -> NetConfig:
        p = parse_props(value)
        return cls(p.get("name", "eth0"), p.get("bridge", ""), p.get("ip"), p.get("gw"), p.get("hwaddr"))


def detect_os(rootfs: Path) -> str:
    """Proxmox needs /etc/os-release and /etc/debian_version to treat a CT as Debian."""
    if not (_inside(rootfs, "etc/debian_version").is_file() and _inside(rootfs, "etc/os-release").exists()):
        raise TaskFailed("unable to detect OS distribution (no /etc/debian_version or /etc/os-release)")
    version = _inside(rootfs, "etc/debian_version").read_text().strip()
    return f"debian {version}"


def at_create(rootfs: Path, conf: dict[str, str], ssh_keys: str | None, log: TaskLog) -> None:
    detect_os(rootfs)
    _write(rootfs, "etc/machine-id", "")
    _inside(rootfs, "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _write(rootfs, "etc/systemd/system-preset/00-pve.preset", PRESET)
    _host_keys(rootfs, conf.get("hostname", "localhost"), log)
    if ssh_keys:
        _write(rootfs, "root/.ssh/authorized_keys", ssh_keys.rstrip("\n") + "\n", mode=0o600, dir_mode=0o700)
    if conf.get("timezone"):
        _timezone(rootfs, conf["timezone"])
    at_start(rootfs, conf)


def at_start(rootfs: Path, conf: dict[str, str]) -> None:
    hostname = conf.get("hostname", "localhost")
    net = NetConfig.parse(conf["net0"]) if "net0" in conf else None
    _write(rootfs, "etc/hostname", hostname + "\n")
    _write(rootfs, "etc/hosts", _hosts(hostname, net))
    _write(rootfs, "etc/resolv.conf", _resolv(conf))
    _write(rootfs, "etc/network/interfaces", _interfaces(net))


def _hosts(hostname: str, net: NetConfig | None) -> str:
    own = str(ipaddress.ip_interface(net.ip).ip) if net and net.ip and "/" in net.ip else "127.0.1.1"
    return (
        "127.0.0.1 localhost.localdomain localhost\n"
        f"{own} {hostname}\n\n"
        "# The following lines are desirable for IPv6 capable hosts\n"
        "::1     localhost ip6-localhost ip6-loopback\n"
        "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
    )


def _resolv(conf: dict[str, str]) -> str:
    # Proxmox copies the host's nameservers when none is set; the lab never points a
    # container at a real network, so the fallback is the lab gateway.
    servers = re.split(r"[;,\s]+", conf.get("nameserver", GATEWAY).strip())
    search = conf.get("searchdomain")
    lines = ["# --- BEGIN PVE ---"] + ([f"search {search}"] if search else [])
    lines += [f"nameserver {s}" for s in servers if s] + ["# --- END PVE ---"]
    return "\n".join(lines) + "\n"


def _interfaces(net: NetConfig | None) -> str:
    text = "auto lo\niface lo inet loopback\n"
    if net is None:
        return text
    if net.ip and "/" in net.ip:
        text += f"\nauto {net.name}\niface {net.name} inet static\n\taddress {net.ip}\n"
        if net.gw:
            text += f"\tgateway {net.gw}\n"
    elif net.ip in ("dhcp", "manual"):
        text += f"\nauto {net.name}\niface {net.name} inet {net.ip}\n"
    return text


def _host_keys(rootfs: Path, hostname: str, log: TaskLog) -> None:
    for kind in HOST_KEY_TYPES:
        key = _inside(rootfs, f"etc/ssh/ssh_host_{kind}_key")
        if not key.parent.is_dir():
            return  # no SSH server in this template
        for old in (key, key.with_name(key.name + ".pub")):
            old.unlink(missing_ok=True)
        log.line(f"Creating SSH host key '{key.name}' - this may take some time ...")
        run_command(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{hostname}", "-f", key])
        for path in (key, key.with_name(key.name + ".pub")):
            os.chown(path, ID_BASE, ID_BASE)


def _timezone(rootfs: Path, zone: str) -> None:
    if zone == "host":
        zone = "Etc/UTC"
    if not _inside(rootfs, f"usr/share/zoneinfo/{zone}").exists():
        return  # Proxmox only warns; a minimal template may lack tzdata
    link = _inside(rootfs, "etc/localtime")
    link.unlink(missing_ok=True)
    link.symlink_to(f"/usr/share/zoneinfo/{zone}")
    os.lchown(link, ID_BASE, ID_BASE)
    _write(rootfs, "etc/timezone", zone + "\n")


def _inside(rootfs: Path, rel: str) -> Path:
    """rootfs/rel, refusing parents that resolve outside the rootfs (a hostile template's symlinks)."""
    path = rootfs / rel
    parent = path.parent.resolve()
    if parent != rootfs.resolve() and rootfs.resolve() not in parent.parents:
        raise TaskFailed(f"/{rel} leaves the container's root file system (symlink)")
    return parent / path.name


def _write(rootfs: Path, rel: str, content: str, mode: int = 0o644, dir_mode: int = 0o755) -> None:
    path = rootfs / rel
    missing = [p for p in reversed(path.parents) if rootfs in p.parents and not p.exists()]
    for directory in missing:
        directory.mkdir(mode=dir_mode)
        os.chown(directory, ID_BASE, ID_BASE)
    path = _inside(rootfs, rel)
    if path.is_symlink():
        path.unlink()  # e.g. resolv.conf -> systemd-resolved's stub: Proxmox replaces it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.chown(path, ID_BASE, ID_BASE)
    os.chmod(path, mode)
