"""Layer-cache keys change when, and only when, an input of that layer changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.builder import appliance_template, base, litellm, meridian, node, system
from pipeline.builder.cache import Cache, Key, entry_size, tree_sha256
from pipeline.builder.context import BuildContext
from pipeline.builder.layers import Layer
from pipeline.config import load_site
from pipeline.errors import PipelineError
from tests.plugins.paths import REPO_ROOT

STANDIN = REPO_ROOT / "tests" / "fixtures" / "meridian-standin"


def test_tree_hash_ignores_times_and_node_modules_but_not_content_mode_or_links(tmp_path):
    (tmp_path / "a").write_text("one")
    (tmp_path / "b").symlink_to("a")
    first = tree_sha256(tmp_path)
    os.utime(tmp_path / "a", (1, 1))
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "x").write_text("installed")
    assert tree_sha256(tmp_path) == first
    (tmp_path / "a").chmod(0o755)
    assert tree_sha256(tmp_path) != first
    (tmp_path / "a").chmod(0o644)
    (tmp_path / "b").unlink()
    (tmp_path / "b").symlink_to("c")
    assert tree_sha256(tmp_path) != first


def test_labels_keep_inputs_apart():
    assert Key("k").text("a", "bc").hexdigest() != Key("k").text("ab", "c").hexdigest()
    assert Key("k").text("a", "x").hexdigest() == Key("k").text("a", "x").hexdigest()


def test_a_failed_fill_leaves_no_entry(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(RuntimeError), cache.filling("layers", "node", "k1") as scratch:
        (scratch / "half").write_text("x")
        raise RuntimeError("step failed")
    assert not cache.has("layers", "node", "k1")
    with cache.filling("layers", "node", "k1") as scratch:
        (scratch / "done").write_text("x")
    assert (cache.entry("layers", "node", "k1") / "done").is_file()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of the data folders and the lab site, with the stand-in as a local source."""
    for folder in ("image", "sysext"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder, symlinks=True)
    shutil.copytree(STANDIN, tmp_path / "standin", ignore=shutil.ignore_patterns("node_modules"))
    site = yaml.safe_load((REPO_ROOT / "sites" / "lab.yml").read_text())
    site["image"]["meridian"] = {"source": "./standin", "lockfile": "sysext/meridian/locks/standin.json"}
    (tmp_path / "lab.yml").write_text(yaml.safe_dump(site))
    return tmp_path


def context(workspace: Path) -> BuildContext:
    return BuildContext(site=load_site(workspace / "lab.yml"), out=workspace / "out",
                        cache=Cache(workspace / "cache"), image_dir=workspace / "image",
                        sysext_dir=workspace / "sysext")


def keys(workspace: Path) -> dict[str, str]:
    """Every cache key of the build: the base, the layers, the template's pieces and the template."""
    ctx = context(workspace)
    base_key = base.base_key(ctx)
    node_key = node.layer_key(ctx, "node", node.__file__).hexdigest()
    unused = workspace / "unused"
    node_layer = Layer("node", node_key, unused, rebuilt=False)
    litellm_key = litellm.layer_key(ctx, "litellm", litellm.__file__).text("base", base_key).hexdigest()
    layers = {"node": node_layer, "litellm": Layer("litellm", litellm_key, unused, rebuilt=False),
              "meridian": Layer("meridian", meridian.key(ctx, node_layer), unused, rebuilt=False)}
    the_base = base.Base(base_key, unused, rebuilt=False)
    found = {"base": base_key} | {name: layer.key for name, layer in layers.items()}
    found |= {f"piece:{name}": appliance_template.extension_piece_key(layer) for name, layer in layers.items()}
    found["piece:system"] = system.piece_key(appliance_template.system_key(ctx, the_base))
    found["template"] = appliance_template.template_key(ctx, the_base, layers)
    return found


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


MERIDIAN = {"meridian", "piece:meridian", "template"}
NODE = {"node", "piece:node"} | MERIDIAN  # meridian runs on the node layer's node
LITELLM = {"litellm", "piece:litellm", "template"}
SYSTEM = {"piece:system", "template"}

