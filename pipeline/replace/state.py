"""What the replace acts on: the container, its holder, and the facts the journal adds.

``read_world`` reads it from Proxmox; the plan (plan.py) works on the same frozen model,
so the printed plan and the executed steps come from one set of rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from pipeline.replace.template import TemplateRef

MARKER_TAG = "meridian-pipeline"
HOLDER_TAG = "meridian-holder"
CREDENTIALS_KEY = "mp0"
CREDENTIALS_MOUNT = "/var/lib/meridian"
_VOLUME_KEY = re.compile(r"(mp|unused)\d+$")


@dataclass(frozen=True)
class CT:
    """One container as the replace sees it. ``volume`` is the credentials volume (mp0)."""

    vmid: int
    exists: bool = False
    ours: bool = False
    holder: bool = False
    running: bool = False
    lock: str | None = None
    template: TemplateRef | None = None
    deployment: str | None = None
    volume: str | None = None
    other_volumes: tuple[str, ...] = ()  # mpN/unusedN that a DELETE would free: never ours to lose
    mp0_elsewhere: str | None = None  # mp0 mounted somewhere other than /var/lib/meridian

    def describe(self) -> str:
        if not self.exists:
            return f"CT {self.vmid} does not exist"
        state = "running" if self.running else "stopped"
        lock = f", locked ({self.lock})" if self.lock else ""
        return f"CT {self.vmid} is {state}{lock}"


@dataclass(frozen=True)
class World:
    ct: CT
    holder: CT
    uploaded: bool = False  # the target template is on the template storage
    seeded: bool = False  # the seed went into the current deployment
    gated: bool = False  # the current deployment passed the acceptance gate
    volume_known: bool = False  # a credentials volume was created before: never make a second
    known: bool = False  # this state dir created the CT's deployment (its deploy key is in it)

    def volume_location(self) -> str:
        if self.ct.volume:
            return f"credentials volume {self.ct.volume} is on CT {self.ct.vmid}"
        if self.holder.volume:
            return f"credentials volume {self.holder.volume} is on CT {self.holder.vmid}"
        return "no credentials volume exists yet"

    def summary(self) -> str:
        """One line for error messages: where the container and the credentials are now."""
        return f"{self.ct.describe()}; {self.volume_location()}"


def description(template: TemplateRef, deployment: str) -> str:
    """The CT description: our marker, and which template built it (read back by parse_ct)."""
    return (
        f"Managed by {MARKER_TAG}: do not change by hand, it is replaced on every deploy.\n"
        f"template: {template.name}\nsha256: {template.sha256}\ndeployment: {deployment}\n"
    )


HOLDER_DESCRIPTION = (
    f"Managed by {MARKER_TAG}: holds the credentials volume while the appliance container is "
    "replaced. Never start or delete it.\n"
)


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("template", "sha256", "deployment"):
            out[key.strip()] = value.strip()
    return out


def parse_ct(vmid: int, config: dict[str, Any] | None, status: str = "stopped") -> CT:
    """Build a CT from ``GET .../config`` (None when the CT does not exist)."""
    if config is None:
        return CT(vmid)
    tags = set(re.split(r"[;,\s]+", str(config.get("tags", "")))) - {""}
    fields = _fields(str(config.get("description", "")))
    template = None
    if fields.get("template") and fields.get("sha256"):
        template = TemplateRef(fields["template"], fields["sha256"])
    volume, elsewhere = _credentials(config)
    others = tuple(
        f"{key}={str(value).split(',')[0]}" for key, value in sorted(config.items())
        if _VOLUME_KEY.match(key) and key != CREDENTIALS_KEY
    )
    return CT(
        vmid, exists=True, ours=MARKER_TAG in tags, holder=HOLDER_TAG in tags,
        running=status == "running", lock=config.get("lock") or None, template=template,
        deployment=fields.get("deployment"), volume=volume, other_volumes=others,
        mp0_elsewhere=elsewhere,
    )


def _credentials(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """(volid of mp0 when it is mounted at /var/lib/meridian, else its mount point)."""
    raw = config.get(CREDENTIALS_KEY)
    if not raw:
        return None, None
    parts = str(raw).split(",")
    volid = parts[0].removeprefix("volume=")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if options.get("mp", "").rstrip("/") != CREDENTIALS_MOUNT:
        return None, options.get("mp", "?")
    return volid, None


def with_ct(world: World, **changes: Any) -> World:
    return replace(world, ct=replace(world.ct, **changes))


def with_holder(world: World, **changes: Any) -> World:
    return replace(world, holder=replace(world.holder, **changes))
