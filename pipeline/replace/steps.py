"""The replace's steps against the real Proxmox state, and the loop that converges.

``converge`` reads the real state, asks the plan for the next step, runs it, and reads
again: there is no replay of a recorded sequence, so a crash anywhere is continued from
what Proxmox actually shows. Each step journals its start and end.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cloudinit import ACTIVATE_COMMANDS, WAIT_COMMAND, container_files, render_seed
from pipeline.config import Site
from pipeline.errors import PipelineError
from pipeline.progress import step
from pipeline.proxmox import Client
from pipeline.replace import state as st
from pipeline.replace.gate import run_gate
from pipeline.replace.journal import Journal
from pipeline.replace.plan import STEPS, check, next_step
from pipeline.replace.probe import serving, wait_serving
from pipeline.replace.ssh import SSH
from pipeline.replace.template import LocalTemplate, TemplateRef

CRASH_ENV = "MERIDIAN_REPLACE_CRASH_AFTER"  # tests: SIGKILL this process right after step NAME
SHUTDOWN_SECONDS = 60
SERVE_TIMEOUT = 300
CLOUD_INIT_TIMEOUT = 600
LOCK_POLL_SECONDS = 2.0


class GateFailed(PipelineError):
    def __init__(self, failed: list[str]) -> None:
        super().__init__("acceptance failed: " + ", ".join(failed))
        self.failed = failed


@dataclass
class Context:
    site: Site
    px: Client
    journal: Journal
    master_key: str
    suite: Path
    deploy_key: str = ""  # public key line, made once the plan is confirmed
    adopt: bool = False
    local: LocalTemplate | None = None
    downtime: dict[str, float] = field(default_factory=dict)

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


def template_volid(site: Site, ref: TemplateRef) -> str:
    return f"{site.proxmox.template_storage}:vztmpl/{ref.name}"


# -- reading the real state ------------------------------------------------------------------


def read_world(ctx: Context, target: TemplateRef) -> st.World:
    listed = {int(c["vmid"]): c for c in ctx.px.containers()}
    ct = read_ct(ctx, ctx.vmid, listed)
    holder = read_ct(ctx, ctx.holder_vmid, listed)
    deployed = ct.deployment
    return st.World(
        ct=ct, holder=holder, uploaded=_uploaded(ctx, target),
        seeded=bool(deployed) and ctx.journal.get("seeded") == deployed,
        gated=bool(deployed) and ctx.journal.get("gated") == deployed,
        volume_known=bool(ctx.journal.get("volume_created")),
        known=bool(deployed) and ctx.journal.get("deployment") == deployed,
    )


def read_ct(ctx: Context, vmid: int, listed: dict[int, dict[str, Any]] | None = None) -> st.CT:
    if listed is None:
        listed = {int(c["vmid"]): c for c in ctx.px.containers()}
    if vmid not in listed:
        return st.CT(vmid)
    return st.parse_ct(vmid, ctx.px.ct_config(vmid), str(listed[vmid].get("status", "stopped")))


def _uploaded(ctx: Context, ref: TemplateRef) -> bool:
    volid = template_volid(ctx.site, ref)
    for item in ctx.px.storage_content(ctx.site.proxmox.template_storage, "vztmpl"):
        if item.get("volid") == volid:
            # The name carries the sha256; the size catches a truncated earlier upload.
            local = ctx.local if ctx.local and ctx.local.ref == ref else None
            return local is None or int(item.get("size", -1)) == local.size
    return False


def wait_for_own_tasks(ctx: Context) -> None:
    """After a crash, a task we started may still hold a lock: wait for it (bounded)."""
    timeout = ctx.site.proxmox.task_timeout
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / LOCK_POLL_SECONDS) + 1):
        listed = {int(c["vmid"]) for c in ctx.px.containers()}
        locks = [ctx.px.ct_config(v).get("lock") for v in (ctx.vmid, ctx.holder_vmid) if v in listed]
        if not any(locks) or time.monotonic() >= deadline:
            return
        time.sleep(LOCK_POLL_SECONDS)


# -- the loop --------------------------------------------------------------------------------


def converge(ctx: Context, target: TemplateRef) -> None:
    """Run steps until the container runs ``target``, seeded and gated."""
    names = {"ct": ctx.vmid, "holder": ctx.holder_vmid, "target": target.name}
    for _ in range(2 * len(STEPS)):
        world = read_world(ctx, target)
        check(world, adopt=ctx.adopt)
        name = next_step(world, target)
        if name is None:
            return
        with step(STEPS[name].format(**names)):
            ctx.journal.event(name, "started", target=target.name)
            try:
                ACTIONS[name](ctx, world, target)
            except PipelineError as exc:
                ctx.journal.event(name, "failed")
                if isinstance(exc, GateFailed):
                    raise
                raise PipelineError(f"{exc.message}\n  state now: {_summary(ctx, target)}", exc.hint) from None
            ctx.journal.event(name, "done")
        if os.environ.get(CRASH_ENV) == name:
            os.kill(os.getpid(), signal.SIGKILL)
    raise PipelineError(f"replace did not converge after {2 * len(STEPS)} steps: {_summary(ctx, target)}")


def _summary(ctx: Context, target: TemplateRef) -> str:
    try:
        return read_world(ctx, target).summary()
    except PipelineError as exc:
        return f"unknown ({exc.message})"


# -- the steps -------------------------------------------------------------------------------


def upload(ctx: Context, world: st.World, target: TemplateRef) -> None:
    if ctx.local is None or ctx.local.ref != target:
        raise PipelineError(
            f"template {target.name} is not on storage {ctx.site.proxmox.template_storage} "
            "and no local file was given for it",
            hint="pass --template with the build output that made it",
        )
    upid = ctx.px.upload_template(ctx.site.proxmox.template_storage, ctx.local.path, target.name, target.sha256)
    ctx.px.wait_task(upid, what=f"upload of {target.name}")


def create_holder(ctx: Context, world: st.World, target: TemplateRef) -> None:
    c = ctx.site.container
    params = {
        **_common(ctx, target),
        "hostname": f"{c.hostname}-holder", "memory": 64, "swap": 0, "cores": 1, "onboot": 0,
        "tags": f"{st.MARKER_TAG};{st.HOLDER_TAG}", "description": st.HOLDER_DESCRIPTION,
    }
    upid = ctx.px.create_ct(ctx.holder_vmid, params)
    ctx.px.wait_task(upid, what=f"create holder CT {ctx.holder_vmid}")


def stop(ctx: Context, world: st.World, target: TemplateRef) -> None:
    # Downtime runs from the first stop of the operation (a rollback stops a second time).
    if not ctx.journal.get("down_since") and serving(ctx.site.container.network.ip, ctx.ports):
        ctx.journal.set("down_since", time.time())
    upid = ctx.px.shutdown(ctx.vmid, SHUTDOWN_SECONDS)
    ctx.px.wait_task(upid, what=f"shutdown of CT {ctx.vmid}", timeout=SHUTDOWN_SECONDS + 60)


def park(ctx: Context, world: st.World, target: TemplateRef) -> None:
    _move(ctx, ctx.vmid, ctx.holder_vmid)


def unpark(ctx: Context, world: st.World, target: TemplateRef) -> None:
    _move(ctx, ctx.holder_vmid, ctx.vmid)


def _move(ctx: Context, source: int, dest: int) -> None:
    upid = ctx.px.move_volume(source, st.CREDENTIALS_KEY, dest)
    ctx.px.wait_task(upid, what=f"move of the credentials volume from CT {source} to CT {dest}")


def delete(ctx: Context, world: st.World, target: TemplateRef) -> None:
    # Re-read right before the DELETE: it frees every mpN/unusedN volume CT 457 owns.
    now = st.parse_ct(ctx.vmid, ctx.px.ct_config(ctx.vmid))
    if now.volume or now.other_volumes or now.mp0_elsewhere:
        held = ", ".join(filter(None, [now.volume, *now.other_volumes]))
        raise PipelineError(
            f"refusing to delete CT {ctx.vmid}: it still references volumes ({held}) a DELETE would free"
        )
    upid = ctx.px.delete_ct(ctx.vmid)
    ctx.px.wait_task(upid, what=f"delete of CT {ctx.vmid}")


def create(ctx: Context, world: st.World, target: TemplateRef) -> None:
    c, n = ctx.site.container, ctx.site.container.network
    deployment = f"{ctx.site.name}-{target.sha256[:12]}-{int(time.time())}"
    net0 = f"name=eth0,bridge={n.bridge},ip={n.address}" + (f",gw={n.gateway}" if n.gateway else "")
    params = {
        **_common(ctx, target),
        "hostname": c.hostname, "cores": c.cores, "memory": c.memory_mib, "swap": c.swap_mib,
        "net0": net0, "onboot": int(c.onboot), "timezone": c.timezone, "tags": st.MARKER_TAG,
        "description": st.description(target, deployment),
        "ssh-public-keys": ctx.deploy_key,
        "nameserver": n.nameserver,
    }
    if not world.holder.volume:  # first deploy: a new credentials volume
        size = c.credentials_gib
        params[st.CREDENTIALS_KEY] = (
            f"{ctx.site.proxmox.volume_storage}:{size},mp={st.CREDENTIALS_MOUNT},backup=1"
        )
    ctx.journal.set("deployment", deployment)  # before the call: a kill mid-task still knows it
    upid = ctx.px.create_ct(ctx.vmid, {k: v for k, v in params.items() if v is not None})
    ctx.px.wait_task(upid, what=f"create CT {ctx.vmid} from {target.name}")
    ctx.journal.set("volume_created", True)


def _common(ctx: Context, target: TemplateRef) -> dict[str, Any]:
    """Settings every container of ours gets: unprivileged, nesting (sysext needs it), pool."""
    return {
        "ostemplate": template_volid(ctx.site, target),
        "rootfs": f"{ctx.site.proxmox.rootfs_storage}:{ctx.site.container.rootfs_gib}",
        "unprivileged": 1, "features": "nesting=1", "start": 0, "pool": ctx.site.proxmox.pool,
    }


def start(ctx: Context, world: st.World, target: TemplateRef) -> None:
    upid = ctx.px.start(ctx.vmid)
    ctx.px.wait_task(upid, what=f"start of CT {ctx.vmid}")


def seed(ctx: Context, world: st.World, target: TemplateRef) -> None:
    """A template that cannot be reached, seeded or brought to serve fails like the gate."""
    try:
        _seed(ctx, world.ct.deployment or "unknown")
    except GateFailed:
        raise
    except PipelineError as exc:
        raise GateFailed([f"seed delivery: {exc.message.splitlines()[0]}"]) from None


def _seed(ctx: Context, deployment: str) -> None:
    ssh = SSH(
        ctx.site.container.network.ip, ctx.state_dir / "deploy_key",
        ctx.state_dir / "known_hosts.d" / deployment,
    )
    ssh.known_hosts.parent.mkdir(mode=0o700, exist_ok=True)
    ssh.wait_ready()
    rendered = render_seed(
        ctx.site, master_key=ctx.master_key, instance_id=f"iid-{deployment}",
        deploy_public_key=ctx.deploy_key,
    )
    for path, content, mode in container_files(rendered):
        ssh.put(path, content, mode, secrets=[ctx.master_key])
    for command in ACTIVATE_COMMANDS:
        ssh.run(command, timeout=CLOUD_INIT_TIMEOUT, secrets=[ctx.master_key])
    ssh.run(WAIT_COMMAND, timeout=CLOUD_INIT_TIMEOUT, secrets=[ctx.master_key])
    ctx.downtime["up_at"] = wait_serving(ctx.site.container.network.ip, ctx.ports, SERVE_TIMEOUT)
    ctx.journal.set("seeded", deployment)


def gate(ctx: Context, world: st.World, target: TemplateRef) -> None:
    failed = run_gate(ctx.site, ctx.suite, ctx.state_dir, world.ct.deployment or "unknown")
    if failed:
        raise GateFailed(failed)
    ctx.journal.set("gated", world.ct.deployment)


ACTIONS = {
    "upload": upload, "holder": create_holder, "stop": stop, "park": park, "delete": delete,
    "create": create, "unpark": unpark, "start": start, "seed": seed, "gate": gate,
}
assert set(ACTIONS) == set(STEPS)
