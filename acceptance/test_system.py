"""The container as a system: SSH, systemd, cloud-init, and where the master key lives."""

from __future__ import annotations

import json

import pytest

from pipeline.contract import MASTER_KEY_ENV

pytestmark = pytest.mark.image

# Never searched for the key: kernel views (a process's environ holds it by design).
NOT_SEARCHED = ("proc", "sys", "dev")


def test_ssh_reachable_as_admin_with_sudo(host, site):
    login = host.check_output("printenv SUDO_USER")
    assert login == (site.admin.user if site else host.backend.host.user)


def test_systemd_running(host):
    assert host.run("systemctl is-system-running").stdout.strip() == "running"


def test_no_failed_units(host):
    failed = host.check_output("systemctl list-units --state=failed --plain --no-legend")
    assert failed.strip() == ""


def test_cloud_init_finished_without_errors(host):
    assert host.file("/var/lib/cloud/instance/boot-finished").exists
    result = json.loads(host.check_output("cat /var/lib/cloud/data/result.json"))
    assert result["v1"]["errors"] == []


def test_cloud_init_disabled_for_later_boots(host):
    assert host.file("/etc/cloud/cloud-init.disabled").exists
    assert not host.file("/var/lib/cloud/seed/nocloud").exists


@pytest.mark.scan
def test_master_key_only_in_env_file(host, root_exec, master_key):
    top = host.check_output("ls -A /").split()
    dirs = " ".join(f"/{d}" for d in top if d not in NOT_SEARCHED)
    # The key goes to grep on stdin: on a command line, sudo would log it.
    rc, out = root_exec(f"grep -rlsF -D skip -f /dev/stdin {dirs}", master_key.value, timeout=600)
    assert rc in (0, 1), f"grep failed with exit {rc}"
    assert sorted(out.split()) == [MASTER_KEY_ENV]
