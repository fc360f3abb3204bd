"""The lab node's storages (lab/data/storage.yml) as directories under STATE/storage/.

``local`` holds templates (``local:vztmpl/NAME``) and ISOs; ``local-lvm`` holds container
volumes ``local-lvm:vm-457-disk-0``, each a directory owned by the container's root
(host uid 100000). Like Proxmox, a volume's owner is the VMID in its name. Sizes are
recorded and reported but not enforced.

Example::

    st = Storages(state / "storage")
    volid = st.alloc("local-lvm", 457, 8)      # "local-lvm:vm-457-disk-0"
    st.path(volid)                              # STATE/storage/local-lvm/vm-457-disk-0
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import yaml

from lab.lxc import ID_BASE
from lab.tasks import TaskFailed

CONFIG: dict[str, dict] = yaml.safe_load((Path(__file__).parent / "data" / "storage.yml").read_text())
GIB = 1024**3
VOLUME_NAME = re.compile(r"(?:vm|subvol)-(?P<vmid>\d+)-disk-(?P<n>\d+)")
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
        storage, name = self.split(volid)
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
        match = VOLUME_NAME.fullmatch(volid.partition(":")[2])
        return int(match["vmid"]) if match else None

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
            path = self.dir(storage) / name
            path.mkdir(parents=True)
            os.chown(path, ID_BASE, ID_BASE)
            path.chmod(0o755)
            self._set_size(storage, name, int(size_gib * GIB))
        return f"{storage}:{name}"

    def _free_name(self, storage: str, vmid: int) -> str:
        self.dir(storage).mkdir(parents=True, exist_ok=True)
        taken = {p.name for p in self.dir(storage).iterdir()}
        return next(f"vm-{vmid}-disk-{n}" for n in range(10_000) if f"vm-{vmid}-disk-{n}" not in taken)

    def size(self, volid: str) -> int:
        storage, name = self.split(volid)
        if CONFIG[storage]["type"] == "dir":
            return self.path(volid).stat().st_size
        return self._sizes(storage).get(name, 0)

    def free(self, volid: str) -> None:
        storage, name = self.split(volid)
        path = self.path(volid)
        with self._lock:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            if CONFIG[storage]["type"] != "dir":
                self._set_size(storage, name, None)

    def rename(self, volid: str, new_vmid: int) -> str:
        """Reassign a volume to another guest (lvmthin rename): it gets the new owner's next name."""
        storage, name = self.split(volid)
        with self._lock:
            new_name = self._free_name(storage, new_vmid)
            os.rename(self.dir(storage) / name, self.dir(storage) / new_name)
            size = self._sizes(storage).get(name, 0)
            self._set_size(storage, name, None)
            self._set_size(storage, new_name, size)
        return f"{storage}:{new_name}"

    # -- listing ---------------------------------------------------------------------

    def content(self, storage: str) -> list[dict]:
        items = []
        if CONFIG[storage]["type"] == "dir":
            for content, sub in SUBDIRS.items():
                if content in self.content_types(storage):
                    for file in sorted((self.dir(storage) / sub).glob("*")):
                        if file.is_file() and not file.name.startswith("."):
                            items.append(self._entry(f"{storage}:{content}/{file.name}", content, file))
        else:
            for path in sorted(self.dir(storage).glob("vm-*-disk-*")):
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
