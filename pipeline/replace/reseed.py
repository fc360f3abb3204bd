"""Configuration-only changes: a rotated master key, other models or ports.

The template stays, so the plan compares what the site renders now with what was delivered:
a fingerprint of the seed rendered with the master key replaced by a keyed hash (HMAC-SHA256
with a random salt kept in the journal). The key itself is never stored or compared outside
the container. When the fingerprints differ, ``reseed`` rewrites the seed in place in one SSH
session (no cloud-init run), restarts only the units that read a changed file (cloudinit/restart.toml), and keeps
the previous files in the container so that a failed gate can put them back (``restore``).

Example::

    now = fingerprint(site, key, deploy_public_key, salt)
    now.digest != journal.get("seed_digest")   # -> the plan shows "re-seed"
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import shlex
import tomllib
from dataclasses import dataclass

from pipeline.cloudinit import render_seed
from pipeline.cloudinit.deliver import service_files
from pipeline.cloudinit.render import TEMPLATE_DIR
from pipeline.config import Site

BACKUP = "/var/lib/meridian-pipeline/seed-previous"


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # the whole seed
    files: dict[str, str]  # path -> digest of each file the seed writes for the services


def new_salt() -> str:
    return secrets.token_hex(16)


def fingerprint(site: Site, master_key: str, deploy_public_key: str, salt: str) -> Fingerprint:
    """Over the files the seed writes for the services (key, ports, models, Meridian's and
    node_exporter's settings). Admin users and keys are applied by cloud-init at the first
    start only: changing them takes a new container (``--full``)."""
    keyed = "k-" + hmac.new(salt.encode(), master_key.encode(), hashlib.sha256).hexdigest()
    seed = render_seed(site, master_key=keyed, instance_id="iid-fingerprint",
                       deploy_public_key=deploy_public_key)
    files = {path: hashlib.sha256(f"{owner} {mode}\n".encode() + content).hexdigest()
             for path, content, owner, mode in service_files(seed)}
    whole = hashlib.sha256("\n".join(f"{p} {d}" for p, d in sorted(files.items())).encode()).hexdigest()
    return Fingerprint(whole, files)


def units_for(changed_paths: list[str]) -> list[str]:
    """The units that read these files (cloudinit/restart.toml)."""
    table = tomllib.loads((TEMPLATE_DIR / "restart.toml").read_text())
    return sorted({unit for path in changed_paths for unit in table.get(path, [])})


def changed_paths(before: dict[str, str], now: dict[str, str]) -> list[str]:
    return sorted(path for path in set(before) | set(now) if before.get(path) != now.get(path))


def _kept(path: str) -> str:
    return shlex.quote(f"{BACKUP}/{path.strip('/').replace('/', '__')}")


def backup_command(paths: list[str]) -> str:
    """Keep the current version of each file (root only, inside the container)."""
    copies = "; ".join(f"if [ -e {shlex.quote(p)} ]; then cp -a {shlex.quote(p)} {_kept(p)}; fi" for p in paths)
    return f"rm -rf {BACKUP} && mkdir -p -m 0700 {BACKUP} && {{ {copies}; }}"


def restore_script(paths: list[str], units: list[str]) -> bytes:
    """Put the kept files back and restart their units."""
    lines = ["set -eu"]
    for path in paths:
        lines.append(f"if [ -e {_kept(path)} ]; then cp -a {_kept(path)} {shlex.quote(path)}; "
                     f"else rm -f {shlex.quote(path)}; fi")
    if units:
        lines.append(shlex.join(["systemctl", "restart", *units]))
    return ("\n".join(lines) + "\n").encode()
