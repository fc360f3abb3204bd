"""What a build leaves in its output folder: manifest, template, sysext images, seed; a
second build with nothing changed reuses every cached result."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from functools import partial
from pathlib import Path

import pytest

from pipeline.builder.context import DEFAULT_CACHE
from pipeline.builder.orchestrate import build
from pipeline.config import load_site
from pipeline.contract import LAYER_NAMES, read_build_manifest
from pipeline.digest import file_sha256
from pipeline.runner import run
from tests.plugins.build import LAB_SITE
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PER_CONTAINER = ("./etc/hostname", "./etc/resolv.conf", "./etc/ssh/ssh_host_")


@pytest.fixture(scope="module")
def members(lab_build, tmp_path_factory) -> dict[str, tarfile.TarInfo]:
    plain = tmp_path_factory.mktemp("tpl") / "t.tar"
    run(["zstd", "-d", "-q", lab_build.template, "-o", plain])
    with tarfile.open(plain) as tar:
        found = {m.name: m for m in tar}
    plain.unlink()
    return found


def test_manifest_lists_every_artifact_with_its_hash(lab_build):
    doc = lab_build.manifest
    assert doc == read_build_manifest(lab_build.out_dir / "manifest.json")
    kinds = sorted(a.kind for a in doc.artifacts)
    assert kinds.count("template") == 1 and kinds.count("sysext") == 3 and "seed" in kinds
    for item in doc.artifacts:
        path = lab_build.out_dir / item.path
        assert not Path(item.path).is_absolute()
        assert file_sha256(path) == item.sha256, item.path
    assert {p.name for p in lab_build.artifacts("sysext")} == {f"{n}.raw" for n in LAYER_NAMES}
    assert {p.name for p in lab_build.artifacts("seed")} >= {"user-data", "meta-data"}


def test_manifest_names_components_layers_and_packages(lab_build):
    doc = lab_build.manifest
    assert set(doc.components) == {"node", "meridian", "claude-code", "litellm"}
    assert doc.components["node"].startswith("22.")
    assert doc.components["litellm"] == "1.108.7"
    assert set(doc.layers) == set(LAYER_NAMES)
    assert all(len(layer.key) == 64 and isinstance(layer.rebuilt, bool)
               for layer in doc.layers.values())
    names = {p.split("=")[0] for p in doc.debian_packages}
    assert {"systemd", "cloud-init", "openssh-server", "ifupdown", "prometheus-node-exporter",
            "python3"} <= names
    template = doc.template
    assert template.file == f"{template.name}_{template.version}_amd64.tar.zst"


def test_template_ships_no_per_container_identity(members):
    leaked = [name for name in members if name.startswith(PER_CONTAINER)]
    assert leaked == []
    assert members["./etc/machine-id"].size == 0
    assert "./etc/cloud/cloud.cfg.d/99-pve.cfg" in members


def test_template_holds_the_extensions_as_directories(members):
    for name in LAYER_NAMES:
        release = f"./var/lib/extensions/{name}/usr/lib/extension-release.d/extension-release.{name}"
        assert release in members
        assert members[f"./var/lib/extensions/{name}"].isdir()


def test_no_secret_in_any_artifact(lab_build, members, tmp_path):
    secret = os.environ["MERIDIAN_LAB_MASTER_KEY"].encode()
    plain = tmp_path / "t.tar"
    run(["zstd", "-d", "-q", lab_build.template, "-o", plain])
    files = [plain, *lab_build.out_dir.rglob("*")]
    for path in (f for f in files if f.is_file()):
        with open(path, "rb") as fh:
            for chunk in iter(partial(fh.read, 1 << 24), b""):
                assert secret not in chunk, path


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_raw_images_carry_their_release_file(lab_build, name):
    raw = lab_build.out_dir / "sysext" / f"{name}.raw"
    release = run(["unsquashfs", "-cat", raw, f"usr/lib/extension-release.d/extension-release.{name}"]).stdout
    assert release.splitlines()[:3] == ["ID=debian", "VERSION_ID=12", "ARCHITECTURE=x86-64"]


def test_rebuild_with_nothing_changed_reuses_everything(lab_build):
    again = build(load_site(LAB_SITE), lab_build.out_dir, DEFAULT_CACHE)
    assert not again.base.rebuilt and not again.template.rebuilt
    assert [n for n, layer in again.layers.items() if layer.rebuilt] == []
    assert again.template.file == lab_build.manifest.template.file
    assert again.artifacts[0] == lab_build.manifest.artifacts[0]


def test_cli_reports_a_missing_lockfile_without_traceback(tmp_path):
    site = (REPO_ROOT / "sites" / "lab.yml").read_text().replace(
        "../sysext/meridian/locks/standin.json", str(tmp_path / "missing.json"))
    site = site.replace("../tests/fixtures/meridian-standin", str(REPO_ROOT / "tests/fixtures/meridian-standin"))
    (tmp_path / "site.yml").write_text(site)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--site", tmp_path / "site.yml",
         "--out", tmp_path / "out", "--cache", tmp_path / "cache"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )
    assert proc.returncode == 2
    assert "image.meridian.lockfile:" in proc.stderr and "--update-lock" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "base").exists()  # failed before any long step


def test_litellm_bytecode_stays_valid_on_read_only_opt(members, lab_build, tmp_path):
    # Flags word of a .pyc (PEP 552): 0b01 = hash-based, not checked against the source, so
    # pinned source mtimes never make it stale (Python would recompile at every start).
    name = next(n for n in members if n.startswith("./var/lib/extensions/litellm/opt/litellm/lib/")
                and n.endswith("/litellm/__pycache__/__init__.cpython-311.pyc"))
    run(["tar", "--zstd", "-xf", lab_build.template, "-C", tmp_path, name])
    header = (tmp_path / name).read_bytes()[:8]
    assert int.from_bytes(header[4:8], "little") == 0b01
