"""The hardening checks catch a weakened sandbox: the built template boots as an unprivileged
LXC container with nesting (as Proxmox runs it), the seed is delivered as replace-ct does, and
the acceptance suite's image tier passes. Then one directive is taken away with a runtime
drop-in (/run/systemd/system/UNIT.d/, gone at the next boot, the unit files untouched) and the
suite must fail on exactly the check that covers it, and pass again once it is back.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import ctsetup, lxc
from lab.tasks import TaskLog
from pipeline.cloudinit import activation_script, render_seed
from pipeline.cloudinit.deliver import WAIT_COMMAND
from pipeline.config import load_site
from pipeline.replace.gate import failed_checks
from pipeline.runner import ANY_EXIT, run, tail
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTNAME = "ci-harden"
SUITE_TIMEOUT = 900
# Bounded wait until LiteLLM (the lab site's port 4000) is ready again; the base has python3.
WAIT_LITELLM = (
    "for i in $(seq 60); do python3 -c \"import urllib.request as u; "
    "u.urlopen('http://127.0.0.1:4000/health/readiness', timeout=3)\" 2>/dev/null && exit 0; "
    "sleep 2; done; exit 1"
)


@dataclass(frozen=True)
class Break:
    unit: str
    dropin: str  # the [Service] lines that weaken the unit (after the unit's own drop-ins: zz-)
    fails: frozenset[str]


BREAKS = {
    # Without ProtectSystem= LiteLLM can write what its user owns outside its state: the env
    # file with the master key. The exposure score alone moves by 0.1 and stays under 3.0.
    "litellm-no-protect-system": Break(
        unit="litellm.service",
        dropin="ProtectSystem=no",
        fails=frozenset({"test_service_writes_only_its_own_dirs[litellm]"}),
    ),
    # Without PrivateTmp= Meridian shares /tmp and /var/tmp with every other process.
    "meridian-shared-tmp": Break(
        unit="meridian.service",
        dropin="PrivateTmp=no",
        fails=frozenset({"test_service_writes_only_its_own_dirs[meridian]"}),
    ),
    # Everything but the file-system part of the sandbox gone: only the score notices (8.6).
    "node-exporter-unconfined": Break(
        unit="prometheus-node-exporter.service",
        dropin="\n".join((
            "NoNewPrivileges=no", "PrivateUsers=no", "PrivateDevices=no", "PrivateIPC=no",
            "ProtectKernelTunables=no", "ProtectKernelModules=no", "ProtectKernelLogs=no",
            "ProtectControlGroups=no", "ProtectHostname=no", "RestrictAddressFamilies=",
            "RestrictNamespaces=no", "RestrictRealtime=no", "RestrictSUIDSGID=no",
            "LockPersonality=no", "MemoryDenyWriteExecute=no", "SystemCallArchitectures=",
            "SystemCallFilter=", "CapabilityBoundingSet=~", "UMask=0022",
        )),
        fails=frozenset({"test_unit_exposure_within_threshold[node_exporter]"}),
    ),
}


@dataclass
class Booted:
    ct: lxc.Container
    ip: str
    deploy_key: Path

    def root(self, command: str, timeout: float = 180) -> str:
        return self.ct.attach(["sh", "-c", command], timeout=timeout).stdout


@pytest.fixture(scope="module")
def booted(lab_build, lab_workdir) -> Iterator[Booted]:
    """The lab template, seeded and settled, as Proxmox runs a CT with features: nesting=1."""
    site = load_site(REPO_ROOT / "sites" / "lab.yml")
    deploy_key = lab_workdir / f"ci-harden-{os.getpid()}"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", deploy_key])
    seed = render_seed(site, master_key="sk-" + secrets.token_urlsafe(32), instance_id=f"iid-{uuid.uuid4()}",
                       deploy_public_key=Path(f"{deploy_key}.pub").read_text())
    created = lxc.ensure_bridge()
    address = lxc.lease_address(first=190, last=199)  # away from the other boot tests
    ct = lxc.Container(f"harden-ci-{os.getpid()}", lab_workdir / "lxc-harden")
    try:
        lxc.extract_template(lab_build.template, ct.rootfs)
        net0 = f"name=eth0,bridge={lxc.BRIDGE},ip={address},gw={lxc.GATEWAY}"
        ctsetup.at_create(ct.rootfs, {"hostname": HOSTNAME, "net0": net0}, ssh_keys=None,
                          log=TaskLog(lab_workdir / f"{ct.name}.log"))
        # The container's ifupdown sets the address Proxmox wrote, as on Proxmox (LXC setting it
        # too fails networking.service, and the suite checks for failed units).
        ct.write_config(address=address, hostname=HOSTNAME, nesting=True, memory_mib=site.container.memory_mib,
                        lxc_sets_address=False)
        ct.start()
        ct.wait_running(timeout=120)
        delivered = ct.attach(["sh", "-s"], input=activation_script(seed).decode(), check=ANY_EXIT, timeout=660)
        assert delivered.returncode == 0, f"{delivered.stderr}\n{ct.diagnostics()}"
        wait = ct.attach(["sh", "-c", WAIT_COMMAND], check=ANY_EXIT, timeout=660)
        assert wait.returncode == 0, f"{wait.stdout}\n{wait.stderr}\n{ct.diagnostics()}"
        yield Booted(ct, address.split("/")[0], deploy_key)
    finally:
        ct.destroy()
        lxc.release_address(address)
        if created:
            lxc.remove_bridge()


def image_tier(booted: Booted, out: Path) -> list[str]:
    """The acceptance suite's image tier against the container (no site: --hosts, the admin
    user and the deploy key); the failed checks' names."""
    site = load_site(REPO_ROOT / "sites" / "lab.yml")
    out.mkdir(parents=True, exist_ok=True)
    junit, log = out / "acceptance-image.xml", out / "acceptance-image.log"
    proc = run([sys.executable, "-m", "pytest", str(REPO_ROOT / "acceptance"), "-m", "image",
                "--hosts", f"{site.admin.user}@{booted.ip}", "--ssh-identity-file", str(booted.deploy_key),
                f"--junitxml={junit}", "-p", "no:cacheprovider", "-q"],
               cwd=REPO_ROOT, timeout=SUITE_TIMEOUT, check=ANY_EXIT, log=log)
    failed = [name.split("::")[-1] for name in failed_checks(junit)] if junit.exists() else []
    if proc.returncode != 0 and not failed:
        raise AssertionError(f"acceptance exited {proc.returncode} without a failed check:\n"
                             f"{tail(log.read_text(errors='replace'))}")
    return failed


