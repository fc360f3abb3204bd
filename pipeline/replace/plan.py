"""The replace as a state machine: from any state, the next step towards the target.

``next_step(world, target)`` names the first step still needed; ``simulate`` applies a
step's effect to the model. The executor asks ``next_step`` of the *real* state after
every step, so a rerun after a crash anywhere continues where the real state stands.
The plan printed before anything runs is the same rules folded over the model.

When only extension layers differ (same system key), the container stays and the layers are
swapped in place: ``upload -> stage -> switch -> gate``.

Order of a replace (docs/replace-ct.md). On a rootfs storage that makes linked clones, everything slow
happens before the stop, while the old container still serves; the window from ``stop`` to
``seed`` holds only O(1) steps::

    upload -> base (CT from the archive) -> templatize -> holder
           -> stop -> park (mp0 to holder) -> delete -> clone -> unpark (mp0 back)
           -> start -> seed -> gate -> prune -> prune_uploads

On other storages (dir) ``create`` from the archive takes the place of base/templatize/clone,
inside the window (the plan says so).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.contract import CREDENTIALS_MOUNT
from pipeline.errors import PipelineError
from pipeline.replace.state import CT, ROLE_TEMPLATE, World, with_ct, with_holder
from pipeline.replace.template_file import TemplateRef

EXIT_NOTHING = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


class PlanError(PipelineError):
    """The current state is one the replace refuses to touch."""


STEPS: dict[str, str] = {
    "upload": "upload template {target} to the template storage",
    "stage": "copy the changed extensions of {target} into CT {ct} (it keeps serving)",
    "switch": "swap them in place in CT {ct}: sysext refresh, restart {units}",
    "base": "create CT {base} from {target}, to become its CT template (while CT {ct} still serves)",
    "templatize": "convert CT {base} into a CT template",
    "holder": "create the holder CT {holder} (never started) for the credentials volume",
    "stop": "shut down CT {ct}",
    "park": "move the credentials volume (mp0) from CT {ct} to CT {holder}",
    "delete": "delete CT {ct} (purge; its rootfs only, the credentials volume is on CT {holder})",
    "create": "create CT {ct} from {target} (extracts the archive: the storage makes no linked clones)",
    "clone": "clone CT {ct} from the CT template {base} (linked clone)",
    "volume": "add a new credentials volume (mp0) to CT {ct}",
    "unpark": "move the credentials volume (mp0) from CT {holder} back to CT {ct}",
    "start": "start CT {ct}",
    "seed": "deliver the cloud-init seed over SSH (one session): services start, cloud-init runs",
    "reseed": "re-seed CT {ct} in place (the configuration changed), restart {reseed_units}",
    "restore": "put CT {ct}'s previous configuration files back and restart their units",
    "gate": "run the acceptance suite (pre-login tier) against CT {ct}",
    "prune": "remove CT templates no deployment needs: CT {prune}",
    "prune_uploads": "delete archives this pipeline uploaded that no kept deployment needs: {stale}",
}
DESTRUCTIVE = frozenset({"stop", "park", "delete"})


@dataclass(frozen=True)
class Plan:
    steps: tuple[str, ...]
    lines: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return EXIT_CHANGES if self.steps else EXIT_NOTHING

    @property
    def destructive(self) -> bool:
        return bool(DESTRUCTIVE & set(self.steps))


def check(world: World, target: TemplateRef, *, adopt: bool) -> None:
    """Refuse states where acting could lose data or touch what is not ours."""
    ct, holder = world.ct, world.holder
    if ct.exists and not ct.ours and not adopt:
        raise PlanError(
            f"CT {ct.vmid} exists but was not created by this pipeline (no 'meridian-pipeline' tag); "
            "nothing was changed",
            hint="check container.vmid in the site file, or pass --adopt to take it over",
        )
    if ct.mp0_elsewhere:
        raise PlanError(
            f"CT {ct.vmid}: mp0 is mounted at {ct.mp0_elsewhere}, not {CREDENTIALS_MOUNT}; "
            "nothing was changed",
            hint=f"the credentials volume must be mp0 at {CREDENTIALS_MOUNT}",
        )
    if ct.exists and not ct.ours and not ct.volume:
        raise PlanError(
            f"CT {ct.vmid} has no credentials volume (mp0 at {CREDENTIALS_MOUNT}): its OAuth "
            "credentials live on its root disk and a replace would delete them; nothing was changed",
            hint=f"move {CREDENTIALS_MOUNT} onto a mount point mp0 first, then rerun with --adopt",
        )
    if holder.exists and not (holder.ours and holder.holder):
        raise PlanError(
            f"CT {holder.vmid} exists but is not this pipeline's holder container; nothing was changed",
            hint="choose a free container.holder_vmid in the site file",
        )
    if holder.running:
        raise PlanError(
            f"holder CT {holder.vmid} is running; it must never run; nothing was changed",
            hint=f"shut it down (pct shutdown {holder.vmid}) and rerun",
        )
    for c in (ct, holder):
        if c.lock:
            raise PlanError(
                f"{c.describe()}; {world.volume_location()}; nothing was changed",
                hint=f"wait for the task holding the lock, or `pct unlock {c.vmid}` if none runs",
            )
    if world.linked and world.base_vmid(target) is None and not world.prunable():
        raise PlanError(
            f"no free CTID for a new CT template: container.template_vmids {list(world.slots)} are all "
            "taken by CT templates a deployment still needs; nothing was changed",
            hint="add a CTID to container.template_vmids in the site file")
    for base in world.bases:
        if base.lock:
            raise PlanError(f"template {base.describe()}; nothing was changed",
                            hint=f"wait for the task holding the lock, or `pct unlock {base.vmid}` if none runs")
    if ct.volume and holder.volume:
        raise PlanError(f"both CT {ct.vmid} and CT {holder.vmid} carry an mp0 volume; "
                        "resolve by hand, nothing was changed")
    if world.volume_known and not ct.volume and not holder.volume:
        raise PlanError(
            f"the credentials volume is neither on CT {ct.vmid} nor on CT {holder.vmid}, but the "
            "journal records one; refusing to create an empty one; nothing was changed",
            hint="find it (pvesm list <storage>) and attach it as mp0 of either CT",
        )


def next_step(world: World, target: TemplateRef) -> str | None:
    ct, holder = world.ct, world.holder
    # A container this state dir did not create is rebuilt: we cannot know its seed, and
    # our deploy key is not in it. The volume goes through the holder as in any replace.
    outdated = ct.exists and (
        ct.template != target or not world.known
        or (world.force_replace is not None and ct.deployment == world.force_replace))
    volume_parked = bool(holder.volume) and not ct.volume
    base = world.base_for(target)
    if not world.uploaded:
        return "upload"
    if world.swappable:
        return "switch" if world.staged else "stage"
    if world.linked and (outdated or not ct.exists) and not (base and base.is_template):
        if base:
            return "templatize"
        return "base" if world.base_vmid(target) is not None else "prune"
    if not holder.exists and ct.exists and outdated:  # a first deploy needs none: its next replace makes it
        return "holder"
    if ct.exists and ct.running and (outdated or volume_parked):
        return "stop"
    if outdated and ct.volume:
        return "park"
    if outdated:
        return "delete"
    if not ct.exists:
        return "clone" if world.linked else "create"
    if volume_parked:
        return "unpark"
    if not ct.volume and not world.volume_known:
        return "volume"
    if not ct.running:
        return "start"
    if not world.seeded:
        return "seed"
    if world.restore_seed:
        return "restore"
    if world.seed_stale:
        return "reseed"
    if not world.gated:
        return "gate"
    if world.prunable():
        return "prune"
    if world.stale_uploads:
        return "prune_uploads"
    return None


def simulate(world: World, step: str, target: TemplateRef) -> World:
    """The model's effect of ``step``: what the real step must achieve."""
    ct, holder = world.ct, world.holder
    if step == "upload":
        return replace(world, uploaded=True)
    if step == "reseed":
        return replace(world, seed_stale=False, gated=False)
    if step == "restore":
        return replace(world, restore_seed=False, gated=False)
    if step == "stage":
        return replace(world, staged=True)
    if step == "switch":
        return replace(with_ct(world, template=target), swappable=False, staged=False, gated=False)
    if step == "base":
        vmid = world.base_vmid(target)
        assert vmid is not None
        new_base = CT(vmid, exists=True, ours=True, role=ROLE_TEMPLATE, template=target)
        return replace(world, bases=(*world.bases, new_base))
    if step == "templatize":
        return replace(world, bases=tuple(replace(b, is_template=True) if b.template == target else b
                                          for b in world.bases))
    if step == "prune":
        gone = set(world.prunable())
        return replace(world, bases=tuple(b for b in world.bases if b.vmid not in gone))
    if step == "prune_uploads":
        return replace(world, stale_uploads=())
    if step == "volume":
        return with_ct(world, volume="(new volume)")
    if step == "holder":
        return with_holder(world, exists=True, ours=True, holder=True)
    if step == "stop":
        return with_ct(world, running=False)
    if step == "park":
        return with_ct(with_holder(world, volume=ct.volume), volume=None)
    if step == "delete":
        return replace(world, ct=CT(ct.vmid), seeded=False, gated=False, known=False)
    if step == "create":
        fresh = None if holder.volume else "(new volume)"
        new = CT(ct.vmid, exists=True, ours=True, template=target, volume=fresh)
        return replace(world, ct=new, seeded=False, gated=False, volume_known=True, known=True)
    if step == "clone":
        new = CT(ct.vmid, exists=True, ours=True, template=target, base=world.base_vmid(target))
        return replace(world, ct=new, seeded=False, gated=False, known=True)
    if step == "unpark":
        return with_holder(with_ct(world, volume=holder.volume), volume=None)
    if step == "start":
        return with_ct(world, running=True)
    if step == "seed":
        return replace(world, seeded=True)
    if step == "gate":
        return replace(world, gated=True)
    raise ValueError(step)


def make_plan(world: World, target: TemplateRef, *, adopt: bool) -> Plan:
    """The steps from ``world`` to a gated container from ``target``, as printable lines."""
    check(world, target, adopt=adopt)
    steps: list[str] = []
    lines: list[str] = []
    for _ in range(len(STEPS) + 1):
        name = next_step(world, target)
        if name is None:
            break
        steps.append(name)
        lines.append(step_line(name, world, target))
        world = simulate(world, name, target)
    else:
        raise AssertionError(f"plan does not converge: {steps}")
    return Plan(tuple(steps), tuple(lines))


def step_line(name: str, world: World, target: TemplateRef) -> str:
    """The printed line of step ``name`` taken from ``world``."""
    return STEPS[name].format(
        ct=world.ct.vmid, holder=world.holder.vmid, target=target.name,
        base=world.base_vmid(target) or "(no free template_vmids slot)",
        prune=", CT ".join(str(v) for v in world.prunable()),
        stale=", ".join(world.stale_uploads),
        units=" ".join(world.swap_units) or "nothing",
        reseed_units=" ".join(world.reseed_units) or "nothing",
    )
