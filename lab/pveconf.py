"""Proxmox's text formats: property strings (``name=eth0,bridge=mrdlab0``) and CT config files.

A CT config (/etc/pve/lxc/VMID.conf) is ``key: value`` lines; the description is stored as
``#`` comment lines at the top, as Proxmox does.

Example::

    parse_props("local-lvm:8,mp=/var/lib/meridian", default_key="volume")
    # {"volume": "local-lvm:8", "mp": "/var/lib/meridian"}
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def parse_props(text: str, default_key: str | None = None) -> dict[str, str]:
    """Split a property string; a leading bare value belongs to default_key."""
    props: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            if default_key is None or default_key in props:
                raise ValueError(f"value without key: {part!r}")
            key, value = default_key, part
        if key in props:
            raise ValueError(f"duplicate key {key!r}")
        props[key] = value
    return props


def format_props(props: dict[str, str], default_key: str | None = None) -> str:
    head = [props[default_key]] if default_key in props else []
    rest = [f"{k}={v}" for k, v in props.items() if k != default_key]
    return ",".join(head + rest)


def read_conf(path: Path) -> dict[str, str]:
    """The config as a flat dict (description joined from its comment lines)."""
    conf: dict[str, str] = {}
    description: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            description.append(line[1:])
        elif line.startswith("["):
            break  # snapshot/pending sections: the lab writes none
        elif ":" in line:
            key, _, value = line.partition(":")
            conf[key.strip()] = value.strip()
    if description:
        conf["description"] = "\n".join(description)
    return conf


def render_conf(conf: dict[str, str]) -> str:
    lines = [f"#{line}" for line in conf.get("description", "").split("\n")] if "description" in conf else []
    lines += [f"{k}: {v}" for k, v in sorted(conf.items()) if k != "description"]
    return "\n".join(lines) + "\n"


def write_conf(path: Path, conf: dict[str, str]) -> None:
    """Replace the file atomically, so a reader (or a server restart) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.tmp")
    draft.write_text(render_conf(conf))
    os.replace(draft, path)


def digest(conf: dict[str, str]) -> str:
    """Proxmox's config digest (SHA-1 of the file), used by clients to detect concurrent edits."""
    return hashlib.sha1(render_conf(conf).encode()).hexdigest()
