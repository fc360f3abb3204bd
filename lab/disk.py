"""The lab node's disk: a journaled ext4 filesystem in a sparse file, loop-mounted on STATE/storage.

Why not the host's own filesystem: on ext4 *without* a journal (this lab machine's root is one)
the inode allocator skips every inode freed in the last 30 s (5 min while its inode-table block
is still dirty) and reads an inode-table block per candidate to find that out (fs/ext4/ialloc.c,
``recently_deleted``, checked only when ``s_journal`` is NULL). After the lab removed a
container's 1.4 GiB of files, extracting the next template took 16-38 s of kernel time instead
of 3.5-5 s. A real node never pays that: each lvmthin volume gets a fresh ext4 with a journal
(mkfs at create), zfs and journaled `dir` storages allocate differently. So the lab's volumes
live on a filesystem of their own, with a journal, as a thin pool's volumes do. Mounted with
``discard``, so what the lab deletes is punched out of the sparse file and returned to the host.

Example::

    disk.attach(state / "storage", state / "storage.img")   # at `lab up` (idempotent)
    disk.detach(state / "storage", state / "storage.img")   # at `lab down`: unmount, remove
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lab.errors import LabError
from lab.process import run_command

GIB = 1024**3
# The sparse file's size: the host's free space when it is made (the pool never promises more
# than the host had), within these bounds.
MIN_SIZE = 8 * GIB
MAX_SIZE = 512 * GIB
HOST_RESERVE = 2 * GIB


def attach(mountpoint: Path, image: Path) -> None:
    """Mount the lab's disk on mountpoint, making the image first when there is none."""
    if mountpoint.is_mount():
        return
    mountpoint.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        if any(mountpoint.iterdir()):
            raise LabError(f"{mountpoint} holds volumes of a lab made before the lab had its own disk",
                           hint="take that lab down (python -m lab --state ... down) and bring it up again")
        _make(image)
    run_command(["mount", "-o", "loop,discard,noatime", image, mountpoint])
    # The containers' root (host uid 100000) must traverse to its volumes.
    mountpoint.chmod(0o755)


def detach(mountpoint: Path, image: Path) -> None:
    """Unmount the lab's disk and remove its image (everything on it goes with it)."""
    if mountpoint.is_mount():
        run_command(["umount", mountpoint])
    image.unlink(missing_ok=True)


def _make(image: Path) -> None:
    free = shutil.disk_usage(image.parent).free - HOST_RESERVE
    if free < MIN_SIZE:
        raise LabError(f"the lab needs {MIN_SIZE // GIB} GiB free under {image.parent} for its disk, "
                       f"{max(free, 0) // GIB} GiB are", hint="free some space, or use --state elsewhere")
    with open(image, "wb") as sparse:
        sparse.truncate(min(free, MAX_SIZE))
    try:
        # nodiscard: the file is new and sparse, there is nothing to discard.
        run_command(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-L", "meridian-lab", image])
    except LabError:
        image.unlink(missing_ok=True)
        raise

