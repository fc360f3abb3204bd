"""What the replace acts on: the container, its holder, and the facts the journal adds.

``read_world`` reads it from Proxmox; the plan (plan.py) works on the same frozen model,
so the printed plan and the executed steps come from one set of rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from pipeline.contract import CREDENTIALS_MOUNT
from pipeline.replace.template_file import TemplateRef

MARKER_TAG = "meridian-pipeline"
HOLDER_TAG = "meridian-holder"
# What a container of ours is for, written as ``role:`` in its description (a clone copies the
# template CT's tags, so a role passed with the clone call is what tells them apart).
ROLE_APPLIANCE = "appliance"
ROLE_HOLDER = "holder"
ROLE_TEMPLATE = "template"
# Storage types whose linked clones depend on their base volume: Proxmox refuses to delete a
# template CT while a clone of it exists (docs/proxmox.md, "Templates and linked clones").
BASE_DEPENDENT_STORAGES = frozenset({"zfspool", "rbd"})
# Storage types that can make linked clones of an LXC template (dir, nfs, cifs, lvm cannot).
LINKED_CLONE_STORAGES = frozenset({"lvmthin", "zfspool", "rbd", "btrfs"})
CREDENTIALS_KEY = "mp0"
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
    is_template: bool = False  # a Proxmox CT template (template: 1)
    role: str | None = None  # ROLE_* from our description
    base: int | None = None  # the template CT this one was cloned from
    hwaddr: str | None = None  # net0's MAC address

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
    linked: bool = False  # the rootfs storage makes linked clones of a CT template
    bases: tuple[CT, ...] = ()  # our template CTs (ready or being made), one per template
    slots: tuple[int, ...] = ()  # VMIDs the site reserves for template CTs
    keep: frozenset[TemplateRef] = frozenset()  # templates whose template CT must stay
    force_replace: str | None = None  # deployment to replace even though its template is current
    swappable: bool = False  # only extension layers differ: swap them in place (pipeline/replace/swap.py)
    staged: bool = False  # the target's layers are in the container's store
    swap_units: tuple[str, ...] = ()  # what the swap restarts
    seed_stale: bool = False  # the site now renders another seed than the one delivered
    reseed_units: tuple[str, ...] = ()  # the units that read a changed file
    restore_seed: bool = False  # a re-seed failed the gate: put the previous files back
    stale_uploads: tuple[str, ...] = ()  # volids of archives we uploaded that no kept template is

    def base_for(self, target: TemplateRef) -> CT | None:
        return next((b for b in self.bases if b.template == target), None)

    def base_vmid(self, target: TemplateRef) -> int | None:
        """The template CT of ``target``, or the slot a new one would take."""
        found = self.base_for(target)
        if found:
            return found.vmid
        taken = {b.vmid for b in self.bases}
        return next((v for v in self.slots if v not in taken), None)

    def prunable(self) -> tuple[int, ...]:
        """Template CTs no deployment needs: not kept, not the base of a clone that depends on it."""
        needed = {b for b in (self.ct.base, self.holder.base) if b is not None}
        return tuple(b.vmid for b in self.bases
                     if b.template not in self.keep and b.vmid not in needed)

    def volume_location(self) -> str:
        if self.ct.volume:
            return f"credentials volume {self.ct.volume} is on CT {self.ct.vmid}"
        if self.holder.volume:
            return f"credentials volume {self.holder.volume} is on CT {self.holder.vmid}"
        return "no credentials volume exists yet"

    def summary(self) -> str:
        """One line for error messages: where the container and the credentials are now."""
        return f"{self.ct.describe()}; {self.volume_location()}"


def description(template: TemplateRef, deployment: str, base: int | None = None) -> str:
    """The appliance CT's description: our marker, the template that built it, and the template
    CT it was cloned from (read back by parse_ct)."""
    return (
        f"Managed by {MARKER_TAG}: do not change by hand, it is replaced on every deploy.\n"
        f"role: {ROLE_APPLIANCE}\ntemplate: {template.name}\nsha256: {template.sha256}\n"
        f"deployment: {deployment}\n" + (f"base: {base}\n" if base is not None else "")
    )


def template_description(template: TemplateRef) -> str:
    return (
        f"Managed by {MARKER_TAG}: a CT template the appliance container is cloned from "
        f"(replace-ct keeps those of the latest deployments, --keep).\nrole: {ROLE_TEMPLATE}\n"
        f"template: {template.name}\nsha256: {template.sha256}\n"
    )


def holder_description(base: int | None = None) -> str:
    return (
        f"Managed by {MARKER_TAG}: holds the credentials volume while the appliance container is "
        f"replaced. Never start or delete it.\nrole: {ROLE_HOLDER}\n"
        + (f"base: {base}\n" if base is not None else "")
    )


HOLDER_DESCRIPTION = holder_description()


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("template", "sha256", "deployment", "role", "base"):
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
    role = fields.get("role")
    net0 = dict(p.split("=", 1) for p in str(config.get("net0", "")).split(",") if "=" in p)
    return CT(
        vmid, exists=True, ours=MARKER_TAG in tags, holder=HOLDER_TAG in tags or role == ROLE_HOLDER,
        running=status == "running", lock=config.get("lock") or None, template=template,
        deployment=fields.get("deployment"), volume=volume, other_volumes=others,
        mp0_elsewhere=elsewhere, is_template=str(config.get("template", "0")) == "1", role=role,
        base=int(fields["base"]) if fields.get("base", "").isdigit() else None,
        hwaddr=net0.get("hwaddr"),
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
