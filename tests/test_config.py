"""Site files: both shipped sites load; every kind of mistake names file, key and problem."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import Site, load_site
from pipeline.errors import ConfigError
from pipeline.schema import describe
from tests.plugins.paths import REPO_ROOT

SITES = REPO_ROOT / "sites"


@pytest.mark.parametrize("name", ["meridian.yml", "lab.yml"])
def test_shipped_sites_load(name: str) -> None:
    site = load_site(SITES / name)
    assert site.container.vmid == 457
    assert site.models == ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7")
    assert (site.services.meridian_port, site.services.litellm_port) == (3456, 4000)
    assert site.image.meridian.lockfile.is_absolute()


def test_homelab_site_describes_pve01() -> None:
    site = load_site(SITES / "meridian.yml")
    assert (site.proxmox.node, site.container.hostname) == ("pve01", "meridian")
    assert site.container.network.ip == "192.168.1.164"
    assert site.litellm.master_key.command is not None
    assert site.litellm.master_key.command.startswith("infisical secrets get vault_litellm_master_key")


def test_lab_site_stays_on_the_lab_network() -> None:
    site = load_site(SITES / "lab.yml")
    assert site.proxmox.host == "127.0.0.1"
    assert site.container.network.ip.startswith("10.157.0.")
    assert site.container.network.bridge == "mrdlab0"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict:
    return yaml.safe_load((SITES / "lab.yml").read_text())


def _set(data: dict, dotted: str, value: object) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

BAD = [
    ("container.vmid", "abc", "container.vmid: 'abc' is not an integer"),
    ("container.vmid", 12, "container.vmid: 12 is not a Proxmox VMID"),
    ("container.holder_vmid", 457, "container: holder_vmid must differ from vmid"),
    ("container.hostname", "Meridian_1", "container.hostname: 'Meridian_1' is not a valid hostname"),
    ("container.network.address", "10.157.0.57",
     "container.network.address: '10.157.0.57' needs an IPv4 address with /prefix"),
    ("container.network.gateway", "10.157.0.300", "container.network.gateway: '10.157.0.300' is not an IPv4 address"),
    ("container.colour", "blue", "container.colour: unknown key"),
    ("services", {"meridian_port": 70000}, "services.meridian_port: 70000 is not a TCP port"),
    ("services", {"litellm_port": 3456}, "services: the three ports must differ"),
    ("models", [], "models: [] must list at least one model"),
    ("models", ["a", "a"], "models: ['a', 'a'] lists a model twice"),
    ("models", "claude-haiku-4-5", "models: expected a list"),
    ("admin.user", "root", "admin.user: 'root' is reserved"),
    ("admin.ssh_keys", ["not a key"], "admin.ssh_keys: ['not a key'] holds a line that is not an OpenSSH public key"),
    ("litellm.master_key", {"env": "A", "file": "/x"},
     "litellm.master_key: give exactly one of env, command or file (got env, file)"),
    ("litellm.master_key", {}, "litellm.master_key: give exactly one of env, command or file (got none)"),
    ("proxmox.tls", {}, "proxmox.tls: give exactly one of ca_file or fingerprint"),
    ("proxmox.tls", {"fingerprint": "AB:CD"}, "proxmox.tls.fingerprint: 'AB:CD' is not a SHA-256 fingerprint"),
    ("proxmox.token_id", "root@pam", "proxmox: token_id 'root@pam' is not USER@REALM!TOKENID"),
    ("proxmox.node", DELETE, "proxmox.node: required key is missing"),
    ("kind", "vmware", "kind: 'vmware' is not one of 'proxmox', 'lab'"),
    ("container.onboot", "yes", "container.onboot: 'yes' is not true or false"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_site_names_file_key_and_problem(tmp_path: Path, key: str, value: object, message: str) -> None:
    path = _write(tmp_path, _set(_base(), key, value))
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_not_yaml_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yml"
    path.write_text("name: lab\nproxmox: [unclosed\n")
    with pytest.raises(ConfigError, match=r"site.yml: not valid YAML \(line \d+, column \d+\)"):
        load_site(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_site(tmp_path / "nope.yml")


def test_relative_paths_resolve_against_the_site_file(tmp_path: Path) -> None:
    data = _set(_base(), "image.meridian.lockfile", "locks/x.json")
    site = load_site(_write(tmp_path, data))
    assert site.image.meridian.lockfile == tmp_path / "locks" / "x.json"


def test_every_setting_has_help() -> None:
    rows = describe(Site)
    assert {key for key, _, _ in rows} >= {"container.vmid", "proxmox.tls.ca_file", "services.litellm_port"}
    assert [key for key, _, help_text in rows if not help_text] == []



def test_cli_prints_one_line_error_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, _set(_base(), "container.vmid", "abc"))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "seed", "--site", str(path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )
    assert proc.returncode == 2
    assert "container.vmid: 'abc' is not an integer" in proc.stderr
    assert "Traceback" not in proc.stderr
