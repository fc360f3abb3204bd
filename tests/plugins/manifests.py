"""Small valid manifests (pipeline.contract models) for tests that need one without a build."""

from __future__ import annotations

from pipeline.contract import (
    Artifact,
    BuildManifest,
    BuiltTemplateInfo,
    CacheEntry,
    ImageManifest,
    PieceSize,
    TemplateId,
)

RESTART: dict[str, tuple[str, ...]] = {
    "node": ("meridian.service",), "meridian": ("meridian.service",), "litellm": ("litellm.service",),
}


def image_manifest(layers: dict[str, str], system: str = "s" * 64) -> ImageManifest:
    return ImageManifest(template=TemplateId(name="m", version="1"), system=system,
                         components={"node": "22.0.0"}, layers=layers, debian_packages=("systemd=252",))


def build_manifest(template_file: str, sha256: str) -> BuildManifest:
    """A build that made ``template_file`` with this sha256 (and three layers)."""
    layers = {name: name[0] * 64 for name in RESTART}
    inside = image_manifest(layers)
    return BuildManifest(
        template=BuiltTemplateInfo(name="m", version="1", file=template_file, key="t" * 64, rebuilt=True),
        artifacts=(Artifact(kind="template", path=template_file, sha256=sha256),),
        components=dict(inside.components), meridian_package=None,
        base=CacheEntry(key="b" * 64, rebuilt=False),
        layers={name: CacheEntry(key=key, rebuilt=False) for name, key in layers.items()},
        debian_packages=inside.debian_packages, system=inside.system, image_manifest=inside, restart=RESTART,
        sizes={"system": PieceSize(unpacked=2000, compressed=500, largest={"./usr": 2000})},
    )
