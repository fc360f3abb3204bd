"""The lab's one Proxmox node: its state directory and what it reports about itself.

Layout of the state directory (default /var/lib/meridian-lab)::

    ca.pem ca.key server.pem server.key   TLS (clients verify against ca.pem)
    token.secret                          the lab token's secret (0600)
    access.json                           tokens (hashed), ACLs, pools
    owned.json                            what `up` created (the bridge) so `down` removes only that
    etc/pve/lxc/VMID.conf                 one config per container
    storage/local, storage/local-lvm      templates, ISOs, container volumes, on the lab's disk:
    storage.img                           a journaled ext4 in a sparse file, mounted on storage/ (disk.py)
    lxc/VMID/config                       the LXC containers (their own lxcpath)
    tasks/                                task records and logs
    server.pid server.log                 the API server
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from lab import lxc
from lab.access import Access
from lab.storage import Storages
from lab.tasks import Tasks, floors

DEFAULT_STATE = Path("/var/lib/meridian-lab")
DEFAULT_NODE = "pve01"
PVE_VERSION = {"version": "8.4.1", "release": "8.4", "repoid": "meridian-lab"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Node:
    def __init__(self, state: Path, name: str = DEFAULT_NODE) -> None:
        self.state = state
        self.name = name
        self.storages = Storages(state / "storage")
        self.access = Access(state / "access.json")
        self.tasks = Tasks(state / "tasks", name, floors(state / "costs.yml"))

    def owned(self) -> dict:
        """What this lab created on the host and removes at `lab down` (owned.json)."""
        path = self.state / "owned.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def ensure_bridge(self) -> None:
        """The lab bridge exists; when this call had to create it, this lab owns it. Several labs
        (the shared one, tests' private ones, boot tests) share the bridge, and the one that made
        it may take it down while another lab's containers are stopped: so every start asks."""
        if lxc.ensure_bridge():
            owned = self.owned() | {"bridge": lxc.BRIDGE}
            (self.state / "owned.json").write_text(json.dumps(owned))

    @staticmethod
    def uptime_of(pid: int) -> int:
        """Seconds since the process started (the container's init)."""
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        return max(int(_uptime() - start_ticks / CLK_TCK), 0)

    @staticmethod
    def memory_of(name: str) -> int:
        """Bytes charged to the container's memory cgroup (LXC 5 names it lxc.payload.NAME)."""
        usage = Path(f"/sys/fs/cgroup/memory/lxc.payload.{name}/memory.usage_in_bytes")
        return int(usage.read_text()) if usage.exists() else 0

    def status(self) -> dict:
        mem = _meminfo()
        load = os.getloadavg()
        disk = os.statvfs(self.state)
        return {
            "uptime": int(_uptime()),
            "cpu": 0, "wait": 0,
            "loadavg": [f"{x:.2f}" for x in load],
            "kversion": f"Linux {platform.release()}",
            "pveversion": f"pve-manager/{PVE_VERSION['version']}/{PVE_VERSION['repoid']}",
            "cpuinfo": {"cpus": os.cpu_count(), "model": platform.processor() or "lab", "sockets": 1},
            "memory": {"total": mem["MemTotal"], "free": mem["MemAvailable"],
                       "used": mem["MemTotal"] - mem["MemAvailable"]},
            "swap": {"total": mem["SwapTotal"], "free": mem["SwapFree"], "used": mem["SwapTotal"] - mem["SwapFree"]},
            "rootfs": {"total": disk.f_blocks * disk.f_frsize, "avail": disk.f_bavail * disk.f_frsize,
                       "used": (disk.f_blocks - disk.f_bfree) * disk.f_frsize, "free": disk.f_bfree * disk.f_frsize},
            "idle": 0,
            "time": int(time.time()),
        }

    def summary(self) -> dict:
        """The node as /nodes and /cluster/resources list it."""
        mem = _meminfo()
        return {"node": self.name, "status": "online", "type": "node", "id": f"node/{self.name}",
                "cpu": 0, "maxcpu": os.cpu_count(), "mem": mem["MemTotal"] - mem["MemAvailable"],
                "maxmem": mem["MemTotal"], "uptime": int(_uptime()), "level": ""}


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _meminfo() -> dict[str, int]:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0]) * 1024
    return info
