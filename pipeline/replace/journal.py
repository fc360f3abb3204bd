"""The replace's memory between runs: a JSON journal and a lock, both in the site state dir.

The journal holds what Proxmox cannot tell: the operation in progress (target, the
previous template for a rollback, phase), which deployment was seeded and gated, and
whether a credentials volume was ever created. Every write is atomic (temp + rename).
The lock is an flock: the kernel drops it when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.replace.template_file import TemplateRef

EVENTS_KEPT = 200


class Journal:
    """``journal.json`` in the state dir. ``op`` is None when no operation is unfinished."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "replace-journal.json"
        self.data: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"op": None, "events": []}
        except (OSError, ValueError) as exc:
            raise PipelineError(
                f"{self.path}: cannot read the replace journal: {exc}",
                hint="it is JSON written by replace-ct; inspect it, or move it away if you know the state",
            ) from None

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    # -- the operation in progress --------------------------------------------------------

    @property
    def op(self) -> dict[str, Any] | None:
        return self.data.get("op")

    def begin(self, target: TemplateRef, previous: TemplateRef | None,
              force_replace: str | None = None) -> dict[str, Any]:
        """Start (or retarget) the operation; a rollback in progress is kept as it is.
        ``force_replace`` names a deployment to replace even when it runs the target (--full)."""
        op = self.op
        if op and op["phase"] == "rollback":
            return op
        if not op:
            self.data.pop("down_since", None)  # a fresh operation measures its own downtime
        self.data["op"] = {
            "id": op["id"] if op else time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "phase": "deploy",
            "target": asdict(target),
            "previous": asdict(previous) if previous else (op or {}).get("previous"),
            "force_replace": force_replace or (op or {}).get("force_replace"),
            "failed_checks": [],
        }
        self.save()
        return self.data["op"]

    def start_rollback(self, failed_checks: list[str]) -> None:
        op = self.op
        assert op is not None and op["previous"]
        op.update(phase="rollback", failed_checks=failed_checks, wanted=op["target"], target=op["previous"])
        self.save()

    def start_seed_rollback(self, failed_checks: list[str]) -> None:
        """A re-seed failed the gate: same template, the previous configuration goes back."""
        op = self.op
        assert op is not None and op.get("reseeded")
        op.update(phase="rollback", failed_checks=failed_checks, wanted=op["target"], restore_seed=True)
        self.save()

    def finish(self, outcome: str) -> dict[str, Any]:
        done, self.data["op"] = self.op, None
        self.data["last"] = {**(done or {}), "outcome": outcome, "finished": _now()}
        self.save()
        return self.data["last"]

    # -- facts -------------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def event(self, step: str, status: str, **extra: Any) -> None:
        events = self.data.setdefault("events", [])
        events.append({"at": _now(), "step": step, "status": status, **extra})
        del events[:-EVENTS_KEPT]
        self.save()


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold ``replace.lock``; a second run fails at once, naming the holder's PID."""
    path = state_dir / "replace.lock"
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise PipelineError(
                f"another replace-ct holds {path} (PID {holder}); nothing was changed",
                hint="wait for it to finish",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
