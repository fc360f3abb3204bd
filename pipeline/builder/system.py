"""The system piece of the template: a copy of the base with the appliance's files
(image/rootfs/) and its users, paths and units applied, per-container files removed, every
build-time date pinned to the packages' epoch, packed (frames.py) once per system key."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from pipeline.builder import frames
from pipeline.builder.base import Base
from pipeline.builder.cache import Key
from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.rules import REQUIRED_MEMBERS
from pipeline.contract import DEPLOYED_MANIFEST, EXTENSIONS_DIR, PieceSize, read_sizes, write_sizes
from pipeline.errors import PipelineError
from pipeline.progress import Skip, step
from pipeline.runner import run

SYSTEM_PIECE = "system.tar.zst"
EPOCH_FILE = "epoch"  # beside the system piece: its SOURCE_DATE_EPOCH, for the manifest piece
SIZES_FILE = "sizes.json"  # beside a piece or a template: where its bytes go
SHADOW_FILES = ("etc/shadow", "etc/shadow-")
DAY = 86_400


def piece_key(key_of_system: str) -> str:
    return Key("system-piece").text("system", key_of_system).file("frames", Path(frames.__file__)).hexdigest()


def system_piece(ctx: BuildContext, base: Base, key_of_system: str) -> tuple[Path, int, PieceSize]:
    """Everything but the extensions and the manifest, packed once per system key."""
    key = piece_key(key_of_system)
    entry = ctx.cache.entry("pieces", "system", key)
    with step("pack system piece"):
        if ctx.cache.has("pieces", "system", key):
            raise Skip(f"cached ({key[:12]})")
        with ctx.cache.filling("pieces", "system", key) as scratch:
            rootfs = ctx.work / "system-rootfs"
            epoch = package_epoch(base.rootfs)
            assemble_system(ctx, base, rootfs)
            pin_password_dates(rootfs, epoch)
            size = frames.pack_piece(rootfs, ["."], scratch / SYSTEM_PIECE, epoch=epoch, required=REQUIRED_MEMBERS,
                                     log=ctx.log("system-piece"))
            (scratch / EPOCH_FILE).write_text(f"{epoch}\n")
            write_sizes({"system": size}, scratch / SIZES_FILE)
            shutil.rmtree(rootfs)
    return entry / SYSTEM_PIECE, int((entry / EPOCH_FILE).read_text()), read_sizes(entry / SIZES_FILE)["system"]


def assemble_system(ctx: BuildContext, base: Base, rootfs: Path) -> None:
    log = ctx.log("system")
    with step("copy base"):
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", base.rootfs, rootfs], log=log)
    with step("apply appliance files"):
        run(["cp", "-r", "--preserve=mode,links", "--no-preserve=ownership",
             f"{ctx.image_dir / 'rootfs'}/.", rootfs], log=log)
        run(["systemd-sysusers", f"--root={rootfs}"], log=log)
        # The config path is not taken relative to --root (systemd 252).
        run(["systemd-tmpfiles", f"--root={rootfs}", "--create",
             rootfs / "usr/lib/tmpfiles.d/meridian-appliance.conf"], log=log)
        units = read_toml(ctx.image_dir / "units.toml")
        run(["systemctl", f"--root={rootfs}", "enable", *units["enable"]], log=log)
        run(["systemctl", f"--root={rootfs}", "mask", *units["mask"]], log=log)
        remove_listed(rootfs, ctx.image_dir / "cleanup.txt")
        remove_listed(rootfs, ctx.image_dir / "trim.txt")
        # The parents of the other pieces' members.
        (rootfs / EXTENSIONS_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (rootfs / DEPLOYED_MANIFEST.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)


def remove_listed(rootfs: Path, listing: Path) -> None:
    """Remove what the listing's globs match, except what its ``!`` globs match (a kept file
    must not lie inside a removed directory)."""
    patterns = [line.split("#", 1)[0].strip() for line in listing.read_text().splitlines()]
    keep = {path for p in patterns if p.startswith("!") for path in rootfs.glob(p[1:])}
    for pattern in (p for p in patterns if p and not p.startswith("!")):
        for path in sorted(rootfs.glob(pattern)):
            if path in keep or not (path.exists() or path.is_symlink()):
                continue  # kept, or gone already (reached again through a symlinked folder)
            if path.is_dir() and not path.is_symlink():
                if any(kept.is_relative_to(path) for kept in keep):
                    raise PipelineError(f"{listing}: {pattern!r} removes {path.relative_to(rootfs)}, "
                                        "which holds a file a '!' line keeps")
                shutil.rmtree(path)
            else:
                path.unlink()


def package_epoch(rootfs: Path) -> int:
    """The newest mtime of a file that an installed Debian package ships (outside /etc and
    /var, which maintainer scripts rewrite): the system piece's SOURCE_DATE_EPOCH.

    It moves only when a package does. Files made at build time (generated .pyc, users,
    enabled units) are clamped to it; package files keep their own mtimes, so the stale-check
    of Python's timestamp-based .pyc still matches their sources.
    """
    newest = 0
    for listing in sorted((rootfs / "var/lib/dpkg/info").glob("*.list")):
        for line in listing.read_text().splitlines():
            if not line.startswith("/") or line.startswith(("/etc/", "/var/")):
                continue
            try:
                st = os.lstat(rootfs / line.lstrip("/"))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISREG(st.st_mode):
                newest = max(newest, int(st.st_mtime))
    if not newest:
        raise PipelineError(f"{rootfs}: no file of any Debian package found (is it a Debian root?)")
    return newest


def pin_password_dates(rootfs: Path, epoch: int) -> None:
    """Set the "last password change" day of every account (made today by mmdebstrap and
    systemd-sysusers) to the epoch's day, so a build on another day has the same bytes."""
    day = str(epoch // DAY)
    for name in SHADOW_FILES:
        path = rootfs / name
        if not path.exists():
            continue
        lines = []
        for line in path.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2]:
                fields[2] = day
            lines.append(":".join(fields))
        path.write_text("".join(f"{line}\n" for line in lines))
