"""Fixtures and helpers to deploy the lab site and run the acceptance suite against it.

The suite runs as a subprocess (as a user would run it) with JUnit XML; callers compare the
names of the failed checks. Everything is sent only to the lab container's address.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config import Site, load_site
from pipeline.proxmox import Client
from pipeline.replace.gate import failed_checks
from pipeline.replace.ssh import SSH
from pipeline.runner import ANY_EXIT, run, tail
from tests.plugins.paths import REPO_ROOT

LAB_SITE = REPO_ROOT / "sites" / "lab.yml"
STANDIN = REPO_ROOT / "tests" / "fixtures" / "meridian-standin"
DEPLOY_TIMEOUT = 1800
SUITE_TIMEOUT = 900


def _env() -> dict[str, str]:
    """The lab site's master key variable (runner passes nothing else through)."""
    return {"MERIDIAN_LAB_MASTER_KEY": os.environ["MERIDIAN_LAB_MASTER_KEY"]}


def pipeline_cli(args: list[str], log: Path, timeout: float = DEPLOY_TIMEOUT) -> None:
    """``python -m pipeline ARGS``, output in ``log``; raises with the log's tail on failure."""
    run([sys.executable, "-m", "pipeline", *args], env=_env(), cwd=REPO_ROOT, timeout=timeout, log=log)


def replace_ct(site: Path, template: Path, out: Path) -> dict:
    """Deploy ``template`` with replace-ct and return its JSON report."""
    report = out / "replace-report.json"
    pipeline_cli(["replace-ct", "--site", str(site), "--template", str(template), "--yes",
                  "--json", str(report)], log=out / "replace-ct.log")
    return json.loads(report.read_text())


def acceptance(site: Path, marker: str, out: Path) -> list[str]:
    """Run ``pytest acceptance/ --site SITE -m MARKER``; return the failed checks' names."""
    out.mkdir(parents=True, exist_ok=True)
    junit, log = out / f"acceptance-{marker}.xml", out / f"acceptance-{marker}.log"
    junit.unlink(missing_ok=True)
    log.write_text("")
    proc = run([sys.executable, "-m", "pytest", str(REPO_ROOT / "acceptance"), "--site", str(site),
                "-m", marker, f"--junitxml={junit}", "-p", "no:cacheprovider", "-q"],
               env=_env(), cwd=REPO_ROOT, timeout=SUITE_TIMEOUT, check=ANY_EXIT, log=log)
    failed = [name.split("::")[-1] for name in failed_checks(junit)] if junit.exists() else []
    if proc.returncode != 0 and not failed:
        raise AssertionError(f"acceptance exited {proc.returncode} without a failed check:\n"
                             f"{tail(log.read_text(errors='replace'))}")
    return failed


def bumped_version() -> str:
    """A version no earlier run used: the layer cache is shared and keeps what it built, so
    only a new version makes "the bumped layer is rebuilt" hold on every run."""
    return f"1.40.0-standin.{int(time.time())}"


def bumped_site(tmp: Path, version: str) -> Path:
    """A copy of the stand-in at ``version``, and a copy of the lab site that installs it
    (with its own lock file, written by ``build --update-lock``)."""
    package = tmp / "meridian-standin"
    shutil.copytree(STANDIN, package)
    meta = json.loads((package / "package.json").read_text())
    meta["version"] = version
    (package / "package.json").write_text(json.dumps(meta, indent=2) + "\n")
    site = yaml.safe_load(LAB_SITE.read_text())
    site["image"]["meridian"] = {"source": str(package), "lockfile": str(tmp / "standin.lock.json")}
    path = tmp / "lab-bumped.yml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def remove_lab_ct(site_file: Path) -> None:
    """Delete the site's CT, its holder and its CT templates on the lab (with the credentials
    volume) and the site's replace-ct state (its journal remembers the volume), so the next
    replace-ct is a first deploy. Only for lab sites."""
    site = load_site(site_file)
    assert site.kind == "lab", f"{site_file} is not a lab site"
    client = Client.from_site(site.proxmox)
    present = {int(ct["vmid"]): ct for ct in client.containers()}
    for vmid in (site.container.vmid, site.container.holder_vmid, *site.container.template_vmids):
        if vmid not in present:
            continue
        if present[vmid].get("status") == "running":
            client.wait_task(client.shutdown(vmid, timeout=30), what=f"stop CT {vmid}")
        client.wait_task(client.delete_ct(vmid), what=f"delete CT {vmid}")
    shutil.rmtree(site.site_state_dir, ignore_errors=True)


@dataclass(frozen=True)
class DeployedLab:
    """The deployed lab container, reached as the admin user with the deploy key."""

    site_file: Path
    site: Site
    ssh: SSH

    def root(self, command: str, stdin: bytes = b"", timeout: float = 120) -> str:
        return self.ssh.run(["sudo", "-n", "sh", "-c", command], input=stdin, timeout=timeout).stdout

    def fake_login(self) -> None:
        """The stand-in's test device: dummy credentials so `claude auth status` says logged in."""
        self.root("sh -s meridian", stdin=(STANDIN / "fake-login").read_bytes())


def lab_ssh(site_file: Path, known_hosts: Path) -> DeployedLab:
    site = load_site(site_file)
    ssh = SSH(site.container.network.ip, site.site_state_dir / "deploy_key", known_hosts,
              site.admin.user)
    return DeployedLab(site_file, site, ssh)


@pytest.fixture(scope="module")
def lab_deployed(lab_build, lab_server, tmp_path_factory: pytest.TempPathFactory) -> DeployedLab:
    """The lab site's template freshly deployed as CT 457 (a first deploy), for one module."""
    out = tmp_path_factory.mktemp("deploy")
    remove_lab_ct(LAB_SITE)
    replace_ct(LAB_SITE, lab_build.out_dir, out)
    return lab_ssh(LAB_SITE, out / "known_hosts")
