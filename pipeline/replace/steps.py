"""The replace's steps against the real Proxmox state, and the loop that converges.

``converge`` reads the real state, asks the plan for the next step, runs it, and reads
again: there is no replay of a recorded sequence, so a crash anywhere is continued from
what Proxmox actually shows. Each step journals its start and end.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.cloudinit import activation_script, render_seed
from pipeline.cloudinit.deliver import rewrite_script
from pipeline.config import Site
from pipeline.contract import CREDENTIALS_MOUNT, READY_PATHS
from pipeline.errors import PipelineError
from pipeline.polling import wait_until
from pipeline.progress import console, step
from pipeline.proxmox import Client, ProxmoxError
from pipeline.replace import reseed, swap
from pipeline.replace import state as st
from pipeline.replace.gate import run_gate
from pipeline.replace.journal import Journal
from pipeline.replace.plan import STEPS, check, next_step, step_line
from pipeline.replace.probe import POLL_SECONDS as SERVE_POLL
from pipeline.replace.probe import Endpoint, serving, wait_serving
from pipeline.replace.ssh import SSH, shared
from pipeline.replace.template_file import LocalTemplate, TemplateRef

CRASH_ENV = "MERIDIAN_REPLACE_CRASH_AFTER"  # tests: SIGKILL this process right after step NAME
SHUTDOWN_SECONDS = 60
SERVE_TIMEOUT = 300
CLOUD_INIT_TIMEOUT = 600
LOCK_POLL_SECONDS = 2.0
DEFAULT_KEEP = 2  # the deployed template and the one before it (a rollback's)
# The steps between the stop and the seed: they change CT 457 and the holder, nothing else.
WINDOW_STEPS = frozenset({"stop", "park", "delete", "clone", "unpark", "start"})


class GateFailed(PipelineError):
    def __init__(self, failed: list[str]) -> None:
        super().__init__("acceptance failed: " + ", ".join(failed))
        self.failed = failed


@dataclass
class ReplaceContext:
    site: Site
    px: Client
    journal: Journal
    master_key: str
    suite: Path
    deploy_key: str = ""  # public key line, made once the plan is confirmed
    rootfs_storage_type: str = ""  # lvmthin, zfspool, dir ...: decides linked clone or create
    force_replace: str | None = None  # --full: the deployment to replace although it is current
    _fingerprint: reseed.Fingerprint | None = None

    def fingerprint(self) -> reseed.Fingerprint:
        """What the site renders now (keyed hash of the key), computed once per run."""
        if self._fingerprint is None:
            salt = self.journal.get("seed_salt")
            if not salt:
                salt = reseed.new_salt()
                self.journal.set("seed_salt", salt)
            pub = self.state_dir / "deploy_key.pub"
            self._fingerprint = reseed.fingerprint(self.site, self.master_key,
                                                   pub.read_text().strip() if pub.exists() else "", salt)
        return self._fingerprint
    adopt: bool = False
    local: LocalTemplate | None = None
    downtime: dict[str, float] = field(default_factory=dict)
    keep: int = DEFAULT_KEEP  # --keep: the templates of this many latest deployments stay
    undeletable: set[str] = field(default_factory=set)  # archives whose DELETE failed this run

    @property
    def state_dir(self) -> Path:
        return self.site.site_state_dir

    @property
    def vmid(self) -> int:
        return self.site.container.vmid

    @property
    def holder_vmid(self) -> int:
        return self.site.container.holder_vmid

    @property
    def ports(self) -> tuple[int, int]:
        return (self.site.services.meridian_port, self.site.services.litellm_port)

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        services = self.site.services
        return ((services.meridian_port, READY_PATHS["meridian"]), (services.litellm_port, READY_PATHS["litellm"]))


def template_volid(site: Site, ref: TemplateRef) -> str:
    return f"{site.proxmox.template_storage}:vztmpl/{ref.name}"


# -- reading the real state ------------------------------------------------------------------


def read_world(ctx: ReplaceContext, target: TemplateRef, earlier: st.World | None = None) -> st.World:
    """The real state. With ``earlier`` (the world before a step of the downtime window, which
    changes only CT 457 and the holder), only those two are read again and the CT templates
    and archives are taken from ``earlier``: every API call costs tens of ms on a real node
    (docs/replace-ct.md), and these reads sit inside the window."""
    listed = {int(c["vmid"]): c for c in ctx.px.containers()}
    slots = () if earlier else tuple(ctx.site.container.template_vmids)
    with ThreadPoolExecutor(max_workers=2 + len(slots), thread_name_prefix="read") as pool:
        # One round trip for all the configs, not one after the other.
        ct, holder, *templates = pool.map(lambda v: read_ct(ctx, v, listed), (ctx.vmid, ctx.holder_vmid, *slots))
    if ct.hwaddr and ct.ours and not ctx.journal.get("hwaddr"):
        ctx.journal.set("hwaddr", ct.hwaddr)  # every later CT 457 keeps it: clients' ARP stays valid
    deployed = ct.deployment
    bases = earlier.bases if earlier else tuple(
        b for b in templates if b.exists and b.ours and b.role == st.ROLE_TEMPLATE)
    op = ctx.journal.op or {}
    keep = kept_templates(ctx, target)
    seeded = bool(deployed) and ctx.journal.get("seeded") == deployed
    seed_now = ctx.fingerprint() if seeded else None
    restoring = bool(op.get("restore_seed")) and ctx.journal.get("restored") != op.get("id")
    seed_stale = (seed_now is not None and not op.get("restore_seed")
                  and ctx.journal.get("seed_digest") != seed_now.digest)
    known = bool(deployed) and ctx.journal.get("deployment") == deployed
    force = op.get("force_replace") or ctx.force_replace
    current, wanted = layers_of(ctx, ct.template), layers_of(ctx, target)
    # The target's layers can be had: from its build dir, or from this container's own store when
    # it ran the target before this operation swapped it (a swap back). A container made by this
    # operation's replace never held them: going back means a clone of the previous CT template.
    layers_at_hand = bool(ctx.local and ctx.local.ref == target and ctx.local.build_dir) or (
        bool(deployed) and op.get("swapped") == deployed)
    swappable = bool(ct.running and seeded and known and ct.template and ct.template != target
                     and not (force and ct.deployment == force) and layers_at_hand
                     and current and wanted and current.system == wanted.system)
    archives = {} if earlier else _archives(ctx)
    world = st.World(
        ct=ct, holder=holder, uploaded=earlier.uploaded if earlier else _uploaded(ctx, target, archives),
        seeded=seeded,
        gated=bool(deployed) and ctx.journal.get("gated") == _gate_key(ctx, deployed, target),
        volume_known=bool(ctx.journal.get("volume_created")),
        known=known,
        linked=ctx.rootfs_storage_type in st.LINKED_CLONE_STORAGES,
        bases=bases, slots=tuple(ctx.site.container.template_vmids), keep=frozenset(keep),
        force_replace=force, swappable=swappable,
        staged=swappable and ctx.journal.get("staged") == f"{deployed}:{target.sha256}",
        swap_units=tuple(swap.units_to_restart(current, wanted)) if swappable and current and wanted else (),
        seed_stale=seed_stale, restore_seed=restoring,
        reseed_units=tuple(reseed.units_for(reseed.changed_paths(ctx.journal.get("seed_files") or {},
                                                                 seed_now.files)))
        if seed_stale and seed_now else (),
    )
    if earlier:
        return replace(world, stale_uploads=earlier.stale_uploads)
    return replace(world, stale_uploads=stale_uploads(ctx, world, archives, listed))


def kept_templates(ctx: ReplaceContext, target: TemplateRef) -> set[TemplateRef]:
    """Templates whose CT template and archive stay: those of the ``--keep`` latest deployments
    counting the target as deployed (so the plan shows what goes once it is), and the running
    operation's target and previous (a rollback's way back)."""
    op = ctx.journal.op or {}
    earlier = [r for r in (TemplateRef(**d) for d in ctx.journal.get("deployed") or []) if r != target]
    recent = earlier[max(0, len(earlier) - (ctx.keep - 1)):]
    return {TemplateRef(**op[k]) for k in ("target", "previous") if op.get(k)} | {target, *recent}


def _archives(ctx: ReplaceContext) -> dict[str, int]:
    """volid -> size of every container template on the template storage."""
    items = ctx.px.storage_content(ctx.site.proxmox.template_storage, "vztmpl")
    return {str(i.get("volid")): int(i.get("size", -1)) for i in items}


def stale_uploads(ctx: ReplaceContext, world: st.World, archives: dict[str, int],
                   listed: dict[int, dict[str, Any]]) -> tuple[str, ...]:
    """Archives this state dir uploaded (the journal's record: never anyone else's) that are
    still on the storage and that nothing stands on: not a kept template, not a remaining CT
    template, and no container of this pipeline on the node (any site's: another site may
    deploy the same archive) names it in its description."""
    gone = set(world.prunable())
    needed = set(world.keep) | {b.template for b in world.bases if b.vmid not in gone}
    uploaded = {TemplateRef(**u): template_volid(ctx.site, TemplateRef(**u)) for u in ctx.journal.get("uploads") or []}
    candidates = {u: v for u, v in uploaded.items() if u not in needed and v in archives and v not in ctx.undeletable}
    if candidates:
        ours = (v for v, c in listed.items() if st.MARKER_TAG in str(c.get("tags", "")) and v not in gone)
        try:
            needed |= {read_ct(ctx, v, listed).template for v in ours}
        except ProxmoxError:  # e.g. another site's CT still being created: its needs are unknown
            return ()
    return tuple(v for u, v in candidates.items() if u not in needed)


def _record(ctx: ReplaceContext, key: str, ref: TemplateRef) -> None:
    """Append ``ref`` to the journal's list ``key`` (once; most recent last)."""
    entries = [e for e in ctx.journal.get(key) or [] if TemplateRef(**e) != ref]
    ctx.journal.set(key, [*entries, {"name": ref.name, "sha256": ref.sha256}])


