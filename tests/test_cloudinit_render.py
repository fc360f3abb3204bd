"""Rendering the seed: contents follow the in-container contract, and the validator guards it."""

from __future__ import annotations

import hashlib
import secrets
import shutil

import pytest
import yaml

from pipeline.cloudinit import activation_script, container_files, render_seed
from pipeline.cloudinit.render import PLACEHOLDER_KEY, TEMPLATE_DIR
from pipeline.config import load_site
from pipeline.errors import PipelineError, SecretError
from pipeline.runner import run
from tests.plugins.paths import REPO_ROOT

SITES = [REPO_ROOT / "sites" / "lab.yml", REPO_ROOT / "sites" / "meridian.yml"]
DEPLOY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDEPLOYKEYFORTESTSxxxxxxxxxxxxxxxxxxxxxxxxxxx deploy@test"


def fresh_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def digest(text: str | bytes) -> str:
    """Compare secrets by hash: a failing assert then never prints the key."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def files_by_path(user_data: dict) -> dict[str, dict]:
    return {entry["path"]: entry for entry in user_data["write_files"]}


@pytest.fixture(params=SITES, ids=lambda p: p.name)
def site(request):
    return load_site(request.param)


def test_user_data_follows_the_contract(site):
    key = fresh_key()
    seed = render_seed(site, master_key=key, instance_id="iid-test", deploy_public_key=DEPLOY_KEY)
    data = yaml.safe_load(seed.files["user-data"])
    assert seed.files["user-data"].startswith(b"#cloud-config\n")
    assert data["locale"] == "C.UTF-8"
    assert data["timezone"] == site.container.timezone
    (admin,) = data["users"]
    assert admin["name"] == site.admin.user
    assert admin["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert admin["ssh_authorized_keys"] == [*site.admin.ssh_keys, DEPLOY_KEY]
    files = files_by_path(data)
    env = files["/etc/litellm/litellm.env"]
    assert (env["owner"], env["permissions"]) == ("litellm:litellm", "0600")
    assert digest(env["content"]) == digest(f"LITELLM_MASTER_KEY={key}\n")
    assert files["/etc/litellm/service.env"]["content"] == f"LITELLM_PORT={site.services.litellm_port}\n"
    assert files["/etc/meridian/meridian.env"]["content"] == (
        f"MERIDIAN_HOST=0.0.0.0\nMERIDIAN_PORT={site.services.meridian_port}\n"
    )
    assert files["/etc/default/prometheus-node-exporter"]["content"] == (
        f'ARGS="--web.listen-address=:{site.services.node_exporter_port}"\n'
    )
    assert all(isinstance(entry["permissions"], str) for entry in files.values())


def test_litellm_config_maps_every_alias_to_meridian(site):
    seed = render_seed(site, master_key=fresh_key(), instance_id="iid-test")
    entry = files_by_path(yaml.safe_load(seed.files["user-data"]))["/etc/litellm/config.yaml"]
    assert (entry["owner"], entry["permissions"]) == ("root:litellm", "0640")
    config = yaml.safe_load(entry["content"])
    assert [m["model_name"] for m in config["model_list"]] == list(site.models)
    for model in config["model_list"]:
        params = model["litellm_params"]
        assert params["model"] == f"anthropic/{model['model_name']}"
        assert params["api_base"] == f"http://127.0.0.1:{site.services.meridian_port}"
        assert params["api_key"]
        assert params["max_tokens"] == site.litellm.max_tokens
    assert config["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY", "trusted_proxy_ranges": []}


def test_first_boot_finish_disables_cloud_init_and_removes_secret_copies(site):
    seed = render_seed(site, master_key=fresh_key(), instance_id="iid-test")
    finish = yaml.safe_load(seed.files["user-data"])["runcmd"][-1][-1]
    assert finish.startswith("touch /etc/cloud/cloud-init.disabled &&")
    for copy in ("/var/lib/cloud/seed/nocloud", "/etc/cloud/cloud.cfg.d/90-meridian-datasource.cfg",
                 "/var/lib/cloud/instances/*/user-data.txt*", "/var/lib/cloud/instances/*/cloud-config.txt",
                 "/var/lib/cloud/instances/*/obj.pkl", "/var/lib/cloud/instances/*/scripts"):
        assert copy in finish.split()


def test_meta_data_and_network_config(site):
    seed = render_seed(site, master_key=None, instance_id="iid-1234")
    meta = yaml.safe_load(seed.files["meta-data"])
    assert meta == {"instance-id": "iid-1234", "local-hostname": site.container.hostname}
    net = yaml.safe_load(seed.files["network-config"])
    eth0 = net["ethernets"]["eth0"]
    assert net["version"] == 2
    assert eth0["addresses"] == [site.container.network.address]
    assert eth0["gateway4"] == site.container.network.gateway


def test_network_config_converts_to_the_static_ifupdown_stanza(site, tmp_path):
    """cloud-init's own converter reads it: what a VM booted from seed.iso would get."""
    seed = render_seed(site, master_key=None, instance_id="iid-test")
    (tmp_path / "network-config").write_bytes(seed.files["network-config"])
    run(["cloud-init", "devel", "net-convert", "-p", tmp_path / "network-config", "-k", "yaml",
         "-d", tmp_path / "out", "-D", "debian", "-O", "eni"])
    eni = (tmp_path / "out/etc/network/interfaces.d/50-cloud-init").read_text()
    assert "iface eth0 inet static" in eni
    assert f"address {site.container.network.address}" in eni
    assert f"gateway {site.container.network.gateway}" in eni


