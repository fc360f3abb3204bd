"""lab.lxc boots a real unprivileged container on the lab bridge, reachable from the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import lxc
from pipeline.runner import run

pytestmark = pytest.mark.integration


@pytest.fixture
def bridge():
    created = lxc.ensure_bridge()
    yield lxc.BRIDGE
    if created:
        lxc.remove_bridge()


@pytest.fixture
def address():
    address = lxc.lease_address()
    yield address
    lxc.release_address(address)


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("192.0.2.164/24", "address 192.0.2.164/24 is not a host address in the lab subnet"),
        ("10.157.1.5/24", "address 10.157.1.5/24 is not a host address in the lab subnet"),
        ("10.157.0.5/16", "address 10.157.0.5/16 is not a host address in the lab subnet"),
        ("10.157.0.0/24", "address 10.157.0.0/24 is not a host address in the lab subnet"),
        ("x", "address 'x' is not IPv4 with /prefix"),
    ],
)
def test_refuses_addresses_outside_the_lab_subnet(cidr, message):
    with pytest.raises(lxc.LxcError) as caught:
        lxc.check_lab_address(cidr)
    assert caught.value.message.startswith(message)


def test_lease_is_exclusive_while_its_owner_lives(address):
    lease = lxc.LEASES / address.split("/")[0]
    assert lease.read_text() == str(os.getpid())
    lease.write_text("1")  # another process that is alive (init)
    assert not lxc.claim_address(address)
    lease.write_text("999999999")  # a dead owner
    assert lxc.claim_address(address)
    assert lease.read_text() == str(os.getpid())


def test_unprivileged_container_boots_and_answers_ssh(bridge, address, lab_template, lab_workdir):
    ct = lxc.Container(f"lxctest-{os.getpid()}", lab_workdir / "lxc")
    key = lab_workdir / f"key-{os.getpid()}"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
    try:
        lxc.extract_template(lab_template, ct.rootfs)
        assert ct.rootfs.stat().st_uid == lxc.ID_BASE
        assert (ct.rootfs / "etc/os-release").stat().st_uid == lxc.ID_BASE
        ssh_dir = ct.rootfs / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        run(["ssh-keygen", "-A", "-f", ct.rootfs])  # the template ships no host keys
        new_files = [ssh_dir, ssh_dir / "authorized_keys", *ct.rootfs.glob("etc/ssh/ssh_host_*")]
        for path in new_files:
            os.chown(path, lxc.ID_BASE, lxc.ID_BASE)
        ct.write_config(address=address, hostname="lxctest")
        ct.start()
        assert ct.wait_running(timeout=120, accept=("running",)) == "running"
        # Unprivileged: root inside is uid 100000 outside.
        assert f"0 {lxc.ID_BASE} {lxc.ID_COUNT}" in " ".join(
            ct.attach(["cat", "/proc/self/uid_map"]).stdout.split()
        )
        ip = address.split("/")[0]
        out = run(
            ["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
             f"root@{ip}", "ip -4 -o addr show eth0"],
            timeout=30,
        ).stdout
        assert f"inet {address}" in out
    except Exception:
        print(ct.diagnostics())
        raise
    finally:
        ct.destroy()
    assert not ct.dir.exists() and not ct.rootfs.exists()


def test_wait_running_times_out_with_diagnostics(lab_workdir):
    ct = lxc.Container(f"never-{os.getpid()}", lab_workdir / "lxc")
    with pytest.raises(lxc.LxcError) as caught:
        ct.wait_running(timeout=1)
    assert "did not reach running/degraded within 1s (last state: offline)" in caught.value.message
    assert ct.state() == "STOPPED"
