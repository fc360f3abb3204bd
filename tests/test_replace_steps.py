"""Replace steps against canned API answers: what each Proxmox call carries, and refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from pipeline.config import load_site
from pipeline.errors import PipelineError
from pipeline.proxmox import Client
from pipeline.replace import steps
from pipeline.replace.journal import Journal
from pipeline.replace.state import CT, World, parse_ct
from pipeline.replace.template_file import TemplateRef
from tests.plugins.cannedapi import UPID, Api
from tests.plugins.paths import REPO_ROOT

TARGET = TemplateRef("meridian_2_amd64-bbbbbbbbbbbb.tar.zst", "b" * 64)
DEPLOY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxx deploy"
PARKED = "local-lvm:vm-9457-disk-1"


@pytest.fixture
def ctx(client: tuple[Client, Api], tmp_path: Path) -> tuple[steps.ReplaceContext, Api]:
    px, state = client
    site = dataclasses.replace(load_site(REPO_ROOT / "sites/lab.yml"), state_dir=tmp_path)
    site.site_state_dir.mkdir()
    state.on("GET", "/status", (200, "OK", {"data": {"status": "stopped", "exitstatus": "OK"}}))
    state.on("POST", "/nodes/pve01/lxc", (200, "OK", {"data": UPID}))
    return steps.ReplaceContext(site=site, px=px, journal=Journal(site.site_state_dir), master_key="unused",
                         deploy_key=DEPLOY_KEY, suite=REPO_ROOT / "acceptance"), state


def _posted(state: Api) -> dict[str, str]:
    last = max(i for i, r in enumerate(state.requests) if r[0] == "POST")
    body = state.bodies[last]
    return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}


@pytest.mark.parametrize(
    ("parked", "mp0"),
    [
        pytest.param(None, "local-lvm:1,mp=/var/lib/meridian,backup=1", id="first-deploy-new-volume"),
        pytest.param(PARKED, None, id="replace-volume-comes-from-holder"),
    ],
)
def test_create_carries_unprivileged_nesting_marker_and_deploy_key(
    ctx: tuple[steps.ReplaceContext, Api], parked: str | None, mp0: str | None
) -> None:
    context, state = ctx
    world = World(ct=CT(457), holder=CT(9457, exists=True, ours=True, holder=True, volume=parked))
    steps.create(context, world, TARGET)
    params = _posted(state)
    assert params["vmid"] == "457"
    assert params["unprivileged"] == "1"
    assert params["features"] == "nesting=1"
    assert params["ostemplate"] == f"local:vztmpl/{TARGET.name}"
    assert params["ssh-public-keys"] == DEPLOY_KEY
    assert params["net0"] == "name=eth0,bridge=mrdlab0,ip=10.157.0.57/24,gw=10.157.0.1"
    assert params["pool"] == "meridian" and params["start"] == "0"
    assert params.get("mp0") == mp0
    created = parse_ct(457, {"tags": params["tags"], "description": params["description"]})
    assert created.ours and created.template == TARGET and created.deployment
    assert context.journal.get("volume_created") is True


def test_holder_is_ours_never_started_and_unprivileged(ctx: tuple[steps.ReplaceContext, Api]) -> None:
    context, state = ctx
    steps.create_holder(context, World(ct=CT(457), holder=CT(9457)), TARGET)
    params = _posted(state)
    holder = parse_ct(9457, {"tags": params["tags"], "description": params["description"]})
    assert params["vmid"] == "9457" and holder.ours and holder.holder
    assert params["unprivileged"] == "1" and params["start"] == "0" and params["onboot"] == "0"
    assert "mp0" not in params and "net0" not in params


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"mp0": "local-lvm:vm-457-disk-1,mp=/var/lib/meridian,backup=1"}, id="credentials"),
        pytest.param({"unused0": "local-lvm:vm-457-disk-2"}, id="unused-volume"),
    ],
)
def test_delete_refuses_while_the_ct_references_a_volume(ctx: tuple[steps.ReplaceContext, Api], config: dict) -> None:
    context, state = ctx
    state.on("GET", "/lxc/457/config", (200, "OK", {"data": {"rootfs": "local-lvm:vm-457-disk-0", **config}}))
    with pytest.raises(PipelineError, match="refusing to delete CT 457: it still references volumes"):
        steps.delete(context, World(ct=CT(457, exists=True, ours=True), holder=CT(9457)), TARGET)
    assert not [r for r in state.requests if r[0] == "DELETE"]


def test_delete_purges_without_destroying_unreferenced_disks(ctx: tuple[steps.ReplaceContext, Api]) -> None:
    context, state = ctx
    state.on("GET", "/lxc/457/config", (200, "OK", {"data": {"rootfs": "local-lvm:vm-457-disk-0"}}))
    state.on("DELETE", "/lxc/457", (200, "OK", {"data": UPID}))
    steps.delete(context, World(ct=CT(457, exists=True, ours=True), holder=CT(9457)), TARGET)
    (url,) = [r[1] for r in state.requests if r[0] == "DELETE"]
    assert url.endswith("/nodes/pve01/lxc/457?purge=1")


def test_upload_without_a_local_file_names_the_template(ctx: tuple[steps.ReplaceContext, Api]) -> None:
    with pytest.raises(PipelineError, match=f"template {TARGET.name} is not on storage local"):
        steps.upload(ctx[0], World(ct=CT(457), holder=CT(9457)), TARGET)
