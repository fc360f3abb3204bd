"""``python -m pipeline build --site FILE --out DIR [--cache DIR] [--cache-max-gib N] [--update-lock]``,
or ``python -m pipeline build --cache-prune [--cache DIR]`` to empty the cache."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.builder.cache import DEFAULT_BUDGET_GIB, GIB
from pipeline.builder.context import DEFAULT_CACHE
from pipeline.builder.orchestrate import build, empty_cache
from pipeline.config import load_site
from pipeline.contract import EXTENSIONS_DIR, BuildManifest
from pipeline.errors import PipelineError
from pipeline.progress import console

MIB = 1 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", type=Path, help="site file, e.g. sites/lab.yml (required to build)")
    parser.add_argument("--out", type=Path, help="output folder (required to build)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"layer cache and downloads (default {DEFAULT_CACHE})")
    parser.add_argument("--cache-max-gib", type=float, default=DEFAULT_BUDGET_GIB, metavar="N",
                        help=f"after a build, drop least recently used cache entries beyond N GiB "
                             f"(default {DEFAULT_BUDGET_GIB}; what the build used is kept)")
    parser.add_argument("--cache-prune", action="store_true",
                        help="empty the cache (entries, downloads, scratch) and exit")
    parser.add_argument("--update-lock", action="store_true",
                        help="resolve Meridian's npm tree anew and write image.meridian.lockfile")


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise PipelineError("the build needs root (mmdebstrap, systemd-nspawn, file ownership)",
                            hint="run it with sudo")
    if args.cache_prune:
        freed = empty_cache(args.cache.resolve())
        console.print(f"emptied {args.cache}: {freed / GIB:.1f} GiB freed")
        return 0
    if args.site is None or args.out is None:
        raise PipelineError("build needs --site FILE and --out DIR", hint="or --cache-prune to empty the cache")
    if args.cache_max_gib <= 0:
        raise PipelineError(f"--cache-max-gib {args.cache_max_gib:g}: must be positive")
    site = load_site(args.site)
    doc = build(site, args.out.resolve(), args.cache.resolve(), update_lock=args.update_lock,
                cache_budget=int(args.cache_max_gib * GIB))
    rebuilt = [name for name, layer in doc.layers.items() if layer.rebuilt]
    console.print(f"template: {args.out / doc.template.file}")
    console.print("components: " + ", ".join(f"{k} {v}" for k, v in doc.components.items()))
    console.print(f"layers rebuilt: {', '.join(rebuilt) or 'none (all cached)'}")
    print_sizes(doc)
    return 0


def print_sizes(doc: BuildManifest, dirs: int = 3) -> None:
    """Where the template's bytes go (all of it in manifest.json ``sizes``)."""
    console.print("size (unpacked / in the template), largest directories:")
    for name, size in doc.sizes.items():
        inside = f".{EXTENSIONS_DIR}/{name}/" if name in doc.layers else "./"
        shown = list(size.largest.items())[:dirs]
        largest = ", ".join(f"{path.removeprefix(inside)} {n / MIB:.0f}" for path, n in shown)
        console.print(f"  {name:9s} {size.unpacked / MIB:6.0f} / {size.compressed / MIB:4.0f} MiB   {largest}")
