"""The Proxmox template rules: each violation is caught and named, a good tarball passes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline.builder.rules import TemplateError, check_tar, template_violations
from pipeline.runner import run

OS_FILES = ("./etc/os-release", "./etc/debian_version")
NOT_RELATIVE = "is not ./-relative (pack with `tar -C ROOT -cf - .`)"


def member(name: str, kind: bytes = tarfile.REGTYPE, uid: int = 0, gid: int = 0,
           linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.uid, info.gid, info.linkname = kind, uid, gid, linkname
    return info


def write_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    # tarfile would add nothing itself: names are stored exactly as given.
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info in [member("./", tarfile.DIRTYPE), *map(member, OS_FILES), *members]:
            tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)
    return path


def test_a_proper_template_passes(tmp_path):
    tar = write_tar(tmp_path / "ok.tar", [
        member("./etc/", tarfile.DIRTYPE),
        member("./dev/null", tarfile.CHRTYPE),
        member("./var/lib/meridian", tarfile.DIRTYPE, uid=901, gid=901),
        member("./usr/bin/node2", tarfile.LNKTYPE, linkname="./etc/os-release"),
        member("./usr/bin/x", tarfile.SYMTYPE, linkname="/usr/bin/node"),
    ])
    assert template_violations(tar) == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("etc/passwd"), f"etc/passwd: {NOT_RELATIVE}"),
        (member("/etc/passwd"), f"/etc/passwd: {NOT_RELATIVE}"),
        (member("./usr/../../etc/x"), "./usr/../../etc/x: has a '..' component"),
        (member("./dev2/sda", tarfile.BLKTYPE), "./dev2/sda: is a device node outside ./dev"),
        (member("./tmp/null", tarfile.CHRTYPE), "./tmp/null: is a device node outside ./dev"),
        (member("./home/x", uid=100000), "./home/x: has uid 100000 (must be below 65536)"),
        (member("./home/y", gid=65536), "./home/y: has gid 65536 (must be below 65536)"),
        (member("./a", tarfile.LNKTYPE, linkname="etc/os-release"),
         "./a: hard-links to 'etc/os-release', which is not ./-relative"),
    ],
)
def test_each_violation_is_named(tmp_path, bad, message):
    tar = write_tar(tmp_path / "bad.tar", [bad])
    assert template_violations(tar) == [message]


@pytest.mark.parametrize("missing", OS_FILES)
def test_os_detection_files_are_required(tmp_path, missing):
    tar = tmp_path / "noos.tar"
    with tarfile.open(tar, "w") as out:
        for name in OS_FILES:
            if name != missing:
                out.addfile(member(name), io.BytesIO(b""))
    assert template_violations(tar) == [f"{missing}: missing (Proxmox detects the OS from it)"]


def test_compressed_template_is_checked_and_error_lists_violations(tmp_path):
    tar = write_tar(tmp_path / "meridian_1_amd64.tar", [member("./x", uid=70000), member("./y", gid=70000)])
    zst = tmp_path / "meridian_1_amd64.tar.zst"
    run(["zstd", "-q", tar, "-o", zst])
    assert template_violations(zst)[:2] == ["./x: has uid 70000 (must be below 65536)",
                                            "./y: has gid 70000 (must be below 65536)"]
    with pytest.raises(TemplateError) as caught:
        check_tar(tar, required=())
    assert "meridian_1_amd64.tar breaks Proxmox's template rules" in caught.value.message
    assert "./x: has uid 70000" in caught.value.message
    assert "./y: has gid 70000" in caught.value.message
