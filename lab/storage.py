"""The lab node's storages (lab/data/storage.yml) as directories under STATE/storage/.

``local`` holds templates (``local:vztmpl/NAME``) and ISOs; ``local-lvm`` (lvmthin) holds
container volumes ``local-lvm:vm-457-disk-0``, each a directory owned by the container's root
(host uid 100000), template volumes ``base-N-disk-M`` and linked clones of them (lab/thin.py);
``local-dir`` (dir) holds container volumes ``local-dir:457/subvol-457-disk-0.subvol``, and
makes no linked clones, as on Proxmox. Like Proxmox, a volume's owner is the VMID in its
name. Sizes are recorded and reported but not enforced.

Example::

    st = Storages(state / "storage")
    volid = st.alloc("local-lvm", 457, 8)      # "local-lvm:vm-457-disk-0"
    st.path(volid)                              # STATE/storage/local-lvm/vm-457-disk-0
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import yaml

from lab import thin
from lab.lxc import ID_BASE
from lab.tasks import TaskFailed

CONFIG: dict[str, dict] = yaml.safe_load((Path(__file__).parent / "data" / "storage.yml").read_text())
GIB = 1024**3
VOLUME_NAME = re.compile(r"(?:vm|subvol|base)-(?P<vmid>\d+)-disk-(?P<n>\d+)")
DIR_VOLUME = re.compile(r"(?P<vmid>\d+)/subvol-(?P=vmid)-disk-(?P<n>\d+)\.subvol")
# Storage types that make linked clones of a CT template (docs/proxmox.md); the lab has lvmthin.
LINKED_CLONE_TYPES = frozenset({"lvmthin", "zfspool", "rbd", "btrfs"})
SUBDIRS = {"vztmpl": "template/cache", "iso": "template/iso", "backup": "dump"}
TEMPLATE_NAME = re.compile(r"[^/\s]+\.tar(\.(gz|xz|zst|bz2))?")
ISO_NAME = re.compile(r"[^/\s]+\.(iso|img)")


class Storages:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        return list(CONFIG)

    def dir(self, storage: str) -> Path:
        return self.root / storage

    def exists(self, storage: str) -> bool:
        return storage in CONFIG

    def content_types(self, storage: str) -> list[str]:
        return CONFIG[storage]["content"]

    def split(self, volid: str) -> tuple[str, str]:
        storage, sep, name = volid.partition(":")
        if not sep or storage not in CONFIG:
            raise TaskFailed(f"storage '{storage}' does not exist")
        return storage, name

    def path(self, volid: str) -> Path:
        """Where the volume's content is: a linked clone's merged root (see activate)."""
        volume = self.volume_dir(volid)
        return thin.root_of(volume) if volume.is_dir() else volume

    def volume_dir(self, volid: str) -> Path:
        storage, name = self.split(volid)
        if CONFIG[storage]["type"] == "dir" and DIR_VOLUME.fullmatch(name):
            return self.dir(storage) / "images" / name
        if CONFIG[storage]["type"] == "dir":
            content, _, file = name.partition("/")
            if content not in SUBDIRS or not file or "/" in file:
                raise TaskFailed(f"unable to parse volume filename '{name}'")
            return self.dir(storage) / SUBDIRS[content] / file
        if not VOLUME_NAME.fullmatch(name):
            raise TaskFailed(f"unable to parse volume name '{name}'")
        return self.dir(storage) / name

    def volume_exists(self, volid: str) -> bool:
        return self.path(volid).exists()

    @staticmethod
    def owner(volid: str) -> int | None:
        name = volid.partition(":")[2]
        match = VOLUME_NAME.fullmatch(name) or DIR_VOLUME.fullmatch(name)
        return int(match["vmid"]) if match else None

    def kind(self, storage: str) -> str:
        return CONFIG[storage]["type"]

    def linked_clones(self, storage: str) -> bool:
        return CONFIG[storage]["type"] in LINKED_CLONE_TYPES

    def has_feature(self, feature: str, volid: str) -> bool:
        """PVE::Storage::volume_has_feature for a CT volume (valid_target_formats raw, subvol).

        ``template``: every lab storage can (lvmthin and dir; not an existing base volume).
        ``clone`` (linked): lvmthin from a base volume only; dir never (Plugin.pm answers 0
        when qcow2 is not a valid target format, and for a CT it is not)."""
        storage, name = self.split(volid)
        is_base = name.startswith("base-")
        if feature == "template":
            return not is_base
        if feature == "clone":
            return self.linked_clones(storage) and is_base
        return False

    def _storage_dir(self, volid: str) -> Path:
        return self.dir(self.split(volid)[0])

    def activate(self, volid: str) -> bool:
        """Make the volume usable (mount a linked clone's overlay), as Proxmox activates volumes.
        True when this call mounted it."""
        volume = self.volume_dir(volid)
        if not thin.is_linked(volume) or thin.is_active(volume):
            return False
        thin.activate(self._storage_dir(volid), volume)
        return True

    def deactivate(self, volid: str) -> None:
        thin.deactivate(self.volume_dir(volid))

    def make_base(self, volid: str) -> str:
        """vdisk_create_base: lvmthin renames vm-N-disk-M to base-N-disk-M (lvrename, O(1)); a dir
        storage's subvol keeps its name (Plugin.pm renames s/^vm-/base-/ only). The new volid."""
        storage, name = self.split(volid)
        if CONFIG[storage]["type"] == "dir" or name.startswith("base-"):
            return volid
        base = "base-" + name.split("-", 1)[1]
        with self._lock:
            thin.rename(self.dir(storage), self.dir(storage) / name, self.dir(storage) / base)
            self._set_size(storage, base, self._sizes(storage).get(name, 0))
            self._set_size(storage, name, None)
        return f"{storage}:{base}"

    def link(self, base_volid: str, vmid: int) -> str:
        """A linked clone of a base volume for vmid: O(1), like lvcreate -s on a thin pool."""
        storage, base = self.split(base_volid)
        if not self.has_feature("clone", base_volid):
            raise TaskFailed(f"clone_image only works on base images ({base_volid})")
        with self._lock:
            name = self._free_name(storage, vmid)
            thin.make_linked(self.dir(storage), self.dir(storage) / name, base)
            self._set_size(storage, name, self._sizes(storage).get(base, 0))
        return f"{storage}:{name}"

    def copy(self, source_volid: str, storage: str, vmid: int, bwlimit_kib: float | None = None) -> str:
        """A full copy for vmid on storage: O(size), a file-level copy as Proxmox's rsync does
        (never a reflink: that would be cheaper than the real copy)."""
        mounted = self.activate(source_volid)
        try:
            volid = self.alloc(storage, vmid, self.size(source_volid) / GIB)
            proc = subprocess.run(["cp", "-a", "--reflink=never", "--one-file-system", "--",
                                   f"{self.path(source_volid)}/.", str(self.path(volid))],
                                  capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                self.free(volid)
                raise TaskFailed(f"copying {source_volid} failed: {proc.stderr.strip()}")
            self.flush(volid)
        finally:
            if mounted:
                self.deactivate(source_volid)
        return volid

    def flush(self, volid: str) -> None:
        """Write the volume's data through, as a real create or full clone does when it unmounts
        the new volume at its end (umount of the ext4 on a thin LV): that writeback belongs to
        the task, not to whatever runs after it (lab/README.md, "Cost model")."""
        proc = subprocess.run(["sync", "-f", str(self.path(volid))], capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise TaskFailed(f"writing {volid} through failed: {proc.stderr.strip()}")

    # -- container volumes ------------------------------------------------------------

    def _sizes_file(self, storage: str) -> Path:
        return self.dir(storage) / ".sizes.json"

    def _sizes(self, storage: str) -> dict[str, int]:
        path = self._sizes_file(storage)
        return json.loads(path.read_text()) if path.exists() else {}

    def _set_size(self, storage: str, name: str, size: int | None) -> None:
        sizes = self._sizes(storage)
        if size is None:
            sizes.pop(name, None)
        else:
            sizes[name] = size
        self._sizes_file(storage).write_text(json.dumps(sizes))

    def alloc(self, storage: str, vmid: int, size_gib: float) -> str:
        """A new, empty volume owned by vmid (a directory the container's root owns)."""
        if "rootdir" not in self.content_types(storage):
            raise TaskFailed(f"storage '{storage}' does not support container directories")
        with self._lock:
            name = self._free_name(storage, vmid)
            path = self.volume_dir(f"{storage}:{name}")
            path.mkdir(parents=True)
            os.chown(path, ID_BASE, ID_BASE)
            path.chmod(0o755)
            self._set_size(storage, name, int(size_gib * GIB))
        return f"{storage}:{name}"

    def _free_name(self, storage: str, vmid: int) -> str:
        self.dir(storage).mkdir(parents=True, exist_ok=True)
        if CONFIG[storage]["type"] == "dir":
            taken = {p.name for p in (self.dir(storage) / "images" / str(vmid)).glob("*")}
            return next(f"{vmid}/subvol-{vmid}-disk-{n}.subvol" for n in range(10_000)
                        if f"subvol-{vmid}-disk-{n}.subvol" not in taken)
        taken = {p.name for p in self.dir(storage).iterdir()}
        return next(f"vm-{vmid}-disk-{n}" for n in range(10_000)
                    if f"vm-{vmid}-disk-{n}" not in taken and f"base-{vmid}-disk-{n}" not in taken)

    def size(self, volid: str) -> int:
        storage, name = self.split(volid)
        if CONFIG[storage]["type"] == "dir" and not DIR_VOLUME.fullmatch(name):
            return self.path(volid).stat().st_size
        return self._sizes(storage).get(name, 0)

    def free(self, volid: str) -> None:
        """Remove a volume. A container volume goes in O(1) (lab/thin.py), as lvremove does; on
        lvmthin a base volume that linked clones use is kept for them, hidden (see thin.remove)."""
        storage, name = self.split(volid)
        volume = self.volume_dir(volid)
        with self._lock:
            if volume.is_dir():
                thin.remove(self.dir(storage), volume)
            else:
                volume.unlink(missing_ok=True)
            if CONFIG[storage]["type"] != "dir" or DIR_VOLUME.fullmatch(name):
                self._set_size(storage, name, None)

    def rename(self, volid: str, new_vmid: int) -> str:
        """Reassign a volume to another guest (lvmthin rename): it gets the new owner's next name."""
        storage, name = self.split(volid)
        with self._lock:
            new_name = self._free_name(storage, new_vmid)
            target = self.volume_dir(f"{storage}:{new_name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            thin.rename(self.dir(storage), self.volume_dir(volid), target)
            size = self._sizes(storage).get(name, 0)
            self._set_size(storage, name, None)
            self._set_size(storage, new_name, size)
        return f"{storage}:{new_name}"

    def purge_trash(self) -> None:
        for storage in self.ids():
            thin.purge_trash(self.dir(storage))

    # -- listing ---------------------------------------------------------------------

    def content(self, storage: str) -> list[dict]:
        items = []
        if CONFIG[storage]["type"] == "dir":
            for content, sub in SUBDIRS.items():
                if content in self.content_types(storage):
                    for file in sorted((self.dir(storage) / sub).glob("*")):
                        if file.is_file() and not file.name.startswith("."):
                            items.append(self._entry(f"{storage}:{content}/{file.name}", content, file))
            for path in sorted((self.dir(storage) / "images").glob("*/subvol-*.subvol")):
                entry = self._entry(f"{storage}:{path.parent.name}/{path.name}", "rootdir", path)
                entry["vmid"] = self.owner(entry["volid"])
                items.append(entry)
        else:
            for path in sorted([*self.dir(storage).glob("vm-*-disk-*"), *self.dir(storage).glob("base-*-disk-*")]):
                entry = self._entry(f"{storage}:{path.name}", "rootdir", path)
                entry["vmid"] = self.owner(entry["volid"])
                items.append(entry)
        return items

    def _entry(self, volid: str, content: str, path: Path) -> dict:
        fmt = "subvol" if path.is_dir() else path.name.rsplit(".", 1)[-1]
        return {"volid": volid, "content": content, "format": fmt, "size": self.size(volid),
                "ctime": int(path.stat().st_ctime)}

    def status(self, storage: str) -> dict:
        total = CONFIG[storage]["total_gib"] * GIB
        used = sum(item["size"] for item in self.content(storage))
        return {"storage": storage, "type": CONFIG[storage]["type"],
                "content": ",".join(self.content_types(storage)), "total": total, "used": used,
                "avail": max(total - used, 0), "active": 1, "enabled": 1, "shared": 0}

    def upload_target(self, storage: str, content: str, filename: str) -> Path:
        """Where an upload lands; raises ValueError naming the bad field."""
        if content not in self.content_types(storage) or content not in ("vztmpl", "iso"):
            raise ValueError(f"storage '{storage}' does not support '{content}' content")
        pattern = TEMPLATE_NAME if content == "vztmpl" else ISO_NAME
        if not pattern.fullmatch(filename):
            raise ValueError(f"wrong file extension for '{content}': '{filename}'")
        target = self.dir(storage) / SUBDIRS[content] / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    @staticmethod
    def tmp_name() -> str:
        return f".upload-{os.getpid()}-{time.monotonic_ns()}"
