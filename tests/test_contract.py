"""The manifests are written and read by the same code (pipeline/contract.py), and reading is
strict: every problem names the file and the dotted field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.contract import (
    BUILD_MANIFEST,
    manifest_json,
    parse_image_manifest,
    read_build_manifest,
    write_manifest,
)
from pipeline.errors import ConfigError
from tests.plugins.manifests import build_manifest, image_manifest


def test_build_manifest_reads_back_what_was_written(tmp_path: Path) -> None:
    written = build_manifest("m_1_amd64.tar.zst", "a" * 64)
    write_manifest(written, tmp_path / BUILD_MANIFEST)
    assert read_build_manifest(tmp_path / BUILD_MANIFEST) == written


def test_image_manifest_reads_back_what_was_written() -> None:
    written = image_manifest({"node": "n" * 64})
    assert parse_image_manifest(manifest_json(written), "inside") == written


def _broken(change: dict) -> str:
    doc = json.loads(manifest_json(build_manifest("m_1_amd64.tar.zst", "a" * 64)))
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"system": None}, "system: required key is missing", id="missing"),
        pytest.param({"layers.node.rebuilt": "no"}, "layers.node.rebuilt: 'no' is not true or false", id="type"),
        pytest.param({"artifacts.0.kind": "iso"}, "artifacts.0.kind: 'iso' is not one of", id="kind"),
        pytest.param({"image_manifest.colour": "red"}, "image_manifest.colour: unknown key", id="unknown"),
        pytest.param({"restart": ["litellm.service"]}, "restart: expected a mapping", id="shape"),
        pytest.param({"image_manifest.debian_packages": "systemd"}, "image_manifest.debian_packages: expected a list",
                     id="list"),
    ],
)
def test_a_wrong_field_is_named(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / BUILD_MANIFEST
    path.write_text(_broken(change))
    with pytest.raises(ConfigError) as err:
        read_build_manifest(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_unreadable_and_invalid_json_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path}/manifest.json"):
        read_build_manifest(tmp_path / BUILD_MANIFEST)
    with pytest.raises(ConfigError, match="inside: not valid JSON"):
        parse_image_manifest("{", "inside")