def _gate_key(ctx: ReplaceContext, deployment: str | None, target: TemplateRef) -> str:
    """What a passed gate vouches for: this container, this template, this configuration."""
    return f"{deployment}:{target.sha256}:{str(ctx.journal.get('seed_digest'))[:16]}"


def layers_of(ctx: ReplaceContext, ref: TemplateRef | None) -> swap.Layers | None:
    """The layer facts of a template: from the local build when it is that template, else as
    the journal recorded them when it was deployed (None: unknown, no swap possible)."""
    if ref is None:
        return None
    if ctx.local and ctx.local.ref == ref and ctx.local.manifest:
        return swap.Layers.from_build(ctx.local.manifest)
    record = (ctx.journal.get("layers") or {}).get(ref.sha256)
    return swap.Layers.from_record(record) if record else None


def remember_layers(ctx: ReplaceContext) -> None:
    """Record the local build's layer facts, so a later swap back (rollback) knows them."""
    if ctx.local and ctx.local.manifest:
        found = swap.Layers.from_build(ctx.local.manifest)
        ctx.journal.set("layers", {**(ctx.journal.get("layers") or {}), ctx.local.ref.sha256: found.as_record()})


def read_ct(ctx: ReplaceContext, vmid: int, listed: dict[int, dict[str, Any]] | None = None) -> st.CT:
    if listed is None:
        listed = {int(c["vmid"]): c for c in ctx.px.containers()}
    if vmid not in listed:
        return st.CT(vmid)
    return st.parse_ct(vmid, ctx.px.ct_config(vmid), str(listed[vmid].get("status", "stopped")))


