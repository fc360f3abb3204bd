"""The Proxmox LXC template, joined from three kinds of cached pieces (frames.py): the system
(a copy of the base with the appliance's files, image/rootfs/, and its users, paths and units
applied), each extension unpacked as a directory extension, and the manifest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.builder import frames, system
from pipeline.builder.base import Base, debian_packages
from pipeline.builder.cache import Key
from pipeline.builder.context import BuildContext, read_toml
from pipeline.builder.layers import Layer
from pipeline.builder.system import SIZES_FILE
from pipeline.contract import (
    DEPLOYED_MANIFEST,
    EXTENSIONS_DIR,
    ImageManifest,
    PieceSize,
    TemplateId,
    parse_image_manifest,
    read_sizes,
    write_manifest,
    write_sizes,
)
from pipeline.digest import record_sha256
from pipeline.progress import Skip, step
from pipeline.runner import run


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

    @property
    def sizes(self) -> dict[str, PieceSize]:
        """Where its bytes go: the system piece and each layer's."""
        return read_sizes(self.entry / SIZES_FILE)


def system_key(ctx: BuildContext, base: Base) -> str:
    """Everything in the template but the extensions: two templates with the same system key
    differ only in extension layers, so replace-ct can swap those in place."""
    return (Key("system").text("base", base.key)
            .tree("overlay", ctx.image_dir / "rootfs")
            .file("units", ctx.image_dir / "units.toml")
            .file("cleanup", ctx.image_dir / "cleanup.txt")
            .file("trim", ctx.image_dir / "trim.txt")
            .file("code", Path(system.__file__))).hexdigest()


def template_key(ctx: BuildContext, base: Base, layers: dict[str, Layer]) -> str:
    key = (Key("template").text("name", ctx.site.image.name).text("system", system_key(ctx, base))
           .file("frames", Path(frames.__file__)))
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
        system_file, epoch, system_size = system.system_piece(ctx, base, system_key(ctx, base))
        extensions = {name: extension_piece(ctx, layer) for name, layer in sorted(layers.items())}
        pieces = [system_file, *(path for path, _ in extensions.values())]
        with ctx.cache.filling("templates", template.name, key) as scratch:
            write_sizes({"system": system_size} | {name: size for name, (_, size) in extensions.items()},
                        scratch / SIZES_FILE)
            doc = image_manifest(template, system_key(ctx, base), base, layers)
            with step("join pieces"):
                last = manifest_piece(ctx, doc, scratch / "manifest.tar.zst", epoch)
                record_sha256(scratch / template.filename, frames.join([*pieces, last], scratch / template.filename))
                last.unlink()
            write_manifest(doc, scratch / "manifest.json")
    return template




def extension_piece_key(layer: Layer) -> str:
    return (Key("extension-piece").text("layer", layer.key).text("path", f".{EXTENSIONS_DIR}/{layer.name}")
            .file("frames", Path(frames.__file__)).hexdigest())


def extension_piece(ctx: BuildContext, layer: Layer) -> tuple[Path, PieceSize]:
    """One layer's tree as ./var/lib/extensions/NAME, packed once per layer key."""
    inside = f".{EXTENSIONS_DIR}/{layer.name}"
    key = extension_piece_key(layer)
    entry = ctx.cache.entry("pieces", layer.name, key)
    with step(f"pack {layer.name} piece"):
        if ctx.cache.has("pieces", layer.name, key):
            raise Skip(f"cached ({key[:12]})")
        with ctx.cache.filling("pieces", layer.name, key) as scratch:
            root = ctx.work / f"piece-{layer.name}"
            shutil.rmtree(root, ignore_errors=True)
            (root / inside).parent.mkdir(parents=True)
            # Hard links: the cached tree is never modified, and copying it costs seconds.
            run(["cp", "-al", layer.tree, root / inside], log=ctx.log(f"{layer.name}-piece"))
            size = frames.pack_piece(root, [inside], scratch / f"{layer.name}.tar.zst", epoch=layer_epoch(ctx),
                                     log=ctx.log(f"{layer.name}-piece"))
            write_sizes({layer.name: size}, scratch / SIZES_FILE)
            shutil.rmtree(root)
    return entry / f"{layer.name}.tar.zst", read_sizes(entry / SIZES_FILE)[layer.name]


def manifest_piece(ctx: BuildContext, doc: ImageManifest, dest: Path, epoch: int) -> Path:
    """The deployed manifest: the last piece, which ends the archive."""
    root = ctx.work / "piece-manifest"
    shutil.rmtree(root, ignore_errors=True)
    inside = root / DEPLOYED_MANIFEST.lstrip("/")
    write_manifest(doc, inside)
    inside.chmod(0o644)
    (root / EXTENSIONS_DIR.lstrip("/")).mkdir(parents=True)  # as assemble_system makes them
    parents = [f".{EXTENSIONS_DIR}", f".{Path(DEPLOYED_MANIFEST).parent}"]
    frames.pack_piece(root, [f".{DEPLOYED_MANIFEST}"], dest, epoch=epoch, last=True, restate=parents,
                      log=ctx.log("manifest-piece"))
    shutil.rmtree(root)
    return dest


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








def layer_epoch(ctx: BuildContext) -> int:
    """The mtime every file of a layer's tree already has (sysext/common.toml, layers.squash)."""
    return int(read_toml(ctx.sysext_dir / "common.toml")["squashfs"]["source_date_epoch"])
