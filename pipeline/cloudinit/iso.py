"""The NoCloud `cidata` ISO (for VMs): ISO9660 level 1 + Joliet + Rock Ridge, byte-reproducible.

pycdlib stamps every record with time.time() in local time and has no SOURCE_DATE_EPOCH:
the clock is pinned (and read as UTC) while the image is built.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from unittest import mock

import pycdlib

VOLUME_LABEL = "cidata"


def build_iso(files: Mapping[str, bytes]) -> bytes:
    """An ISO holding ``files`` (seed name -> content, e.g. "user-data") in its root."""
    iso = pycdlib.PyCdlib()
    image = io.BytesIO()
    with _pinned_clock(_epoch()):
        iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
        for name in sorted(files):
            data = files[name]
            iso.add_fp(
                io.BytesIO(data), len(data), _iso9660_name(name),
                rr_name=name, joliet_path=f"/{name}",
            )
        iso.write_fp(image)
    iso.close()
    return image.getvalue()


def _iso9660_name(name: str) -> str:
    """Level 1 allows 8.3 upper-case names: user-data -> /USER_DAT.;1 (RR/Joliet keep the real one)."""
    stem = "".join(ch if ch.isalnum() else "_" for ch in name.upper())[:8]
    return f"/{stem}.;1"


def _epoch() -> float:
    return float(os.environ.get("SOURCE_DATE_EPOCH", "0"))


@contextmanager
def _pinned_clock(epoch: float) -> Iterator[None]:
    with mock.patch.object(time, "time", return_value=epoch), mock.patch.object(
        time, "localtime", time.gmtime
    ):
        yield
