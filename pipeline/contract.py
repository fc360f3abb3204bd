"""The contract between the build, replace-ct, the acceptance suite and the container, in one
place (docs/ARCHITECTURE.md, "Inside the container"): the names of the layers, units and users,
the paths inside the container, and the two manifests as typed models.

The build writes the manifests with ``write_manifest``; replace-ct, the acceptance suite and
the tests read them with ``read_build_manifest`` / ``parse_image_manifest``. Reading is strict:
an unknown, missing or mistyped field is an error that names the file and the dotted field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ConfigError
from pipeline.schema import load

# --- names -------------------------------------------------------------------------------
LAYER_NAMES = ("litellm", "meridian", "node")  # the system extensions, sorted
UNITS = {
    "meridian": "meridian.service",
    "litellm": "litellm.service",
    "node_exporter": "prometheus-node-exporter.service",
}
USERS = (("meridian", 901, "/var/lib/meridian"), ("litellm", 902, "/var/lib/litellm"))
# What answers 200 without credentials once a service is up (replace-ct's readiness probe).
READY_PATHS = {"meridian": "/v1/models", "litellm": "/health/liveliness"}

# --- paths inside the container ----------------------------------------------------------
CREDENTIALS_MOUNT = "/var/lib/meridian"  # mp0, the volume that outlives every container
CREDENTIALS_DIR = f"{CREDENTIALS_MOUNT}/.claude"
CREDENTIALS_FILE = f"{CREDENTIALS_DIR}/.credentials.json"
MASTER_KEY_ENV = "/etc/litellm/litellm.env"
# In /etc, not /usr: an in-place extension swap rewrites it, and the merged /usr must stay
# exactly what the base and the extensions hold.
DEPLOYED_MANIFEST = "/etc/meridian-appliance/manifest.json"
EXTENSIONS_DIR = "/var/lib/extensions"  # directory extensions, one per layer
EXTENSIONS_STORE = "/var/lib/extensions.store"  # swapped-in layers, NAME-KEY12

# --- what the acceptance suite holds the container to -------------------------------------
DEFAULT_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7")
# Every service unit the appliance runs is sandboxed: `systemd-analyze security` rates each
# at most MAX_EXPOSURE. ssh-hostkeys is a oneshot (skipped once keys exist).
HARDENED_UNITS = {**UNITS, "ssh_hostkeys": "ssh-hostkeys.service"}
MAX_EXPOSURE = 3.0
# What each long-running service may write, seen from inside its own sandbox: its state and
# cache (its private /tmp, /var/tmp and /dev/shm are checked apart).
SERVICE_USERS = {"meridian": "meridian", "litellm": "litellm", "node_exporter": "prometheus"}
OWN_DIRS = {
    "meridian": ("/var/lib/meridian", "/var/cache/meridian"),
    "litellm": ("/var/lib/litellm", "/var/cache/litellm"),
    "node_exporter": (),
}

# --- the manifests -----------------------------------------------------------------------
BUILD_MANIFEST = "manifest.json"  # in a build output directory


@dataclass(frozen=True)
class TemplateId:
    name: str
    version: str


@dataclass(frozen=True)
class ImageManifest:
    """What a template holds; shipped as DEPLOYED_MANIFEST and rewritten by a swap."""

    template: TemplateId
    system: str  # digest of everything but the extensions: equal means "swap, don't replace"
    components: dict[str, str]  # component -> version
    layers: dict[str, str]  # layer name -> layer key
    debian_packages: tuple[str, ...]  # "name=version" of the base


@dataclass(frozen=True)
class BuiltTemplateInfo:
    name: str
    version: str
    file: str  # the .tar.zst in the build output directory
    key: str
    rebuilt: bool


@dataclass(frozen=True)
class Artifact:
    kind: Literal["template", "sysext", "seed"]
    path: str  # relative to the build output directory
    sha256: str


@dataclass(frozen=True)
class CacheEntry:
    key: str
    rebuilt: bool  # False: taken from the cache


@dataclass(frozen=True)
class PieceSize:
    """Where a template's bytes go: one piece (the system, or one layer)."""

    unpacked: int  # bytes of its files
    compressed: int  # bytes of its zstd frame in the template
    largest: dict[str, int]  # its largest directories -> bytes (``DIR/.`` for a folder's own files)


@dataclass(frozen=True)
class BuildManifest:
    """A build output directory's manifest.json: what was built, and what replace-ct needs."""

    template: BuiltTemplateInfo
    artifacts: tuple[Artifact, ...]
    components: dict[str, str]
    meridian_package: str | None  # the npm package Meridian came from (name@version)
    base: CacheEntry
    layers: dict[str, CacheEntry]
    debian_packages: tuple[str, ...]
    system: str
    image_manifest: ImageManifest  # written into the container by an extension swap
    restart: dict[str, tuple[str, ...]]  # layer name -> units a swap of it restarts
    sizes: dict[str, PieceSize]  # "system" and each layer

    def artifact(self, kind: str, path: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.kind == kind and a.path == path), None)


Manifest = ImageManifest | BuildManifest


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(dataclasses.asdict(manifest), indent=2) + "\n"


def write_manifest(manifest: Manifest, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest_json(manifest))


def read_build_manifest(path: Path) -> BuildManifest:
    """The build manifest at ``path``; ConfigError naming the file and field when it is not one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          hint="give a build output directory (python -m pipeline build --out DIR)") from None
    manifest: BuildManifest = load(BuildManifest, _json(text, str(path)), where=str(path))
    return manifest


def parse_image_manifest(text: str, where: str) -> ImageManifest:
    manifest: ImageManifest = load(ImageManifest, _json(text, where), where=where)
    return manifest


def image_manifest_from(data: dict[str, Any], where: str) -> ImageManifest:
    """An image manifest kept as a mapping (replace-ct's journal records one per template)."""
    manifest: ImageManifest = load(ImageManifest, data, where=where)
    return manifest


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}", hint="rebuild it") from None


def write_sizes(sizes: dict[str, PieceSize], path: Path) -> None:
    """The pieces' sizes, kept in the cache beside a piece or a template."""
    path.write_text(json.dumps({name: dataclasses.asdict(size) for name, size in sizes.items()}, indent=2) + "\n")


def read_sizes(path: Path) -> dict[str, PieceSize]:
    data = _json(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of piece sizes")
    return {name: load(PieceSize, value, where=str(path), path=name) for name, value in data.items()}
