"""A template joined from separately packed zstd pieces is one valid .tar.zst that the real tar
extracts exactly like the same tree packed in one go (names, types, modes, owners, mtimes,
contents, symlinks, hard links), and packing is reproducible."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from pipeline.builder import frames
from pipeline.builder.rules import TemplateError, template_violations
from pipeline.digest import file_sha256
from pipeline.runner import run

EPOCH = 1_700_000_000
LAYERS = ("litellm", "node")


def make_tree(root: Path) -> None:
    """A small system, two extensions and a manifest, with the kinds of members a rootfs has."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "etc/debian_version").write_text("12.0\n")
    (root / "etc/shadow").write_text("root:*::\n")
    (root / "etc/shadow").chmod(0o640)
    os.chown(root / "etc/shadow", 0, 42)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(2000))  # ends in zero blocks
    (root / "usr/bin/tool").chmod(0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "bin").symlink_to("usr/bin")
    (root / "var/lib/extensions").mkdir(parents=True)
    (root / "var/log").mkdir()  # sorts after var/lib: the system piece leaves var/lib/extensions early
    (root / "etc/meridian-appliance").mkdir()
    old = EPOCH - 86_400  # older than the epoch: kept; everything else is newer: clamped
    os.utime(root / "usr/bin/tool", (old, old))
    for name in LAYERS:
        tree = root / "var/lib/extensions" / name
        (tree / "usr/lib/extension-release.d").mkdir(parents=True)
        (tree / f"usr/lib/extension-release.d/extension-release.{name}").write_text("ID=debian\n")
        (tree / "opt" / name).mkdir(parents=True)
        (tree / "opt" / name / "data.bin").write_bytes(os.urandom(3000))
        os.symlink(f"/opt/{name}/data.bin", tree / "opt" / name / "current")
    (root / "etc/meridian-appliance/manifest.json").write_text('{"layers": {}}\n')


def pieces(root: Path, out: Path, log: Path) -> Path:
    """Pack the tree the way the build does: system, then each extension, then the manifest."""
    manifest = "./etc/meridian-appliance/manifest.json"
    system = out / "system.tar.zst"
    excluded = ["--exclude=./var/lib/extensions/*", f"--exclude={manifest}"]
    frames.pack_piece(root, [*excluded, "."], system, epoch=EPOCH, required=("./etc/os-release",), log=log)
    parts = [system]
    for name in LAYERS:
        parts.append(out / f"{name}.tar.zst")
        frames.pack_piece(root, [f"./var/lib/extensions/{name}"], parts[-1], epoch=EPOCH, log=log)
    parts.append(out / "manifest.tar.zst")
    frames.pack_piece(root, [manifest], parts[-1], epoch=EPOCH, last=True, log=log,
                      restate=["./var/lib/extensions", "./etc/meridian-appliance"])
    joined = out / "joined.tar.zst"
    digest = frames.join(parts, joined)
    assert digest == file_sha256(joined)  # computed while joining: the build records it
    return joined


def one_go(root: Path, out: Path, log: Path) -> Path:
    plain = out / "one-go.tar"
    run(["tar", *frames.TAR_OPTIONS, f"--mtime=@{EPOCH}", "--clamp-mtime", "-C", root, "-cf", plain, "."], log=log)
    run(["zstd", "-q", "--rm", plain, "-o", out / "one-go.tar.zst"], log=log)
    return out / "one-go.tar.zst"


def extracted(archive: Path, dest: Path) -> dict[str, tuple]:
    """Extract as Proxmox does and describe every path (hard links as shared-inode groups)."""
    dest.mkdir()
    run(["tar", "--zstd", "-xpf", archive, "--numeric-owner", "-C", dest])
    described: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for path in sorted(dest.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(dest).as_posix()
        group = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) else None
        content = (os.readlink(path) if path.is_symlink()
                   else hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None)
        described[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime), content, group)
    return described


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (owners are part of what is compared)")
    make_tree(tmp_path / "root")
    return tmp_path / "root"


def test_joined_pieces_extract_like_one_archive(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    joined = pieces(tree, tmp_path / "a", tmp_path / "a.log")
    whole = one_go(tree, tmp_path / "b", tmp_path / "b.log")
    got, want = extracted(joined, tmp_path / "x-joined"), extracted(whole, tmp_path / "x-whole")
    assert got == want
    assert got["usr/bin/tool"][3] == EPOCH - 86_400 and got["etc/shadow"][3] == EPOCH  # clamped, not pinned
    assert got["usr/bin/tool-alias"][5] == "usr/bin/tool"  # still one file
    assert template_violations(joined) == []  # the whole listing ends where tar expects it


def test_packing_is_reproducible(tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "1", tmp_path / "2"
    first.mkdir()
    second.mkdir()
    a = pieces(tree, first, tmp_path / "1.log")
    os.utime(tree / "etc/os-release")  # touched later: still clamped to the same epoch
    b = pieces(tree, second, tmp_path / "2.log")
    assert file_sha256(a) == file_sha256(b)


def test_a_piece_that_breaks_the_rules_is_refused(tree: Path, tmp_path: Path) -> None:
    os.chown(tree / "etc/shadow", 70_000, 0)
    with pytest.raises(TemplateError, match=r"\./etc/shadow: has uid 70000"):
        frames.pack_piece(tree, ["."], tmp_path / "s.tar.zst", epoch=EPOCH, log=tmp_path / "s.log")
    shutil.rmtree(tree / "etc")
    (tree / "etc").mkdir()
    with pytest.raises(TemplateError, match=r"\./etc/os-release: missing"):
        frames.pack_piece(tree, ["."], tmp_path / "s.tar.zst", epoch=EPOCH, required=("./etc/os-release",),
                          log=tmp_path / "s.log")


def test_sizes_follow_the_bytes_down_to_where_they_spread(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for path, size in {"opt/app/lib/big/a.bin": 6000, "opt/app/lib/big/b.bin": 3000, "opt/app/lib/small/c": 500,
                       "opt/app/README": 100, "etc/conf": 400}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(bytes(size))
    os.link(root / "opt/app/lib/big/a.bin", root / "opt/app/lib/big/a-again.bin")  # stored once
    plain = tmp_path / "t.tar"
    run(["tar", *frames.TAR_OPTIONS, "-C", root, "-cf", plain, "."])
    total, largest = frames.measure(plain, lines=4)
    assert total == 10_000
    assert largest == {"./opt/app/lib/big": 9000, "./opt/app/lib/small": 500, "./etc": 400, "./opt/app/.": 100}
