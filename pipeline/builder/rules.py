"""Proxmox's rules for an LXC template tarball, checked before a template leaves the build.

Proxmox extracts with ``tar xpf - --anchored --exclude './dev/*'`` inside a user namespace
mapping uids 0..65535 (docs/containers.md, docs/proxmox.md). A member that breaks a rule below fails its create
task. Example::

    problems = template_violations(Path("out/meridian_1.0_amd64.tar.zst"))
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.runner import run

ID_LIMIT = 65536  # unprivileged CTs map container ids 0..65535
# Proxmox detects the distribution from these; without them the create task fails.
REQUIRED_MEMBERS = ("./etc/os-release", "./etc/debian_version")
SHOWN = 10


class TemplateError(PipelineError):
    """A template that Proxmox would refuse to extract."""


def member_violations(member: tarfile.TarInfo) -> list[str]:
    """Every rule one member breaks, as ``NAME: problem`` strings."""
    name = member.name
    found = []
    if name != "." and not name.startswith("./"):
        found.append("is not ./-relative (pack with `tar -C ROOT -cf - .`)")
    if ".." in PurePosixPath(name).parts:
        found.append("has a '..' component")
    if member.islnk() and not member.linkname.startswith("./"):
        found.append(f"hard-links to {member.linkname!r}, which is not ./-relative")
    if (member.ischr() or member.isblk()) and not name.startswith("./dev/"):
        found.append("is a device node outside ./dev")
    if member.uid >= ID_LIMIT:
        found.append(f"has uid {member.uid} (must be below {ID_LIMIT})")
    if member.gid >= ID_LIMIT:
        found.append(f"has gid {member.gid} (must be below {ID_LIMIT})")
    return [f"{name}: {problem}" for problem in found]


def tar_violations(members: Iterable[tarfile.TarInfo], required: Sequence[str] = REQUIRED_MEMBERS) -> list[str]:
    found, names = [], set()
    for member in members:
        names.add(member.name)
        found += member_violations(member)
    found += [f"{req}: missing (Proxmox detects the OS from it)"
              for req in required if req not in names]
    return found


def template_violations(path: Path) -> list[str]:
    """Check a .tar or .tar.zst; an empty list means Proxmox can extract it."""
    if path.name.endswith(".tar"):
        with tarfile.open(path) as tar:
            return tar_violations(tar)
    with tempfile.TemporaryDirectory(prefix="template-check-", dir=path.parent) as tmp:
        plain = Path(tmp) / "template.tar"
        run(["zstd", "-d", "-q", "-T0", path, "-o", plain], timeout=1800)
        with tarfile.open(plain) as tar:
            return tar_violations(tar)


def check_tar(path: Path, required: Sequence[str]) -> None:
    """Raise TemplateError naming the first violations of a plain .tar (a template or one of its
    pieces, which must hold ``required``), if there are any."""
    with tarfile.open(path) as tar:
        found = tar_violations(tar, required)
    if found:
        more = f"\n  ... and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        raise TemplateError(
            f"{path.name} breaks Proxmox's template rules:\n  " + "\n  ".join(found[:SHOWN]) + more
        )
