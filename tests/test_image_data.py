"""The image's own data files are valid for the tools that read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cloudinit.validate import validate_user_data
from tests.plugins.paths import REPO_ROOT

CLOUD_CFG_D = sorted((REPO_ROOT / "image/rootfs/etc/cloud/cloud.cfg.d").glob("*.cfg"))


@pytest.mark.parametrize("path", CLOUD_CFG_D, ids=lambda p: p.name)
def test_shipped_cloud_cfg_passes_cloud_init_schema(path: Path) -> None:
    validate_user_data("#cloud-config\n" + path.read_text(), template=path, site="image")


def test_there_is_a_cloud_cfg_to_check() -> None:
    assert [p.name for p in CLOUD_CFG_D] == ["99-pve.cfg"]