def restart(booted: Booted, unit: str) -> None:
    booted.root(f"systemctl daemon-reload && systemctl restart {unit}")
    if unit == "litellm.service":
        booted.root(WAIT_LITELLM)


@pytest.fixture(scope="module")
def healthy(booted: Booted, tmp_path_factory: pytest.TempPathFactory) -> Booted:
    failed = image_tier(booted, tmp_path_factory.mktemp("baseline"))
    assert failed == [], "the hardened container must pass the image tier before anything is weakened"
    return booted


@pytest.mark.parametrize("name", list(BREAKS))
def test_gate_fails_on_exactly_the_weakened_directive(healthy: Booted, name: str, tmp_path):
    broken = BREAKS[name]
    dropin = f"/run/systemd/system/{broken.unit}.d"
    healthy.root(f"mkdir -p {dropin} && printf '[Service]\\n%s\\n' '{broken.dropin}' > {dropin}/zz-weaken.conf")
    try:
        restart(healthy, broken.unit)
        failed = image_tier(healthy, tmp_path)
    finally:
        healthy.root(f"rm -rf {dropin}")
        restart(healthy, broken.unit)
    assert set(failed) == broken.fails
    assert len(failed) == len(broken.fails)


def test_gate_passes_again_after_every_restore(healthy: Booted, tmp_path):
    assert image_tier(healthy, tmp_path) == []
