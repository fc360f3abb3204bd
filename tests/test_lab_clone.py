"""The lab's CT template and clone behave as pve-container's (POST .../template, .../clone), and
its storages cost what thin-provisioned storage costs: a linked clone and a DELETE are O(1).

Runs on a lab of its own (state and port) so the shared lab on :8006 is not disturbed.
CTIDs 9400-9499, lab addresses 10.157.0.240-249.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI, ResourceException

from lab import lxc
from tests.plugins.lab import Lab, private_lab
from tests.plugins.pveapi import NET, NODE, ok, sha256, upload, wait_task

pytestmark = pytest.mark.integration
PORT = 8009
WATCHED_CLONE_SECONDS = 6.0  # this lab's vzclone floor (own_lab)
TEMPLATE = "clone-test_amd64.tar.zst"
MIB = 1024**2
BIG = 300 * MIB
MARKER = "from the template\n"
MACHINE_ID = "0123456789abcdef0123456789abcdef\n"


@pytest.fixture(scope="module")
def own_lab(lab_workdir: Path, lab_template: Path) -> Iterator[Lab]:
    state = lab_workdir / "clone-lab"
    # Clones take longer here than on a quick node, so that the locks a running clone holds can
    # be watched from outside even on a loaded machine (lab/README.md, Cost model).
    with private_lab(state, PORT, costs={"vzclone": WATCHED_CLONE_SECONDS}) as the_lab:
        px = the_lab.client()
        ok(px, upload(px, lab_template, TEMPLATE, sha256(lab_template)))
        yield the_lab
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state) not in mounts, "lab down left overlays mounted"


@pytest.fixture(scope="module")
def px(own_lab: Lab) -> ProxmoxAPI:
    return own_lab.client()


@pytest.fixture(scope="module")
def admin(own_lab: Lab, lab_workdir: Path) -> ProxmoxAPI:
    secret = lab_workdir / "clone-admin.secret"
    own_lab.add_token("clonetest@pve!admin", ["/=Administrator"], secret)
    return own_lab.client("clonetest@pve!admin", secret)


def token(own_lab: Lab, lab_workdir: Path, name: str, acl: list[str]) -> ProxmoxAPI:
    secret = lab_workdir / f"clone-{name}.secret"
    own_lab.add_token(f"clonetest@pve!{name}", acl, secret)
    return own_lab.client(f"clonetest@pve!{name}", secret)


# -- helpers -----------------------------------------------------------------------------

def create(px: ProxmoxAPI, vmid: int, ip: str | None = None, rootfs: str = "local-lvm:2", **extra) -> None:
    params = {"ostemplate": f"local:vztmpl/{TEMPLATE}", "rootfs": rootfs, "unprivileged": 1,
              "pool": "meridian", "hostname": f"ct{vmid}", "memory": 256, "features": "nesting=1",
              "description": f"made for {vmid}", **extra}
    if ip:
        params["net0"] = NET.format(ip=ip)
    ok(px, px.nodes(NODE).lxc.post(vmid=vmid, **params))


def conf(px: ProxmoxAPI, vmid: int) -> dict:
    return px.nodes(NODE).lxc(vmid).config.get()


def volid(px: ProxmoxAPI, vmid: int, key: str = "rootfs") -> str:
    return conf(px, vmid)[key].split(",")[0]


def volume_dir(state: Path, volid: str) -> Path:
    storage, name = volid.split(":", 1)
    return state / "storage" / storage / ("images/" + name if storage == "local-dir" else name)


def make_template(px: ProxmoxAPI, vmid: int) -> None:
    """POST template answers null; the conversion runs as a vztemplate task (bounded wait)."""
    assert px.nodes(NODE).lxc(vmid).template.post() is None
    for _ in range(100):
        if conf(px, vmid).get("template") == 1:
            tasks = px.nodes(NODE).tasks.get(vmid=vmid, typefilter="vztemplate", source="all")
            assert tasks and tasks[0]["id"] == str(vmid)
            ok(px, tasks[0]["upid"])
            return
        time.sleep(0.1)
    raise AssertionError(f"CT {vmid} did not become a template")


def clone(px: ProxmoxAPI, vmid: int, newid: int, **params) -> list[str]:
    upid = px.nodes(NODE).lxc(vmid).clone.post(newid=newid, pool="meridian", **params)
    assert f":vzclone:{vmid}:" in upid
    return ok(px, upid)


def refused(call, status: int, message: str) -> None:
    with pytest.raises(ResourceException) as caught:
        call()
    assert caught.value.status_code == status, caught.value
    assert message in str(caught.value), caught.value


def du(path: Path) -> int:
    """Bytes on disk under path, not crossing into mounts."""
    out = subprocess.run(["du", "-sxb", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def attach(state: Path, vmid: int, command: str) -> str:
    return lxc.Container(str(vmid), state / "lxc").attach(["sh", "-c", command]).stdout


def wait_running(state: Path, vmid: int) -> None:
    lxc.Container(str(vmid), state / "lxc").wait_running(timeout=120)


def stop_and_delete(px: ProxmoxAPI, *vmids: int) -> None:
    node = px.nodes(NODE)
    existing = {int(ct["vmid"]) for ct in node.lxc.get()}
    for vmid in (v for v in vmids if v in existing):
        if node.lxc(vmid).status.current.get()["status"] == "running":
            wait_task(px, node.lxc(vmid).status.stop.post())
        wait_task(px, node.lxc(vmid).delete(purge=1))


def prepared_template(px: ProxmoxAPI, state: Path, vmid: int, ip: str | None, big: bool = False) -> str:
    """A CT with a marker, a used machine-id (and a 300 MiB file) in its rootfs, made a template."""
    create(px, vmid, ip)
    rootfs = volume_dir(state, volid(px, vmid))
    (rootfs / "root/marker").write_text(MARKER)
    (rootfs / "etc/machine-id").write_text(MACHINE_ID)
    if big:
        fd = os.open(rootfs / "root/big", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, BIG)
        finally:
            os.close(fd)
    for path in (rootfs / "root/marker", rootfs / "etc/machine-id", rootfs / "root/big"):
        if path.exists():
            os.chown(path, lxc.ID_BASE, lxc.ID_BASE)
    make_template(px, vmid)
    return volid(px, vmid)


# -- template ------------------------------------------------------------------------------

def test_template_renames_the_volume_lists_as_template_and_refuses_start(own_lab: Lab, px: ProxmoxAPI,
                                                                         admin: ProxmoxAPI) -> None:
    try:
        create(px, 9400)
        old = volid(px, 9400)
        assert old == "local-lvm:vm-9400-disk-0"
        make_template(px, 9400)
        config = conf(px, 9400)
        assert config["template"] == 1 and volid(px, 9400) == "local-lvm:base-9400-disk-0"
        assert not volume_dir(own_lab.state, old).exists() and volume_dir(own_lab.state, volid(px, 9400)).is_dir()
        listed = {int(ct["vmid"]): ct for ct in px.nodes(NODE).lxc.get()}
        assert listed[9400]["template"] == 1
        resources = {r["vmid"]: r for r in px.cluster.resources.get(type="vm")}
        assert resources[9400]["template"] == 1
        content = {i["volid"] for i in px.nodes(NODE).storage("local-lvm").content.get()}
        assert "local-lvm:base-9400-disk-0" in content
        status, log = wait_task(px, px.nodes(NODE).lxc(9400).status.start.post())
        assert status == "you can't start a CT if it's a template", log
        refused(lambda: px.nodes(NODE).lxc(9400).template.post(), 500, "you can't convert a template to a template")
        # PUT config works on a template
        px.nodes(NODE).lxc(9400).config.put(description="a template")
        assert conf(px, 9400)["description"] == "a template"
    finally:
        stop_and_delete(admin, 9400)


def test_template_of_a_running_ct_is_refused(own_lab: Lab, px: ProxmoxAPI, admin: ProxmoxAPI) -> None:
    try:
        create(px, 9401, "10.157.0.240")
        ok(px, px.nodes(NODE).lxc(9401).status.start.post())
        refused(lambda: px.nodes(NODE).lxc(9401).template.post(), 500,
                "you can't convert a CT to template if the CT is running")
        # A full clone of a running CT needs a snapshot; the lab has none.
        refused(lambda: px.nodes(NODE).lxc(9401).clone.post(newid=9402, pool="meridian"), 500,
                "Full clone of a running container is only possible from a snapshot")
        assert "lock" not in conf(px, 9401)
        assert 9402 not in {int(ct["vmid"]) for ct in px.nodes(NODE).lxc.get()}
    finally:
        stop_and_delete(admin, 9401, 9402)


# -- linked clone ---------------------------------------------------------------------------

def test_linked_clone_is_o1_sees_the_base_and_writes_only_its_own(own_lab: Lab, px: ProxmoxAPI,
                                                                   admin: ProxmoxAPI) -> None:
    state, node = own_lab.state, px.nodes(NODE)
    try:
        base = prepared_template(px, state, 9410, "10.157.0.241", big=True)
        assert du(volume_dir(state, base)) > BIG
        template_conf = conf(px, 9410)
        upid = node.lxc(9410).clone.post(newid=9411, pool="meridian", hostname="clone9411")
        assert f":vzclone:9410:{own_lab.token_id}:" in upid
        # While the task runs: the source is locked (disk), the new CT exists with lock: create.
        assert conf(px, 9410)["lock"] == "disk" and conf(px, 9411)["lock"] == "create"
        refused(lambda: node.lxc(9411).config.put(memory=300), 500, "CT is locked (create)")
        refused(lambda: node.lxc(9410).clone.post(newid=9412, pool="meridian"), 500, "CT is locked (disk)")
        refused(lambda: node.lxc(9410).template.post(), 500, "CT is locked (disk)")
        refused(lambda: node.lxc(9410).delete(), 500, "CT is locked (disk)")
        assert node.tasks(upid).status.get()["status"] == "running", "the checks above ran after the clone"
        log = ok(px, upid)
        assert log[:2] == ["creating a clone of container 9410 with ID 9411",
                           f"create linked clone of mount point rootfs ({base})"], log
        assert 9412 not in {int(ct["vmid"]) for ct in node.lxc.get()}
        config = conf(px, 9411)
        assert "lock" not in config and "lock" not in conf(px, 9410) and "template" not in config
        assert config["hostname"] == "clone9411" and config["description"] == template_conf["description"]
        assert config["rootfs"].startswith("local-lvm:vm-9411-disk-0")
        mac = config["net0"].split("hwaddr=")[1].split(",")[0]
        assert mac != template_conf["net0"].split("hwaddr=")[1].split(",")[0]
        assert {r["vmid"]: r for r in px.cluster.resources.get(type="vm")}[9411]["pool"] == "meridian"
        # O(1): the clone's volume holds only what differs from its base.
        clone_dir = volume_dir(state, volid(px, 9411))
        assert du(clone_dir) < 2 * MIB, du(clone_dir)
        # post_clone_hook: machine-id truncated to a newline; no new SSH host keys.
        assert (clone_dir / "upper/etc/machine-id").read_text() == "\n"
        assert not (clone_dir / "upper/etc/ssh").exists()
        # net0 without hwaddr: a new random MAC; with hwaddr: that one.
        node.lxc(9411).config.put(net0=NET.format(ip="10.157.0.242"))
        new_mac = conf(px, 9411)["net0"].split("hwaddr=")[1].split(",")[0]
        assert new_mac != mac
        node.lxc(9411).config.put(net0=NET.format(ip="10.157.0.242") + ",hwaddr=BC:24:11:00:94:11")
        assert "hwaddr=BC:24:11:00:94:11" in conf(px, 9411)["net0"]
        ok(px, node.lxc(9411).status.start.post())
        wait_running(state, 9411)
        assert attach(state, 9411, "cat /root/marker") == MARKER
        assert attach(state, 9411, "stat -c %s /root/big").strip() == str(BIG)
        host_key = (volume_dir(state, base) / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
        assert attach(state, 9411, "cat /etc/ssh/ssh_host_ed25519_key.pub") == host_key
        assert attach(state, 9411, "cat /sys/class/net/eth0/address").strip() == "bc:24:11:00:94:11"
        attach(state, 9411, "echo mine > /root/clone-only; rm /root/marker")
        assert not (volume_dir(state, base) / "root/clone-only").exists()
        assert (volume_dir(state, base) / "root/marker").read_text() == MARKER
        # systemd-sysext's overlay on /usr inside the CT, on top of the clone's overlay.
        attach(state, 9411, "d=/var/lib/extensions/t; mkdir -p $d/usr/lib/extension-release.d $d/usr/share/t;"
                            " echo ID=_any > $d/usr/lib/extension-release.d/extension-release.t;"
                            " echo ext > $d/usr/share/t/f; systemd-sysext merge")
        assert attach(state, 9411, "cat /usr/share/t/f") == "ext\n"
        ok(px, node.lxc(9411).status.stop.post())
        assert not os.path.ismount(clone_dir / "merged")
        # A second clone of the same template.
        clone(px, 9410, 9412)
        assert du(volume_dir(state, volid(px, 9412))) < 2 * MIB
        ok(px, node.lxc(9412).status.start.post())
        assert attach(state, 9412, "cat /root/marker; ls /root") == MARKER + "big\nmarker\n"
        ok(px, node.lxc(9412).status.stop.post())
        # Delete a clone (the template is unaffected), then the template.
        ok(px, node.lxc(9411).delete(purge=1))
        assert not clone_dir.exists()
        assert (volume_dir(state, base) / "root/marker").read_text() == MARKER
        stop_and_delete(admin, 9412)
        ok(admin, admin.nodes(NODE).lxc(9410).delete(purge=1))
        assert not volume_dir(state, base).exists()
        assert not list((state / "storage/local-lvm/.retired").glob("*"))
    finally:
        stop_and_delete(admin, 9411, 9412, 9410)


def test_delete_template_with_a_running_linked_clone(own_lab: Lab, px: ProxmoxAPI, admin: ProxmoxAPI) -> None:
    """lvmthin allows it (the clone's volid does not name its base) and the clone keeps working."""
    state, node = own_lab.state, px.nodes(NODE)
    try:
        base = prepared_template(px, state, 9420, "10.157.0.243", big=True)
        clone(px, 9420, 9421)
        ok(px, node.lxc(9421).status.start.post())
        wait_running(state, 9421)
        started = time.monotonic()
        ok(admin, admin.nodes(NODE).lxc(9420).delete(purge=1))
        took = time.monotonic() - started
        assert 9420 not in {int(ct["vmid"]) for ct in node.lxc.get()}
        assert base not in {i["volid"] for i in node.storage("local-lvm").content.get()}
        assert not volume_dir(state, base).exists()
        assert attach(state, 9421, "cat /root/marker") == MARKER
        ok(px, node.lxc(9421).status.stop.post())
        ok(px, node.lxc(9421).status.start.post())
        assert attach(state, 9421, "cat /root/marker") == MARKER
        ok(px, node.lxc(9421).status.stop.post())
        ok(px, node.lxc(9421).delete(purge=1))
        assert not list((state / "storage/local-lvm/.retired").glob("*"))
        assert took >= 1.0  # the vzdestroy floor (lab/data/costs.yml)
    finally:
        stop_and_delete(admin, 9421, 9420)


def test_clone_refusals_in_proxmox_wording(own_lab: Lab, px: ProxmoxAPI, admin: ProxmoxAPI) -> None:
    state, node = own_lab.state, px.nodes(NODE)
    try:
        prepared_template(px, state, 9430, None)
        create(px, 9431)
        call = node.lxc(9430).clone.post
        refused(lambda: call(newid=9431, pool="meridian"), 500, "CT 9431 already exists on node 'pve01'")
        refused(lambda: call(newid=9432, pool="meridian", storage="local-lvm"), 500,
                "parameter 'storage' not allowed for linked clones")
        refused(lambda: call(newid=9432, pool="meridian", snapname="before"), 500, "snapshot 'before' does not exist")
        refused(lambda: call(newid=9432, pool="meridian", target="pve02"), 500, "no such cluster node 'pve02'")
        # The schema check comes first: for this token, VM.Allocate on /pool/nope fails before the pool
        # is looked up; a token with VM.Allocate on / gets as far as the lookup.
        refused(lambda: call(newid=9432, pool="nope"), 403, "Permission check failed")
        refused(lambda: admin.nodes(NODE).lxc(9430).clone.post(newid=9432, pool="nope"), 403,
                "Permission check failed (pool 'nope' does not exist)")
        refused(lambda: call(newid=9432, pool="meridian", storage="nowhere", full=1), 500,
                "storage 'nowhere' does not exist")
        # A linked clone needs a base volume: not from a normal CT, even on lvmthin.
        refused(lambda: node.lxc(9431).clone.post(newid=9432, pool="meridian", full=0), 500,
                "Linked clone feature for 'local-lvm:vm-9431-disk-0' is not available")
        # A bind mount point cannot be cloned (only root may make one: written into the config here).
        path = state / "etc/pve/lxc/9430.conf"
        path.write_text(path.read_text() + "mp0: /srv/nowhere,mp=/mnt/x\n")
        refused(lambda: call(newid=9432, pool="meridian"), 500, "unable to clone mountpoint 'mp0' (type bind)")
        # Nothing left behind by a refused clone: no lock on the source, no config for newid.
        assert "lock" not in conf(px, 9430) and "lock" not in conf(px, 9431)
        assert 9432 not in {int(ct["vmid"]) for ct in node.lxc.get()}
        refused(lambda: node.lxc(9430).template.post(), 500, "you can't convert a template to a template")
    finally:
        stop_and_delete(admin, 9430, 9431, 9432)


def test_clone_permissions(own_lab: Lab, lab_workdir: Path, px: ProxmoxAPI, admin: ProxmoxAPI) -> None:
    state, node = own_lab.state, px.nodes(NODE)
    try:
        prepared_template(px, state, 9440, None)
        user = token(own_lab, lab_workdir, "vmuser", ["/pool/meridian=PVEVMUser"])
        refused(lambda: user.nodes(NODE).lxc(9440).clone.post(newid=9441, pool="meridian"), 403,
                "Permission check failed (/vms/9440, VM.Clone)")
        refused(lambda: user.nodes(NODE).lxc(9440).template.post(), 403,
                "Permission check failed (/vms/9440, VM.Allocate)")
        # VM.Clone on the source but VM.Allocate neither on /vms/9441 nor on a named pool.
        refused(lambda: node.lxc(9440).clone.post(newid=9441), 403, "Permission check failed")
        # VM.Clone and VM.Allocate through the pool, but no Datastore.AllocateSpace on the storage.
        no_store = token(own_lab, lab_workdir, "nostore", ["/pool/meridian=PVEVMAdmin"])
        refused(lambda: no_store.nodes(NODE).lxc(9440).clone.post(newid=9441, pool="meridian"), 403,
                "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)")
        assert "lock" not in conf(px, 9440)
        assert 9441 not in {int(ct["vmid"]) for ct in node.lxc.get()}
    finally:
        stop_and_delete(admin, 9440, 9441)


# -- dir storage: full clones only ----------------------------------------------------------

def test_dir_storage_refuses_linked_clones_and_copies_full_ones(own_lab: Lab, px: ProxmoxAPI,
                                                                admin: ProxmoxAPI) -> None:
    state, node = own_lab.state, px.nodes(NODE)
    try:
        create(px, 9450, rootfs="local-dir:2")
        base = volid(px, 9450)
        assert base == "local-dir:9450/subvol-9450-disk-0.subvol"
        (volume_dir(state, base) / "root/marker").write_text(MARKER)
        make_template(px, 9450)
        assert volid(px, 9450) == base  # Plugin.pm renames only vm-... to base-...
        refused(lambda: node.lxc(9450).clone.post(newid=9451, pool="meridian"), 500,
                f"Linked clone feature for '{base}' is not available")
        log = clone(px, 9450, 9451, full=1)
        assert f"create full clone of mountpoint rootfs ({base})" in log
        copy = volume_dir(state, volid(px, 9451))
        assert volid(px, 9451) == "local-dir:9451/subvol-9451-disk-0.subvol"
        assert (copy / "root/marker").read_text() == MARKER
        assert du(copy) > du(volume_dir(state, base)) // 2  # a real copy, O(size)
        clone(px, 9450, 9452, full=1, storage="local-lvm")
        assert volid(px, 9452) == "local-lvm:vm-9452-disk-0"
        assert (volume_dir(state, volid(px, 9452)) / "root/marker").read_text() == MARKER
        ok(px, node.lxc(9452).delete(purge=1))
        ok(px, node.lxc(9451).delete(purge=1))
        assert not copy.exists()
    finally:
        stop_and_delete(admin, 9450, 9451, 9452)


# -- move_volume between linked clones ----------------------------------------------------

def test_move_volume_between_linked_clones(own_lab: Lab, px: ProxmoxAPI, admin: ProxmoxAPI) -> None:
    state, node = own_lab.state, px.nodes(NODE)
    try:
        prepared_template(px, state, 9460, None)
        clone(px, 9460, 9461)
        clone(px, 9460, 9462)
        node.lxc(9461).config.put(mp0="local-lvm:1,mp=/var/lib/data")
        node.lxc(9462).config.put(net0=NET.format(ip="10.157.0.244"))
        data = volume_dir(state, volid(px, 9461, "mp0"))
        (data / "kept").write_text("credentials\n")
        os.chown(data / "kept", lxc.ID_BASE, lxc.ID_BASE)
        ok(px, node.lxc(9461).move_volume.post(volume="mp0", **{"target-vmid": 9462}))
        assert volid(px, 9462, "mp0") == "local-lvm:vm-9462-disk-1"
        ok(px, node.lxc(9462).status.start.post())
        wait_running(state, 9462)
        assert attach(state, 9462, "cat /var/lib/data/kept; cat /root/marker") == "credentials\n" + MARKER
        ok(px, node.lxc(9462).status.stop.post())
    finally:
        stop_and_delete(admin, 9461, 9462, 9460)
