"""A fresh Debian 12 machine has what the project runs: every host command and every host file
the lab's LXC configs include comes from setup/apt-packages.txt (or Debian's base system).

This machine is not a fresh one (packages installed by hand hide a missing install step), so
the first two tests ask dpkg which package owns each file and refuse owners outside the list's
dependency closure, and the last one installs the list into a minimal Debian 12 root, the way
./dev.sh setup does, and looks for the same commands and files there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import lxc
from pipeline.runner import run
from tests.plugins.hostdeps import host_commands, listed_packages, lxc_includes

CLEAN_ROOTS = Path("/var/cache/meridian-tests/clean-root")
BOOKWORM = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]


def installed_packages() -> dict[str, dict[str, str]]:
    """dpkg's view of this host: {package: {essential, priority, depends, provides}}."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Essential}\t${Priority}\t"
         "${Pre-Depends}, ${Depends}\t${Provides}\n"],
        capture_output=True, text=True, check=True).stdout
    packages = {}
    for line in out.splitlines():
        status, name, essential, priority, depends, provides = line.split("\t")
        if status.startswith("ii"):
            packages[name] = {"essential": essential, "priority": priority,
                              "depends": depends, "provides": provides}
    return packages


def _names(field: str) -> list[list[str]]:
    """'a (>= 1) | b, c:any' -> [['a', 'b'], ['c']]"""
    groups = []
    for group in field.split(","):
        names = [alt.strip().split(" ")[0].split(":")[0] for alt in group.split("|")]
        if names and names[0]:
            groups.append(names)
    return groups


def base_and_listed_closure() -> set[str]:
    """The listed packages, Debian's Essential and required ones, and all they depend on."""
    packages = installed_packages()
    providers: dict[str, set[str]] = {}
    for name, info in packages.items():
        for (virtual, *_rest) in _names(info["provides"]):
            providers.setdefault(virtual, set()).add(name)
    pending = [n for n, i in packages.items() if i["essential"] == "yes" or i["priority"] == "required"]
    pending += listed_packages()
    closure: set[str] = set()
    while pending:
        name = pending.pop()
        if name in closure or name not in packages:
            continue
        closure.add(name)
        for group in _names(packages[name]["depends"]):
            for alt in group:
                pending.extend([alt] if alt in packages else sorted(providers.get(alt, ())))
    return closure


def owner(path: str) -> str | None:
    """The package that ships ``path`` (also under its merged-/usr or resolved name)."""
    real = os.path.realpath(path)
    candidates = {path, real}
    for p in list(candidates):
        for merged, plain in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/")):
            if p.startswith(merged):
                candidates.add(plain + p[len(merged):])
            elif p.startswith(plain):
                candidates.add(merged + p[len(plain):])
    for candidate in sorted(candidates):
        proc = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def generated_lxc_config(tmp: Path) -> str:
    ct = lxc.Container("probe", tmp)
    ct.write_config(address=None, nesting=True, memory_mib=512)
    return ct.config_path.read_text()


def test_every_host_command_comes_from_a_listed_package() -> None:
    closure = base_and_listed_closure()
    commands = host_commands()
    assert {"lxc-start", "mmdebstrap", "zstd", "ssh-keygen"} <= set(commands), "the scan found too little"
    problems = []
    for name, where in sorted(commands.items()):
        path = shutil.which(name)
        assert path is not None
        package = owner(path)
        if package not in closure:
            problems.append(f"{name} ({path}, used at {where}): "
                            + (f"package {package} is not in setup/apt-packages.txt" if package
                               else "no Debian package ships it (installed by hand?)"))
    assert not problems, "\n".join(problems)


def test_every_lxc_include_comes_from_a_listed_package(tmp_path: Path) -> None:
    closure = base_and_listed_closure()
    includes = lxc_includes(generated_lxc_config(tmp_path))
    assert includes, "the lab's LXC config includes nothing?"
    problems = []
    for path in includes:
        package = owner(path) if Path(path).exists() else None
        if package not in closure:
            problems.append(f"{path}: " + (f"from {package}, not listed" if package else "missing or unowned"))
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def clean_root() -> Path:
    """A minimal Debian 12 root with only setup/apt-packages.txt installed (no Recommends, as
    ./dev.sh setup installs them). Kept per package list, so it is made once per list."""
    packages = listed_packages()
    key = hashlib.sha256("\n".join(packages + BOOKWORM).encode()).hexdigest()[:16]
    root = CLEAN_ROOTS / key
    if not (root / "etc/debian_version").exists():
        shutil.rmtree(CLEAN_ROOTS, ignore_errors=True)
        scratch = CLEAN_ROOTS / f"{key}.partial"
        CLEAN_ROOTS.mkdir(parents=True)
        run(["mmdebstrap", "--mode=root", "--variant=minbase", "--aptopt=APT::Install-Recommends \"false\"",
             "--include=" + ",".join(packages), "bookworm", scratch, *BOOKWORM], timeout=1800)
        scratch.rename(root)
    return root


@pytest.mark.integration
def test_clean_debian12_with_the_list_has_every_command(clean_root: Path) -> None:
    missing = []
    for name, where in sorted(host_commands().items()):
        proc = subprocess.run(["chroot", str(clean_root), "sh", "-c", f"command -v {name}"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            missing.append(f"{name} (used at {where})")
    assert not missing, "not on a clean Debian 12 after ./dev.sh setup: " + ", ".join(missing)


@pytest.mark.integration
def test_clean_debian12_with_the_list_has_every_lxc_include(clean_root: Path, tmp_path: Path) -> None:
    includes = lxc_includes(generated_lxc_config(tmp_path), root=clean_root)
    missing = [p for p in includes if not (clean_root / p.lstrip("/")).exists()]
    assert not missing, "included by the lab's LXC config, missing on a clean Debian 12: " + ", ".join(missing)


@pytest.mark.integration
def test_clean_debian12_with_the_list_makes_the_venv(clean_root: Path) -> None:
    venv = "/tmp/venv-probe"
    proc = subprocess.run(["chroot", str(clean_root), "python3", "-m", "venv", venv],
                          capture_output=True, text=True)
    try:
        assert proc.returncode == 0, proc.stderr
    finally:
        shutil.rmtree(clean_root / venv.lstrip("/"), ignore_errors=True)
