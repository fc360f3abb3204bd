"""Build benchmark: per-step times of a cold build (fresh cache), the time of a warm rebuild
with nothing changed, and the compressed and unpacked sizes of the template and each sysext.

    sudo .venv/bin/python benchmarks/bench_build.py [--site sites/lab.yml] [--keep]

Run as root (like the build). The cold build downloads everything again (Debian, npm, PyPI).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pipeline.builder.orchestrate import build
from pipeline.config import load_site
from pipeline.contract import BUILD_MANIFEST, BuildManifest, read_build_manifest
from pipeline.digest import file_sha256
from pipeline.progress import timeline
from pipeline.runner import run
from tests.plugins.paths import REPO_ROOT

MIB = 1024 * 1024


def timed_build(site_file: Path, out: Path, cache: Path) -> tuple[float, list, BuildManifest]:
    timeline.steps.clear()
    start = time.monotonic()
    doc = build(load_site(site_file), out, cache)
    return time.monotonic() - start, list(timeline.steps), doc


def unpacked_template_bytes(template: Path, scratch: Path) -> int:
    plain = scratch / "template.tar"
    run(["zstd", "-d", "-q", "-f", template, "-o", plain], timeout=1800)
    with tarfile.open(plain) as tar:
        total = sum(m.size for m in tar if m.isreg())
    plain.unlink()
    return total


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=REPO_ROOT / "sites" / "lab.yml")
    parser.add_argument("--keep", action="store_true", help="keep the scratch cache and output")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir="/var/tmp"))
    cache, out = work / "cache", work / "out"
    try:
        cold_s, cold_steps, doc = timed_build(args.site, out, cache)
        warm_s, warm_steps, _ = timed_build(args.site, out, cache)
        print(f"cold build: {cold_s:.1f}s   (fresh cache {cache})")
        for record in cold_steps:
            print(f"  {record.seconds:8.1f}s  {record.status:8s} {record.name}")
        print(f"warm rebuild, nothing changed: {warm_s:.1f}s "
              f"({sum(r.status == 'skipped' for r in warm_steps)} steps skipped)")
        report_sizes(doc, out, cache, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report_sizes(doc: BuildManifest, out: Path, cache: Path, work: Path) -> None:
    template = out / doc.template.file
    print("sizes (compressed / unpacked):")
    print(f"  template {template.name}: {template.stat().st_size / MIB:.0f} MiB / "
          f"{unpacked_template_bytes(template, work) / MIB:.0f} MiB")
    reference = REPO_ROOT / "build" / "lab" / BUILD_MANIFEST
    earlier = read_build_manifest(reference).artifacts if reference.exists() else ()
    earlier_hashes = {a.path: a.sha256 for a in earlier}
    for name, layer in doc.layers.items():
        raw = out / "sysext" / f"{name}.raw"
        tree = cache / "layers" / name / layer.key / "tree"
        same = earlier_hashes.get(f"sysext/{name}.raw")
        repro = "" if same is None else \
            f"  (same bytes as build/lab: {'yes' if same == file_sha256(raw) else 'no'})"
        print(f"  sysext {name}.raw: {raw.stat().st_size / MIB:.0f} MiB / "
              f"{tree_bytes(tree) / MIB:.0f} MiB{repro}")


if __name__ == "__main__":
    sys.exit(main())
