"""The template to deploy: a ``.tar.zst`` file, or a build output directory with manifest.json.

On the storage it is named after its content (``meridian_1.2_amd64-<sha12>.tar.zst``): a
rebuilt template never overwrites the one the running container came from, so a rollback
always finds the previous template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    manifest: dict | None = None  # its manifest.json (what an extension swap needs)


def storage_name(path: Path, sha256: str) -> str:
    stem = path.name[: -len(SUFFIX)]
    return f"{stem}-{sha256[:12]}{SUFFIX}"


def resolve(given: Path) -> LocalTemplate:
    """Find the template file named by ``--template`` and hash it."""
    path = _template_file(given)
    sha = file_sha256(path)
    recorded = _recorded_sha256(given, path) if given.is_dir() else None
    if recorded and recorded != sha:
        raise PipelineError(
            f"{path}: sha256 {sha[:12]}... differs from {recorded[:12]}... in {given / 'manifest.json'}",
            hint="the file changed after the build; rebuild it",
        )
    manifest = json.loads((given / "manifest.json").read_text()) if given.is_dir() else None
    return LocalTemplate(path=path, ref=TemplateRef(storage_name(path, sha), sha), size=path.stat().st_size,
                         build_dir=given if given.is_dir() else None, manifest=manifest)


def _template_file(given: Path) -> Path:
    if given.is_dir():
        return _from_manifest(given)
    if not given.is_file():
        raise PipelineError(f"--template {given}: no such file or directory")
    if not given.name.endswith(SUFFIX):
        raise PipelineError(
            f"--template {given}: not a {SUFFIX} file", hint="give the template or the build output dir"
        )
    return given


def _from_manifest(out_dir: Path) -> Path:
    manifest = out_dir / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except OSError as exc:
        raise PipelineError(
            f"--template {out_dir}: cannot read {manifest}: {exc.strerror}",
            hint="give a build output directory (python -m pipeline build --out DIR) or a .tar.zst",
        ) from None
    except ValueError as exc:
        raise PipelineError(f"{manifest}: not valid JSON: {exc}") from None
    name = _manifest_template_name(data)
    if not name:
        found = sorted(out_dir.glob(f"*{SUFFIX}"))
        if len(found) != 1:
            raise PipelineError(f"{manifest}: names no template, and {out_dir} holds {len(found)} {SUFFIX} files")
        return found[0]
    path = out_dir / name
    if not path.is_file():
        raise PipelineError(f"{manifest}: template {name!r} is not in {out_dir}")
    return path


def _recorded_sha256(out_dir: Path, path: Path) -> str | None:
    """The sha256 the build recorded for the template (``artifacts`` entry of kind template)."""
    data = json.loads((out_dir / "manifest.json").read_text())
    for entry in data.get("artifacts", []) if isinstance(data, dict) else []:
        if not isinstance(entry, dict) or entry.get("kind") != "template":
            continue
        if Path(entry.get("path", "")).name == path.name:
            return entry.get("sha256")
    return None


def _manifest_template_name(data: object) -> str | None:
    """The template file name in a build manifest (``template`` as a name or {file|name|path})."""
    if not isinstance(data, dict):
        return None
    entry = data.get("template")
    if isinstance(entry, dict):
        entry = entry.get("file") or entry.get("name") or entry.get("path")
    return Path(entry).name if isinstance(entry, str) else None
