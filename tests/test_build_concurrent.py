"""Two builds at once on one cache: both succeed with the same, correct template; one makes the
pieces it lacks, the other waits for the cache's lock and then takes them, never half-written."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from pipeline.builder.context import DEFAULT_CACHE
from pipeline.contract import BUILD_MANIFEST, read_build_manifest
from pipeline.digest import file_sha256
from pipeline.runner import clean_env, run
from tests.plugins.build import LAB_SITE
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUILD_TIMEOUT = 1800


def test_two_builds_at_once_on_one_cache(lab_build, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # The base and the layers (minutes to make) from the lab build; the system piece, the
    # layers' pieces and the template are left for the two builds to make.
    wanted = [DEFAULT_CACHE / "base" / "debian" / lab_build.manifest.base.key]
    wanted += [DEFAULT_CACHE / "layers" / name / entry.key for name, entry in lab_build.manifest.layers.items()]
    for src in wanted:
        dest = cache / src.relative_to(DEFAULT_CACHE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-al", src, dest])
    with ExitStack() as stack:
        builds = {}
        for name in ("one", "two"):
            log = stack.enter_context(open(tmp_path / f"{name}.log", "w"))
            argv = [sys.executable, "-m", "pipeline", "build", "--site", str(LAB_SITE),
                    "--out", str(tmp_path / name), "--cache", str(cache)]
            builds[name] = subprocess.Popen(argv, cwd=REPO_ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
        codes = {name: proc.wait(BUILD_TIMEOUT) for name, proc in builds.items()}
    for name, code in codes.items():
        assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    one, two = (read_build_manifest(tmp_path / name / BUILD_MANIFEST) for name in ("one", "two"))
    assert sorted([one.template.rebuilt, two.template.rebuilt]) == [False, True]
    assert one.template.key == two.template.key == lab_build.manifest.template.key
    for doc, name in ((one, "one"), (two, "two")):
        for item in doc.artifacts:
            assert file_sha256(tmp_path / name / item.path) == item.sha256, item.path
    assert one.artifact("template", one.template.file) == two.artifact("template", two.template.file)
    assert not list(cache.rglob("*.partial"))
