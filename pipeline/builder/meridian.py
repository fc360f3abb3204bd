"""The meridian layer: the package from the site's image.meridian.source, with its whole
npm tree installed by ``npm ci`` from the site's lock file (image.meridian.lockfile).

The source is packed first (``npm pack``: exactly what a publish would ship), unpacked as
/opt/meridian, and the lock file is placed beside its package.json. npm is the pinned
build-time npm run by the node layer's own node; its cache stays in the build cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.builder.cache import Key
from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.fetch import npm_tarball
from pipeline.builder.layers import Layer, build_layer, layer_key
from pipeline.builder.node import node_binary, unpack_npm_tarball
from pipeline.errors import PipelineError
from pipeline.progress import step
from pipeline.runner import run

CLAUDE_CODE = "@anthropic-ai/claude-code"


def recipe(ctx: BuildContext) -> dict:
    return read_toml(ctx.sysext_dir / "meridian" / "recipe.toml")


def source_key(source: str, is_path: bool, site_dir: Path) -> str:
    """What identifies the source's content: a folder's files, a tarball's bytes, or the
    npm spec itself (its resolved content is pinned by the lock file)."""
    if not is_path:
        return Key("npm-spec").text("spec", source).hexdigest()
    path = resolve_source(source, site_dir)
    return Key("path").tree("dir", path).hexdigest() if path.is_dir() else \
        Key("path").file("tgz", path).hexdigest()


def resolve_source(source: str, site_dir: Path) -> Path:
    path = (site_dir / source).resolve()
    if not path.exists():
        raise PipelineError(f"image.meridian.source: {source!r} does not exist (looked at {path})",
                            hint="relative paths resolve against the site file's folder")
    return path


def check_source(ctx: BuildContext, *, need_lock: bool) -> None:
    """Fail before any long step when the source or its lock file is missing."""
    m = ctx.site.image.meridian
    if m.is_path:
        resolve_source(m.source, site_dir(ctx))
    if need_lock:
        check_lockfile(ctx)


def check_lockfile(ctx: BuildContext) -> Path:
    lockfile = ctx.site.image.meridian.lockfile
    if not lockfile.is_file():
        raise PipelineError(
            f"image.meridian.lockfile: {lockfile} does not exist: the npm tree of "
            f"{ctx.site.image.meridian.source} is not locked",
            hint=f"create it once with: python -m pipeline build --site {ctx.site.source_file} "
                 "--out DIR --update-lock (needs the registry that serves the package), "
                 "review it and commit it",
        )
    return lockfile


def key(ctx: BuildContext, node: Layer) -> str:
    m = ctx.site.image.meridian
    return (layer_key(ctx, "meridian", __file__)
            .file("lock", check_lockfile(ctx))
            .text("source", source_key(m.source, m.is_path, site_dir(ctx)))
            .text("node", node.key)
            .hexdigest())


def site_dir(ctx: BuildContext) -> Path:
    assert ctx.site.source_file is not None
    return ctx.site.source_file.parent


def build(ctx: BuildContext, node: Layer) -> Layer:
    return build_layer(ctx, "meridian", key(ctx, node), lambda tree: install(ctx, node, tree))


def install(ctx: BuildContext, node: Layer, tree: Path) -> dict[str, str]:
    r = recipe(ctx)
    app = tree / r["prefix"].lstrip("/")
    npm = Npm(ctx, node)
    with step("pack source"):
        unpack_npm_tarball(npm.pack_source(), app)
    shutil.copyfile(check_lockfile(ctx), app / "package-lock.json")
    with step("npm ci"):
        npm.run(["ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=app)
    package = json.loads((app / "package.json").read_text())
    link_bin(tree, app, r, package)
    claude = json.loads((app / "node_modules" / CLAUDE_CODE / "package.json").read_text())
    return {"meridian": package["version"], "meridian-package": package["name"],
            "claude-code": claude["version"]}


def update_lock(ctx: BuildContext, node: Layer) -> Path:
    """Resolve the source's dependency tree now and write it to image.meridian.lockfile."""
    lockfile = ctx.site.image.meridian.lockfile
    scratch = ctx.work / "meridian-lock"
    shutil.rmtree(scratch, ignore_errors=True)
    npm = Npm(ctx, node)
    unpack_npm_tarball(npm.pack_source(), scratch)
    npm.run(["install", "--package-lock-only", "--omit=dev", "--no-audit", "--no-fund"], cwd=scratch)
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(scratch / "package-lock.json", lockfile)
    shutil.rmtree(scratch)
    return lockfile


def link_bin(tree: Path, app: Path, r: dict, package: dict) -> None:
    bins = package.get("bin")
    target = bins.get(r["bin_name"]) if isinstance(bins, dict) else None
    if not target:
        raise PipelineError(f"{package['name']}: package.json has no bin {r['bin_name']!r}",
                            hint="image.meridian.source must be a Meridian package")
    (app / target).chmod(0o755)
    link = tree / r["bin_link"].lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.normpath(os.path.join(r["prefix"], target)), link)


class Npm:
    """The pinned npm, run by the node layer's node, with HOME and cache in the build cache."""

    def __init__(self, ctx: BuildContext, node: Layer) -> None:
        self.ctx = ctx
        pin = recipe(ctx)["npm"]
        self.home = ctx.cache.root / "npm"
        self.cli = self._unpacked(pin)
        self.node = node_binary(node, ctx)
        self.log = ctx.log("meridian-npm")

    def _unpacked(self, pin: dict) -> Path:
        dest = self.ctx.cache.root / "tools" / f"npm-{pin['version']}"
        if not (dest / "bin" / "npm-cli.js").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            unpack_npm_tarball(npm_tarball(pin["package"], pin["version"], pin["integrity"],
                                           self.ctx.downloads), dest)
        return dest / "bin" / "npm-cli.js"

    def run(self, args: list[str], *, cwd: Path) -> None:
        env = {
            "PATH": f"{self.node.parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "npm_config_cache": str(self.home / "cache"),
            "npm_config_update_notifier": "false",
            # Registry TLS may be intercepted: npm trusts the host bundle at build time.
            **({"npm_config_cafile": os.environ["SSL_CERT_FILE"]} if "SSL_CERT_FILE" in os.environ else {}),
        }
        run([self.node, self.cli, *args], env=env, cwd=cwd, log=self.log, timeout=1800)

    def pack_source(self) -> Path:
        """The source as a package tarball: a folder or spec is packed, a .tgz used as is."""
        m = self.ctx.site.image.meridian
        out = self.ctx.work / "meridian-pack"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if m.is_path:
            path = resolve_source(m.source, site_dir(self.ctx))
            if path.is_file():
                return path
            spec = str(path)
        else:
            spec = m.source
        self.run(["pack", spec, "--pack-destination", str(out), "--ignore-scripts"], cwd=out)
        (tgz,) = out.glob("*.tgz")
        return tgz