# (what is changed, which keys must change: all others must stay)
CHANGES = [
    (lambda w: edit(w / "standin/package.json", "1.40.0-standin.1", "1.40.0-standin.2"), MERIDIAN),
    (lambda w: (w / "standin/bin/new.js").write_text("//\n"), MERIDIAN),
    (lambda w: edit(w / "sysext/meridian/locks/standin.json", '"requires": true', '"requires": false'), MERIDIAN),
    (lambda w: (w / "sysext/meridian/locks/other-site.json").write_text("{}"), set()),
    (lambda w: edit(w / "sysext/meridian/recipe.toml", "/usr/bin/meridian", "/usr/bin/meridian2"), MERIDIAN),
    (lambda w: edit(w / "sysext/node/lock.json", "22.23.3", "22.23.4"), NODE),
    (lambda w: edit(w / "sysext/litellm/requirements.lock", "litellm==", "litellm=="), set()),
    (lambda w: edit(w / "sysext/litellm/requirements.lock", "aiohttp==", "aiohttp ==  "), LITELLM),
    (lambda w: edit(w / "image/base.toml", '"procps",', '"procps", "less",'), {"base"} | LITELLM | SYSTEM),
    (lambda w: edit(w / "sysext/common.toml", "VERSION_ID", "VERSION_ID "), NODE | LITELLM),
    (lambda w: edit(w / "image/rootfs/etc/hosts", "localhost", "localhost.localdomain"), SYSTEM),
    (lambda w: edit(w / "image/trim.txt", "usr/share/lintian/*", "usr/share/lintian/*\nusr/share/bug/*"), SYSTEM),
    (lambda w: os.utime(w / "standin/package.json", (1, 1)), set()),
]


@pytest.mark.parametrize(("change", "expected"), CHANGES)
def test_keys_change_exactly_for_the_parts_whose_inputs_changed(workspace, change, expected):
    """A changed layer rebuilds that layer and its piece; the system, its piece; any change, the
    template (the join of the pieces); nothing else."""
    before = keys(workspace)
    change(workspace)
    after = keys(workspace)
    assert {name for name in before if before[name] != after[name]} == expected


def test_missing_lockfile_is_a_clear_error_with_the_way_to_create_it(workspace):
    (workspace / "sysext/meridian/locks/standin.json").unlink()
    with pytest.raises(PipelineError) as caught:
        keys(workspace)
    assert "image.meridian.lockfile:" in caught.value.message
    assert "is not locked" in caught.value.message
    assert caught.value.hint is not None and "--update-lock" in caught.value.hint


def test_missing_local_source_names_the_key_and_where_it_looked(workspace):
    shutil.rmtree(workspace / "standin")
    with pytest.raises(PipelineError) as caught:
        keys(workspace)
    assert caught.value.message.startswith("image.meridian.source: './standin' does not exist")
    assert str(workspace / "standin") in caught.value.message


def filled(cache: Cache, kind: str, name: str, key: str, size: int, used_at: int) -> None:
    with cache.filling(kind, name, key) as scratch:
        (scratch / "data").write_bytes(os.urandom(size))
    os.utime(cache.entry(kind, name, key), (used_at, used_at))


def test_prune_drops_least_recently_used_entries_of_any_kind_down_to_the_budget(tmp_path):
    writer = Cache(tmp_path)
    for i, (kind, name, key) in enumerate([("layers", "x", "old"), ("base", "debian", "mid"),
                                           ("templates", "m", "new"), ("pieces", "x", "newest")]):
        filled(writer, kind, name, key, 100_000, 1000 + i)
    sizes = {e.name: entry_size(e) for e in writer.entries()}
    assert all(100_000 <= s <= 120_000 for s in sizes.values()), sizes  # recorded when filled
    cache = Cache(tmp_path)  # the next build
    assert cache.has("layers", "x", "old")  # used again: now the most recent, and in use
    dropped = cache.prune_to(sizes["old"] + sizes["new"] + sizes["newest"])
    assert [e.name for e in dropped] == ["mid"]
    assert [cache.has(*e) for e in [("layers", "x", "old"), ("templates", "m", "new"), ("pieces", "x", "newest")]] \
        == [True, True, True]


def test_prune_never_drops_what_this_build_used(tmp_path):
    cache = Cache(tmp_path)
    filled(cache, "layers", "x", "made", 50_000, 1000)
    assert cache.prune_to(0) == []  # over budget, but all of it in use
    assert Cache(tmp_path).prune_to(0) == [cache.entry("layers", "x", "made")]  # a later build's choice