def test_without_a_key_the_env_file_is_left_out(site):
    seed = render_seed(site, master_key=None, instance_id="iid-test")
    assert not seed.has_secret
    assert b"LITELLM_MASTER_KEY=" not in seed.files["user-data"]
    files = files_by_path(yaml.safe_load(seed.files["user-data"]))
    assert "/etc/litellm/litellm.env" not in files
    assert "/etc/litellm/config.yaml" in files


def test_seed_repr_never_shows_the_files():
    key = fresh_key()
    seed = render_seed(load_site(SITES[0]), master_key=key, instance_id="iid-test")
    assert key not in repr(seed)


@pytest.mark.parametrize("bad", ["sk-with space inside-xx", "sk-quote'inside-xxxxxx", "sk-dollar$HOMExxxxxxx"])
def test_key_that_cannot_go_into_an_env_file_is_refused(bad):
    with pytest.raises(SecretError) as caught:
        render_seed(load_site(SITES[0]), master_key=bad, instance_id="iid-test")
    assert "characters outside" in str(caught.value)
    assert bad not in str(caught.value)


def test_container_files_hold_seed_and_pin():
    seed = render_seed(load_site(SITES[0]), master_key=fresh_key(), instance_id="iid-test")
    files = {path: (content, mode) for path, content, mode in container_files(seed)}
    for name in ("user-data", "meta-data", "network-config"):
        assert files[f"/var/lib/cloud/seed/nocloud/{name}"] == (seed.files[name], 0o600)
    pin, mode = files["/etc/cloud/cloud.cfg.d/90-meridian-datasource.cfg"]
    assert yaml.safe_load(pin) == {"datasource_list": ["NoCloud", "None"]}
    assert mode == 0o644
    assert len(files) == 4


def test_activation_script_starts_the_services_before_cloud_init_runs():
    """One script: write_files and the systemctl runcmd lines first, then cloud-init's stages,
    then the bounded wait. The key travels only base64-encoded inside the script (stdin)."""
    key = fresh_key()
    seed = render_seed(load_site(SITES[0]), master_key=key, instance_id="iid-test")
    script = activation_script(seed).decode()
    lines = script.splitlines()
    env_file = next(i for i, line in enumerate(lines) if line.endswith(" /etc/litellm/litellm.env"))
    start = lines.index("systemctl start --no-block meridian.service litellm.service")
    clean = lines.index("cloud-init clean --logs")
    assert env_file < start < clean < lines.index("timeout 600 cloud-init status --wait --long")
    assert key not in script
    assert lines[0] == "set -eu"


def test_cloud_init_waits_for_the_services_to_listen_when_given_their_ports():
    """Between the services' start and cloud-init's stages, a bounded wait for every port."""
    seed = render_seed(load_site(SITES[0]), master_key=fresh_key(), instance_id="iid-test")
    lines = activation_script(seed, ports=(3456, 4000)).decode().splitlines()
    start = lines.index("systemctl start --no-block meridian.service litellm.service")
    (wait,) = [i for i, line in enumerate(lines) if line.startswith("i=0; until ")]
    assert start < wait < lines.index("cloud-init clean --logs")
    assert "ss -Hltn 'sport = :3456' | grep -q . && ss -Hltn 'sport = :4000' | grep -q ." in lines[wait]
    assert "[ $i -ge 600 ]" in lines[wait]  # bounded: then cloud-init runs anyway
    assert not any(line.startswith("i=0; until ") for line in activation_script(seed).decode().splitlines())


@pytest.fixture
def templates(tmp_path):
    copy = tmp_path / "cloudinit"
    shutil.copytree(TEMPLATE_DIR, copy)
    return copy


def break_template(templates, old: str, new: str) -> None:
    path = templates / "user-data.j2"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_template_rendering_invalid_user_data_fails_with_the_validator_message(templates):
    break_template(templates, "permissions: '0600'", "permissions: 600")
    key = fresh_key()
    with pytest.raises(PipelineError) as caught:
        render_seed(load_site(SITES[0]), master_key=key, instance_id="iid-test", templates=templates)
    message = str(caught.value)
    assert "renders invalid user-data for site 'lab'" in message
    assert "write_files.0.permissions: 600 is not of type 'string'" in message
    assert key not in message


def test_invalid_yaml_error_shows_the_placeholder_never_the_key(templates):
    """The validator echoes the offending lines: it only ever sees a placeholder key."""
    entry = "  - path: /etc/litellm/litellm.env\n"
    break_template(templates, entry, entry + "    key: {{ master_key }}: x\n")
    key = fresh_key()
    with pytest.raises(PipelineError) as caught:
        render_seed(load_site(SITES[0]), master_key=key, instance_id="iid-test", templates=templates)
    message = str(caught.value)
    assert "not valid yaml" in message
    assert key not in message
    assert PLACEHOLDER_KEY in message
