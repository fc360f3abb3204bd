"""A second lab (own state, port 8007): its server restarts while its container keeps running;
its volumes live on the lab's own journaled disk, which `down` unmounts and removes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import disk
from lab.errors import LabError
from lab.process import run_command
from tests.plugins.lab import lab_cli, private_lab
from tests.plugins.pveapi import NET, NODE, ok, sha256, upload

pytestmark = pytest.mark.integration
PORT = 8007


@pytest.fixture
def second_lab(lab_workdir: Path):
    state = lab_workdir / "second-lab"
    with private_lab(state, PORT) as the_lab:
        yield the_lab
    assert not state.exists()


def test_server_restart_keeps_containers_and_tasks(second_lab, lab_template):
    px = second_lab.client()
    node = px.nodes(NODE)
    ok(px, upload(px, lab_template, "restart_amd64.tar.zst", sha256(lab_template)))
    ok(px, node.lxc.post(vmid=9191, ostemplate="local:vztmpl/restart_amd64.tar.zst", rootfs="local-lvm:2",
                         unprivileged=1, pool="meridian", features="nesting=1",
                         net0=NET.format(ip="10.157.0.204")))
    start = node.lxc(9191).status.start.post()
    ok(px, start)
    pid = node.lxc(9191).status.current.get()["pid"]
    assert_on_the_labs_disk(second_lab.state, Path(f"/proc/{pid}/root"))
    lab_cli(second_lab.state, "restart", "--port", str(PORT))
    px = second_lab.client()
    node = px.nodes(NODE)
    status = node.lxc(9191).status.current.get()
    assert status["status"] == "running" and status["pid"] == pid
    assert node.tasks(start).status.get()["exitstatus"] == "OK"
    assert "CT 9191" in lab_cli(second_lab.state, "status")
    ok(px, node.lxc(9191).status.stop.post())
    ok(px, node.lxc(9191).delete(purge=1))
    # The lab site's pipeline state lives in the lab; `down` (in the fixture) must take it along.
    journal = second_lab.state / "pipeline" / "lab" / "replace-journal.json"
    journal.parent.mkdir(parents=True)
    journal.write_text("{}")


def assert_on_the_labs_disk(state: Path, rootfs: Path) -> None:
    """The container's files are on STATE/storage.img, an ext4 with a journal (lab/disk.py)."""
    storage = state / "storage"
    assert storage.is_mount()
    assert os.stat(rootfs / "etc").st_dev == os.stat(storage).st_dev != os.stat(state).st_dev
    header = run_command(["dumpe2fs", "-h", state / "storage.img"]).stdout
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features:"))
    assert "has_journal" in features.split()


def test_a_lab_from_before_its_own_disk_is_named_not_mounted_over(tmp_path: Path) -> None:
    """Volumes in STATE/storage without STATE/storage.img: mounting the new disk over them would
    hide them, so `up` refuses and says what to do."""
    storage = tmp_path / "storage"
    (storage / "local-lvm" / "vm-457-disk-0").mkdir(parents=True)
    with pytest.raises(LabError) as refused:
        disk.attach(storage, tmp_path / "storage.img")
    assert "made before the lab had its own disk" in str(refused.value)
    assert not storage.is_mount() and not (tmp_path / "storage.img").exists()
    assert (storage / "local-lvm" / "vm-457-disk-0").is_dir()