def _uploaded(ctx: ReplaceContext, ref: TemplateRef, archives: dict[str, int]) -> bool:
    size = archives.get(template_volid(ctx.site, ref))
    if size is None:
        return False
    # The name carries the sha256; the size catches a truncated earlier upload.
    local = ctx.local if ctx.local and ctx.local.ref == ref else None
    return local is None or size == local.size


def wait_for_own_tasks(ctx: ReplaceContext) -> None:
    """After a crash, a task we started may still hold a lock: wait for it (bounded)."""
    def unlocked() -> bool:
        listed = {int(c["vmid"]) for c in ctx.px.containers()}
        ours = (ctx.vmid, ctx.holder_vmid, *ctx.site.container.template_vmids)
        return not any(ctx.px.ct_config(v).get("lock") for v in ours if v in listed)
    wait_until(unlocked, timeout=ctx.site.proxmox.task_timeout, pause=LOCK_POLL_SECONDS)


# -- the loop --------------------------------------------------------------------------------


def converge(ctx: ReplaceContext, target: TemplateRef) -> None:
    """Run steps until the container runs ``target``, seeded and gated."""
    before: st.World | None = None
    for _ in range(2 * len(ACTIONS)):
        world = read_world(ctx, target, before)
        check(world, target, adopt=ctx.adopt)
        name = next_step(world, target)
        if name is None:
            return
        with step(step_line(name, world, target)):
            ctx.journal.event(name, "started", target=target.name)
            try:
                ACTIONS[name](ctx, world, target)
            except PipelineError as exc:
                ctx.journal.event(name, "failed")
                if isinstance(exc, GateFailed):
                    raise
                raise PipelineError(f"{exc.message}\n  state now: {_summary(ctx, target)}", exc.hint) from None
            ctx.journal.event(name, "done")
        before = world if name in WINDOW_STEPS else None
        if os.environ.get(CRASH_ENV) == name:
            os.kill(os.getpid(), signal.SIGKILL)
    raise PipelineError(f"replace did not converge after {2 * len(ACTIONS)} steps: {_summary(ctx, target)}")


