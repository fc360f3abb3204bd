"""End-to-end numbers on the lab, in one run (as root, lab up: `python -m lab up`):

    .venv/bin/python -m benchmarks.bench_e2e

cold build (empty cache, downloads included), warm rebuild with nothing changed, rebuild
after one version bump (the Meridian stand-in's, relock included), replace downtime (from
replace-ct's --json report), acceptance duration (image tier) and template size. It removes
CT 457 of the lab site and deploys it twice; the cold cache is a scratch folder removed after.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pipeline.contract import BUILD_MANIFEST, BuildManifest, read_build_manifest
from tests.plugins.acceptance import (
    LAB_SITE,
    acceptance,
    bumped_site,
    bumped_version,
    pipeline_cli,
    remove_lab_ct,
    replace_ct,
)
from tests.plugins.lab import HOLDERS

MIB = 1024 * 1024

T = TypeVar("T")


def timed(action: Callable[[], T]) -> tuple[float, T]:
    start = time.monotonic()
    result = action()
    return time.monotonic() - start, result


def build(site: Path, out: Path, cache: Path, *extra: str) -> BuildManifest:
    pipeline_cli(["build", "--site", str(site), "--out", str(out), "--cache", str(cache), *extra],
                 log=out.with_suffix(".log"))
    return read_build_manifest(out / BUILD_MANIFEST)


def template_size(out: Path, doc: BuildManifest) -> int:
    return (out / doc.template.file).stat().st_size


def rebuilt(doc: BuildManifest) -> str:
    return ", ".join(name for name, layer in doc.layers.items() if layer.rebuilt) or "none"


@contextmanager
def holding_lab() -> Iterator[None]:
    """Hold the shared lab like a test session does, so none takes it down under us."""
    HOLDERS.mkdir(parents=True, exist_ok=True)
    mine = HOLDERS / str(os.getpid())
    mine.touch()
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)


def measure(scratch: Path) -> dict:
    cache = scratch / "cache"
    m: dict = {}
    m["cold_s"], cold = timed(lambda: build(LAB_SITE, scratch / "cold", cache))
    m["size"] = template_size(scratch / "cold", cold)
    m["warm_s"], m["warm"] = timed(lambda: build(LAB_SITE, scratch / "warm", cache))
    bumped = bumped_site(scratch, bumped_version())
    m["bump_s"], m["bump"] = timed(lambda: build(bumped, scratch / "bumped", cache, "--update-lock"))
    remove_lab_ct(LAB_SITE)
    (scratch / "deploy-1").mkdir()
    m["first_s"], _ = timed(lambda: replace_ct(LAB_SITE, scratch / "cold", scratch / "deploy-1"))
    m["accept_s"], m["failed"] = timed(lambda: acceptance(LAB_SITE, "image", scratch / "accept"))
    (scratch / "deploy-2").mkdir()
    m["replace_s"], m["report"] = timed(
        lambda: replace_ct(bumped, scratch / "bumped", scratch / "deploy-2"))
    return m


def main() -> None:
    os.environ.setdefault("MERIDIAN_LAB_MASTER_KEY", "sk-" + secrets.token_urlsafe(32))
    scratch = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir="/var/tmp"))
    try:
        with holding_lab():
            m = measure(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = m["report"]
    print(f"cold build (empty cache)          {m['cold_s']:8.1f} s")
    print(f"warm rebuild (nothing changed)    {m['warm_s']:8.1f} s   layers rebuilt: {rebuilt(m['warm'])}")
    print(f"rebuild after one version bump    {m['bump_s']:8.1f} s   layers rebuilt: {rebuilt(m['bump'])}"
          " (relock included)")
    print(f"first deploy (replace-ct)         {m['first_s']:8.1f} s")
    print(f"replace downtime                  {report['downtime_seconds']:8.1f} s   "
          f"(replace-ct total {m['replace_s']:.1f} s, outcome {report['outcome']})")
    print(f"acceptance, image tier            {m['accept_s']:8.1f} s   failed: {len(m['failed'])}")
    print(f"template size (.tar.zst)          {m['size'] / MIB:8.1f} MiB")


if __name__ == "__main__":
    main()
