"""Build benchmark (issue 13), one run with a scratch cache:

1. cold build of the lab site (everything downloaded and built again), per step;
2. no-op rebuild;
3. one-layer change: the Meridian stand-in bumped to a new version (``--update-lock``), per step;
4. no-op rebuilds after alternating: the first version again, then the bumped one;
5. the ratio one-layer / cold (goal ≤ 0.10), where the template's bytes go, zstd levels
   compared on the largest piece and squashfs zstd levels on the largest layer (time and size).

    sudo .venv/bin/python -m benchmarks.bench_build [--keep] [--json FILE]

Run as root (like the build). Each build is the real CLI in a subprocess (what a user runs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline.builder.context import read_toml
from pipeline.builder.frames import ZSTD_LEVEL
from pipeline.contract import BUILD_MANIFEST, BuildManifest, read_build_manifest
from pipeline.resources import data_dir
from pipeline.runner import run
from tests.plugins.acceptance import LAB_SITE, bumped_site, bumped_version, pipeline_cli

MIB = 1 << 20
LEVELS = ("-3", "-6", "-9", "-12")
SQUASH_LEVELS = ("3", "6", "9")


def timed_build(site: Path, out: Path, cache: Path, log: Path, *extra: str) -> tuple[float, BuildManifest]:
    start = time.monotonic()
    pipeline_cli(["build", "--site", str(site), "--out", str(out), "--cache", str(cache), *extra], log=log)
    return time.monotonic() - start, read_build_manifest(out / BUILD_MANIFEST)


def rebuilt(doc: BuildManifest) -> str:
    names = [name for name, layer in doc.layers.items() if layer.rebuilt]
    return ", ".join(names + (["template"] if doc.template.rebuilt else [])) or "nothing"


def step_lines(log: Path) -> list[str]:
    """The build's own per-step report (``ok NAME (12.3s)`` lines), from its log."""
    return [line.rstrip() for line in log.read_text().splitlines() if line.strip().startswith(("ok ", "skipped "))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch cache and outputs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    # The build writes no secret; the harness passes the lab key through, so it needs one.
    os.environ.setdefault("MERIDIAN_LAB_MASTER_KEY", "sk-" + secrets.token_urlsafe(32))
    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir="/var/tmp"))
    cache = work / "cache"
    figures: dict[str, object] = {}
    seconds_of: dict[str, float] = {}
    try:
        bumped = bumped_site(work, bumped_version())
        runs = [("cold", LAB_SITE, "a", ()), ("no-op", LAB_SITE, "a", ()),
                ("one layer (Meridian bumped)", bumped, "b", ("--update-lock",)),
                ("no-op, back to the first version", LAB_SITE, "a", ()),
                ("no-op, the bumped version again", bumped, "b", ())]
        docs = {}
        for name, site, out, extra in runs:
            log = work / f"{len(figures)}.log"
            seconds, docs[out] = timed_build(site, work / out, cache, log, *extra)
            figures[name] = seconds_of[name] = round(seconds, 1)
            print(f"{name:36s} {seconds:7.1f} s   rebuilt: {rebuilt(docs[out])}", flush=True)
            if extra or name == "cold":
                print("\n".join(f"    {line}" for line in step_lines(log)))
        ratio = seconds_of["one layer (Meridian bumped)"] / seconds_of["cold"]
        figures["one layer / cold"] = round(ratio, 3)
        print(f"one layer / cold: {ratio:.3f} (goal <= 0.10)")
        print_sizes(docs["a"], work / "a")
        figures["compression"] = compare_levels(docs["a"], cache, work)
        figures["squashfs"] = compare_squash_levels(docs["a"], cache, work)
        figures["sizes"] = {name: {"unpacked_mib": round(s.unpacked / MIB), "compressed_mib": round(s.compressed / MIB)}
                            for name, s in docs["a"].sizes.items()}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def compare_levels(doc: BuildManifest, cache: Path, work: Path) -> dict[str, dict[str, float]]:
    """zstd levels on the largest piece (what frames.ZSTD_LEVEL was picked from)."""
    name = max(doc.layers, key=lambda n: doc.sizes[n].unpacked)
    (piece,) = cache.glob(f"pieces/{name}/*/{name}.tar.zst")
    plain = work / f"{name}.tar"
    run(["zstd", "-d", "-q", "-f", piece, "-o", plain], timeout=600)
    found = {}
    print(f"zstd -T0 on the {name} piece ({plain.stat().st_size / MIB:.0f} MiB of tar); the build uses {ZSTD_LEVEL}:")
    for level in LEVELS:
        start = time.monotonic()
        run(["zstd", "-T0", level, "-q", "-f", plain, "-o", work / "level.zst"], timeout=1800)
        seconds, size = time.monotonic() - start, (work / "level.zst").stat().st_size / MIB
        found[level] = {"seconds": round(seconds, 1), "mib": round(size, 1)}
        print(f"  {level:4s} {seconds:6.1f} s  {size:6.1f} MiB")
    plain.unlink()
    return found


def compare_squash_levels(doc: BuildManifest, cache: Path, work: Path) -> dict[str, dict[str, float]]:
    """mksquashfs zstd levels on the largest layer's tree (what sysext/common.toml was picked from)."""
    name = max(doc.layers, key=lambda n: doc.sizes[n].unpacked)
    tree = cache / "layers" / name / doc.layers[name].key / "tree"
    options = read_toml(data_dir("sysext") / "common.toml")["squashfs"]["options"]
    level_at = options.index("-Xcompression-level") + 1
    found = {}
    print(f"mksquashfs zstd on the {name} layer; the build uses level {options[level_at]}:")
    for level in SQUASH_LEVELS:
        argv = [*options[:level_at], level, *options[level_at + 1:]]
        start = time.monotonic()
        run(["mksquashfs", tree, work / "level.raw", *argv], timeout=1800)
        seconds, size = time.monotonic() - start, (work / "level.raw").stat().st_size / MIB
        found[level] = {"seconds": round(seconds, 1), "mib": round(size, 1)}
        print(f"  {level:4s} {seconds:6.1f} s  {size:6.1f} MiB")
    (work / "level.raw").unlink()
    return found


def print_sizes(doc: BuildManifest, out: Path) -> None:
    template = out / doc.template.file
    print(f"template {template.name}: {template.stat().st_size / MIB:.0f} MiB compressed")
    for name, size in doc.sizes.items():
        print(f"  {name:9s} {size.unpacked / MIB:6.0f} MiB unpacked, {size.compressed / MIB:4.0f} MiB in the template")
        for path, n in size.largest.items():
            print(f"      {n / MIB:6.1f} MiB  {path}")


if __name__ == "__main__":
    sys.exit(main())
