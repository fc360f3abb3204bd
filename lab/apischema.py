"""The real Proxmox VE API schema (endpoints.json): route lookup and parameter validation.

Validation follows pve-common's JSONSchema: every problem is reported per parameter, and
the handler sees typed values (integers, 0/1 booleans).

Example::

    api = ApiSchema.load()
    endpoint, path_params = api.route("POST", "/nodes/pve01/lxc/457/status/start")
    params = endpoint.validate({**path_params, **form})     # raises ApiError (400)
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import param_error
from lab.pveconf import parse_props

# The Proxmox VE API schema of the endpoints we use (pve-docs 9.1.3), kept in the repo.
SCHEMA_FILE = Path(__file__).parent / "data" / "pve-api-endpoints.json"

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
# Index ranges of the numbered keys (pve-container: MAX_MOUNT_POINTS, MAX_LXC_NETWORKS ...).
INDEXED = {"net": 32, "mp": 256, "unused": 256, "dev": 256}

FORMATS: dict[str, re.Pattern[str]] = {
    "pve-node": re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"),
    "pve-storage-id": re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]"),
    "pve-poolid": re.compile(r"[A-Za-z0-9_\-]+"),
    "pve-configid": re.compile(r"[a-z][a-z_]*\d*"),
    "dns-name": re.compile(r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)*"),
    "pve-volume-id": re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]:.+"),
    "pve-tag-list": re.compile(r"[a-z0-9_][a-z0-9_\-+.]*([;, ]+[a-z0-9_][a-z0-9_\-+.]*)*[;, ]*", re.I),
    "mac-addr": re.compile(r"[a-f0-9]{2}(:[a-f0-9]{2}){5}", re.I),
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    info: dict[str, Any]

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        return self.info.get("parameters", {}).get("properties", {})

    @property
    def permissions(self) -> dict[str, Any]:
        return self.info.get("permissions", {})

    def schema_for(self, key: str) -> dict[str, Any] | None:
        if key in self.properties:
            return self.properties[key]
        match = re.fullmatch(r"([a-z]+)(\d+)", key)
        if match and f"{match[1]}[n]" in self.properties and int(match[2]) < INDEXED.get(match[1], 0):
            return self.properties[f"{match[1]}[n]"]
        return None

    def validate(self, raw: dict[str, str]) -> dict[str, Any]:
        """Typed parameters, or a 400 ApiError naming each bad one (Proxmox's messages)."""
        errors: dict[str, str] = {}
        typed: dict[str, Any] = {}
        for key, value in raw.items():
            schema = self.schema_for(key)
            if schema is None:
                errors[key] = "property is not defined in schema and the schema does not allow additional properties"
                continue
            try:
                typed[key] = check_value(value, schema)
            except ValueError as exc:
                errors[key] = str(exc)
        for key, schema in self.properties.items():
            if not schema.get("optional") and "[n]" not in key and key not in raw:
                errors[key] = "property is missing and it is not optional"
        if errors:
            raise param_error(errors)
        return typed


def check_value(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    if kind == "boolean":
        low = str(value).lower()
        if low not in TRUE | FALSE:
            raise ValueError(f"type check ('boolean') failed - got '{value}'")
        return 1 if low in TRUE else 0
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", str(value)):
            raise ValueError(f"type check ('integer') failed - got '{value}'")
        return _range(int(value), schema)
    if kind == "number":
        try:
            return _range(float(value), schema)
        except ValueError:
            raise ValueError(f"type check ('number') failed - got '{value}'") from None
    return _check_string(str(value), schema)


def _range(number: float, schema: dict[str, Any]) -> Any:
    if "minimum" in schema and number < float(schema["minimum"]):
        raise ValueError(f"value must have a minimum value of {schema['minimum']}")
    if "maximum" in schema and number > float(schema["maximum"]):
        raise ValueError(f"value must have a maximum value of {schema['maximum']}")
    return number


def _check_string(value: str, schema: dict[str, Any]) -> str:
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"value '{value}' does not have a value in the enumeration '{', '.join(schema['enum'])}'")
    if "maxLength" in schema and len(value) > int(schema["maxLength"]):
        raise ValueError(f"value may only be {schema['maxLength']} characters long")
    if "minLength" in schema and len(value) < int(schema["minLength"]):
        raise ValueError(f"value must be at least {schema['minLength']} characters long")
    if "pattern" in schema and not re.fullmatch(perl_regex(schema["pattern"]), value):
        raise ValueError("value does not match the regex pattern")
    fmt = schema.get("format")
    if isinstance(fmt, dict):
        _check_props(value, fmt)
    elif isinstance(fmt, str):
        _check_format(value, fmt)
    return value


def _check_props(value: str, fmt: dict[str, dict[str, Any]]) -> None:
    default_key = next((k for k, s in fmt.items() if s.get("default_key")), None)
    try:
        props = parse_props(value, default_key)
    except ValueError as exc:
        raise ValueError(f"invalid format - {exc}") from None
    for key, item in props.items():
        if key not in fmt:
            raise ValueError(f"invalid format - property '{key}' is not defined in the format")
        try:
            check_value(item, fmt[key])
        except ValueError as exc:
            raise ValueError(f"invalid format - {key}: {exc}") from None
    missing = [k for k, s in fmt.items() if not s.get("optional") and k not in props]
    if missing:
        raise ValueError(f"invalid format - property '{missing[0]}' is missing")


def _check_format(value: str, fmt: str) -> None:
    if fmt.endswith("-list"):
        base = fmt[: -len("-list")]
        if base in FORMATS or base in {"ipv4", "ipv6", "ip"}:
            for item in filter(None, re.split(r"[;,\s]+", value)):
                _check_format(item, base)
            return
    if fmt in FORMATS and not FORMATS[fmt].fullmatch(value):
        raise ValueError(f"value does not look like a valid {fmt.removeprefix('pve-')}")
    if fmt in {"ipv4", "ipv6", "ip"}:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"value does not look like a valid {fmt} address") from None
    if fmt == "pve-ipv4-config" and value not in {"dhcp", "manual"}:
        try:
            ipaddress.IPv4Interface(value)
        except ValueError:
            raise ValueError("invalid format - invalid IPv4 config") from None
        if "/" not in value:
            raise ValueError("invalid format - missing prefix length")


def perl_regex(pattern: str) -> str:
    """Perl's ``(?^:...)`` group (from the Perl schema dump) is Python's ``(?:...)``."""
    return pattern.replace("(?^:", "(?:")


class ApiSchema:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._routes = [(e, _path_regex(e.path)) for e in endpoints]

    @classmethod
    def load(cls, path: Path = SCHEMA_FILE) -> ApiSchema:
        data = json.loads(path.read_text())
        return cls([Endpoint(e["method"], e["path"], e["info"]) for e in data["endpoints"]])

    def route(self, method: str, path: str) -> tuple[Endpoint | None, dict[str, str], bool]:
        """(endpoint, path parameters, path exists for another method)."""
        known_path = False
        for endpoint, regex in self._routes:
            match = regex.fullmatch(path)
            if match:
                known_path = True
                if endpoint.method == method:
                    return endpoint, match.groupdict(), True
        return None, {}, known_path


def _path_regex(path: str) -> re.Pattern[str]:
    # A volume id holds a slash (local:vztmpl/NAME) that clients such as proxmoxer send as is.
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path).replace("(?P<volume>[^/]+)", "(?P<volume>.+)")
    return re.compile(regex)
