"""The sha256 of a file, read in 1 MiB blocks (templates are hundreds of MiB), and the digest
recorded beside a cache entry's file when it is made: an entry never changes afterwards, so a
rebuild that reuses it does not read it again."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_sha256(path: Path, digest: str | None = None) -> None:
    """Write ``path``'s sha256 (``digest`` when the caller already has it) to ``path.sha256``."""
    _recorded(path).write_text(f"{digest or file_sha256(path)}\n")


def recorded_sha256(path: Path) -> str:
    return _recorded(path).read_text().strip()


def _recorded(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")
