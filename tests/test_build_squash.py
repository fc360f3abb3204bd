"""Sysext images are reproducible: the same tree gives the same bytes, whatever the
files' times and owners (docs/sysext.md), and each carries its extension-release file."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.builder.cache import Cache
from pipeline.builder.context import BuildContext
from pipeline.builder.layers import squash, write_release
from pipeline.config import load_site
from pipeline.digest import file_sha256
from tests.plugins.paths import REPO_ROOT


def make_tree(root: Path, *, mtime: int, owner: int) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/data").write_bytes(b"x" * 5000)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (mtime, mtime))
        if os.geteuid() == 0:
            os.chown(path, owner, owner)
    return root


def test_same_tree_same_image(tmp_path):
    ctx = BuildContext(site=load_site(REPO_ROOT / "sites/lab.yml"), out=tmp_path / "out",
                       cache=Cache(tmp_path / "cache"))
    images = []
    for i, (mtime, owner) in enumerate([(1_000_000, 0), (1_700_000_000, 1234)]):
        tree = make_tree(tmp_path / f"tree{i}", mtime=mtime, owner=owner)
        write_release(ctx, "demo", tree, "1.0")
        images.append(tmp_path / f"demo{i}.raw")
        squash(ctx, tree, images[-1], log=tmp_path / f"squash{i}.log")
    assert file_sha256(images[0]) == file_sha256(images[1])
    release = (tmp_path / "tree0/usr/lib/extension-release.d/extension-release.demo").read_text()
    assert release == "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\nSYSEXT_VERSION_ID=1.0\n"


def test_changed_content_changes_the_image(tmp_path):
    ctx = BuildContext(site=load_site(REPO_ROOT / "sites/lab.yml"), out=tmp_path / "out",
                       cache=Cache(tmp_path / "cache"))
    first = make_tree(tmp_path / "a", mtime=1, owner=0)
    second = make_tree(tmp_path / "b", mtime=1, owner=0)
    (second / "opt/app/data").write_text("y")
    squash(ctx, first, tmp_path / "a.raw", log=tmp_path / "a.log")
    squash(ctx, second, tmp_path / "b.raw", log=tmp_path / "b.log")
    assert file_sha256(tmp_path / "a.raw") != file_sha256(tmp_path / "b.raw")
