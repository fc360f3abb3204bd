"""End to end, as a user runs it: build the lab site, deploy it with replace-ct, check both
tiers around the OAuth login, bump one pinned version (the Meridian stand-in's), rebuild
(only that layer), replace, and check that everything still passes with the same login."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pipeline.contract import (
    BUILD_MANIFEST,
    CREDENTIALS_FILE,
    DEPLOYED_MANIFEST,
    parse_image_manifest,
    read_build_manifest,
)
from tests.plugins.acceptance import (
    LAB_SITE,
    acceptance,
    bumped_site,
    bumped_version,
    lab_ssh,
    pipeline_cli,
    remove_lab_ct,
    replace_ct,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

def test_build_deploy_login_upgrade(lab_build, lab_server, tmp_path: Path):
    remove_lab_ct(LAB_SITE)
    first = replace_ct(LAB_SITE, lab_build.out_dir, _mk(tmp_path / "deploy-1"))
    assert first["outcome"] == "deployed"
    assert acceptance(LAB_SITE, "image", tmp_path / "image-1") == []

    lab = lab_ssh(LAB_SITE, tmp_path / "known_hosts-1")
    meridian = f"http://{lab.site.container.network.ip}:{lab.site.services.meridian_port}"
    assert httpx.get(f"{meridian}/health", timeout=15).json()["status"] == "degraded"
    ping = {"model": lab.site.models[0], "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}
    assert httpx.post(f"{meridian}/v1/messages", json=ping, timeout=15).status_code == 401

    lab.fake_login()
    assert acceptance(LAB_SITE, "oauth", tmp_path / "oauth-1") == []
    credentials = lab.root(f"sha256sum {CREDENTIALS_FILE}").split()[0]

    version = bumped_version()
    site = bumped_site(tmp_path, version)
    out = tmp_path / "build-bumped"
    pipeline_cli(["build", "--site", str(site), "--out", str(out), "--update-lock"],
                 log=tmp_path / "build-bumped.log")
    before, after = lab_build.manifest, read_build_manifest(out / BUILD_MANIFEST)
    assert {name: layer.rebuilt for name, layer in after.layers.items()} == {
        "node": False, "meridian": True, "litellm": False}
    assert after.base.rebuilt is False
    changed = {name for name in after.layers if after.layers[name].key != before.layers[name].key}
    assert changed == {"meridian"}

    second = replace_ct(site, out, _mk(tmp_path / "deploy-2"))
    assert second["outcome"] == "deployed"
    assert second["template_before"] == first["template_after"]
    assert second["template_after"]["sha256"] != first["template_after"]["sha256"]
    assert acceptance(site, "image", tmp_path / "image-2") == []
    assert acceptance(site, "oauth", tmp_path / "oauth-2") == []

    lab = lab_ssh(site, tmp_path / "known_hosts-2")
    assert lab.root(f"sha256sum {CREDENTIALS_FILE}").split()[0] == credentials
    deployed = parse_image_manifest(lab.root(f"cat {DEPLOYED_MANIFEST}"), DEPLOYED_MANIFEST)
    assert deployed.components["meridian"] == version


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
