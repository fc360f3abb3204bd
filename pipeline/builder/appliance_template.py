"""The Proxmox LXC template: a copy of the base, the appliance's files (image/rootfs/),
users, paths and units applied, the three extensions unpacked as directory extensions,
packed the way Proxmox extracts it, validated, and compressed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.builder.base import Base, debian_packages
from pipeline.builder.cache import Key
from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.layers import Layer
from pipeline.builder.rules import check_template
from pipeline.contract import (
    DEPLOYED_MANIFEST,
    EXTENSIONS_DIR,
    ImageManifest,
    TemplateId,
    parse_image_manifest,
    write_manifest,
)
from pipeline.progress import Skip, step
from pipeline.runner import run

# zstd level: about as small as -19 for this content at a fraction of the time on 2 cores.
ZSTD_LEVEL = "-9"


@dataclass(frozen=True)
class BuiltTemplate:
    name: str
    version: str
    key: str
    entry: Path
    rebuilt: bool

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_amd64.tar.zst"

    @property
    def path(self) -> Path:
        return self.entry / self.filename

    @property
    def image_manifest(self) -> ImageManifest:
        path = self.entry / "manifest.json"
        return parse_image_manifest(path.read_text(), str(path))


def system_key(ctx: BuildContext, base: Base) -> str:
    """Everything in the template but the extensions: two templates with the same system key
    differ only in extension layers, so replace-ct can swap those in place."""
    return (Key("system").text("base", base.key)
            .tree("overlay", ctx.image_dir / "rootfs")
            .file("units", ctx.image_dir / "units.toml")
            .file("cleanup", ctx.image_dir / "cleanup.txt")
            .file("code", Path(__file__))).hexdigest()


def template_key(ctx: BuildContext, base: Base, layers: dict[str, Layer]) -> str:
    key = Key("template").text("name", ctx.site.image.name).text("system", system_key(ctx, base))
    for name, layer in sorted(layers.items()):
        key.text(f"layer:{name}", layer.key)
    return key.hexdigest()


def build(ctx: BuildContext, base: Base, layers: dict[str, Layer]) -> BuiltTemplate:
    key = template_key(ctx, base, layers)
    version = f"{layers['meridian'].versions['meridian']}-{key[:10]}"
    cached = ctx.cache.has("templates", ctx.site.image.name, key)
    template = BuiltTemplate(ctx.site.image.name, version, key,
                        ctx.cache.entry("templates", ctx.site.image.name, key), rebuilt=not cached)
    with step("make template"):
        if cached:
            raise Skip(f"cached ({key[:12]})")
        with ctx.cache.filling("templates", template.name, key) as scratch:
            rootfs = ctx.work / "template-rootfs"
            doc = image_manifest(template, system_key(ctx, base), base, layers)
            assemble(ctx, base, layers, rootfs, doc)
            pack(ctx, rootfs, scratch / template.filename)
            write_manifest(doc, scratch / "manifest.json")
            shutil.rmtree(rootfs)
        ctx.cache.prune("templates", template.name)
    return template


def image_manifest(template: BuiltTemplate, system: str, base: Base, layers: dict[str, Layer]) -> ImageManifest:
    """What is inside: shipped as DEPLOYED_MANIFEST."""
    components: dict[str, str] = {}
    for layer in layers.values():
        components |= layer.versions
    return ImageManifest(
        template=TemplateId(name=template.name, version=template.version),
        system=system,
        components=components,
        layers={name: layer.key for name, layer in sorted(layers.items())},
        debian_packages=tuple(debian_packages(base.rootfs)),
    )


def assemble(ctx: BuildContext, base: Base, layers: dict[str, Layer], rootfs: Path, doc: ImageManifest) -> None:
    log = ctx.log("template")
    with step("copy base"):
        shutil.rmtree(rootfs, ignore_errors=True)
        run(["cp", "-a", base.rootfs, rootfs], log=log)
    with step("apply appliance files"):
        run(["cp", "-r", "--preserve=mode,links", "--no-preserve=ownership",
             f"{ctx.image_dir / 'rootfs'}/.", rootfs], log=log)
        run(["systemd-sysusers", f"--root={rootfs}"], log=log)
        # The config path is not taken relative to --root (systemd 252).
        run(["systemd-tmpfiles", f"--root={rootfs}", "--create",
             rootfs / "usr/lib/tmpfiles.d/meridian-appliance.conf"], log=log)
        units = read_toml(ctx.image_dir / "units.toml")
        run(["systemctl", f"--root={rootfs}", "enable", *units["enable"]], log=log)
        run(["systemctl", f"--root={rootfs}", "mask", *units["mask"]], log=log)
        remove_per_container_files(ctx, rootfs)
    with step("add extensions"):
        extensions = rootfs / EXTENSIONS_DIR.lstrip("/")
        extensions.mkdir(parents=True, exist_ok=True)
        for name, layer in sorted(layers.items()):
            # Hard links: the cached tree is never modified, and copying it costs seconds.
            run(["cp", "-al", layer.tree, extensions / name], log=log)
        write_manifest(doc, rootfs / DEPLOYED_MANIFEST.lstrip("/"))


def remove_per_container_files(ctx: BuildContext, rootfs: Path) -> None:
    for line in (ctx.image_dir / "cleanup.txt").read_text().splitlines():
        pattern = line.split("#", 1)[0].strip()
        for path in rootfs.glob(pattern) if pattern else ():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def pack(ctx: BuildContext, rootfs: Path, dest: Path) -> None:
    """./-relative members, numeric ids, sorted for stable output; checked, then compressed."""
    plain = dest.with_name(dest.name.removesuffix(".zst"))
    log = ctx.log("template")
    with step("pack tarball"):
        run(["tar", "--numeric-owner", "--sort=name", "-C", rootfs, "-cf", plain, "."],
            log=log, timeout=1800)
    with step("check Proxmox template rules"):
        check_template(plain)
    with step("compress (zstd)"):
        run(["zstd", "-T0", ZSTD_LEVEL, "-q", "--rm", plain, "-o", dest], log=log, timeout=1800)
