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
    it is built in a scratch folder and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, kind: str, name: str, key: str) -> Path:
        return self.root / kind / name / key

    def has(self, kind: str, name: str, key: str) -> bool:
        """True when the entry exists; a hit also marks it as recently used (see prune)."""
        entry = self.entry(kind, name, key)
        if not entry.is_dir():
            return False
        os.utime(entry)
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
        shutil.rmtree(final, ignore_errors=True)
        scratch.rename(final)

    def prune(self, kind: str, name: str, keep: int = 2) -> None:
        """Drop all but the ``keep`` most recently used entries of one layer (disk space)."""
        folder = self.root / kind / name
        if not folder.is_dir():
            return
        entries = sorted(
            (p for p in folder.iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime, reverse=True,
        )
        for old in entries[keep:]:
            shutil.rmtree(old, ignore_errors=True)
