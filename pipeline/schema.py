"""Load YAML mappings into frozen dataclasses, declared once with type, default and help.

A field is declared as ``name: T = setting(default, "help", check=...)``. Loading
rejects unknown keys and wrong types and names the dotted path of every problem::

    sites/lab.yml: container.vmid: 'abc' is not an integer
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from pipeline.errors import ConfigError

_MISSING = dataclasses.MISSING
Check = Callable[[Any], str | None]  # returns a problem description, or None when fine


def setting(default: Any = _MISSING, help: str = "", *, check: Check | None = None) -> Any:
    """Declare one setting. Mutable defaults (lists) are copied per instance."""
    meta = {"help": help, "check": check}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load(cls: type, data: Any, *, where: str, path: str = "", base: Path | None = None) -> Any:
    """Build ``cls`` from ``data``; ``where`` names the file, ``base`` resolves relative paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'top level'}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: {_join(path, unknown[0])}: unknown key",
            hint=f"known keys here: {', '.join(sorted(fields))}",
        )
    hints = get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        dotted = _join(path, name)
        if name not in data:
            if field.default is _MISSING and field.default_factory is _MISSING:
                raise ConfigError(f"{where}: {dotted}: required key is missing", hint=field.metadata.get("help"))
            continue
        value = _convert(hints[name], data[name], where=where, path=dotted, base=base)
        problem = field.metadata.get("check") and field.metadata["check"](value)
        if problem:
            raise ConfigError(f"{where}: {dotted}: {_show(data[name])} {problem}", hint=field.metadata.get("help"))
        values[name] = value
    obj = cls(**values)
    problem = obj.problem() if hasattr(obj, "problem") else None
    if problem:
        raise ConfigError(f"{where}: {path or 'top level'}: {problem}")
    return obj


def _convert(tp: Any, value: Any, *, where: str, path: str, base: Path | None) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where=where, path=path, base=base)
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {path}: {_show(value)} is not one of {choices}")
        return value
    if origin in (list, tuple):  # list[T] and tuple[T, ...] both load as a tuple
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {path}: expected a list, got {_show(value)}")
        item = get_args(tp)[0]
        return tuple(
            _convert(item, v, where=where, path=f"{path}.{i}", base=base) for i, v in enumerate(value)
        )
    if origin is dict:  # dict[str, T]: any names, each value checked
        if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
            raise ConfigError(f"{where}: {path}: expected a mapping with names as keys, got {_show(value)}")
        item = get_args(tp)[1]
        return {k: _convert(item, v, where=where, path=f"{path}.{k}", base=base) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return load(tp, value, where=where, path=path, base=base)
    return _scalar(tp, value, where=where, path=path, base=base)


def _scalar(tp: type, value: Any, *, where: str, path: str, base: Path | None) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {path}: {_show(value)} is not true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {path}: {_show(value)} is not an integer")
    if tp is str:
        if isinstance(value, str) and value.strip():
            return value
        raise ConfigError(f"{where}: {path}: {_show(value)} is not a non-empty string")
    if tp is Path:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {path}: {_show(value)} is not a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() or base is None else (base / p).resolve()
    raise TypeError(f"unsupported setting type {tp!r} at {path}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every setting: the reference table in the README."""
    rows = []
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = _join(prefix, field.name)
        if dataclasses.is_dataclass(hints[field.name]):
            rows += describe(hints[field.name], key)
            continue
        if field.default is not _MISSING:
            default = repr(field.default)
        elif field.default_factory is not _MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, field.metadata.get("help", "")))
    return rows
