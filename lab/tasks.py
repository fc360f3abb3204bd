"""Proxmox-style asynchronous tasks: UPIDs, a log per task, and an exit status.

A task's work runs in a thread of the server; its record and log live in STATE/tasks/ so
they survive a server restart (a task cut off by a restart ends as ``unexpected status``).
The exit status is ``OK``, ``WARNINGS: N`` (success with N warnings) or the error text.

Example::

    def work(log: TaskLog) -> None:
        log.line("extracting archive")
        log.warn("Systemd 252 detected. You may need to enable nesting.")

    upid = tasks.start("vzstart", "457", "pipeline@pve!lab", work)
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.errors import LabError

COSTS: dict[str, float] = yaml.safe_load((Path(__file__).parent / "data" / "costs.yml").read_text())


def floors(raised: Path | None = None) -> dict[str, float]:
    """The least time each task type takes on a real node (lab/README.md, Cost model). A lab's
    own ``raised`` file (STATE/costs.yml) may make tasks slower, never faster: tests that watch
    a task while it runs use it to hold the task open on a loaded machine."""
    extra = yaml.safe_load(raised.read_text()) if raised and raised.exists() else {}
    return {kind: max(float(COSTS.get(kind, 0.0)), float(extra.get(kind, 0.0))) for kind in COSTS | extra}


class TaskFailed(Exception):
    """Ends a task with this message as its exit status (Proxmox's die "...\\n")."""


class TaskLog:
    def __init__(self, path: Path, floor: float = 0.0) -> None:
        self.path = path
        self.warnings = 0
        self.deadline = time.monotonic() + floor

    def settle(self) -> None:
        """Wait out the rest of the task's floor (lab/data/costs.yml): what a real node would still
        be doing. Work calls this just before its visible effect (lock removed, lxc-start, config
        gone); the runner calls it again at the end."""
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def line(self, text: str) -> None:
        with open(self.path, "a") as fh:
            for line in text.rstrip("\n").split("\n"):
                fh.write(line + "\n")

    def warn(self, text: str) -> None:
        self.warnings += 1
        self.line(f"WARN: {text}")


@dataclass
class Upid:
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str

    def __str__(self) -> str:
        return (f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
                f"{self.type}:{self.id}:{self.user}:")

    @classmethod
    def parse(cls, text: str) -> Upid | None:
        parts = text.split(":")
        if len(parts) != 9 or parts[0] != "UPID" or parts[8] != "":
            return None
        try:
            return cls(parts[1], int(parts[2], 16), int(parts[3], 16), int(parts[4], 16),
                       parts[5], parts[6], parts[7])
        except ValueError:
            return None


class Tasks:
    def __init__(self, root: Path, node: str, task_floors: dict[str, float] | None = None) -> None:
        self.root = root
        self.node = node
        self.floors = task_floors if task_floors is not None else floors()
        self._lock = threading.Lock()
        self._last_pstart = 0
        root.mkdir(parents=True, exist_ok=True)

    def _files(self, upid: str) -> tuple[Path, Path]:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", upid)
        return self.root / f"{name}.json", self.root / f"{name}.log"

    def _new_upid(self, kind: str, ident: str, user: str) -> Upid:
        # Threads share the server's PID; pstart (10 ms ticks, strictly increasing) keeps UPIDs unique.
        with self._lock:
            pstart = max(int(time.monotonic() * 100) & 0xFFFFFFFF, self._last_pstart + 1)
            self._last_pstart = pstart
        return Upid(self.node, os.getpid(), pstart, int(time.time()), kind, ident, user)

    def start(self, kind: str, ident: str, user: str, work: Callable[[TaskLog], None]) -> str:
        upid = self._new_upid(kind, ident, user)
        record = {**upid.__dict__, "upid": str(upid), "status": "running"}
        meta, log_path = self._files(str(upid))
        log_path.touch()
        self._write(meta, record)
        task_log = TaskLog(log_path, self.floors.get(kind, 0.0))
        thread = threading.Thread(target=self._run, args=(record, meta, task_log, work), name=str(upid), daemon=True)
        thread.start()
        return str(upid)

    def _run(self, record: dict, meta: Path, log: TaskLog, work: Callable[[TaskLog], None]) -> None:
        try:
            work(log)
            # A successful task takes at least its floor: a real node's fixed cost of it.
            log.settle()
            status = f"WARNINGS: {log.warnings}" if log.warnings else "OK"
        except (TaskFailed, LabError) as exc:
            status = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
            log.line(f"TASK ERROR: {str(exc).strip()}")
        except Exception as exc:  # a lab bug: still end the task, with the trace in its log
            status = f"lab internal error: {exc}"
            log.line(traceback.format_exc())
            log.line(f"TASK ERROR: {status}")
        if status.startswith(("OK", "WARNINGS")):
            log.line(f"TASK {status}")
        self._write(meta, {**record, "status": "stopped", "exitstatus": status, "endtime": int(time.time())})

    @staticmethod
    def _write(meta: Path, record: dict) -> None:
        draft = meta.with_suffix(".tmp")
        draft.write_text(json.dumps(record))
        os.replace(draft, meta)

    def status(self, upid: str) -> dict | None:
        meta, _ = self._files(upid)
        return json.loads(meta.read_text()) if Upid.parse(upid) and meta.exists() else None

    def log(self, upid: str) -> list[str]:
        _, log_path = self._files(upid)
        return log_path.read_text().splitlines() if log_path.exists() else []

    def all(self) -> list[dict]:
        records = [json.loads(p.read_text()) for p in self.root.glob("*.json")]
        return sorted(records, key=lambda r: (r["starttime"], r["pstart"]), reverse=True)

    def recover(self) -> None:
        """At server start: tasks whose thread died with the previous server end as Proxmox shows them."""
        for record in self.all():
            if record["status"] == "running":
                meta, _ = self._files(record["upid"])
                self._write(meta, {**record, "status": "stopped", "exitstatus": "unexpected status",
                                   "endtime": int(time.time())})
