"""Thin provisioning for the lab's lvmthin storage: linked clones, base volumes, O(1) removal.

A real thin pool makes a linked clone with ``lvcreate -s`` (a thin snapshot) and removes a
volume with ``lvremove``: neither copies nor scans the data. The lab does the same amount of
work with overlayfs on the host: a linked clone's volume directory holds ``upper/`` and
``work/`` and names its base volume in ``.base``; activating it mounts the overlay on
``merged/`` (what the container sees as its root: lower = the base's layers, read-only).
Removing any volume renames it into ``.trash/`` (O(1)) and deletes it in the background.

On lvmthin a template may be deleted while linked clones of it exist: they keep working.
So a base volume that clones still use is not removed but retired (``.retired/``, not listed
as storage content), and it goes to the trash with its last clone. A base volume may itself be
a linked clone (a clone converted to a template): its layers are its ``upper/`` over its own
base's layers, so chains work as thin snapshots of snapshots do.

Layout under the storage's directory::

    base-9458-disk-0/            a template's volume (the uid-shifted root filesystem)
    vm-457-disk-0/.base          "base-9458-disk-0" (or ".retired/base-9458-disk-0-<n>")
    vm-457-disk-0/{upper,work,merged}/
    .retired/  .trash/

Example::

    make_linked(pool / "vm-457-disk-0", "base-9458-disk-0")
    activate(pool / "vm-457-disk-0")          # mount -t overlay ... vm-457-disk-0/merged
    deactivate(pool / "vm-457-disk-0")
    remove(pool, pool / "base-9458-disk-0")   # retired: vm-457-disk-0 still uses it
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from lab.tasks import TaskFailed

LINK = ".base"
TRASH = ".trash"
RETIRED = ".retired"
# The kernel stacks at most two overlays (FILESYSTEM_MAX_STACK_DEPTH): the clone's and the one
# systemd-sysext mounts inside the container on /usr and /opt. Chains are lowerdir lists instead.
MAX_CHAIN = 100


def is_linked(volume: Path) -> bool:
    return (volume / LINK).is_file()


def root_of(volume: Path) -> Path:
    """The directory a container uses as this volume's root."""
    return volume / "merged" if is_linked(volume) else volume


def base_of(volume: Path) -> str:
    """The base's path relative to the storage directory."""
    return (volume / LINK).read_text().strip()


def layers(storage_dir: Path, volume: Path) -> list[Path]:
    """The read-only layers under a linked clone, top first (its base's data, then the base's base...)."""
    found: list[Path] = []
    current = volume
    while is_linked(current):
        base = storage_dir / base_of(current)
        if not base.is_dir():
            raise TaskFailed(f"base volume of '{current.name}' is missing ({base})")
        found.append(base / "upper" if is_linked(base) else base)
        current = base
        if len(found) > MAX_CHAIN:
            raise TaskFailed(f"linked clone chain of '{volume.name}' is too long")
    return found


def make_linked(storage_dir: Path, volume: Path, base_rel: str) -> None:
    """An empty linked clone of the base volume ``base_rel`` (same storage): O(1)."""
    base = storage_dir / base_rel
    top = base / "upper" if is_linked(base) else base
    for sub in ("upper", "work", "merged"):
        (volume / sub).mkdir(parents=True)
    stat = top.stat()
    for sub in ("upper", "merged"):  # the root directory looks like the base's
        os.chown(volume / sub, stat.st_uid, stat.st_gid)
        (volume / sub).chmod(stat.st_mode & 0o7777)
    os.chown(volume, stat.st_uid, stat.st_gid)
    (volume / LINK).write_text(base_rel + "\n")


def activate(storage_dir: Path, volume: Path) -> None:
    """Mount a linked clone's overlay (idempotent); plain volumes need nothing."""
    if not is_linked(volume) or os.path.ismount(volume / "merged"):
        return
    lower = ":".join(str(p) for p in layers(storage_dir, volume))
    options = f"lowerdir={lower},upperdir={volume / 'upper'},workdir={volume / 'work'}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(volume / "merged")],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise TaskFailed(f"unable to activate volume '{volume.name}': {proc.stderr.strip()}")


def deactivate(volume: Path) -> None:
    merged = volume / "merged"
    if os.path.ismount(merged):
        # Lazy: a process that still holds a file in it (a lingering container process) does not
        # keep the lab from removing the volume; the kernel detaches the mount when it lets go.
        subprocess.run(["umount", "-l", str(merged)], check=True, capture_output=True, timeout=60)


def is_active(volume: Path) -> bool:
    return os.path.ismount(volume / "merged")


def _records(storage_dir: Path) -> list[Path]:
    """Every linked volume of the storage, retired bases included."""
    found = [v for v in storage_dir.iterdir() if v.is_dir() and not v.name.startswith(".")]
    retired = storage_dir / RETIRED
    if retired.is_dir():
        found += list(retired.iterdir())
    return [v for v in found if is_linked(v)]


def dependents(storage_dir: Path, base_rel: str) -> list[Path]:
    """Linked clones whose base is ``base_rel`` (a path relative to the storage directory)."""
    return [v for v in _records(storage_dir) if base_of(v) == base_rel]


def rename(storage_dir: Path, volume: Path, target: Path) -> None:
    """Rename a volume (lvrename); linked clones of it follow."""
    deactivate(volume)
    users = dependents(storage_dir, volume.name)
    os.rename(volume, target)
    for clone in users:
        (clone / LINK).write_text(str(target.relative_to(storage_dir)) + "\n")


def remove(storage_dir: Path, volume: Path) -> None:
    """Remove a volume in O(1): deactivate, rename into the trash, delete in the background.
    A base that linked clones still use is retired instead; a retired base goes with its last clone."""
    deactivate(volume)
    users = dependents(storage_dir, volume.name)
    if users:
        retired = storage_dir / RETIRED / f"{volume.name}-{time.monotonic_ns()}"
        retired.parent.mkdir(exist_ok=True)
        os.rename(volume, retired)
        for clone in users:
            (clone / LINK).write_text(f"{RETIRED}/{retired.name}\n")
        return
    base_rel = base_of(volume) if is_linked(volume) else None
    _trash(storage_dir, volume)
    # A retired base whose last clone this was goes too (and so on down a chain).
    while base_rel and base_rel.startswith(f"{RETIRED}/") and not dependents(storage_dir, base_rel):
        base = storage_dir / base_rel
        base_rel = base_of(base) if is_linked(base) else None
        _trash(storage_dir, base)


def _trash(storage_dir: Path, volume: Path) -> None:
    if not volume.exists():
        return
    target = storage_dir / TRASH / f"{volume.name}-{time.monotonic_ns()}"
    target.parent.mkdir(exist_ok=True)
    os.rename(volume, target)
    _purge_later(target)


def _purge_later(path: Path) -> None:
    threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True},
                     name=f"trash {path.name}", daemon=True).start()


def purge_trash(storage_dir: Path) -> None:
    """At server start: what a previous server left in the trash is deleted in the background."""
    trash = storage_dir / TRASH
    if trash.is_dir():
        for entry in trash.iterdir():
            _purge_later(entry)


def deactivate_all(storage_dir: Path) -> None:
    """Unmount every overlay under the storage (lab down); deepest first."""
    if not storage_dir.is_dir():
        return
    prefix = str(storage_dir.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True, timeout=60)
