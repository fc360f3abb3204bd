"""Write a rendered seed to a directory: the three NoCloud files plus seed.iso."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pipeline.cloudinit.iso import build_iso
from pipeline.cloudinit.render import SEED_FILES, render_seed
from pipeline.config import Site

ISO_NAME = "seed.iso"


def write_seed(
    site: Site,
    out_dir: Path,
    *,
    master_key: str | None = None,
    instance_id: str | None = None,
    deploy_public_key: str | None = None,
) -> list[Path]:
    """Render, validate, then write user-data, meta-data, network-config and seed.iso.

    Example (the build's artifact, no secret)::

        write_seed(site, Path("build/lab/seed"), instance_id="meridian-0.1.0")

    Nothing is written when rendering or validation fails. Files are 0600: with a
    master key, user-data and the ISO hold it.
    """
    seed = render_seed(
        site,
        master_key=master_key,
        instance_id=instance_id or f"iid-{uuid.uuid4()}",
        deploy_public_key=deploy_public_key,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SEED_FILES:
        _write_private(out_dir / name, seed.files[name])
    iso = out_dir / ISO_NAME
    _write_private(iso, build_iso(seed.files))
    return [*(out_dir / name for name in SEED_FILES), iso]


def _write_private(path: Path, data: bytes) -> None:
    """Create with 0600 from the start, so a key is never readable even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
