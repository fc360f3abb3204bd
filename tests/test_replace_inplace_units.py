"""Extension swap and re-seed pieces without a container: what changes, what restarts, what
the scripts do, and that the configuration fingerprint never holds the key."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from pipeline.cloudinit.deliver import service_files
from pipeline.cloudinit.render import render_seed
from pipeline.config import load_site
from pipeline.replace import reseed, swap
from tests.plugins.manifests import RESTART, image_manifest
from tests.plugins.paths import REPO_ROOT

LAB = load_site(REPO_ROOT / "sites" / "lab.yml")

def layers(**keys: str) -> swap.Layers:
    full = {"node": "n" * 64, "meridian": "m" * 64, "litellm": "l" * 64, **keys}
    return swap.Layers(system="s" * 64, keys=full, restart=RESTART, image_manifest=image_manifest(full))


def test_only_changed_layers_and_their_units() -> None:
    a, b = layers(), layers(meridian="M" * 64)
    assert swap.changed(a, b) == ["meridian"]
    assert swap.units_to_restart(a, b) == ["meridian.service"]
    assert swap.units_to_restart(a, layers(node="N" * 64, litellm="L" * 64)) == ["litellm.service",
                                                                                 "meridian.service"]


def test_switch_script_flips_links_writes_the_manifest_refreshes_and_restarts(tmp_path: Path) -> None:
    """Run the script's file work in a scratch root (systemd steps stubbed) and look at the result."""
    a, b = layers(), layers(meridian="M" * 64)
    script = swap.switch_script(a, b)
    lines = script.splitlines()
    assert lines.index("systemd-sysext refresh") < lines.index("systemctl restart meridian.service")
    assert lines[-1] == "systemctl restart meridian.service"  # nothing deleted beside the start
    root = tmp_path / "root"
    for name in ("node", "meridian", "litellm"):
        (root / "var/lib/extensions" / name).mkdir(parents=True)
    (root / "var/lib/extensions.store" / swap.store_name("meridian", "M" * 64)).mkdir(parents=True)
    rooted = script.replace("/var/lib", f"{root}/var/lib").replace("/etc/", f"{root}/etc/")
    stubbed = rooted.replace("systemd-sysext refresh", "echo refreshed").replace("systemctl restart", "echo restart")
    out = subprocess.run(["sh", "-c", stubbed], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["refreshed", "restart", "meridian.service"]
    link = root / "var/lib/extensions/meridian"
    assert link.is_symlink() and link.resolve().name == swap.store_name("meridian", "M" * 64)
    assert (root / "var/lib/extensions.store" / swap.store_name("meridian", "m" * 64)).is_dir()  # kept for a swap back
    assert (root / "var/lib/extensions/node").is_dir() and not (root / "var/lib/extensions/node").is_symlink()
    assert '"M' in (root / "etc/meridian-appliance/manifest.json").read_text()


def test_prune_keeps_the_layers_of_both_templates_and_removes_older_ones(tmp_path: Path) -> None:
    a, b = layers(), layers(meridian="M" * 64)
    store = tmp_path / "var/lib/extensions.store"
    kept = {swap.store_name("meridian", "m" * 64), swap.store_name("meridian", "M" * 64),
            swap.store_name("litellm", "l" * 64)}
    for name in (*kept, swap.store_name("meridian", "0" * 64), swap.store_name("litellm", "1" * 64)):
        (store / name / "opt").mkdir(parents=True)
    script = swap.prune_script(a, b).replace("/var/lib", f"{tmp_path}/var/lib")
    subprocess.run(["sh", "-c", script], check=True)
    assert {p.name for p in store.iterdir()} == kept


def test_fingerprint_follows_the_configuration_and_never_holds_the_key() -> None:
    key, salt = "sk-" + secrets.token_urlsafe(32), reseed.new_salt()
    first = reseed.fingerprint(LAB, key, "ssh-ed25519 AAAA deploy", salt)
    assert first == reseed.fingerprint(LAB, key, "ssh-ed25519 AAAA deploy", salt)
    rotated = reseed.fingerprint(LAB, "sk-" + secrets.token_urlsafe(32), "ssh-ed25519 AAAA deploy", salt)
    assert rotated.digest != first.digest
    assert reseed.changed_paths(first.files, rotated.files) == ["/etc/litellm/litellm.env"]
    assert reseed.units_for(["/etc/litellm/litellm.env"]) == ["litellm.service"]
    assert key not in repr(first)


def test_every_file_the_seed_writes_names_the_units_that_read_it() -> None:
    seed = render_seed(LAB, master_key="sk-" + secrets.token_urlsafe(32), instance_id="iid-test")
    for path, *_ in service_files(seed):
        assert reseed.units_for([path]), f"{path} is not in cloudinit/restart.toml"


@pytest.mark.parametrize("existing", [True, False])
def test_backup_and_restore_put_the_previous_file_back(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "etc" / "litellm.env"
    target.parent.mkdir()
    if existing:
        target.write_text("old")
    backup_dir = tmp_path / "backup"
    backup = reseed.backup_command([str(target)]).replace(reseed.BACKUP, str(backup_dir))
    subprocess.run(["sh", "-c", backup], check=True)
    target.write_text("new")
    restore = reseed.restore_script([str(target)], []).decode().replace(reseed.BACKUP, str(backup_dir))
    subprocess.run(["sh", "-c", restore], check=True)
    assert (target.read_text() if target.exists() else None) == ("old" if existing else None)
