"""App-only upgrade: swap system extensions in place instead of replacing the container.

When the new template differs from the running one only in extension layers (same ``system``
key in both build manifests), the running container receives just the changed layers:

- ``stage`` (the services keep serving): the layer's squashfs image from the build, checked
  against the manifest's sha256, unpacked on this machine and streamed over SSH into
  ``/var/lib/extensions.store/NAME-KEY12`` (staged, then renamed into place);
- ``switch``: ``/var/lib/extensions/NAME`` becomes a symlink to the new store entry (a fresh
  template's directory moves into the store first, so a swap back finds it), the deployed
  manifest is rewritten, ``systemd-sysext refresh`` re-merges /usr and /opt, and only the units
  that use a changed layer restart (sysext/restart.toml, recorded in the build manifest).

systemd 252's refresh unmerges before it merges: for some milliseconds /usr and /opt lack the
extensions. The units of the changed layers restart right after it; a unit of an unchanged
layer keeps the files it has open, and only a file it opens inside that gap would fail (see
docs/replace-ct.md). Afterwards the container holds exactly what one created from the new
template holds in /usr, /opt and the deployed manifest.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.contract import (
    DEPLOYED_MANIFEST,
    EXTENSIONS_DIR,
    EXTENSIONS_STORE,
    BuildManifest,
    ImageManifest,
    image_manifest_from,
    manifest_json,
)
from pipeline.digest import file_sha256
from pipeline.errors import PipelineError
from pipeline.replace.ssh import SSH
from pipeline.runner import run

STREAM_TIMEOUT = 900


@dataclass(frozen=True)
class Layers:
    """What a swap needs to know of one template (from its build manifest)."""

    system: str
    keys: dict[str, str]  # layer name -> layer key
    restart: dict[str, tuple[str, ...]]  # layer name -> units using it
    image_manifest: ImageManifest  # written to DEPLOYED_MANIFEST

    @classmethod
    def from_build(cls, manifest: BuildManifest) -> Layers:
        return cls(system=manifest.system, keys={name: entry.key for name, entry in manifest.layers.items()},
                   restart=manifest.restart, image_manifest=manifest.image_manifest)

    def as_record(self) -> dict[str, Any]:
        """For replace-ct's journal (JSON), read back by ``from_record``."""
        return {"system": self.system, "keys": self.keys, "restart": self.restart,
                "image_manifest": dataclasses.asdict(self.image_manifest)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Layers:
        return cls(system=record["system"], keys=record["keys"],
                   restart={name: tuple(units) for name, units in record["restart"].items()},
                   image_manifest=image_manifest_from(record["image_manifest"], "replace-ct journal"))


def store_name(layer: str, key: str) -> str:
    return f"{layer}-{key[:12]}"


def changed(current: Layers, target: Layers) -> list[str]:
    return sorted(name for name, key in target.keys.items() if current.keys.get(name) != key)


def units_to_restart(current: Layers, target: Layers) -> list[str]:
    units = {unit for name in changed(current, target) for unit in target.restart.get(name, [])}
    return sorted(units)


def present_in_container(ssh: SSH, current: Layers) -> set[str]:
    """Store names of layers the container already holds (in its store, or as the fresh
    template's directories, which the deployed manifest names)."""
    out = ssh.run(["sh", "-c", f"ls -1 {EXTENSIONS_STORE} 2>/dev/null; true"]).stdout
    names = (out.decode() if isinstance(out, bytes) else out).split()
    return set(names) | {store_name(name, key) for name, key in current.keys.items()}


def stage(ssh: SSH, current: Layers, target: Layers, build_dir: Path | None,
          build_manifest: BuildManifest | None) -> list[str]:
    """Put every layer of ``target`` the container lacks into its store; the names pushed.
    Also removes what neither template uses: here, while the services still serve, not in the
    switch, where deleting a layer's 700 MB beside LiteLLM's start slowed the start by a second."""
    ssh.run(["sh", "-c", prune_script(current, target)], timeout=STREAM_TIMEOUT)
    present = present_in_container(ssh, current)
    missing = [name for name, key in sorted(target.keys.items()) if store_name(name, key) not in present]
    if not missing:
        return []
    if build_dir is None or build_manifest is None or Layers.from_build(build_manifest) != target:
        wanted = ", ".join(store_name(name, target.keys[name]) for name in missing)
        raise PipelineError(
            f"the container lacks {wanted} of the target (it holds {', '.join(sorted(present)) or 'nothing'}) "
            "and no build of it was given to take them from",
            hint="pass --template with the build output dir of the target")
    with tempfile.TemporaryDirectory(prefix="meridian-swap-") as tmp:
        for name in missing:
            _unpack(build_dir, build_manifest, name, Path(tmp) / store_name(name, target.keys[name]))
        _stream(ssh, Path(tmp), [store_name(name, target.keys[name]) for name in missing])
    return missing


def _unpack(build_dir: Path, manifest: BuildManifest, layer: str, dest: Path) -> None:
    raw = build_dir / "sysext" / f"{layer}.raw"
    recorded = manifest.artifact("sysext", f"sysext/{layer}.raw")
    if not raw.is_file() or recorded is None:
        raise PipelineError(f"{raw}: the {layer} extension image is missing from the build",
                            hint="rebuild with python -m pipeline build")
    if file_sha256(raw) != recorded.sha256:
        raise PipelineError(f"{raw}: sha256 differs from the build manifest", hint="rebuild it")
    run(["unsquashfs", "-q", "-n", "-d", dest, raw], timeout=STREAM_TIMEOUT)


def _stream(ssh: SSH, root: Path, names: list[str]) -> None:
    """tar the unpacked layers to the container; renamed into the store once complete."""
    incoming = f"{EXTENSIONS_STORE}/.incoming"
    moves = " && ".join(f"rm -rf {EXTENSIONS_STORE}/{n} && mv {incoming}/{n} {EXTENSIONS_STORE}/{n}" for n in names)
    # Written through before the switch: its writeback would otherwise run beside the restarts.
    script = (f"set -e; rm -rf {incoming}; mkdir -p {incoming}; "
              f"tar -C {incoming} -xpf - --numeric-owner; {moves}; rmdir {incoming}; sync -f {EXTENSIONS_STORE}")
    with subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-cf", "-", *names],
                          stdout=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        ssh.run(["sh", "-c", script], stdin=tar.stdout, timeout=STREAM_TIMEOUT)
        if tar.wait() != 0:
            raise PipelineError(f"tar of {', '.join(names)} failed (exit {tar.returncode})")


def switch_script(current: Layers, target: Layers) -> str:
    """Link the target's layers, write its manifest, re-merge, restart the affected units."""
    lines = ["set -eu", f"mkdir -p {EXTENSIONS_STORE}"]
    for name in changed(current, target):
        new = f"{EXTENSIONS_STORE}/{store_name(name, target.keys[name])}"
        link = f"{EXTENSIONS_DIR}/{name}"
        if name in current.keys:  # a fresh template's directory: keep it for a swap back
            old = f"{EXTENSIONS_STORE}/{store_name(name, current.keys[name])}"
            lines.append(f"if [ -d {link} ] && [ ! -L {link} ]; then rm -rf {old} && mv {link} {old}; fi")
        lines.append(f"ln -sfn {new} {link}.new && mv -Tf {link}.new {link}")
    manifest = manifest_json(target.image_manifest)
    lines.append(f"mkdir -p {Path(DEPLOYED_MANIFEST).parent} && "
                 f"printf %s {shlex.quote(manifest)} > {DEPLOYED_MANIFEST}.new && "
                 f"chmod 0644 {DEPLOYED_MANIFEST}.new && mv -f {DEPLOYED_MANIFEST}.new {DEPLOYED_MANIFEST}")
    lines.append("systemd-sysext refresh")
    units = units_to_restart(current, target)
    if units:
        lines.append(shlex.join(["systemctl", "restart", *units]))
    return "\n".join(lines) + "\n"


def prune_script(current: Layers, target: Layers) -> str:
    """Remove store entries neither template uses: the store keeps both (a swap back needs no
    copy), nothing older."""
    kept = sorted({store_name(n, k) for layer in (current, target) for n, k in layer.keys.items()})
    return (f"ls -1 {EXTENSIONS_STORE} 2>/dev/null | grep -v -x -F "
            + " ".join(f"-e {shlex.quote(k)}" for k in kept)
            + f" | sed 's|^|{EXTENSIONS_STORE}/|' | xargs -r rm -rf\n")


def switch(ssh: SSH, current: Layers, target: Layers) -> None:
    ssh.run(["sh", "-s"], input=switch_script(current, target).encode(), timeout=STREAM_TIMEOUT)
