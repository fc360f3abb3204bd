"""A real first boot with the seed: the built template as an unprivileged LXC container,
set up the way Proxmox sets up a CT, with the seed either baked into the rootfs before
the first start or delivered to the running container as replace-ct does (activation_script,
one shell session). Both must end the same way.

Proxmox names the CT differently from the seed's local-hostname and gives it another
address than the seed's network-config, so "left as Proxmox set them" can fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import ctsetup, lxc
from lab.tasks import TaskLog
from pipeline.cloudinit import activation_script, container_files, render_seed
from pipeline.cloudinit.deliver import WAIT_COMMAND
from pipeline.config import load_site
from pipeline.runner import ANY_EXIT, run
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PVE_HOSTNAME = "ci-boot"  # differs from the seed's local-hostname on purpose
ENV_FILE = "etc/litellm/litellm.env"
SECRET_COPIES = (
    "/var/lib/cloud/seed/nocloud", "/etc/cloud/cloud.cfg.d/90-meridian-datasource.cfg",
    "/var/lib/cloud/instance/user-data.txt", "/var/lib/cloud/instance/user-data.txt.i",
    "/var/lib/cloud/instance/cloud-config.txt", "/var/lib/cloud/instance/obj.pkl",
    "/var/lib/cloud/instance/scripts/runcmd",
)


@dataclass
class Booted:
    ct: lxc.Container
    ip: str
    key: str
    deploy_key: Path
    before: dict[str, str]  # what Proxmox set, read before the first start


def sh(ct: lxc.Container, command: str, check=(0,), **kwargs) -> str:
    return ct.attach(["sh", "-c", command], check=check, **kwargs).stdout.strip()


def proxmox_view(rootfs: Path) -> dict[str, str]:
    """Hostname, hosts, interfaces and SSH host key hashes: what cloud-init must leave alone."""
    view = {rel: (rootfs / rel).read_text() for rel in ("etc/hostname", "etc/hosts", "etc/network/interfaces")}
    for key in sorted(rootfs.glob("etc/ssh/ssh_host_*_key*")):
        view[key.name] = hashlib.sha256(key.read_bytes()).hexdigest()
    return view


@pytest.fixture(scope="module", params=["baked", "delivered"])
def booted(request, lab_build, lab_workdir) -> Iterator[Booted]:
    site = load_site(REPO_ROOT / "sites" / "lab.yml")
    key = "sk-" + secrets.token_urlsafe(32)
    deploy_key = lab_workdir / f"ci-deploy-{request.param}-{os.getpid()}"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", deploy_key])
    seed = render_seed(site, master_key=key, instance_id=f"iid-{uuid.uuid4()}",
                       deploy_public_key=Path(f"{deploy_key}.pub").read_text())
    created = lxc.ensure_bridge()
    # Away from the low addresses that hand-started lab containers tend to take.
    address = lxc.lease_address(first=150)
    ct = lxc.Container(f"ciboot-{request.param}-{os.getpid()}", lab_workdir / "lxc-cloudinit")
    try:
        lxc.extract_template(lab_build.template, ct.rootfs)
        conf = {"hostname": PVE_HOSTNAME, "net0": f"name=eth0,bridge={lxc.BRIDGE},ip={address},gw={lxc.GATEWAY}"}
        ctsetup.at_create(ct.rootfs, conf, ssh_keys=None, log=TaskLog(lab_workdir / f"{ct.name}.log"))
        before = proxmox_view(ct.rootfs)
        if request.param == "baked":
            ctsetup_files(ct.rootfs, container_files(seed))
        ct.write_config(address=address, hostname=PVE_HOSTNAME)
        ct.start()
        ct.wait_running(timeout=120)
        if request.param == "delivered":
            assert "disabled-by-generator" in sh(ct, "cloud-init status --long")
            delivered = ct.attach(["sh", "-s"], input=activation_script(seed).decode(), check=ANY_EXIT,
                                  timeout=660)
            assert delivered.returncode == 0, f"{delivered.stderr}\n{ct.diagnostics()}"
        wait = ct.attach(["sh", "-c", WAIT_COMMAND], check=ANY_EXIT, timeout=660)
        assert wait.returncode == 0, f"{wait.stdout}\n{wait.stderr}\n{ct.diagnostics()}"
        yield Booted(ct, address.split("/")[0], key, deploy_key, before)
    finally:
        ct.destroy()
        lxc.release_address(address)
        if created:
            lxc.remove_bridge()


def ctsetup_files(rootfs: Path, files: list[tuple[str, bytes, int]]) -> None:
    """Bake the seed into the rootfs before the first start (owner: the container's root)."""
    for path, content, mode in files:
        target = rootfs / path.lstrip("/")
        for parent in reversed(target.relative_to(rootfs).parents):
            directory = rootfs / parent
            if not directory.exists():
                directory.mkdir()
                os.chown(directory, lxc.ID_BASE, lxc.ID_BASE)
        target.write_bytes(content)
        os.chown(target, lxc.ID_BASE, lxc.ID_BASE)
        target.chmod(mode)


def test_cloud_init_finished_without_errors(booted):
    ct = booted.ct
    result = json.loads((ct.rootfs / "var/lib/cloud/data/result.json").read_text())
    assert result["v1"]["errors"] == []
    log = sh(ct, "cat /var/log/cloud-init.log")
    assert "Traceback" not in log
    assert [line for line in log.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line] == []
    for unit in ("cloud-init-local", "cloud-init", "cloud-config", "cloud-final"):
        assert sh(ct, f"systemctl show {unit} -p Result --value") == "success"
    assert "DataSourceNoCloud" in sh(ct, "cat /var/lib/cloud/instance/datasource")


def test_cloud_init_logs_are_not_world_readable(booted):
    out = sh(booted.ct, "stat -c '%a %U %G' /var/log/cloud-init.log /var/log/cloud-init-output.log")
    assert out.splitlines() == ["640 root adm", "640 root adm"]


def test_env_file_holds_the_key_for_litellm_only(booted):
    ct = booted.ct
    assert sh(ct, f"stat -c '%a %U %G' /{ENV_FILE}") == "600 litellm litellm"
    content = (ct.rootfs / ENV_FILE).read_text()
    assert hashlib.sha256(content.encode()).digest() == hashlib.sha256(
        f"LITELLM_MASTER_KEY={booted.key}\n".encode()).digest()
    assert sh(ct, "stat -c '%a %U %G' /etc/litellm/config.yaml") == "640 root litellm"


def test_hostname_network_and_host_keys_are_as_proxmox_set_them(booted):
    ct = booted.ct
    assert proxmox_view(ct.rootfs) == booted.before
    assert sh(ct, "hostname") == PVE_HOSTNAME
    assert f"inet {booted.ip}/24" in sh(ct, "ip -4 -o addr show eth0")
    assert sh(ct, "ls /etc/network/interfaces.d/ /etc/netplan 2>/dev/null | grep -c cloud-init", check=(0, 1)) == "0"


def test_key_is_only_in_the_env_file(booted):
    """The whole rootfs from the host, plus /run and /tmp inside (tmpfs the host cannot see)."""
    ct = booted.ct
    found = run(["grep", "-rlsF", "-f", "-", ct.rootfs], input=booted.key, check=(0, 1))
    assert found.stdout.splitlines() == [str(ct.rootfs / ENV_FILE)]
    inside = ct.attach(["grep", "-rlsF", "-f", "-", "/run", "/tmp", "/var/tmp", "/dev/shm"],
                       input=booted.key, check=(0, 1, 2))
    assert inside.stdout.split() == []


def test_user_data_copies_are_gone_and_cloud_init_disabled(booted):
    ct = booted.ct
    for path in SECRET_COPIES:
        assert sh(ct, f"test -e {path} && echo present || echo gone") == "gone", path
    assert sh(ct, "test -f /etc/cloud/cloud-init.disabled && echo yes") == "yes"


def test_admin_logs_in_with_the_deploy_key_and_sudo_needs_no_password(booted, tmp_path):
    site = load_site(REPO_ROOT / "sites" / "lab.yml")
    # Pin the container's own host key: a reply from any other host on the bridge fails.
    host_key = (booted.ct.rootfs / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{booted.ip} {' '.join(host_key)}\n")
    argv = ["ssh", "-i", booted.deploy_key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10",
            f"{site.admin.user}@{booted.ip}", "sudo -n id -u"]
    for _ in range(3):  # bounded: a reused lab address may need a fresh ARP entry first
        out = run(argv, timeout=60, check=ANY_EXIT)
        if out.returncode != 255:
            break
        time.sleep(2)
    assert out.stdout.strip() == "0", out.stderr


def test_services_start_once_their_config_exists(booted):
    for unit in ("meridian", "litellm", "prometheus-node-exporter"):
        state = sh(booted.ct, f"systemctl show {unit} -p ActiveState -p ConditionResult")
        assert "ConditionResult=yes" in state, unit
        assert "ActiveState=active" in state or "ActiveState=activating" in state, (unit, state)


def test_after_a_reboot_cloud_init_stays_disabled(booted):
    ct = booted.ct
    env_before = (ct.rootfs / ENV_FILE).read_bytes()
    ct.stop()
    ctsetup.at_start(ct.rootfs, {"hostname": PVE_HOSTNAME,
                                 "net0": f"name=eth0,bridge={lxc.BRIDGE},ip={booted.ip}/24,gw={lxc.GATEWAY}"})
    ct.start()
    ct.wait_running(timeout=120)
    status = sh(ct, "cloud-init status --long")
    assert "status: disabled" in status
    assert "disabled-by-marker-file" in status
    assert sh(ct, "test -e /run/cloud-init/result.json && echo ran || echo not-run") == "not-run"
    assert sh(ct, "systemctl show cloud-init-local -p ActiveState --value") == "inactive"
    assert (ct.rootfs / ENV_FILE).read_bytes() == env_before
    assert proxmox_view(ct.rootfs) == booted.before
