"""Fixtures for the image build: the lab site built once per session.

``lab_build`` builds sites/lab.yml into <repo>/build/lab with the default layer cache, so a
session on a machine that built before only re-checks keys (seconds). Example::

    def test_something(lab_build):
        lab_build.template        # Path of the .tar.zst
        lab_build.manifest.components["node"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.builder.context import DEFAULT_CACHE
from pipeline.builder.orchestrate import build
from pipeline.config import load_site
from pipeline.contract import BuildManifest
from tests.plugins.paths import REPO_ROOT

LAB_SITE = REPO_ROOT / "sites" / "lab.yml"
LAB_OUT = REPO_ROOT / "build" / "lab"


@dataclass(frozen=True)
class LabBuild:
    out_dir: Path
    manifest: BuildManifest

    @property
    def template(self) -> Path:
        return self.out_dir / self.manifest.template.file

    @property
    def seed_dir(self) -> Path:
        return self.out_dir / "seed"

    def artifacts(self, kind: str) -> list[Path]:
        return [self.out_dir / a.path for a in self.manifest.artifacts if a.kind == kind]


@pytest.fixture(scope="session")
def lab_build() -> LabBuild:
    """The lab site's template, sysext images, seed and manifest (needs root and the registries)."""
    return LabBuild(LAB_OUT, build(load_site(LAB_SITE), LAB_OUT, DEFAULT_CACHE))
