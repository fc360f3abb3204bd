"""A broken guest never takes the lab down: it is listed as stopped, named by `lab status`,
removable with DELETE, and `lab up` comes up with it there. A server that cannot start says why.

Runs on a lab of its own (state and port), so breaking guests does not disturb the shared one.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI

from lab import lxc
from tests.plugins.lab import Lab, lab_cli, private_lab
from tests.plugins.pveapi import NET, NODE, ok, sha256, upload, wait_task

pytestmark = pytest.mark.integration
PORT = 8008
TEMPLATE = "broken-test_amd64.tar.zst"


@pytest.fixture(scope="module")
def own_lab(lab_workdir: Path, lab_template: Path) -> Iterator[Lab]:
    with private_lab(lab_workdir / "broken-lab", PORT) as the_lab:
        px = the_lab.client()
        ok(px, upload(px, lab_template, TEMPLATE, sha256(lab_template)))
        yield the_lab


def created(px: ProxmoxAPI, vmid: int, ip: str) -> None:
    ok(px, px.nodes(NODE).lxc.post(vmid=vmid, ostemplate=f"local:vztmpl/{TEMPLATE}", rootfs="local-lvm:2",
                                   unprivileged=1, pool="meridian", features="nesting=1",
                                   net0=NET.format(ip=ip)))


def listed(px: ProxmoxAPI) -> dict[int, dict]:
    return {int(ct["vmid"]): ct for ct in px.nodes(NODE).lxc.get()}


def rootfs_dir(state: Path, px: ProxmoxAPI, vmid: int) -> Path:
    volid = px.nodes(NODE).lxc(vmid).config.get()["rootfs"].split(",")[0]
    return state / "storage" / volid.split(":")[0] / volid.split(":")[1]


def assert_broken_but_handled(the_lab: Lab, vmid: int, reason: str) -> None:
    """Listed as stopped, named by status, survives a server restart, and DELETE removes it."""
    px = the_lab.client()
    assert listed(px)[vmid]["status"] == "stopped"
    assert px.nodes(NODE).lxc(vmid).status.current.get()["status"] == "stopped"
    status = lab_cli(the_lab.state, "status")
    assert f"CT {vmid}" in status and "BROKEN" in status and reason in status, status
    lab_cli(the_lab.state, "restart", "--port", str(PORT))
    px = the_lab.client()
    assert listed(px)[vmid]["status"] == "stopped"
    ok(px, px.nodes(NODE).lxc(vmid).delete(purge=1))
    assert vmid not in listed(px)
    assert not (the_lab.state / "lxc" / str(vmid)).exists()


def test_lxc_config_that_cannot_be_loaded(own_lab: Lab) -> None:
    """What a missing lxc-templates did: an include LXC cannot open."""
    px = own_lab.client()
    created(px, 9301, "10.157.0.231")
    ok(px, px.nodes(NODE).lxc(9301).status.start.post())
    ok(px, px.nodes(NODE).lxc(9301).status.stop.post())
    config = own_lab.state / "lxc" / "9301" / "config"
    config.write_text("lxc.include = /usr/share/lxc/config/no-such-file.conf\n" + config.read_text())
    assert_broken_but_handled(own_lab, 9301, "LXC cannot load its config")


def test_rootfs_missing(own_lab: Lab) -> None:
    px = own_lab.client()
    created(px, 9302, "10.157.0.232")
    shutil.rmtree(rootfs_dir(own_lab.state, px, 9302))
    status, log = wait_task(px, px.nodes(NODE).lxc(9302).status.start.post())
    assert status != "OK", log
    assert_broken_but_handled(own_lab, 9302, "rootfs volume missing")


def test_start_that_failed(own_lab: Lab) -> None:
    """Its address is held by a live process outside the lab: the start task fails."""
    px = own_lab.client()
    created(px, 9303, "10.157.0.233")
    lease = lxc.LEASES / "10.157.0.233"
    lxc.LEASES.mkdir(parents=True, exist_ok=True)
    lease.write_text(str(os.getpid()))
    try:
        status, log = wait_task(px, px.nodes(NODE).lxc(9303).status.start.post())
        assert "in use" in status, log
        assert_broken_but_handled(own_lab, 9303, "last start failed")
    finally:
        lease.unlink(missing_ok=True)


def test_up_prints_why_the_server_could_not_start(lab_workdir: Path) -> None:
    """A taken port: `lab up` fails at once with the server's own error, not only a timeout."""
    state = lab_workdir / "no-port-lab"
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", PORT + 1))
        taken.listen()
        output = lab_cli(state, "up", "--port", str(PORT + 1), check=(2,))
    try:
        assert "exited at start" in output and "Address already in use" in output, output
    finally:
        lab_cli(state, "down")
