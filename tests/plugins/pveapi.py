"""Helpers to drive a lab (or any Proxmox VE API) with proxmoxer, shared by tests and benchmarks."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from proxmoxer import ProxmoxAPI

from pipeline.runner import run

NODE = "pve01"
NET = "name=eth0,bridge=mrdlab0,ip={ip}/24,gw=10.157.0.1"
TASK_TIMEOUT = 180


def wait_task(px: ProxmoxAPI, upid: str, timeout: float = TASK_TIMEOUT) -> tuple[str, list[str]]:
    """Bounded wait for a task; (exitstatus, log lines)."""
    node = px.nodes(NODE)
    for _ in range(int(timeout / 0.5)):
        status = node.tasks(upid).status.get()
        if status["status"] == "stopped":
            log = [line["t"] for line in node.tasks(upid).log.get(limit=1000)]
            return status["exitstatus"], log
        time.sleep(0.5)
    raise AssertionError(f"task {upid} still running after {timeout}s")


def ok(px: ProxmoxAPI, upid: str) -> list[str]:
    """Wait for a task and assert it succeeded (OK or WARNINGS: N); its log lines."""
    status, log = wait_task(px, upid)
    assert status == "OK" or status.startswith("WARNINGS:"), "\n".join(log)
    return log


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upload(px: ProxmoxAPI, path: Path, name: str, checksum: str) -> str:
    """proxmoxer names the file part after the open file: upload through a link called name."""
    link = path.with_name(name)
    link.unlink(missing_ok=True)
    link.symlink_to(path)
    try:
        with open(link, "rb") as fh:
            return px.nodes(NODE).storage("local").upload.post(
                content="vztmpl", filename=fh, **{"checksum-algorithm": "sha256", "checksum": checksum}
            )
    finally:
        link.unlink()


def ssh(key: Path, ip: str, command: str) -> str:
    return run(["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", f"root@{ip}", command],
               timeout=30).stdout


def ssh_when_up(key: Path, ip: str, command: str, tries: int = 30) -> str:
    """ssh() once the container answers (bounded: ``tries`` attempts a second apart)."""
    for _ in range(tries):
        try:
            return ssh(key, ip, command)
        except Exception:
            time.sleep(1)
    return ssh(key, ip, command)
