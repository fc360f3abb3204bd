"""The acceptance suite refuses a host whose SSH key is not the one replace-ct pinned."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
import yaml

from acceptance.conftest import check_pinned_host_key
from pipeline.config import Site, load_site
from tests.plugins.paths import REPO_ROOT

ADDRESS = "10.157.0.57"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    data = yaml.safe_load((REPO_ROOT / "sites/lab.yml").read_text())
    data["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump(data))
    return load_site(path)


def _pin(site: Site, deployment: str, key: paramiko.PKey) -> None:
    folder = site.site_state_dir / "known_hosts.d"
    folder.mkdir(parents=True, exist_ok=True)
    keys = paramiko.HostKeys()
    keys.add(ADDRESS, key.get_name(), key)
    keys.save(str(folder / deployment))


def test_the_pinned_key_passes(site: Site) -> None:
    key = paramiko.ECDSAKey.generate()
    _pin(site, "d1", key)
    check_pinned_host_key(site, ADDRESS, key)


def test_another_key_is_refused(site: Site) -> None:
    _pin(site, "d1", paramiko.ECDSAKey.generate())
    with pytest.raises(pytest.fail.Exception, match="is not the one pinned when it was deployed"):
        check_pinned_host_key(site, ADDRESS, paramiko.ECDSAKey.generate())


def test_never_deployed_is_not_checked(site: Site) -> None:
    check_pinned_host_key(site, ADDRESS, paramiko.ECDSAKey.generate())
