"""The built template boots as an unprivileged LXC container, extracted as Proxmox does,
with the three extensions merged and the in-container contract of docs/ARCHITECTURE.md.

The container gets no cloud-init seed: this is the template as Proxmox would start it
before replace-ct delivers the per-site files, so the app units must skip, not fail.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from lab import lxc
from pipeline.builder.rules import template_violations
from pipeline.contract import DEPLOYED_MANIFEST, LAYER_NAMES, parse_image_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# Without nesting: the strictest mount rules; with nesting=1: how replace-ct creates CT 457.
@pytest.fixture(scope="module", params=[False, True], ids=["plain", "nesting"])
def booted(request, lab_build, lab_workdir) -> Iterator[tuple[lxc.Container, str]]:
    created = lxc.ensure_bridge()
    address = lxc.lease_address()
    ct = lxc.Container(f"buildboot-{os.getpid()}-{request.param_index}", lab_workdir / "lxc-build")
    try:
        lxc.extract_template(lab_build.template, ct.rootfs)
        ct.write_config(address=address, nesting=request.param)
        ct.start()
        ct.wait_running(timeout=120)
        yield ct, address.split("/")[0]
    finally:
        ct.destroy()
        lxc.release_address(address)
        if created:
            lxc.remove_bridge()


def sh(ct: lxc.Container, command: str, check=(0,)) -> str:
    return ct.attach(["sh", "-c", command], check=check).stdout.strip()


def unit_props(ct: lxc.Container, unit: str, *names: str) -> dict[str, str]:
    out = sh(ct, f"systemctl show {unit} " + " ".join(f"-p {n}" for n in names))
    return dict(line.split("=", 1) for line in out.splitlines())


def test_template_obeys_proxmox_rules(lab_build):
    assert template_violations(lab_build.template) == []


def test_systemd_is_running_with_no_failed_unit(booted):
    ct, _ = booted
    assert sh(ct, "systemctl --failed --no-legend --plain") == ""
    assert ct.system_state() == "running", ct.diagnostics()


def test_the_three_extensions_are_merged(booted):
    ct, _ = booted
    status = json.loads(sh(ct, "systemd-sysext status --json=short"))
    merged = {ext for entry in status for ext in (entry.get("extensions") or [])}
    assert merged == set(LAYER_NAMES)
    assert {entry["hierarchy"] for entry in status} == {"/usr", "/opt"}


def test_node_meridian_and_litellm_run(booted):
    ct, _ = booted
    assert sh(ct, "node --version").startswith("v22.")
    assert "meridian" in sh(ct, "meridian --help")
    assert "Claude Code" in sh(ct, "/opt/meridian/node_modules/.bin/claude --version")
    assert "--config" in sh(ct, "/opt/litellm/bin/litellm --help")


@pytest.mark.parametrize("path", ["/usr", "/opt", "/opt/litellm", "/usr/bin"])
def test_usr_and_opt_are_read_only(booted, path):
    ct, _ = booted
    out = ct.attach(["touch", f"{path}/.write-test"], check=(1,)).stderr
    assert "Read-only file system" in out


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/lib/meridian", "meridian:meridian 750"),
        ("/var/lib/meridian/.claude", "meridian:meridian 700"),
        ("/var/lib/litellm", "litellm:litellm 750"),
        ("/etc/litellm", "root:litellm 750"),
        ("/etc/meridian", "root:root 755"),
    ],
)
def test_state_paths_owners_and_modes(booted, path, expected):
    ct, _ = booted
    assert sh(ct, f"stat -c '%U:%G %a' {path}") == expected


def test_service_users_have_static_ids(booted):
    ct, _ = booted
    assert sh(ct, "id meridian") == "uid=901(meridian) gid=901(meridian) groups=901(meridian)"
    assert sh(ct, "id litellm") == "uid=902(litellm) gid=902(litellm) groups=902(litellm)"


def test_meridian_waits_for_its_site_file(booted):
    ct, _ = booted
    props = unit_props(ct, "meridian.service", "UnitFileState", "ConditionResult", "ActiveState", "Result")
    assert props == {"ActiveState": "inactive", "UnitFileState": "enabled",
                     "ConditionResult": "no", "Result": "success"}


def test_litellm_imports_at_boot_then_waits_for_its_site_files(booted):
    ct, _ = booted
    waiting = "proxy imported; waiting for the site's files"
    for _ in range(120):  # bounded: the import takes a few seconds
        log = sh(ct, "journalctl -b -u litellm.service --no-pager -o cat")
        if waiting in log:
            break
        time.sleep(0.5)
    assert waiting in log, log[-500:]
    assert unit_props(ct, "litellm.service", "ActiveState", "UnitFileState") == {
        "ActiveState": "active", "UnitFileState": "enabled"}
    assert sh(ct, "ss -Hltn 'sport = :4000'") == ""  # LiteLLM's default port: nothing served unconfigured


def test_services_have_the_designed_environment(booted):
    ct, _ = booted
    meridian = unit_props(ct, "meridian.service", "Environment", "User", "After")
    env = meridian["Environment"].split()
    assert any(e.startswith("PATH=/opt/meridian/node_modules/.bin:") for e in env)
    assert {"DISABLE_TELEMETRY=1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1"} <= set(env)
    assert meridian["User"] == "meridian"
    assert "systemd-sysext.service" in meridian["After"].split()
    litellm = unit_props(ct, "litellm.service", "Environment", "Wants", "Requires", "After", "PrivateTmp")
    assert {"LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True",
            "LITELLM_MODE=PRODUCTION", "LITELLM_TELEMETRY_DISABLED=true", "DISABLE_ADMIN_UI=True",
            "NO_DOCS=True"} <= set(litellm["Environment"].split())
    assert "meridian.service" in litellm["Wants"].split()
    assert "meridian.service" not in litellm["Requires"].split()
    assert {"meridian.service", "systemd-sysext.service"} <= set(litellm["After"].split())
    assert litellm["PrivateTmp"] == "yes"


def test_node_exporter_serves_metrics_on_the_lab_address(booted):
    ct, ip = booted
    assert sh(ct, "systemctl is-active prometheus-node-exporter") == "active"
    resp = httpx.get(f"http://{ip}:9100/metrics", timeout=10)
    assert resp.status_code == 200 and "node_exporter_build_info" in resp.text


def test_deployed_manifest_matches_the_build(booted, lab_build):
    ct, _ = booted
    inside = parse_image_manifest(sh(ct, f"cat {DEPLOYED_MANIFEST}"), DEPLOYED_MANIFEST)
    assert inside.components["node"] == lab_build.manifest.components["node"]
    assert inside.template.version == lab_build.manifest.template.version
    for name in LAYER_NAMES:
        assert inside.layers[name] == lab_build.manifest.layers[name].key
    assert inside == lab_build.manifest.image_manifest  # what an extension swap writes
    assert inside.system == lab_build.manifest.system


def test_ssh_host_keys_are_made_at_first_boot_not_shipped(booted):
    ct, _ = booted
    # The condition held (no keys in the template) and ssh-keygen -A succeeded.
    props = unit_props(ct, "ssh-hostkeys.service", "ConditionResult", "Result")
    assert props == {"ConditionResult": "yes", "Result": "success"}
    assert sh(ct, "systemctl is-active ssh") == "active"
