"""What all three system extensions share: cache lookup, the extension-release file and
the reproducible squashfs image. Each layer module only says how to fill its tree."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.builder.cache import Key
from pipeline.builder.context import BuildContext, read_toml
from pipeline.digest import record_sha256
from pipeline.progress import Skip, step
from pipeline.runner import run

RELEASE_DIR = "usr/lib/extension-release.d"

# Fills the given (empty) tree and returns the component versions it installed.
Installer = Callable[[Path], dict[str, str]]


@dataclass(frozen=True)
class Layer:
    name: str
    key: str
    entry: Path
    rebuilt: bool

    @property
    def tree(self) -> Path:
        """The extension's content: unpacked as /var/lib/extensions/NAME in the template."""
        return self.entry / "tree"

    @property
    def raw(self) -> Path:
        return self.entry / f"{self.name}.raw"

    @property
    def versions(self) -> dict[str, str]:
        return json.loads((self.entry / "versions.json").read_text())


def layer_key(ctx: BuildContext, name: str, module_file: str) -> Key:
    """The inputs every layer has: its recipe folder (minus other sites' locks, which the
    layer adds itself when it uses one), the shared settings and the code that builds it."""
    key = Key(f"layer:{name}")
    for path in sorted((ctx.sysext_dir / name).glob("*")):
        if path.is_file():
            key.file(f"recipe:{path.name}", path)
    key.file("common", ctx.sysext_dir / "common.toml")
    key.file("code:layers", Path(__file__))
    key.file(f"code:{name}", Path(module_file))
    return key


def build_layer(ctx: BuildContext, name: str, key: str, install: Installer) -> Layer:
    """Reuse the cached layer with this key, or build, release-tag and squash a new one."""
    cached = ctx.cache.has("layers", name, key)
    layer = Layer(name, key, ctx.cache.entry("layers", name, key), rebuilt=not cached)
    with step(f"build {name} layer"):
        if cached:
            raise Skip(f"cached ({key[:12]})")
        with ctx.cache.filling("layers", name, key) as scratch:
            tree = scratch / "tree"
            tree.mkdir()
            versions = install(tree)
            write_release(ctx, name, tree, versions.get(name, ""))
            (scratch / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
            with step(f"squash {name}.raw"):
                squash(ctx, tree, scratch / f"{name}.raw", log=ctx.log(f"squash-{name}"))
                record_sha256(scratch / f"{name}.raw")
    return layer


def write_release(ctx: BuildContext, name: str, tree: Path, version: str) -> None:
    fields = dict(read_toml(ctx.sysext_dir / "common.toml")["release"])
    if version:
        fields["SYSEXT_VERSION_ID"] = version  # informative: systemd 252 ignores it
    path = tree / RELEASE_DIR / f"extension-release.{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in fields.items()))


def squash(ctx: BuildContext, tree: Path, out: Path, *, log: Path) -> None:
    """Same tree, same bytes: root-owned, no xattrs, time stamps pinned (the tree's own
    mtimes are set to the epoch first: mksquashfs 4.5.1 applies SOURCE_DATE_EPOCH only to
    the superblock, and refuses it together with -all-time)."""
    settings = read_toml(ctx.sysext_dir / "common.toml")["squashfs"]
    epoch = settings["source_date_epoch"]
    pin_mtimes(tree, epoch)
    run(["mksquashfs", tree, out, *settings["options"]],
        env={"SOURCE_DATE_EPOCH": str(epoch)}, log=log, timeout=1800)


def pin_mtimes(tree: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))