def _summary(ctx: ReplaceContext, target: TemplateRef) -> str:
    try:
        return read_world(ctx, target).summary()
    except PipelineError as exc:
        return f"unknown ({exc.message})"


# -- the steps -------------------------------------------------------------------------------


def upload(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    if ctx.local is None or ctx.local.ref != target:
        raise PipelineError(
            f"template {target.name} is not on storage {ctx.site.proxmox.template_storage} "
            "and no local file was given for it",
            hint="pass --template with the build output that made it",
        )
    _record(ctx, "uploads", target)  # before: a half-done upload is ours to clean up too
    upid = ctx.px.upload_template(ctx.site.proxmox.template_storage, ctx.local.path, target.name, target.sha256)
    ctx.px.wait_task(upid, what=f"upload of {target.name}")


def create_holder(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """A linked clone of the target's CT template when that is free (O(1), no dependency on
    the base); else created from the archive (a full extraction, once per site)."""
    c = ctx.site.container
    base = world.base_for(target)
    if base and base.is_template and ctx.rootfs_storage_type not in st.BASE_DEPENDENT_STORAGES:
        upid = ctx.px.clone_ct(base.vmid, ctx.holder_vmid, {
            "hostname": f"{c.hostname}-holder", "description": st.holder_description(),
            "pool": ctx.site.proxmox.pool})
        ctx.px.wait_task(upid, what=f"clone holder CT {ctx.holder_vmid} from CT {base.vmid}")
        return
    params = {
        **_common(ctx, target),
        "hostname": f"{c.hostname}-holder", "memory": 64, "swap": 0, "cores": 1, "onboot": 0,
        "tags": f"{st.MARKER_TAG};{st.HOLDER_TAG}", "description": st.HOLDER_DESCRIPTION,
    }
    upid = ctx.px.create_ct(ctx.holder_vmid, params)
    ctx.px.wait_task(upid, what=f"create holder CT {ctx.holder_vmid}")


def create_base(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """The CT that becomes the target's CT template: the appliance's settings, never started."""
    vmid = world.base_vmid(target)
    if vmid is None:
        raise PipelineError(
            f"no free CTID in container.template_vmids {list(ctx.site.container.template_vmids)} "
            "for the new CT template", hint="add a CTID to container.template_vmids in the site file")
    params = {**_appliance_settings(ctx, target), "hostname": f"{ctx.site.container.hostname}-template",
              "onboot": 0, "description": st.template_description(target)}
    upid = ctx.px.create_ct(vmid, params)
    ctx.px.wait_task(upid, what=f"create CT {vmid} from {target.name}")


def templatize(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    base = world.base_for(target)
    assert base is not None
    ctx.px.convert_to_template(base.vmid)


def clone(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    base = world.base_for(target)
    assert base is not None and base.is_template
    deployment = _new_deployment(ctx, target)
    upid = ctx.px.clone_ct(base.vmid, ctx.vmid, {
        "hostname": ctx.site.container.hostname, "pool": ctx.site.proxmox.pool,
        "description": st.description(target, deployment, base=base.vmid)})
    ctx.px.wait_task(upid, what=f"clone CT {ctx.vmid} from CT template {base.vmid}")


def add_volume(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """First deploy on the clone path: a clone has no mp0 yet; this allocates a new one."""
    ctx.px.update_config(ctx.vmid, {st.CREDENTIALS_KEY: _new_volume(ctx)})
    ctx.journal.set("volume_created", True)


def prune(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """Delete CT templates no deployment needs. One Proxmox refuses (a linked clone still uses
    its base, on zfs or rbd) is kept and named, never an error for the deploy."""
    for vmid in world.prunable():
        try:
            ctx.px.wait_task(ctx.px.delete_ct(vmid), what=f"delete CT template {vmid}")
        except PipelineError as exc:
            console.print(f"kept CT template {vmid}: {exc.message.splitlines()[0]}", markup=False)


def stop(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    # Downtime runs from the first stop of the operation (a rollback stops a second time).
    if not ctx.journal.get("down_since") and serving(ctx.site.container.network.ip, ctx.endpoints):
        ctx.journal.set("down_since", time.time())
    upid = ctx.px.shutdown(ctx.vmid, SHUTDOWN_SECONDS)
    ctx.px.wait_task(upid, what=f"shutdown of CT {ctx.vmid}", timeout=SHUTDOWN_SECONDS + 60)


def park(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    _move(ctx, ctx.vmid, ctx.holder_vmid)


def unpark(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    _move(ctx, ctx.holder_vmid, ctx.vmid)


def _move(ctx: ReplaceContext, source: int, dest: int) -> None:
    upid = ctx.px.move_volume(source, st.CREDENTIALS_KEY, dest)
    ctx.px.wait_task(upid, what=f"move of the credentials volume from CT {source} to CT {dest}")


def delete(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    # Re-read right before the DELETE: it frees every mpN/unusedN volume CT 457 owns.
    now = st.parse_ct(ctx.vmid, ctx.px.ct_config(ctx.vmid))
    if now.volume or now.other_volumes or now.mp0_elsewhere:
        held = ", ".join(filter(None, [now.volume, *now.other_volumes]))
        raise PipelineError(
            f"refusing to delete CT {ctx.vmid}: it still references volumes ({held}) a DELETE would free"
        )
    upid = ctx.px.delete_ct(ctx.vmid)
    ctx.px.wait_task(upid, what=f"delete of CT {ctx.vmid}")


def create(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    deployment = _new_deployment(ctx, target)
    params = {**_appliance_settings(ctx, target), "description": st.description(target, deployment)}
    if not world.holder.volume:  # first deploy: a new credentials volume
        params[st.CREDENTIALS_KEY] = _new_volume(ctx)
    upid = ctx.px.create_ct(ctx.vmid, params)
    ctx.px.wait_task(upid, what=f"create CT {ctx.vmid} from {target.name}")
    ctx.journal.set("volume_created", True)


def _new_deployment(ctx: ReplaceContext, target: TemplateRef) -> str:
    deployment = f"{ctx.site.name}-{target.sha256[:12]}-{int(time.time())}"
    ctx.journal.set("deployment", deployment)  # before the call: a kill mid-task still knows it
    return deployment


def _new_volume(ctx: ReplaceContext) -> str:
    c = ctx.site.container
    return f"{ctx.site.proxmox.volume_storage}:{c.credentials_gib},mp={CREDENTIALS_MOUNT},backup=1"


def _net0(ctx: ReplaceContext) -> str:
    """net0 as the site says, with the MAC the container had before (if any)."""
    n = ctx.site.container.network
    mac = ctx.journal.get("hwaddr")
    return (f"name=eth0,bridge={n.bridge},ip={n.address}" + (f",gw={n.gateway}" if n.gateway else "")
            + (f",hwaddr={mac}" if mac else ""))


def _appliance_settings(ctx: ReplaceContext, target: TemplateRef) -> dict[str, Any]:
    """POST /lxc parameters for a container that runs (or is cloned to run) the appliance."""
    c, n = ctx.site.container, ctx.site.container.network
    params = {
        **_common(ctx, target),
        "hostname": c.hostname, "cores": c.cores, "memory": c.memory_mib, "swap": c.swap_mib,
        "net0": _net0(ctx), "onboot": int(c.onboot), "timezone": c.timezone, "tags": st.MARKER_TAG,
        "ssh-public-keys": ctx.deploy_key, "nameserver": n.nameserver,
    }
    return {k: v for k, v in params.items() if v is not None}


def _common(ctx: ReplaceContext, target: TemplateRef) -> dict[str, Any]:
    """Settings every container of ours gets: unprivileged, nesting (sysext needs it), pool."""
    return {
        "ostemplate": template_volid(ctx.site, target),
        "rootfs": f"{ctx.site.proxmox.rootfs_storage}:{ctx.site.container.rootfs_gib}",
        "unprivileged": 1, "features": "nesting=1", "start": 0, "pool": ctx.site.proxmox.pool,
    }


def start(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    mac = ctx.journal.get("hwaddr")
    if mac and world.ct.hwaddr != mac:  # a clone got a new MAC: clients' ARP caches know the old one
        ctx.px.update_config(ctx.vmid, {"net0": _net0(ctx)})
    upid = ctx.px.start(ctx.vmid)
    ctx.px.wait_task(upid, what=f"start of CT {ctx.vmid}")


def seed(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """A template that cannot be reached, seeded or brought to serve fails like the gate."""
    try:
        _seed(ctx, world.ct.deployment or "unknown")
    except GateFailed:
        raise
    except PipelineError as exc:
        raise GateFailed([f"seed delivery: {exc.message.splitlines()[0]}"]) from None


def _ssh(ctx: ReplaceContext, deployment: str) -> SSH:
    """Root on the container with the deploy key; the host key is pinned per deployment."""
    ssh = SSH(
        ctx.site.container.network.ip, ctx.state_dir / "deploy_key",
        ctx.state_dir / "known_hosts.d" / deployment,
    )
    ssh.known_hosts.parent.mkdir(mode=0o700, exist_ok=True)
    return ssh


def _seed(ctx: ReplaceContext, deployment: str) -> None:
    rendered = render_seed(  # while the container boots
        ctx.site, master_key=ctx.master_key, instance_id=f"iid-{deployment}",
        deploy_public_key=ctx.deploy_key,
    )
    # With clients waiting (the stop found the old container serving), cloud-init's stages wait
    # until the services listen, not to share the CPU with their start; with none (a first
    # deploy), both at once end sooner.
    clients_waiting = bool(ctx.journal.get("down_since"))
    script = activation_script(rendered, ports=ctx.ports if clients_waiting else ())
    with shared(_ssh(ctx, deployment)) as ssh:  # the session below reuses wait_ready's login
        ssh.wait_ready()
        _deliver(ctx, ssh, script, deployment)


def _deliver(ctx: ReplaceContext, ssh: SSH, script: bytes, deployment: str) -> None:
    # One session: the services start first, cloud-init's stages once they listen
    # (pipeline/cloudinit/deliver.py). The session goes on for cloud-init after the ports serve,
    # so their first answer is watched from here meanwhile: that is when the window closes.
    address, up_at = ctx.site.container.network.ip, 0.0

    def served_or_session_over() -> bool:
        nonlocal up_at
        if serving(address, ctx.endpoints):
            up_at = time.time()
            return True
        return session.done()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed") as pool:
        session = pool.submit(ssh.run, ["sh", "-s"], input=script, timeout=CLOUD_INIT_TIMEOUT,
                              secrets=[ctx.master_key])
        wait_until(served_or_session_over, timeout=SERVE_TIMEOUT, pause=SERVE_POLL)
        session.result()  # what the session raised; else cloud-init finished cleanly
    _record_seed(ctx, ctx.fingerprint())
    ctx.downtime["up_at"] = up_at or wait_serving(address, ctx.endpoints, SERVE_TIMEOUT)
    ctx.journal.set("seeded", deployment)


def _record_seed(ctx: ReplaceContext, now: reseed.Fingerprint) -> None:
    ctx.journal.set("seed_digest", now.digest)
    ctx.journal.set("seed_files", now.files)


def reseed_in_place(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """Rewrite the seed in the running container, restart the units of changed files; the
    previous files stay in the container for ``restore``."""
    deployment = world.ct.deployment or "unknown"
    now = ctx.fingerprint()
    rendered = render_seed(ctx.site, master_key=ctx.master_key, instance_id=f"iid-{deployment}-{int(time.time())}",
                           deploy_public_key=ctx.deploy_key)
    script = rewrite_script(rendered, restart=world.reseed_units, before=reseed.backup_command(sorted(now.files)))
    op = ctx.journal.op
    assert op is not None
    op["reseeded"] = {"digest": ctx.journal.get("seed_digest"), "files": ctx.journal.get("seed_files"),
                      "units": list(world.reseed_units)}
    ctx.journal.save()
    if not ctx.journal.get("down_since"):
        ctx.journal.set("down_since", time.time())
    _ssh(ctx, deployment).run(["sh", "-s"], input=script, timeout=CLOUD_INIT_TIMEOUT, secrets=[ctx.master_key])
    _record_seed(ctx, now)
    ctx.downtime["up_at"] = wait_serving(ctx.site.container.network.ip, ctx.endpoints, SERVE_TIMEOUT)


def restore_seed(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    op = ctx.journal.op
    assert op is not None and op.get("reseeded")
    previous = op["reseeded"]
    script = reseed.restore_script(sorted(previous["files"] or ctx.fingerprint().files), previous["units"])
    _ssh(ctx, world.ct.deployment or "unknown").run(["sh", "-s"], input=script, timeout=CLOUD_INIT_TIMEOUT)
    ctx.journal.set("seed_digest", previous["digest"])
    ctx.journal.set("seed_files", previous["files"])
    ctx.journal.set("restored", op["id"])
    ctx.downtime["up_at"] = wait_serving(ctx.site.container.network.ip, ctx.endpoints, SERVE_TIMEOUT)


def stage(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    current, wanted = layers_of(ctx, world.ct.template), layers_of(ctx, target)
    assert current and wanted and world.ct.deployment
    local = ctx.local if ctx.local and ctx.local.ref == target else None
    swap.stage(_ssh(ctx, world.ct.deployment), current, wanted,
               local.build_dir if local else None, local.manifest if local else None)
    ctx.journal.set("staged", f"{world.ct.deployment}:{target.sha256}")


def switch(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """Swap in place, then record on Proxmox that the container runs the target."""
    current, wanted = layers_of(ctx, world.ct.template), layers_of(ctx, target)
    assert current and wanted and world.ct.deployment
    if not ctx.journal.get("down_since"):
        ctx.journal.set("down_since", time.time())
    op = ctx.journal.op
    assert op is not None
    op["swapped"] = world.ct.deployment  # its store keeps the layers it ran: a swap back needs no build
    ctx.journal.save()
    swap.switch(_ssh(ctx, world.ct.deployment), current, wanted)
    ctx.px.update_config(ctx.vmid, {"description": st.description(target, world.ct.deployment,
                                                                   base=world.ct.base)})
    ctx.downtime["up_at"] = wait_serving(ctx.site.container.network.ip, ctx.endpoints, SERVE_TIMEOUT)


def gate(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    failed = run_gate(ctx.site, ctx.suite, ctx.state_dir, world.ct.deployment or "unknown")
    if failed:
        raise GateFailed(failed)
    ctx.journal.set("gated", _gate_key(ctx, world.ct.deployment, target))
    _record(ctx, "deployed", target)


def prune_uploads(ctx: ReplaceContext, world: st.World, target: TemplateRef) -> None:
    """Delete our archives no kept deployment needs. One the storage refuses (the token lacks
    Datastore.Allocate on it, say) is named and kept: never an error for the deploy."""
    storage = ctx.site.proxmox.template_storage
    for volid in world.stale_uploads:
        try:
            ctx.px.wait_task(ctx.px.delete_volume(storage, volid), what=f"delete {volid}")
        except PipelineError as exc:
            ctx.undeletable.add(volid)
            console.print(f"kept {volid}: {exc.message.splitlines()[0]}", markup=False, soft_wrap=True)


ACTIONS = {
    "upload": upload, "stage": stage, "switch": switch, "base": create_base, "templatize": templatize,
    "holder": create_holder,
    "stop": stop, "park": park, "delete": delete, "create": create, "clone": clone,
    "volume": add_volume, "unpark": unpark, "start": start, "seed": seed, "gate": gate,
    "reseed": reseed_in_place, "restore": restore_seed,
    "prune": prune, "prune_uploads": prune_uploads,
}
assert set(ACTIONS) == set(STEPS), "every planned step has an action"
