"""write_seed: the three files and a NoCloud ISO that reads back right, byte for byte reproducible."""

from __future__ import annotations

import io
import stat

import pycdlib
import pytest

from pipeline.cloudinit import render_seed, write_seed
from pipeline.config import load_site
from pipeline.errors import SecretError
from pipeline.runner import run
from tests.plugins.paths import REPO_ROOT

SEED_FILES = ("user-data", "meta-data", "network-config")


@pytest.fixture
def site():
    return load_site(REPO_ROOT / "sites" / "lab.yml")


def read_iso(path):
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    return iso


def content(iso, **where) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **where)
    return out.getvalue()


def test_writes_three_files_and_the_iso_private(site, tmp_path):
    paths = write_seed(site, tmp_path, instance_id="iid-1")
    assert [p.name for p in paths] == [*SEED_FILES, "seed.iso"]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_iso_reads_back_with_label_names_and_contents(site, tmp_path):
    write_seed(site, tmp_path, instance_id="iid-1")
    seed = render_seed(site, master_key=None, instance_id="iid-1")
    iso = read_iso(tmp_path / "seed.iso")
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()
        iso_names = sorted(r.file_identifier().decode() for r in iso.list_children(iso_path="/")
                           if r.is_file())
        assert iso_names == ["META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1"]  # level 1: 8.3
        rr_names = sorted(r.rock_ridge.name().decode() for r in iso.list_children(rr_path="/")
                          if r.is_file())
        joliet_names = sorted(r.file_identifier().decode("utf-16-be").split(";")[0]
                              for r in iso.list_children(joliet_path="/") if r.is_file())
        assert rr_names == joliet_names == sorted(SEED_FILES)
        for name in SEED_FILES:
            assert content(iso, rr_path=f"/{name}") == seed.files[name]
            assert content(iso, joliet_path=f"/{name}") == seed.files[name]
            assert (tmp_path / name).read_bytes() == seed.files[name]
    finally:
        iso.close()


def test_iso_is_byte_reproducible(site, tmp_path):
    first = write_seed(site, tmp_path / "a", instance_id="iid-same")[-1].read_bytes()
    second = write_seed(site, tmp_path / "b", instance_id="iid-same")[-1].read_bytes()
    assert first == second
    other = write_seed(site, tmp_path / "c", instance_id="iid-other")[-1].read_bytes()
    assert other != first


def test_isoinfo_agrees(site, tmp_path):
    """A second reader (genisoimage's isoinfo) sees the same volume."""
    iso = write_seed(site, tmp_path, instance_id="iid-1")[-1]
    info = run(["isoinfo", "-d", "-i", iso]).stdout
    assert "Volume id: cidata" in info
    assert "Joliet with UCS level 3 found" in info
    assert "Rock Ridge signatures version 1 found" in info
    listing = run(["isoinfo", "-R", "-l", "-i", iso]).stdout
    for name in SEED_FILES:
        assert f" {name} " in listing
    user_data = run(["isoinfo", "-R", "-x", "/user-data", "-i", iso]).stdout
    assert user_data == (tmp_path / "user-data").read_text()


def test_nothing_is_written_when_rendering_fails(site, tmp_path):
    with pytest.raises(SecretError):
        write_seed(site, tmp_path / "out", master_key="sk-not allowed in an env file")
    assert not (tmp_path / "out").exists()
