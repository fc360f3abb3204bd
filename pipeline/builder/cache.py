"""Content keys and the layer cache.

A key is the sha256 of every input of a piece of the build: files, directory trees,
strings and the keys it builds on. Equal inputs give equal keys, so a cached result
is reused; any changed input gives a new key. Example::

    key = Key("node").file(lock).text(version).key_of(base).hexdigest()
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.digest import file_sha256

ENTRY_KINDS = ("base", "layers", "pieces", "templates")  # what prune_to may drop
SIZE_FILE = ".size"
DEFAULT_BUDGET_GIB = 16  # about five full sets of base, layers, pieces and template
GIB = 1 << 30
# Never part of a package's content: build output and VCS state of a local source folder.
IGNORED_NAMES = frozenset({"node_modules", ".git", "__pycache__", ".DS_Store"})


class Key:
    """Accumulates labelled inputs into one sha256. Labels keep inputs from sliding into
    each other ("ab"+"c" differs from "a"+"bc")."""

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256()
        self.text("kind", kind)

    def text(self, label: str, value: str) -> Key:
        data = value.encode()
        self._h.update(f"{label}\0{len(data)}\0".encode() + data)
        return self

    def file(self, label: str, path: Path) -> Key:
        return self.text(label, file_sha256(path))

    def tree(self, label: str, root: Path) -> Key:
        return self.text(label, tree_sha256(root))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def tree_sha256(root: Path) -> str:
    """Hash of the names, file contents, executable bits and symlink targets under root
    (not times or owners: they do not change what is installed)."""
    h = hashlib.sha256()
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            entry = f"L {rel} -> {os.readlink(path)}"
        elif path.is_dir():
            entry = f"D {rel}"
        else:
            executable = "x" if os.access(path, os.X_OK) else "-"
            entry = f"F{executable} {rel} {file_sha256(path)}"
        h.update(entry.encode() + b"\n")
    return h.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES)
        base = Path(dirpath)
        for name in sorted(dirnames + [f for f in filenames if f not in IGNORED_NAMES]):
            yield base / name


class Cache:
    """Finished results under DIR/KIND/NAME/KEY/. An entry appears only when complete:
    it is built in a scratch folder and renamed into place. Each entry records its size
    (SIZE_FILE) and its last use (the entry's mtime), so ``prune_to`` can drop the least
    recently used ones when the cache outgrows its budget (docs/build-cache.md)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.used: set[Path] = set()  # entries this build found or made: never pruned by it

    def entry(self, kind: str, name: str, key: str) -> Path:
        return self.root / kind / name / key

    def has(self, kind: str, name: str, key: str) -> bool:
        """True when the entry exists; a hit also marks it as used now."""
        entry = self.entry(kind, name, key)
        if not entry.is_dir():
            return False
        os.utime(entry)
        self.used.add(entry)
        return True

    @contextmanager
    def filling(self, kind: str, name: str, key: str) -> Iterator[Path]:
        """Yield a scratch folder; on success it becomes the entry, on failure it goes."""
        final = self.entry(kind, name, key)
        scratch = final.with_name(f".{key}.partial")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            yield scratch
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        (scratch / SIZE_FILE).write_text(f"{disk_usage(scratch)}\n")
        shutil.rmtree(final, ignore_errors=True)
        scratch.rename(final)
        self.used.add(final)

    def entries(self) -> list[Path]:
        return [entry for kind in ENTRY_KINDS for name in _subdirs(self.root / kind) for entry in _subdirs(name)]

    def prune_to(self, budget: int) -> list[Path]:
        """Drop the least recently used entries until all of them together take at most
        ``budget`` bytes; never one this build used. Returns what was dropped."""
        entries = sorted(self.entries(), key=lambda e: e.stat().st_mtime)
        sizes = {entry: entry_size(entry) for entry in entries}
        total, dropped = sum(sizes.values()), []
        for entry in entries:
            if total <= budget:
                break
            if entry in self.used:
                continue
            shutil.rmtree(entry)
            total -= sizes[entry]
            dropped.append(entry)
        return dropped


def entry_size(entry: Path) -> int:
    """Bytes on disk, as recorded when the entry was made (an entry from an older build is
    measured once, and the figure kept)."""
    try:
        return int((entry / SIZE_FILE).read_text())
    except (OSError, ValueError):
        size = disk_usage(entry)
        (entry / SIZE_FILE).write_text(f"{size}\n")
        return size


def disk_usage(root: Path) -> int:
    """Allocated bytes under root, a hard-linked file counted once."""
    seen: set[int] = set()
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
