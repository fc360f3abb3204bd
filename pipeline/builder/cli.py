"""``python -m pipeline build --site FILE --out DIR [--cache DIR] [--update-lock]``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.builder.context import DEFAULT_CACHE
from pipeline.builder.orchestrate import build
from pipeline.config import load_site
from pipeline.errors import PipelineError
from pipeline.progress import console


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, type=Path, help="site file, e.g. sites/lab.yml")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"layer cache and downloads (default {DEFAULT_CACHE})")
    parser.add_argument("--update-lock", action="store_true",
                        help="resolve Meridian's npm tree anew and write image.meridian.lockfile")


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise PipelineError("the build needs root (mmdebstrap, systemd-nspawn, file ownership)",
                            hint="run it with sudo")
    site = load_site(args.site)
    doc = build(site, args.out.resolve(), args.cache.resolve(), update_lock=args.update_lock)
    rebuilt = [name for name, layer in doc.layers.items() if layer.rebuilt]
    console.print(f"template: {args.out / doc.template.file}")
    console.print("components: " + ", ".join(f"{k} {v}" for k, v in doc.components.items()))
    console.print(f"layers rebuilt: {', '.join(rebuilt) or 'none (all cached)'}")
    return 0
