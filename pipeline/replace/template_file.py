"""The template to deploy: a ``.tar.zst`` file, or a build output directory with manifest.json.

On the storage it is named after its content (``meridian_1.2_amd64-<sha12>.tar.zst``): a
rebuilt template never overwrites the one the running container came from, so a rollback
always finds the previous template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.contract import BUILD_MANIFEST, BuildManifest, read_build_manifest
from pipeline.digest import file_sha256
from pipeline.errors import PipelineError

SUFFIX = ".tar.zst"


@dataclass(frozen=True)
class TemplateRef:
    """A template as recorded on a container: its storage file name and sha256."""

    name: str
    sha256: str


@dataclass(frozen=True)
class LocalTemplate:
    path: Path
    ref: TemplateRef
    size: int
    build_dir: Path | None = None  # the build output dir, when --template named one
    manifest: BuildManifest | None = None  # its manifest (what an extension swap needs)


def storage_name(path: Path, sha256: str) -> str:
    stem = path.name[: -len(SUFFIX)]
    return f"{stem}-{sha256[:12]}{SUFFIX}"


def resolve(given: Path) -> LocalTemplate:
    """Find the template file named by ``--template`` and hash it; a build output directory's
    manifest must record that very file (its sha256)."""
    manifest = read_build_manifest(given / BUILD_MANIFEST) if given.is_dir() else None
    path = _template_file(given, manifest)
    sha = file_sha256(path)
    recorded = manifest.artifact("template", path.name) if manifest else None
    if manifest and (recorded is None or recorded.sha256 != sha):
        found = f"differs from {recorded.sha256[:12]}..." if recorded else "is not recorded"
        raise PipelineError(
            f"{path}: sha256 {sha[:12]}... {found} in {given / BUILD_MANIFEST}",
            hint="the file changed after the build; rebuild it",
        )
    return LocalTemplate(path=path, ref=TemplateRef(storage_name(path, sha), sha), size=path.stat().st_size,
                         build_dir=given if manifest else None, manifest=manifest)


def _template_file(given: Path, manifest: BuildManifest | None) -> Path:
    if manifest is not None:
        path = given / manifest.template.file
        if not path.is_file():
            raise PipelineError(f"{given / BUILD_MANIFEST}: template {manifest.template.file!r} is not in {given}")
        return path
    if not given.is_file():
        raise PipelineError(f"--template {given}: no such file or directory")
    if not given.name.endswith(SUFFIX):
        raise PipelineError(
            f"--template {given}: not a {SUFFIX} file", hint="give the template or the build output dir"
        )
    return given
