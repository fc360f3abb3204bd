"""A template made of independently compressed pieces (docs/build-cache.md).

Each piece is a tar stream of some members (the system, one extension, the manifest) packed
and zstd-compressed on its own. The pieces joined end to end are one valid ``.tar.zst``:
zstd decompresses concatenated frames as one stream, and a tar stream without its
end-of-archive marker continues seamlessly in the next piece. Only the last piece keeps the
marker. So a change in one layer re-packs that layer's piece and the small manifest piece;
the others are reused byte for byte from the cache.

Every piece is packed the same way (``./``-relative names, numeric ids, sorted, GNU format,
mtimes clamped to an epoch) and checked against Proxmox's rules before it is compressed.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pipeline.builder.rules import check_tar
from pipeline.contract import PieceSize
from pipeline.errors import PipelineError
from pipeline.runner import run

# A blocking factor of 1 makes tar end the archive with exactly two zero blocks, no padding:
# the end-of-archive marker is then the last END_MARKER bytes, cut from all but the last piece.
TAR_OPTIONS = ("--numeric-owner", "--sort=name", "--format=gnu", "--blocking-factor=1")
END_MARKER = 1024
# zstd level, by measurement on the litellm piece (760 MB of tar, 2 cores, `zstd -T0`, one run):
# -3 5.5 s / 194 MiB, -6 18.8 s / 179 MiB, -9 33.8 s / 171 MiB, -12 69.9 s / 169 MiB. -3 packs
# six times faster than -9 for 12 % more bytes (≈ 0.4 s more upload on a gigabit LAN), and the
# packing is what a one-layer rebuild waits for. benchmarks/bench_build.py prints it again.
ZSTD_LEVEL = "-3"
PACK_TIMEOUT = 1800
LARGEST_SHOWN = 8  # directories listed per piece in the manifest and the build summary


def pack_piece(root: Path, members: Sequence[str], dest: Path, *, epoch: int, required: Sequence[str] = (),
               last: bool = False, restate: Sequence[str] = (), log: Path) -> PieceSize:
    """Pack ``members`` (paths under ``root``, like ``./var/lib/extensions/node``) into the
    zstd frame ``dest``; every mtime newer than ``epoch`` becomes ``epoch``.

    ``restate`` (for the last piece): directories an earlier piece holds and later pieces add
    to, packed again (without their content) after everything else. tar sets a directory's
    mtime once it has passed its members; a member extracted into it afterwards bumps that
    mtime, and the repeated entry sets it back, as an archive packed in one go would leave it.
    """
    plain = dest.with_name(dest.name + ".tar")
    again = ["--no-recursion", *restate] if restate else []
    run(["tar", *TAR_OPTIONS, f"--mtime=@{epoch}", "--clamp-mtime", "-C", root, "-cf", plain, *members, *again],
        log=log, timeout=PACK_TIMEOUT)
    check_tar(plain, required=required)
    unpacked, largest = measure(plain)
    if not last:
        _cut_end_marker(plain)
    run(["zstd", "-T0", ZSTD_LEVEL, "-q", "--rm", "-f", plain, "-o", dest], log=log, timeout=PACK_TIMEOUT)
    return PieceSize(unpacked=unpacked, compressed=dest.stat().st_size, largest=largest)


def measure(plain: Path, lines: int = LARGEST_SHOWN) -> tuple[int, dict[str, int]]:
    """The bytes of a tar's files, and where they go: starting from its top, the largest
    directory is split into its subdirectories (and ``DIR/.``, its own files) while it holds
    more than 1/lines of the total; the ``lines`` largest parts are reported."""
    own: dict[str, int] = defaultdict(int)  # directory -> bytes of the files directly in it
    with tarfile.open(plain) as tar:
        for member in tar:
            if member.isreg():
                own[posixpath.dirname(member.name)] += member.size
    below: dict[str, int] = defaultdict(int)  # directory -> bytes of everything under it
    children: dict[str, set[str]] = defaultdict(set)
    for folder, size in own.items():
        path = folder
        while True:
            below[path] += size
            parent = posixpath.dirname(path)
            if parent == path or not parent:
                break
            children[parent].add(path)
            path = parent
    total = sum(own.values())
    top = min(below, key=lambda d: d.count("/")) if below else "."
    parts = {top: below.get(top, 0)}
    while True:
        splittable = [d for d in parts if children.get(d) and parts[d] > total / lines]
        if not splittable:
            break
        folder = max(splittable, key=lambda d: parts[d])
        del parts[folder]
        parts |= {child: below[child] for child in children[folder]}
        if own.get(folder):
            parts[f"{folder}/."] = own[folder]
    largest = sorted(parts.items(), key=lambda item: (-item[1], item[0]))[:lines]
    return total, {path: size for path, size in largest if size * 100 >= total}  # 1 % and more


def _cut_end_marker(plain: Path) -> None:
    size = plain.stat().st_size
    with open(plain, "r+b") as fh:
        fh.seek(size - END_MARKER)
        if size % 512 or fh.read() != bytes(END_MARKER):
            raise PipelineError(f"{plain}: tar did not end with exactly two zero blocks")
        fh.truncate(size - END_MARKER)


def join(pieces: Sequence[Path], dest: Path) -> str:
    """The template: the pieces end to end, the one holding the end-of-archive marker last.
    Returns its sha256, computed on the way (the template is not read again for it)."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()
