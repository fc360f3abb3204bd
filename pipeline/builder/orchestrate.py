"""The build, as one list of steps. Each step reuses its cached result when its inputs did
not change, so a rebuild with nothing changed takes seconds. Example::

    manifest = build(load_site("sites/lab.yml"), Path("build/lab"), Path("/var/cache/meridian-pipeline"))
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

from pipeline.builder import appliance_template, litellm, meridian, node
from pipeline.builder import base as base_layer
from pipeline.builder.cache import DEFAULT_BUDGET_GIB, GIB, Cache, disk_usage
from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.layers import Layer
from pipeline.cloudinit import write_seed
from pipeline.config import Site
from pipeline.contract import (
    BUILD_MANIFEST,
    LAYER_NAMES,
    Artifact,
    BuildManifest,
    BuiltTemplateInfo,
    CacheEntry,
    write_manifest,
)
from pipeline.digest import file_sha256, recorded_sha256
from pipeline.errors import PipelineError
from pipeline.polling import wait_until
from pipeline.progress import Skip, console, step
from pipeline.runner import require_tools

TOOLS = {
    "mmdebstrap": "the Debian base",
    "systemd-nspawn": "the litellm venv, made by the base's python3",
    "mksquashfs": "sysext .raw images",
    "zstd": "template compression",
    "tar": "the template",
    "systemd-sysusers": "static service users in the template",
    "systemd-tmpfiles": "state paths in the template",
    "systemctl": "enabling units in the template",
}
CACHE_LOCK_WAIT = 3600  # seconds; another build on the same cache may be running


def build(site: Site, out: Path, cache_root: Path, *, update_lock: bool = False,
          cache_budget: int = DEFAULT_BUDGET_GIB * GIB) -> BuildManifest:
    """Build everything for ``site`` into ``out``; returns the manifest written there. The
    cache then keeps at most ``cache_budget`` bytes of entries, least recently used go first."""
    ctx = BuildContext(site=site, out=out, cache=Cache(cache_root))
    with step("check tools and inputs"):
        require_tools(TOOLS)
        meridian.check_source(ctx, need_lock=not update_lock)
    out.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_root):
        # node and meridian do not need the base: they are built while it bootstraps.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bootstrap") as background:
            pending_base = base_layer.start(ctx, background)
            node_layer = node.build(ctx)
            if update_lock:
                with step("update Meridian lock file"):
                    meridian.update_lock(ctx, node_layer)
            meridian_layer = meridian.build(ctx, node_layer)
            base = base_layer.wait(pending_base)
        layers = {"node": node_layer, "litellm": litellm.build(ctx, base), "meridian": meridian_layer}
        assert tuple(sorted(layers)) == LAYER_NAMES
        tmpl = appliance_template.build(ctx, base, layers)
        with step("export template and sysext images"):
            artifacts = export(ctx, tmpl, layers)
        with step("trim the cache"):
            dropped = ctx.cache.prune_to(cache_budget)
            if not dropped:
                raise Skip(f"within {cache_budget / GIB:g} GiB")
            console.print(f"  dropped {len(dropped)} least recently used entries: "
                          + ", ".join(e.relative_to(cache_root).as_posix()[:40] for e in dropped))
    with step("write cloud-init seed"):
        seed = write_seed(site, out / "seed", instance_id=f"{tmpl.name}-{tmpl.version}")
        artifacts += [artifact(out, "seed", path) for path in seed]
    with step("write manifest"):
        doc = manifest(tmpl, base, layers, artifacts, read_toml(ctx.sysext_dir / "restart.toml"))
        write_manifest(doc, out / BUILD_MANIFEST)
    return doc


def export(ctx: BuildContext, tmpl: appliance_template.BuiltTemplate, layers: dict[str, Layer]) -> list[Artifact]:
    """Place the template and the .raw images in ``out`` (hard links to the cache when it is
    on the same file system) and drop templates of earlier builds."""
    for old in ctx.out.glob(f"{tmpl.name}_*_amd64.tar.zst"):
        if old.name != tmpl.filename:
            old.unlink()
    found = [artifact(ctx.out, "template", place(tmpl.path, ctx.out / tmpl.filename), recorded_sha256(tmpl.path))]
    for _name, layer in sorted(layers.items()):
        found.append(artifact(ctx.out, "sysext", place(layer.raw, ctx.out / "sysext" / layer.raw.name),
                              recorded_sha256(layer.raw)))
    return found


def place(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and os.path.samefile(src, dest):
        return dest
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


def artifact(out: Path, kind: Literal["template", "sysext", "seed"], path: Path, sha256: str | None = None) -> Artifact:
    """``sha256``: the digest recorded when a cached file was made, else it is computed."""
    return Artifact(kind=kind, path=path.relative_to(out).as_posix(), sha256=sha256 or file_sha256(path))


def manifest(tmpl: appliance_template.BuiltTemplate, base: base_layer.Base, layers: dict[str, Layer],
             artifacts: list[Artifact], restart: dict[str, list[str]]) -> BuildManifest:
    inside = tmpl.image_manifest
    return BuildManifest(
        template=BuiltTemplateInfo(name=tmpl.name, version=tmpl.version, file=tmpl.filename,
                                   key=tmpl.key, rebuilt=tmpl.rebuilt),
        artifacts=tuple(artifacts),
        components={k: v for k, v in inside.components.items() if k != "meridian-package"},
        meridian_package=inside.components.get("meridian-package"),
        base=CacheEntry(key=base.key, rebuilt=base.rebuilt),
        layers={name: CacheEntry(key=layer.key, rebuilt=layer.rebuilt) for name, layer in sorted(layers.items())},
        debian_packages=inside.debian_packages,
        # For replace-ct's in-place extension swap: what must match (system), what to write
        # into the container (image_manifest), which units each layer's swap restarts.
        system=inside.system,
        image_manifest=inside,
        restart={name: tuple(units) for name, units in restart.items()},
        sizes=tmpl.sizes,
    )


@contextmanager
def cache_lock(cache_root: Path) -> Iterator[None]:
    """One build at a time per cache (bounded wait: the other build may be long)."""
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".lock", "w") as fh:
        if not wait_until(lambda: _try_lock(fh), timeout=CACHE_LOCK_WAIT, pause=2):
            raise PipelineError(f"{cache_root} is locked by another build for {CACHE_LOCK_WAIT}s",
                                hint="wait for it, or use --cache")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _try_lock(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def empty_cache(cache_root: Path) -> int:
    """``build --cache-prune``: remove every entry, download and scratch file; bytes freed."""
    if not cache_root.is_dir():
        return 0
    with cache_lock(cache_root):
        freed = disk_usage(cache_root)
        for path in cache_root.iterdir():
            if path.name == ".lock":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    return freed
