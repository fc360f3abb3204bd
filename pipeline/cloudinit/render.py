"""Render the per-site NoCloud seed from the jinja2 templates in cloudinit/.

Example::

    seed = render_seed(site, master_key=None, instance_id="meridian-build")
    seed.files["user-data"]  # bytes, validated by `cloud-init schema`
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from pipeline.cloudinit.validate import validate_user_data
from pipeline.config import Site
from pipeline.errors import PipelineError, SecretError
from pipeline.resources import data_dir

TEMPLATE_DIR = data_dir("cloudinit")
SEED_FILES = ("user-data", "meta-data", "network-config")
SEED_DIR = "/var/lib/cloud/seed/nocloud"
PIN_FILE = "90-meridian-datasource.cfg"
PIN_PATH = f"/etc/cloud/cloud.cfg.d/{PIN_FILE}"

# The key lands unquoted in an env file (NAME=value, read by LiteLLM's launcher) and a YAML
# block: allow only characters that mean nothing to either (token_urlsafe, hex and base64 keys pass).
KEY_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
# Stands in for the real key when validating: same character set, so the same YAML.
PLACEHOLDER_KEY = "sk-placeholder-validation-only"


@dataclass(frozen=True)
class Seed:
    """The rendered seed. ``files`` maps seed file name to content (never shown in repr)."""

    files: dict[str, bytes] = field(repr=False)
    instance_id: str
    has_secret: bool


def render_seed(
    site: Site,
    *,
    master_key: str | None,
    instance_id: str,
    deploy_public_key: str | None = None,
    templates: Path = TEMPLATE_DIR,
) -> Seed:
    """Render and validate user-data, meta-data and network-config for ``site``.

    ``master_key=None`` renders the build's artifact: the same seed without
    /etc/litellm/litellm.env. The validator only ever sees a placeholder key.
    ``deploy_public_key`` is authorized for the admin user next to site.admin.ssh_keys.
    """
    if master_key is not None and not KEY_CHARS.fullmatch(master_key):
        raise SecretError(
            "the LiteLLM master key holds characters outside A-Z a-z 0-9 . _ ~ + / = -",
            hint="these cannot be written safely to a systemd environment file; use another key",
        )
    env = _environment(templates)
    context = _context(site, instance_id, deploy_public_key)
    checked = None if master_key is None else PLACEHOLDER_KEY
    validate_user_data(
        _render(env, "user-data", context, master_key=checked),
        template=templates / "user-data.j2",
        site=site.name,
    )
    files = {
        "user-data": _render(env, "user-data", context, master_key=master_key),
        "meta-data": _render(env, "meta-data", context),
        "network-config": _render(env, "network-config", context),
    }
    for name in ("meta-data", "network-config"):
        _check_yaml_mapping(templates / f"{name}.j2", files[name])
    return Seed(
        files={name: text.encode() for name, text in files.items()},
        instance_id=instance_id,
        has_secret=master_key is not None,
    )


def pin_file() -> bytes:
    """The datasource pin, shipped only together with a seed (docs/cloud-init.md)."""
    return (TEMPLATE_DIR / PIN_FILE).read_bytes()


def _context(site: Site, instance_id: str, deploy_public_key: str | None) -> dict:
    keys = list(site.admin.ssh_keys)
    if deploy_public_key and deploy_public_key.strip() not in keys:
        keys.append(deploy_public_key.strip())
    return {
        "site": site,
        "net": site.container.network,
        "instance_id": instance_id,
        "authorized_keys": keys,
        "seed_dir": SEED_DIR,
        "pin_path": PIN_PATH,
    }


def _environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # A JSON string is a valid YAML double-quoted scalar: safe for any site value.
    env.filters["q"] = lambda value: json.dumps(str(value))
    return env


def _render(env: jinja2.Environment, name: str, context: dict, **extra: object) -> str:
    try:
        return env.get_template(f"{name}.j2").render(**context, **extra)
    except jinja2.TemplateNotFound:
        where = getattr(env.loader, "searchpath", ["the template folder"])[0]
        raise PipelineError(f"cloud-init template missing: {name}.j2 in {where}") from None
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f"{name}.j2" + (f":{line}" if line else "")
        raise PipelineError(f"cloud-init template {where}: cannot render: {exc.message}") from None


def _check_yaml_mapping(template: Path, text: str) -> None:
    """meta-data and network-config have no schema validator in 22.4: at least parse them."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{template} renders invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{template} does not render a YAML mapping")
