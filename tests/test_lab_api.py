"""The lab's Proxmox VE API, driven with proxmoxer as the pipeline drives pve01."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from proxmoxer import ProxmoxAPI, ResourceException

from pipeline.runner import run
from tests.plugins.pveapi import NET, NODE, TASK_TIMEOUT, ok, sha256, ssh_when_up, upload, wait_task

pytestmark = pytest.mark.integration

TEMPLATE = "lab-test-debian-12_amd64.tar.zst"


@pytest.fixture(scope="module")
def admin(lab_server, lab_workdir) -> ProxmoxAPI:
    """A root-like token for set-up and clean-up the lab token may not do (deleting templates)."""
    secret = lab_workdir / "admin.secret"
    lab_server.add_token("labtest@pve!admin", ["/=Administrator"], secret)
    return lab_server.client("labtest@pve!admin", secret)


@pytest.fixture(scope="module")
def px(lab_server) -> ProxmoxAPI:
    return lab_server.client()


@pytest.fixture(scope="module")
def template(lab_server, lab_template, px, admin) -> Iterator[str]:
    """The small template, uploaded once for this module as local:vztmpl/TEMPLATE (module scope:
    the demo tests at the end of a run replace the lab and its tokens)."""
    ok(px, upload(px, lab_template, TEMPLATE, sha256(lab_template)))
    yield f"local:vztmpl/{TEMPLATE}"
    ok(admin, admin.nodes(NODE).storage("local").content(f"local:vztmpl/{TEMPLATE}").delete())


@pytest.fixture
def cts(admin):
    """VMIDs a test creates; stopped and deleted afterwards whatever happened."""
    created: list[int] = []
    yield created
    node = admin.nodes(NODE)
    existing = {ct["vmid"] for ct in node.lxc.get()}
    for vmid in [v for v in created if v in existing]:
        if node.lxc(vmid).status.current.get()["status"] == "running":
            wait_task(admin, node.lxc(vmid).status.stop.post())
        wait_task(admin, node.lxc(vmid).delete(purge=1))


def _create(px: ProxmoxAPI, vmid: int, template: str, **extra) -> str:
    params = {"ostemplate": template, "rootfs": "local-lvm:2", "unprivileged": 1, "pool": "meridian",
              "hostname": f"ct{vmid}", "memory": 256, **extra}
    return px.nodes(NODE).lxc.post(vmid=vmid, **params)


def _volids(px: ProxmoxAPI) -> set[str]:
    return {item["volid"] for item in px.nodes(NODE).storage("local-lvm").content.get()}


def test_lifecycle_upload_create_start_ssh_stop_delete(lab_server, lab_template, lab_workdir, px, cts, admin):
    node = px.nodes(NODE)
    name = "lab-lifecycle_amd64.tar.zst"
    upload_log = ok(px, upload(px, lab_template, name, sha256(lab_template)))
    assert "checksum verified" in upload_log
    assert f"local:vztmpl/{name}" in {i["volid"] for i in node.storage("local").content.get()}
    key = lab_workdir / "lifecycle-key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    cts.append(9101)
    upid = _create(px, 9101, f"local:vztmpl/{name}", net0=NET.format(ip="10.157.0.201"),
                   features="nesting=1", tags="meridian-appliance", description="first\nsecond line",
                   nameserver="10.157.0.1", **{"ssh-public-keys": key.with_suffix(".pub").read_text(),
                                                "mp0": "local-lvm:1,mp=/var/lib/meridian,backup=1"})
    assert upid.startswith(f"UPID:{NODE}:") and ":vzcreate:9101:pipeline@pve!lab:" in upid
    ok(px, upid)
    conf = node.lxc(9101).config.get()
    assert conf["tags"] == "meridian-appliance" and conf["description"] == "first\nsecond line"
    assert conf["rootfs"].startswith("local-lvm:vm-9101-disk-") and "lock" not in conf
    assert conf["mp0"].startswith("local-lvm:vm-9101-disk-") and "mp=/var/lib/meridian" in conf["mp0"]
    assert node.lxc(9101).status.current.get()["status"] == "stopped"
    start_status, _ = wait_task(px, node.lxc(9101).status.start.post())
    assert start_status == "OK"  # nesting=1: no systemd warning
    status = node.lxc(9101).status.current.get()
    assert status["status"] == "running" and status["mem"] > 0
    out = ssh_when_up(key, "10.157.0.201",
                       "hostname; cat /etc/network/interfaces; findmnt -n -o TARGET /var/lib/meridian; "
                       "cat /etc/resolv.conf; ls /etc/systemd/system-preset/; id -u")
    assert out.splitlines()[0] == "ct9101"
    assert "address 10.157.0.201/24" in out and "gateway 10.157.0.1" in out
    assert "/var/lib/meridian" in out and "nameserver 10.157.0.1" in out and "00-pve.preset" in out
    names = {i["name"]: i for i in node.lxc(9101).interfaces.get()}
    assert names["eth0"]["inet"] == "10.157.0.201/24"
    time.sleep(2)
    assert node.lxc(9101).status.current.get()["uptime"] >= 1
    ok(px, node.lxc(9101).status.shutdown.post(timeout=30, forceStop=1))
    assert node.lxc(9101).status.current.get()["status"] == "stopped"
    ok(px, node.lxc(9101).delete(purge=1))
    with pytest.raises(ResourceException) as gone:
        admin.nodes(NODE).lxc(9101).config.get()
    assert gone.value.status_code == 500 and "9101.conf' does not exist" in gone.value.content
    assert not any(v.startswith("local-lvm:vm-9101-") for v in _volids(px))
    ok(admin, admin.nodes(NODE).storage("local").content(f"local:vztmpl/{name}").delete())


def test_upload_with_wrong_checksum_fails_its_task(px, lab_template):
    name = "lab-badsum_amd64.tar.zst"
    status, log = wait_task(px, upload(px, lab_template, name, "0" * 64))
    assert status.startswith("checksum mismatch: got '") and f"!= expect '{'0' * 64}'" in status
    assert log[-1].startswith("TASK ERROR: checksum mismatch")
    assert f"local:vztmpl/{name}" not in {i["volid"] for i in px.nodes(NODE).storage("local").content.get()}


def test_delete_frees_owned_volumes_and_keeps_another_vmids(px, template, cts):
    node = px.nodes(NODE)
    cts.extend([9111, 9112])
    ok(px, _create(px, 9111, template, mp0="local-lvm:1,mp=/data"))
    foreign = node.lxc(9111).config.get()["mp0"].split(",")[0]
    ok(px, _create(px, 9112, template))
    node.lxc(9112).config.put(mp0=f"{foreign},mp=/shared", mp1="local-lvm:1,mp=/scratch")
    scratch = node.lxc(9112).config.get()["mp1"].split(",")[0]
    node.lxc(9112).config.put(delete="mp1")  # detached: kept as unused0, still owned by 9112
    conf = node.lxc(9112).config.get()
    assert conf["unused0"] == scratch and "mp1" not in conf
    rootfs = conf["rootfs"].split(",")[0]
    log = ok(px, node.lxc(9112).delete(purge=1))
    volumes = _volids(px)
    assert foreign in volumes, "\n".join(log)
    assert rootfs not in volumes and scratch not in volumes
    assert any(f"kept mp0 volume {foreign}" in line for line in log)


def test_move_volume_between_stopped_containers(px, template, cts, lab_server):
    node = px.nodes(NODE)
    cts.extend([9121, 9122])
    ok(px, _create(px, 9121, template, mp0="local-lvm:1,mp=/var/lib/meridian,backup=1"))
    ok(px, _create(px, 9122, template))
    volid = node.lxc(9121).config.get()["mp0"].split(",")[0]
    marker = lab_server.state / "storage" / "local-lvm" / volid.split(":")[1] / "marker"
    marker.write_text("credentials")
    with pytest.raises(ResourceException) as refused:
        node.lxc(9121).move_volume.post(volume="rootfs", **{"target-vmid": 9122})
    assert refused.value.status_code == 500
    ok(px, node.lxc(9121).move_volume.post(volume="mp0", **{"target-vmid": 9122, "target-volume": "mp0"}))
    moved = node.lxc(9122).config.get()["mp0"]
    assert moved.startswith("local-lvm:vm-9122-disk-") and "mp=/var/lib/meridian" in moved and "backup=1" in moved
    assert "mp0" not in node.lxc(9121).config.get()
    new_dir = lab_server.state / "storage" / "local-lvm" / moved.split(",")[0].split(":")[1]
    assert (new_dir / "marker").read_text() == "credentials"
    ok(px, node.lxc(9121).delete(purge=1))  # 9121 no longer owns the volume: it survives
    assert moved.split(",")[0] in _volids(px)


def _raw(lab_server, method: str, path: str, secret: str | None = None, token_id: str | None = None,
         **data) -> requests.Response:
    """One request without proxmoxer, to see the exact status, reason and body."""
    secret = secret if secret is not None else lab_server.token_secret_path.read_text().strip()
    header = f"PVEAPIToken={token_id or lab_server.token_id}={secret}"
    return requests.request(method, lab_server.url + path, data=data or None, verify=str(lab_server.ca_path),
                            headers={"Authorization": header}, timeout=30)


def test_400_names_each_bad_parameter(lab_server):
    resp = _raw(lab_server, "POST", f"/nodes/{NODE}/lxc", vmid="12", ostemplate="x", bogus="1", memory="lots")
    assert resp.status_code == 400
    body = resp.json()
    assert body["data"] is None and body["message"] == "Parameter verification failed.\n"
    assert body["errors"] == {
        "vmid": "value must have a minimum value of 100",
        "bogus": "property is not defined in schema and the schema does not allow additional properties",
        "memory": "type check ('integer') failed - got 'lots'",
    }


def test_400_refuses_networks_outside_the_lab(lab_server, template):
    for net0, problem in [("name=eth0,bridge=vmbr0,ip=10.157.0.9/24", "is not the lab bridge"),
                          ("name=eth0,bridge=mrdlab0,ip=192.0.2.164/24", "not a host address in the lab subnet")]:
        resp = _raw(lab_server, "POST", f"/nodes/{NODE}/lxc", vmid="9131", ostemplate=template,
                    unprivileged="1", pool="meridian", net0=net0)
        assert resp.status_code == 400 and problem in resp.json()["errors"]["net0"]


def test_401_has_an_empty_body(lab_server):
    resp = _raw(lab_server, "GET", "/version", secret="00000000-0000-0000-0000-000000000000")
    assert resp.status_code == 401 and resp.content == b""
    assert requests.get(lab_server.url + "/version", verify=str(lab_server.ca_path), timeout=10).status_code == 401


def test_tls_is_verified_against_the_lab_ca(lab_server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(lab_server.url + "/version", timeout=10)  # the system store does not know the lab CA


def test_403_names_path_and_privilege(lab_server, lab_workdir, template, px, cts):
    cts.append(9141)
    ok(px, _create(px, 9141, template))
    secret = lab_workdir / "auditor.secret"
    lab_server.add_token("labtest@pve!auditor", ["/pool/meridian=PVEAuditor"], secret)
    auditor = lab_server.client("labtest@pve!auditor", secret)
    assert auditor.nodes(NODE).lxc(9141).status.current.get()["status"] == "stopped"
    resp = _raw(lab_server, "POST", f"/nodes/{NODE}/lxc/9141/status/start",
                secret=secret.read_text().strip(), token_id="labtest@pve!auditor")
    assert resp.status_code == 403
    assert resp.json() == {"data": None, "message": "Permission check failed (/vms/9141, VM.PowerMgmt)\n"}
    outside = _raw(lab_server, "GET", f"/nodes/{NODE}/lxc/457000/config")
    assert outside.status_code == 403
    assert outside.json()["message"] == "Permission check failed (/vms/457000, VM.Audit)\n"


def test_500_already_exists(lab_server, template, px, cts):
    cts.append(9151)
    ok(px, _create(px, 9151, template))
    resp = _raw(lab_server, "POST", f"/nodes/{NODE}/lxc", vmid="9151", ostemplate=template,
                unprivileged="1", pool="meridian")
    assert resp.status_code == 500
    assert resp.json() == {"data": None, "message": f"CT 9151 already exists on node '{NODE}'\n"}
    assert resp.reason == f"CT 9151 already exists on node '{NODE}'"


def test_unknown_task_is_400(px):
    with pytest.raises(ResourceException) as caught:
        px.nodes(NODE).tasks("UPID:pve01:00000001:00000001:00000001:vzstart:1:x@pve:").status.get()
    assert caught.value.status_code == 400 and "no such task" in caught.value.content


def test_locked_container_refuses(lab_server, lab_workdir, template, cts, admin):
    """While its create task runs, the CT carries lock: create and every action is refused."""
    cts.append(9161)
    upid = _create(admin, 9161, template)
    node = admin.nodes(NODE)
    assert node.lxc(9161).config.get()["lock"] == "create"
    with pytest.raises(ResourceException) as start:
        node.lxc(9161).status.start.post()
    with pytest.raises(ResourceException) as delete:
        node.lxc(9161).delete()
    for refused in (start, delete):
        assert refused.value.status_code == 500 and refused.value.content == "CT is locked (create)"
    ok(admin, upid)
    assert "lock" not in node.lxc(9161).config.get()


def test_start_without_nesting_warns(px, template, cts):
    cts.append(9171)
    ok(px, _create(px, 9171, template, net0=NET.format(ip="10.157.0.202")))
    status, log = wait_task(px, px.nodes(NODE).lxc(9171).status.start.post())
    assert status == "WARNINGS: 1"
    assert any("detected. You may need to enable nesting." in line for line in log)


def test_two_clients_at_once(lab_server, template, cts):
    cts.extend([9181, 9182])
    results: dict[int, Any] = {}

    def worker(vmid: int) -> None:
        client = lab_server.client()
        try:
            upid = _create(client, vmid, template)
            reads = [client.nodes(NODE).lxc.get() for _ in range(10)]
            results[vmid] = (wait_task(client, upid)[0], upid, len(reads))
        except Exception as exc:
            results[vmid] = exc

    threads = [threading.Thread(target=worker, args=(v,)) for v in (9181, 9182)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TASK_TIMEOUT)
    assert results[9181][0] == "OK" and results[9182][0] == "OK", results
    assert results[9181][1] != results[9182][1]
