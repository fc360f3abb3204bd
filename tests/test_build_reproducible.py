"""Two builds of the same inputs, each in its own cache and minutes apart, make the same template
byte for byte (docs/build-cache.md). Each bootstraps its own Debian base and packs its own system
piece (where build-time dates come from); the layers and their pieces, already shown to be
reproducible (test_build_squash.py, test_build_frames.py), are taken from the lab build's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.builder.context import DEFAULT_CACHE
from pipeline.builder.orchestrate import build
from pipeline.config import load_site
from pipeline.contract import BuildManifest
from pipeline.runner import run
from tests.plugins.build import LAB_SITE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def build_in_own_cache(lab_manifest: BuildManifest, work: Path) -> BuildManifest:
    cache = work / "cache"
    for name, entry in lab_manifest.layers.items():
        for kind in ("layers", "pieces"):
            for src in (DEFAULT_CACHE / kind / name).glob(f"{entry.key}" if kind == "layers" else "*"):
                dest = cache / kind / name / src.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                run(["cp", "-al", src, dest])
    return build(load_site(LAB_SITE), work / "out", cache)


def template_sha256(manifest: BuildManifest) -> str:
    found = manifest.artifact("template", manifest.template.file)
    assert found is not None
    return found.sha256


def test_two_builds_in_separate_caches_make_the_same_template(lab_build, tmp_path: Path) -> None:
    first = build_in_own_cache(lab_build.manifest, tmp_path / "first")
    second = build_in_own_cache(lab_build.manifest, tmp_path / "second")
    for again in (first, second):
        assert again.base.rebuilt and again.template.rebuilt
        assert not any(layer.rebuilt for layer in again.layers.values())
    assert first.debian_packages == second.debian_packages
    assert template_sha256(first) == template_sha256(second)
    if first.debian_packages == lab_build.manifest.debian_packages:  # the mirror has not moved since
        assert template_sha256(first) == template_sha256(lab_build.manifest)
