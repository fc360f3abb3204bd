"""The tool as a user or a CI job installs it: `pip install` of a wheel (not editable) into a fresh
venv, the source tree gone, every command run from another directory. It finds its data in the
venv, builds what the checkout builds, and replace-ct names the extra its gate needs."""

from __future__ import annotations

import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import main as checkout_main
from pipeline.contract import BUILD_MANIFEST, read_build_manifest
from pipeline.runner import ANY_EXIT, run
from tests.plugins.build import LAB_SITE
from tests.plugins.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIP_TIMEOUT = 900
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", "*.egg-info", ".*_cache", "node_modules")


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path
    cwd: Path  # a directory that is neither the checkout nor the venv
    site: Path  # the lab site, its inputs named by absolute path

    def tool(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> tuple[int, str]:
        proc = run([self.venv / "bin/python", "-m", "pipeline", *args], cwd=self.cwd, env=env,
                   timeout=PIP_TIMEOUT, check=ANY_EXIT, log=log)
        return proc.returncode, (log.read_text() if log else proc.stdout + proc.stderr)

    def python(self, code: str) -> str:
        return run([self.venv / "bin/python", "-c", code], cwd=self.cwd).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("install")
    source, wheels, venv = tmp / "source", tmp / "wheels", tmp / "venv"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, source],
        cwd=tmp, timeout=PIP_TIMEOUT, log=tmp / "wheel.log")
    shutil.rmtree(source)  # nothing may read the tree it was built from
    (wheel,) = wheels.glob("*.whl")
    run([sys.executable, "-m", "venv", venv], timeout=120)
    run([venv / "bin/pip", "install", "-q", wheel], cwd=tmp, timeout=PIP_TIMEOUT, log=tmp / "pip.log")
    data = yaml.safe_load(LAB_SITE.read_text())
    data["image"]["meridian"]["source"] = str(REPO_ROOT / "tests/fixtures/meridian-standin")
    data["image"]["meridian"]["lockfile"] = str(REPO_ROOT / "sysext/meridian/locks/standin.json")
    (tmp / "elsewhere").mkdir()
    site = tmp / "elsewhere" / "lab.yml"
    site.write_text(yaml.safe_dump(data))
    return Installed(venv=venv, wheel=wheel, cwd=tmp / "elsewhere", site=site)


def test_data_and_suite_are_found_in_the_venv(installed: Installed) -> None:
    out = installed.python("from pipeline.resources import acceptance_dir, data_dir\n"
                           "for p in (data_dir('image'), data_dir('sysext'), data_dir('cloudinit'), acceptance_dir()):"
                           " print(p)")
    paths = [Path(line) for line in out.split()]
    assert len(paths) == 4
    assert all(p.is_dir() and p.is_relative_to(installed.venv) for p in paths), paths
    assert (paths[0] / "rootfs/etc/systemd/system/meridian.service").is_file()


def test_build_from_another_directory_makes_what_the_checkout_makes(installed: Installed, lab_build) -> None:
    """Same inputs found (data, recipes, code): the same cache keys, so nothing is rebuilt."""
    out = installed.cwd / "out"
    code, output = installed.tool("build", "--site", str(installed.site), "--out", str(out),
                                  log=installed.cwd / "build.log")
    assert code == 0, output[-2000:]
    built = read_build_manifest(out / BUILD_MANIFEST)
    assert built.template.key == lab_build.manifest.template.key
    assert {n: e.key for n, e in built.layers.items()} == {n: e.key for n, e in lab_build.manifest.layers.items()}
    assert built.image_manifest == lab_build.manifest.image_manifest


def test_seed_from_another_directory_renders_what_the_checkout_renders(
        installed: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-" + secrets.token_urlsafe(32)
    monkeypatch.setenv("MERIDIAN_LAB_MASTER_KEY", key)
    args = ["seed", "--site", str(installed.site), "--instance-id", "iid-install-test"]
    code, output = installed.tool(*args, "--out", str(installed.cwd / "seed"), env={"MERIDIAN_LAB_MASTER_KEY": key})
    assert code == 0, output
    assert key not in output
    assert checkout_main([*args, "--out", str(tmp_path / "seed")]) == 0
    for name in ("user-data", "meta-data", "network-config", "seed.iso"):
        assert (installed.cwd / "seed" / name).read_bytes() == (tmp_path / "seed" / name).read_bytes(), name


def test_replace_ct_names_the_missing_acceptance_extra(installed: Installed) -> None:
    code, output = installed.tool("replace-ct", "--site", str(installed.site), "--yes")
    assert code == 1
    assert "meridian-pipeline[acceptance]" in output and "pytest" in output and "pytest-testinfra" in output


def test_with_the_extra_the_installed_suite_collects_and_replace_ct_plans(
        installed: Installed, lab_build, lab_server) -> None:
    run([installed.venv / "bin/pip", "install", "-q", f"{installed.wheel}[acceptance]"], cwd=installed.cwd,
        timeout=PIP_TIMEOUT, log=installed.cwd / "pip-extra.log")
    suite = Path(installed.python("from pipeline.resources import acceptance_dir; print(acceptance_dir())").strip())
    collected = run([installed.venv / "bin/python", "-m", "pytest", suite, "--collect-only", "-q",
                     "-p", "no:cacheprovider"], cwd=installed.cwd, timeout=300).stdout
    assert "test_http.py::" in collected and "test_services.py::" in collected
    code, output = installed.tool("replace-ct", "--site", str(installed.site), "--template",
                                  str(lab_build.out_dir), "--plan",
                                  env={"MERIDIAN_LAB_MASTER_KEY": "sk-" + secrets.token_urlsafe(32)})
    assert code in (0, 2), output  # 0: nothing to do, 2: changes pending
    assert "CT 457" in output
