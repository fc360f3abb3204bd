"""The services, their users, files and ports, and the sysext layers they run from."""

from __future__ import annotations

import json

import pytest

from pipeline.contract import CREDENTIALS_DIR, LAYER_NAMES, MASTER_KEY_ENV, UNITS, USERS

pytestmark = pytest.mark.image

SERVICES = sorted(UNITS)
ALL_ADDRESSES = {"0.0.0.0", "[::]", "*"}


@pytest.mark.parametrize("name", SERVICES)
def test_service_active(host, name):
    assert host.service(UNITS[name]).is_running


@pytest.mark.parametrize("name", SERVICES)
def test_service_enabled(host, name):
    assert host.run(f"systemctl is-enabled {UNITS[name]}").stdout.strip() == "enabled"


def test_litellm_wants_meridian_without_requiring_it(host):
    """LiteLLM starts after Meridian, but a Meridian restart (its extension swapped in place)
    must not restart LiteLLM: Wants=, not Requires=."""
    props = dict(line.split("=", 1) for line in host.check_output(
        f"systemctl show -p Wants -p Requires -p After {UNITS['litellm']}").splitlines())
    assert UNITS["meridian"] in props["Wants"].split()
    assert UNITS["meridian"] in props["After"].split()
    assert UNITS["meridian"] not in props["Requires"].split()


@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_sysext_merged(host, layer):
    status = json.loads(host.check_output("systemd-sysext status --json=short"))
    merged = {ext for h in status if isinstance(h["extensions"], list) for ext in h["extensions"]}
    assert layer in merged


@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_sysext_version_matches_manifest(host, manifest, layer):
    release = host.file(f"/usr/lib/extension-release.d/extension-release.{layer}").content_string
    fields = dict(line.split("=", 1) for line in release.splitlines() if "=" in line)
    assert fields.get("SYSEXT_VERSION_ID", "").strip('"') == manifest.components[layer]


@pytest.mark.parametrize(("name", "uid", "home"), USERS, ids=[u[0] for u in USERS])
def test_service_user(host, name, uid, home):
    user = host.user(name)
    assert (user.exists, user.uid, user.gid, user.home) == (True, uid, uid, home)


def test_credentials_dir_private_to_meridian(host):
    creds = host.file(CREDENTIALS_DIR)
    assert creds.is_directory
    assert (creds.user, creds.group, oct(creds.mode)) == ("meridian", "meridian", "0o700")


def test_litellm_env_file_private_to_litellm(host):
    env = host.file(MASTER_KEY_ENV)
    assert env.is_file
    assert (env.user, oct(env.mode)) == ("litellm", "0o600")


@pytest.mark.parametrize("name", SERVICES)
def test_port_listens_on_all_addresses(listeners, port_of, name):
    assert set(listeners(port_of(name))) & ALL_ADDRESSES
