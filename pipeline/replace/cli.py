"""``python -m pipeline replace-ct --site FILE [--template PATH] [--plan] [--yes] [--full] [--keep N] ...``

Creates or replaces the appliance container from a template, keeping its credentials
volume (docs/proxmox.md), delivers the seed over SSH, gates on the acceptance suite and
rolls back to the previous template when the gate fails.

Exit codes (like Terraform's ``-detailed-exitcode``):
  0  done; with --plan: nothing to do
  1  error, or the acceptance gate failed (the previous template was put back)
  2  with --plan only: changes pending
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cloudinit import render_seed
from pipeline.config import Site, load_site
from pipeline.errors import PipelineError
from pipeline.progress import console
from pipeline.proxmox import Client
from pipeline.replace import report, template_file
from pipeline.replace.journal import Journal, locked
from pipeline.replace.plan import EXIT_ERROR, EXIT_NOTHING, Plan, make_plan
from pipeline.replace.ssh import ensure_deploy_key
from pipeline.replace.steps import (
    DEFAULT_KEEP,
    GateFailed,
    ReplaceContext,
    converge,
    read_ct,
    read_world,
    remember_layers,
    wait_for_own_tasks,
)
from pipeline.replace.template_file import TemplateRef
from pipeline.resources import acceptance_dir, require_acceptance_extra


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit codes: 0 done / nothing to do, 1 error or rolled back, 2 (--plan) changes pending"
    parser.add_argument("--site", required=True, type=Path, help="site file (sites/*.yml)")
    parser.add_argument("--template", type=Path,
                        help="a .tar.zst template, or a build output dir with manifest.json "
                             "(default: the template the container runs now)")
    parser.add_argument("--plan", action="store_true", help="print the plan and exit (0, 1 or 2)")
    parser.add_argument("--yes", action="store_true", help="do not ask before destructive steps")
    parser.add_argument("--full", action="store_true",
                        help="replace the container even when its template is current")
    parser.add_argument("--adopt", action="store_true",
                        help="take over a container this pipeline did not create")
    parser.add_argument("--keep", type=_at_least_one, default=DEFAULT_KEEP, metavar="N",
                        help="keep the templates (CT template and uploaded archive) of the N latest "
                             f"deployments; older ones this pipeline made are removed (default {DEFAULT_KEEP})")
    parser.add_argument("--json", type=Path, metavar="REPORT", help="write a JSON report here")
    parser.add_argument("--acceptance", type=Path,
                        help="acceptance suite to gate on (default: the one installed with the tool)")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of at least 1 (the deployed template)")
    return value


def main(args: argparse.Namespace) -> int:
    """Errors print as one message and exit 1 (so --plan's 2 means only 'changes pending')."""
    try:
        return _run(args)
    except PipelineError as exc:
        console.print("[bold red]error:[/bold red]", end=" ")
        console.print(str(exc), markup=False, soft_wrap=True)  # unwrapped: logs stay greppable
        return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    if not args.plan:
        require_acceptance_extra()
    suite = args.acceptance or acceptance_dir()
    local = template_file.resolve(args.template) if args.template else None
    # Every check that needs no change comes first: a missing or weak key stops here.
    key = site.litellm.master_key.read(label="litellm.master_key", check_strength=True)
    render_seed(site, master_key=key, instance_id="iid-preflight")
    px = Client.from_site(site.proxmox)
    preflight(px, site)
    site.site_state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(site.site_state_dir):
        ctx = ReplaceContext(site=site, px=px, journal=Journal(site.site_state_dir), master_key=key,
                             suite=suite, adopt=args.adopt, local=local, keep=args.keep,
                             rootfs_storage_type=px.storage_type(site.proxmox.rootfs_storage))
        return _deploy(ctx, args)


def preflight(px: Client, site: Site) -> None:
    """The node and the storages named in the site file exist (read-only)."""
    cfg = site.proxmox
    nodes = px.nodes()
    if cfg.node not in nodes:
        raise PipelineError(
            f"{site.source_file}: proxmox.node: unknown node {cfg.node!r} (the API knows: "
            f"{', '.join(nodes) or 'none'}); nothing was changed"
        )
    storages = {s["storage"] for s in px.storages()}
    for key in ("template_storage", "rootfs_storage", "volume_storage"):
        name = getattr(cfg, key)
        if name not in storages:
            raise PipelineError(
                f"{site.source_file}: proxmox.{key}: storage {name!r} does not exist on node "
                f"{cfg.node} (it has: {', '.join(sorted(storages))}); nothing was changed",
                hint=f"Proxmox lists only storages {cfg.token_id} may use (Datastore.AllocateSpace)",
            )


def _deploy(ctx: ReplaceContext, args: argparse.Namespace) -> int:
    journal = ctx.journal
    if journal.op:
        console.print(f"continuing the unfinished {journal.op['phase']} from {journal.path}")
        wait_for_own_tasks(ctx)
    current = read_ct(ctx, ctx.vmid)
    if args.full and current.exists:
        ctx.force_replace = current.deployment
    target = _target(ctx, current.template)
    previous = current.template if current.template != target else None
    plan = make_plan(read_world(ctx, target), target, adopt=ctx.adopt)
    _print_plan(ctx, plan, current.template, target)
    if args.plan:
        return plan.exit_code
    if not plan.steps and not journal.op:
        _report(ctx, args, "nothing-to-do", current.template, target, [])
        return EXIT_NOTHING
    if plan.destructive:
        _confirm(args.yes, ctx.vmid)
    ctx.deploy_key = ensure_deploy_key(ctx.state_dir, f"meridian-pipeline-deploy@{ctx.site.name}")
    remember_layers(ctx)
    op = journal.begin(target, previous, ctx.force_replace)
    try:
        converge(ctx, TemplateRef(**op["target"]))
    except GateFailed as exc:
        return _rolled_back(ctx, args, current.template, exc.failed)
    except PipelineError as exc:
        _report(ctx, args, "failed", current.template, None, [], error=exc.message)
        raise
    if op["phase"] == "rollback":
        return _rolled_back(ctx, args, current.template, op["failed_checks"], converged=True)
    journal.finish("deployed")
    _report(ctx, args, "deployed", current.template, target, [])
    console.print(f"[green]CT {ctx.vmid} runs {target.name}[/green]")
    return EXIT_NOTHING


def _target(ctx: ReplaceContext, running: TemplateRef | None) -> TemplateRef:
    op = ctx.journal.op
    if op and op["phase"] == "rollback":
        return TemplateRef(**op["target"])
    if ctx.local:
        return ctx.local.ref
    if op:
        return TemplateRef(**op["target"])
    if running:
        return running
    raise PipelineError(
        f"CT {ctx.vmid} does not exist and no --template was given",
        hint="pass --template build/<site> (the output of python -m pipeline build)",
    )


def _rolled_back(ctx: ReplaceContext, args: argparse.Namespace, before: TemplateRef | None,
                 failed: list[str], *, converged: bool = False) -> int:
    """The gate failed on the new template: put the previous one back (same volume), exit 1."""
    journal = ctx.journal
    op = journal.op
    assert op is not None
    if op["phase"] == "deploy" and op.get("reseeded"):
        journal.start_seed_rollback(failed)
        console.print(f"[red]acceptance failed[/red]: {', '.join(failed)}; restoring the previous configuration")
    elif op["phase"] == "deploy":
        if not op.get("previous"):
            journal.finish("failed")
            _report(ctx, args, "failed", before, TemplateRef(**op["target"]), failed)
            raise PipelineError(
                f"acceptance failed on CT {ctx.vmid}: {', '.join(failed)}; there is no previous "
                f"template to roll back to, so CT {ctx.vmid} stays on {op['target']['name']}",
                hint=f"see the acceptance log in {ctx.state_dir}",
            )
        journal.start_rollback(failed)
        console.print(f"[red]acceptance failed[/red]: {', '.join(failed)}; rolling back")
    elif not converged:  # the gate failed during the rollback itself
        _rollback_failed(ctx, args, before, failed)
    if not converged:
        try:
            converge(ctx, TemplateRef(**op["target"]))
        except GateFailed as again:
            _rollback_failed(ctx, args, before, again.failed)
    last = journal.finish("rolled-back")
    _report(ctx, args, "rolled-back", before, TemplateRef(**last["target"]), last["failed_checks"])
    raise PipelineError(
        f"acceptance failed on {last['wanted']['name']}: {', '.join(last['failed_checks'])}; "
        f"rolled back: CT {ctx.vmid} runs {last['target']['name']} again, same credentials volume",
        hint=f"see the acceptance log in {ctx.state_dir}",
    )


def _rollback_failed(ctx: ReplaceContext, args: argparse.Namespace, before: TemplateRef | None,
                     again: list[str]) -> None:
    last = ctx.journal.finish("rollback-failed")
    _report(ctx, args, "rollback-failed", before, TemplateRef(**last["target"]), again)
    raise PipelineError(
        f"acceptance failed on {last['wanted']['name']} ({', '.join(last['failed_checks'])}), and "
        f"again on the previous template {last['target']['name']} ({', '.join(again)})",
        hint=f"see the acceptance logs in {ctx.state_dir}",
    )


def _print_plan(ctx: ReplaceContext, plan: Plan, running: TemplateRef | None, target: TemplateRef) -> None:
    world = read_world(ctx, target)
    console.print(f"[bold]plan for CT {ctx.vmid}[/bold] (site {ctx.site.name}, node {ctx.site.proxmox.node})")
    console.print(f"  now:    {world.summary()}; template {running.name if running else '-'}", markup=False,
                  soft_wrap=True)
    console.print(f"  target: {target.name}", markup=False, soft_wrap=True)
    if not world.linked and "create" in plan.steps:
        console.print(f"  note: rootfs storage {ctx.site.proxmox.rootfs_storage} "
                      f"({ctx.rootfs_storage_type or 'unknown type'}) makes no linked clones: CT {ctx.vmid} is "
                      "created from the archive while it is down (lvmthin, zfspool, rbd, btrfs clone in O(1))",
                      markup=False, soft_wrap=True)
    if not plan.steps:
        console.print("  nothing to do")
    for i, line in enumerate(plan.lines, 1):
        console.print(f"  {i:2}. {line}", markup=False, soft_wrap=True)


def _confirm(yes: bool, vmid: int) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise PipelineError(
            f"the plan stops and deletes CT {vmid}, and there is no terminal to ask; nothing was changed",
            hint="review it with --plan, then pass --yes",
        )
    answer = console.input(f"Stop and replace CT {vmid} as planned? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise PipelineError("not confirmed; nothing was changed")


def _report(ctx: ReplaceContext, args: argparse.Namespace, outcome: str, before: TemplateRef | None,
            after: TemplateRef | None, failed: list[str], *, error: str | None = None) -> None:
    if not args.json:
        return
    data = report.build(
        site=ctx.site.name, vmid=ctx.vmid, outcome=outcome, before=before, after=after,
        down_since=ctx.journal.get("down_since"), up_at=ctx.downtime.get("up_at"),
        failed_checks=failed,
    )
    if error:
        data["error"] = error
    report.write(args.json, data)
